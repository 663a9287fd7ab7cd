"""The trust-bundle ConfigMaps (shell): written where identities live, kept as written.

`ensure` writes a namespace's `meshless-trust-bundle` when it differs from the CA's bundle
(a new namespace, a root rotation). The ConfigMaps are also watched (by name, metadata only:
see operator.py), so one edited or deleted by anyone else is put back within seconds by the
leader: server-side apply with our field manager, forced, any extra key removed, and a
Warning Event `BundleRepaired` saying what was removed. The desired bundle is always the CA
state's at that moment (during a root rotation the old and the new roots), so a rotation in
progress is never "repaired" back to an older set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from meshless import metrics
from meshless.api import TRUST_BUNDLE_NAME, Reason
from meshless.budget import WriteBudget
from meshless.identity.bundle_drift import BundleDrift, bundle_drift
from meshless.identity.checked import data_written_only_by
from meshless.identity.render import trust_bundle_configmap
from meshless.kube import CONFIGMAPS, FIELD_MANAGER, MERGE_PATCH, ApiError, Json, Kube
from meshless.runtime.writes import OwnWrites
from meshless.status import EventRecorder, involved_object

log = logging.getLogger(__name__)

KIND = CONFIGMAPS.plural
REPAIR_RETRY_S = 5.0
REPAIR_TRIES = 6


class TrustBundles:
    def __init__(
        self,
        kube: Kube,
        budget: WriteBudget,
        events: EventRecorder,
        writes: OwnWrites,
        *,
        desired: Callable[[], bytes | None],
        leading: Callable[[], bool],
        holds_identities: Callable[[str], bool],
    ) -> None:
        self.kube = kube
        self.budget = budget
        self.events = events
        self.writes = writes  # the resourceVersion we wrote or read, per namespace's ConfigMap
        self.desired = desired  # the CA's bundle now
        self.leading = leading
        self.holds_identities = holds_identities
        self._bundles: dict[str, bytes] = {}  # namespace -> bundle known to be in place
        self._locks: dict[str, asyncio.Lock] = {}
        self._repairs: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()  # namespaces changed since their repair last read them
        # Namespaces whose pods read ca.crt from the ConfigMap next to a pod certificate (no
        # ClusterTrustBundles served): kept there with or without identities (keep_in).
        self.for_pod_certificates: set[str] = set()

    async def keep_in(self, namespace: str, bundle: bytes | None) -> None:
        """The ConfigMap in `namespace` from now on, identities there or not."""
        self.for_pod_certificates.add(namespace)
        if bundle is not None:
            await self.ensure(namespace, bundle)

    async def ensure(self, namespace: str, bundle: bytes) -> None:
        """The namespace's ConfigMap holds `bundle` (read once per bundle and namespace,
        written when it differs)."""
        if self._bundles.get(namespace) == bundle:
            return
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            if self._bundles.get(namespace) == bundle:
                return
            current = await self.kube.get(CONFIGMAPS, namespace, TRUST_BUNDLE_NAME)
            drift = bundle_drift(current, bundle)
            if drift is None:
                assert current is not None
                self.writes.saw(
                    KIND, (namespace, TRUST_BUNDLE_NAME), current["metadata"]["resourceVersion"]
                )
            else:
                tampered = self._tampered(namespace, current, drift)  # before our write
                written = await self._write(namespace, bundle, drift)
                if tampered:
                    self._report(written, drift)
            self._bundles[namespace] = bundle

    def _tampered(self, namespace: str, current: Json | None, drift: BundleDrift) -> bool:
        """Someone else changed what we wrote (not a new CA bundle we are rolling out): its
        data touched by another field manager, or a ConfigMap we wrote deleted."""
        if not drift.content_changed:
            return False
        if current is None:
            return self.writes.knows(KIND, (namespace, TRUST_BUNDLE_NAME))
        return bool(drift.extra_keys) or not data_written_only_by(
            current["metadata"], FIELD_MANAGER
        )

    async def _write(self, namespace: str, bundle: bytes, drift: BundleDrift) -> Json:
        # Through the write budget too: a root rotation rewrites every bundle at once.
        waited = await self.budget.acquire()
        metrics.WRITE_BUDGET_WAIT.observe(waited)
        written = await self.kube.apply(CONFIGMAPS, trust_bundle_configmap(namespace, bundle))
        if drift.extra_keys:  # apply keeps fields other managers own: remove them
            removal: dict[str, Any] = {
                "data": {k: None for k in drift.extra_keys},
                "binaryData": {k: None for k in drift.extra_keys},
            }
            written = await self.kube.request(  # as our field manager, like the apply
                "PATCH",
                CONFIGMAPS.path(namespace, TRUST_BUNDLE_NAME),
                removal,
                content_type=MERGE_PATCH,
                query=[("fieldManager", FIELD_MANAGER)],
            )
        self.writes.saw(
            KIND, (namespace, TRUST_BUNDLE_NAME), written["metadata"]["resourceVersion"]
        )
        metrics.BUNDLE_UPDATES.labels("ConfigMap").inc()
        return written

    def _report(self, written: Json, drift: BundleDrift) -> None:
        message = drift.describe()
        meta = written["metadata"]
        log.warning("trust bundle %s/%s repaired: %s", meta["namespace"], meta["name"], message)
        self.events.post(
            involved_object(written, "v1", "ConfigMap"),
            "Warning",
            Reason.BUNDLE_REPAIRED,
            message,
        )

    # --- watch events (metadata only) -------------------------------------------------------
    def on_event(self, event_type: str | None, body: Json) -> None:
        meta = body["metadata"]
        namespace = meta.get("namespace") or ""
        if meta.get("name") != TRUST_BUNDLE_NAME:
            return
        key = (namespace, TRUST_BUNDLE_NAME)
        if self.writes.is_own(
            KIND, key, meta.get("resourceVersion"), deleted=event_type == "DELETED"
        ):
            return  # our own write's echo, or a re-list of what we wrote
        if namespace not in self._bundles and not self.writes.knows(KIND, key):
            return  # not one this term wrote or checked: a sweep checks it when needed
        self._bundles.pop(namespace, None)  # to be read again, by this term or the next
        wanted = self.holds_identities(namespace) or namespace in self.for_pod_certificates
        if self.leading() and (event_type != "DELETED" or wanted):
            self._dirty.add(namespace)
            self._schedule(namespace)

    def _schedule(self, namespace: str) -> None:
        running = self._repairs.get(namespace)
        if running is not None and not running.done():
            return  # it reads the ConfigMap again before it ends (_dirty)
        task = asyncio.get_running_loop().create_task(self._repair(namespace))
        self._repairs[namespace] = task
        task.add_done_callback(lambda _: self._repairs.pop(namespace, None))

    async def _repair(self, namespace: str) -> None:
        """Reads and repairs the ConfigMap until no change came in meanwhile (an edit while
        a write was under way is not lost to that write's idea of what is in place)."""
        failures = 0
        while namespace in self._dirty:
            self._dirty.discard(namespace)
            bundle = self.desired()
            if bundle is None or not self.leading():
                return
            self._bundles.pop(namespace, None)
            try:
                await self.ensure(namespace, bundle)
                continue
            except ApiError as exc:
                if exc.status == 403 and "being terminated" in exc.message:
                    return
                log.warning("repairing trust bundle in %s failed: %s", namespace, exc)
            except Exception as exc:  # the API away: try again shortly
                log.warning("repairing trust bundle in %s failed: %s", namespace, exc)
            failures += 1
            if failures >= REPAIR_TRIES:
                return  # the next reconcile of an identity there checks it again
            self._dirty.add(namespace)
            await asyncio.sleep(REPAIR_RETRY_S * failures)

    async def stop(self) -> None:
        tasks = list(self._repairs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["TrustBundles"]
