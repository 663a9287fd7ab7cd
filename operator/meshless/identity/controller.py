"""The WorkloadIdentity controller (shell): watch events into the identity store, level-based
reconciles out.

A reconcile gathers the identity from the store and its own Secret (read by name, unless a
new term's sweep vouched for it by its metadata: identity/sweep.py; no other Secret's data is
ever read), makes one plan (identity/plan.py, pure: keep, issue or conflict), and writes only
what differs: a Secret through the write budget (identity/secrets.py), one status patch, an
Event when a running workload's certificate changes or a failure's reason does (a first
certificate is recorded by the status alone). Our own writes come back as watch events; the
one tracker of our writes (runtime/writes.py) recognises them and they are not reconciled
again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from meshless import metrics
from meshless.api import API_VERSION, IDENTITY_LABEL, Kind
from meshless.api import Reason as R
from meshless.budget import WriteBudget
from meshless.ca_store import CAStore
from meshless.identity import plan
from meshless.identity.held import HeldIdentity, Key, vanished
from meshless.identity.plan import FIRST_ISSUE, CAView, Conflict, Issue
from meshless.identity.secrets import IdentitySecrets
from meshless.identity.signing import Signer
from meshless.identity.spec import IdentitySpec, SpecError, default_secret_name, parse_identity
from meshless.identity.sweep import Sweep
from meshless.identity.trust_bundles import TrustBundles
from meshless.kube import IDENTITIES, ApiError, Json, Kube, transient
from meshless.pki.reissue import CertificateSummary, ReissueCause, summarize
from meshless.runtime.store import Store, by_namespace
from meshless.runtime.writes import OwnWrites
from meshless.settings import Settings
from meshless.status import EventRecorder, StatusWriter, involved_object
from meshless.workqueue import WorkQueue

log = logging.getLogger(__name__)

CA_RETRY_S = 15.0
CONFLICT_RETRY_S = 30.0
ISSUING_NOTICE_S = 1.0  # report Issuing=True only when the write budget makes us wait this long
IssuedHook = Callable[[str, str], None]  # (namespace, SPIFFE ID) of a certificate issued


class IdentityController:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        ca: CAStore,
        budget: WriteBudget,
        clock: Callable[[], datetime],
        events: EventRecorder,
        writes: OwnWrites,
        *,
        on_issued: IssuedHook | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.ca = ca
        self.clock = clock
        self.events = events
        self.on_issued = on_issued
        # The identities, from our watch (every replica) and our own status writes' answers.
        self.store: Store[Key, HeldIdentity] = Store(counts={"namespace": by_namespace})
        self.queue: WorkQueue[Key] = WorkQueue(self.reconcile, workers=settings.runtime.workers)
        self.issued = 0
        self.status = StatusWriter(kube, IDENTITIES, writes, on_raced=self.queue.add)
        self.secrets = IdentitySecrets(kube, budget, writes, on_raced=self.queue.add)
        self.signer = Signer(clock)
        self.sweeper = Sweep(kube, settings, self.store, self.queue)
        self.bundles = TrustBundles(
            kube,
            budget,
            events,
            writes,
            desired=lambda: self.ca.bundle,
            leading=lambda: self.queue.running,
            holds_identities=lambda ns: self.store.count("namespace", ns) > 0,
        )
        self.budget = budget
        self.certificates = metrics.CERTIFICATES
        metrics.IDENTITIES.labels("ready").set_function(lambda: self.certificates.ready_count)
        metrics.IDENTITIES.labels("not_ready").set_function(
            lambda: len(self.store) - self.certificates.ready_count
        )

    @property
    def swept(self) -> bool:
        return self.sweeper.done

    # --- watch events -----------------------------------------------------------------------
    def on_identity_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.store.pop(key)
            spec = body.get("spec") or {}
            secret_name = spec.get("secretName") or default_secret_name(meta["name"])
            self.sweeper.take((meta["namespace"], secret_name))
            self.secrets.forget(key, secret_name)
            self.status.forget(key)
            self.queue.forget(key)
            self.signer.stored(key)
            self.certificates.forget(*key)
            return
        before = self.store.get(key)
        version = meta.get("resourceVersion")
        if before is not None and version is not None and before.resource_version == version:
            return  # held already: our write's echo after its answer, or a re-list
        self.store.put(key, HeldIdentity.of(body))
        if self.status.is_echo(body):
            return  # the echo of our own status patch
        if not self.queue.running:
            return  # a standby holds the identity; a new term checks them all
        listed = event_type is None  # a list, at start or after a watch expired
        if listed and not self.swept:
            return  # the sweep in progress checks every identity held
        self.queue.add(key, background=listed)

    def remember(self, body: Mapping[str, Any]) -> None:
        """An identity from a list (the leader's priming list): held, not queued."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if key not in self.store:  # a watch event may have brought a newer version already
            self.store.put(key, HeldIdentity.of(body))

    def vanished(self, namespace: str | None, listed: set[Key]) -> list[Json]:
        """The held identities a (re-)list did not return, as DELETED events (held.py)."""
        return vanished(self.store, namespace, listed)

    def on_secret_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Secrets are watched through the label selector on our identity label, as metadata
        only: an event says which identity to look at; the reconcile reads the Secret. A
        labelled Secret not named as the identity's secretName is not the identity's: it
        queues nothing (anyone who may write Secrets in the namespace can label one)."""
        meta = body["metadata"]
        if self.secrets.is_own(meta, deleted=event_type == "DELETED"):
            return  # ours, or during our write of it (decided when its answer comes)
        identity = (meta["namespace"], (meta.get("labels") or {}).get(IDENTITY_LABEL) or "")
        listed = event_type is None
        if not self.queue.running or (listed and not self.swept):
            return  # the sweep of a new term reads every Secret itself, a page at a time
        held = self.store.get(identity)
        if held is not None and held.secret_name(identity[1]) == meta["name"]:
            self.sweeper.take((meta["namespace"], meta["name"]))  # what it vouched is stale
            self.secrets.changed(identity)
            self.queue.add(identity, background=listed)

    async def stop(self) -> None:
        """The end of a term: no more reconciles; the next term sweeps again."""
        await self.queue.stop()
        await self.bundles.stop()
        self.sweeper.reset()

    def enqueue_not_ready(self) -> int:
        """A new term's first work: every identity whose status is not Ready (new ones, the
        failing), ahead of the sweep that checks all the others. Returns how many."""
        keys = [key for key, held in self.store.items() if not held.ready]
        for key in keys:
            self.queue.add(key)
        return len(keys)

    def enqueue_all(self) -> None:
        """Every identity, behind anything an event queued (a resync, a new CA)."""
        for key in list(self.store):
            self.queue.add(key, background=True)

    async def sweep(self, namespaces: tuple[str, ...] | None = None) -> int:
        """A new term's check of every identity (identity/sweep.py). Returns how many
        Secrets were vouched for by their metadata."""
        return await self.sweeper.run(namespaces)

    # --- reconcile --------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile(key)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in exc.message:
                # The namespace is going away; its objects will go with it.
                log.debug("%s/%s: namespace is terminating; not reconciled", *key)
                return None
            await self._report_failure(key, exc)
            raise
        except Exception as exc:  # one bad object must not stop the others: report, retry
            await self._report_failure(key, exc)
            raise

    async def _report_failure(self, key: Key, exc: Exception) -> None:
        """Ready=False with the error (our errors never carry key material), best effort: the
        API may be what failed. The work queue retries with backoff."""
        body = self.body(key)
        if body is None or transient(exc):
            return
        try:
            await self._not_ready(body, R.ISSUING_FAILED, f"{type(exc).__name__}: {exc}"[:512])
        except Exception as report_exc:
            log.debug("%s/%s: could not report the failure: %s", *key, report_exc)

    def body(self, key: Key) -> Json | None:
        """The identity as the last event or our last write left it (what a reconcile
        needs of it: see HeldIdentity)."""
        held = self.store.get(key)
        return None if held is None else held.body(*key)

    def _view(self) -> CAView | None:
        ca = self.ca.current
        if ca is None:
            return None
        return CAView(ca, self.ca.bundle or b"", self.ca.rotation, self.settings.ca.rotation_window)

    async def _reconcile(self, key: Key) -> float | None:
        body = self.body(key)
        if body is None:
            return None
        namespace, name = key
        try:
            spec = parse_identity(namespace, name, body.get("spec") or {}, self.settings)
        except SpecError as exc:
            # Nothing is signed: a certificate already in the Secret (issued before the name
            # policy refused its names) stays until its notAfter, only its ca.crt kept
            # current. No retry either: a change of the spec (a watch event), of the settings
            # (a restart), of the CA or the periodic resync brings the identity back.
            self.signer.stored(key)
            await self._not_ready(body, exc.reason, plan.unusable_message(body, exc))
            secret_name = str(body["spec"].get("secretName") or default_secret_name(name))
            bundle = self.ca.bundle if self.ca.current is not None else None
            return await self.secrets.keep_bundle(key, secret_name, bundle)
        self.secrets.changed(key)
        view = self._view()
        if view is None:
            return await self._without_ca(body)
        await self.bundles.ensure(namespace, view.bundle)
        status = body.get("status") or {}
        if plan.never_issued(status, self.secrets.known(namespace, spec.secret_name)):
            # Never issued: try to create the Secret straight away, saving a read per new
            # identity. If something already holds the name, the normal path below decides.
            issued = await self._issue(body, spec, None, FIRST_ISSUE, view)
            if issued is not None:
                return issued
        vouched = self.sweeper.take((namespace, spec.secret_name))
        if vouched is not None:
            version, mark = vouched
            summary = plan.vouched_summary(status, spec, mark, view, self.clock())
            if summary is not None:
                self.secrets.saw(namespace, spec.secret_name, version)
                return await self._keep(body, spec, summary, None)
        secret = await self.secrets.read(namespace, spec.secret_name)
        decided = plan.plan_secret(spec, body["metadata"]["uid"], secret, view, self.clock())
        if isinstance(decided, Conflict):
            await self._not_ready(body, R.SECRET_CONFLICT, decided.message)
            return CONFLICT_RETRY_S
        if isinstance(decided, Issue):
            return await self._issue(body, spec, secret, decided.reason, view)
        if decided.rewrite:
            await self.secrets.write(
                spec,
                body["metadata"]["uid"],
                secret,
                decided.chain_pem,
                decided.key_pem,
                view.bundle,
                decided.checked,
            )
            if decided.bundle_behind:
                metrics.BUNDLE_UPDATES.labels("Secret").inc()
        return await self._keep(body, spec, decided.summary, decided.keep_until)

    async def _keep(
        self, body: Json, spec: IdentitySpec, summary: CertificateSummary, until: datetime | None
    ) -> float:
        await self._ready(body, spec, summary)
        return plan.next_check(summary, self.clock(), self.settings.identity.resync_interval, until)

    async def _issue(
        self,
        body: Json,
        spec: IdentitySpec,
        secret: Json | None,
        reason: ReissueCause,
        view: CAView,
    ) -> float | None:
        if self.budget.expected_wait() > ISSUING_NOTICE_S:
            await self._patch_status(body, plan.issuing_status(body, reason, self.clock()))
        key = (spec.namespace, spec.name)
        svid = await self.signer.sign(key, spec, view.ca)
        summary = summarize(svid.certificate, spec.desired)
        try:
            await self.secrets.write(
                spec,
                body["metadata"]["uid"],
                secret,
                svid.chain_pem,
                svid.private_key_pem,
                view.bundle,
                plan.mark_for(spec, view, summary),
            )
            self.signer.stored(key)
        except ApiError as exc:
            if exc.status == 409 and secret is None and reason is FIRST_ISSUE:
                return None  # the name is taken: the caller reads the Secret and decides
            if exc.status in (404, 409):  # raced with someone else's write: look again
                return 0.2
            raise
        self.issued += 1
        if self.on_issued is not None:
            self.on_issued(spec.namespace, spec.desired.request.spiffe_id)
        metrics.CERTIFICATES_ISSUED.labels(reason.code).inc()
        first = not (body.get("status") or {}).get("serialNumber")
        await self._ready(body, spec, summary)
        if not first:
            # A new identity's first certificate gets no Event: its status records it
            # (Ready since lastTransitionTime, the serial, the validity), and an Event per new
            # identity was a fifth of the CPU an issuance costs the API server and us
            # (docs/decisions.md). What changes a running workload's certificate is an Event.
            self._event(body, "Normal", *plan.issued_event(spec, summary, reason))
        log.info(
            "%s/%s: issued %s (%s)", spec.namespace, spec.name, summary.serial_number, reason.code
        )
        return plan.next_check(summary, self.clock(), self.settings.identity.resync_interval, None)

    async def _without_ca(self, body: Json) -> float:
        """No usable CA: identities with a valid certificate keep it and stay Ready; the rest
        report why they cannot be issued."""
        if plan.still_valid(body.get("status") or {}, self.clock()):
            return CA_RETRY_S
        error = self.ca.error
        reason = error.reason if error else R.CA_UNAVAILABLE
        message = str(error) if error else "the issuing CA is not loaded yet"
        await self._not_ready(body, reason, f"cannot issue: {message}")
        return CA_RETRY_S

    # --- trust bundle -----------------------------------------------------------------------
    async def refresh_trust_bundles(self) -> None:
        bundle = self.ca.bundle
        if bundle is None:
            return
        namespaces = {str(ns) for ns in self.store.counted("namespace")}
        for namespace in sorted(namespaces | self.bundles.for_pod_certificates):
            await self.bundles.ensure(namespace, bundle)

    async def keep_bundle_in(self, namespace: str) -> None:
        """The trust bundle ConfigMap in `namespace` from now on (pods with pod certificates
        read their ca.crt from it)."""
        await self.bundles.keep_in(namespace, self.ca.bundle)

    # --- status -----------------------------------------------------------------------------
    async def _ready(self, body: Json, spec: IdentitySpec, summary: CertificateSummary) -> None:
        await self._patch_status(body, plan.ready_status(body, spec, summary, self.clock()))
        if (spec.namespace, spec.name) in self.store:
            self.certificates.ready(
                spec.namespace,
                spec.name,
                summary.not_after.timestamp(),
                summary.renewal_time.timestamp(),
            )

    async def _not_ready(self, body: Json, reason: str, message: str) -> None:
        news = plan.failure_is_news(body, reason, message)
        wanted = plan.not_ready_status(body, reason, message, self.clock())
        changed = await self._patch_status(body, wanted)
        meta = body["metadata"]
        if (meta["namespace"], meta["name"]) in self.store:
            self.certificates.not_ready(meta["namespace"], meta["name"])
        if changed and news:
            metrics.CERTIFICATE_FAILURES.labels(reason).inc()
            self._event(body, "Warning", reason, message)

    async def _patch_status(self, body: Json, wanted: Json) -> bool:
        """Merge-patch the fields of `wanted` that differ. Returns True if it wrote."""
        patched = await self.status.patch(body, wanted)
        if patched is None:
            return False
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        # Raced: the store holds the newer event's copy.
        if key in self.store and not patched.raced:
            self.store.put(key, HeldIdentity.of(patched.body))
        return True

    def _event(self, body: Json, type: str, reason: str, message: str) -> None:
        self.events.post(
            involved_object(body, API_VERSION, Kind.WORKLOAD_IDENTITY), type, reason, message
        )


__all__ = ["HeldIdentity", "IdentityController", "Key"]
