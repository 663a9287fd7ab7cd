"""The identities' Secrets (shell): read by name, written through the write budget, and every
read and write's resourceVersion left with the operator's one tracker of its own writes
(runtime/writes.py), so the Secret watch recognises the echoes.

Only an identity's own Secret is ever read (by its name); a Secret the tracker knows at the
version an event carries is not news.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from meshless import metrics
from meshless.budget import WriteBudget
from meshless.identity.held import Key
from meshless.identity.plan import bundle_only_secret
from meshless.identity.render import identity_secret, is_owned_by
from meshless.identity.spec import IdentitySpec
from meshless.kube import SECRETS, ApiError, Json, Kube, transient
from meshless.runtime.writes import OwnWrites

log = logging.getLogger(__name__)

KIND = SECRETS.plural


class IdentitySecrets:
    def __init__(
        self,
        kube: Kube,
        budget: WriteBudget,
        writes: OwnWrites,
        on_raced: Callable[[Key], None],
    ) -> None:
        self.kube = kube
        self.budget = budget
        self.writes = writes
        self.on_raced = on_raced  # an identity whose Secret somebody else changed meanwhile
        # Identities not issued (a refused spec) whose Secret holds this trust bundle.
        self._bundle_only: dict[Key, bytes] = {}

    # --- what the watch asks ----------------------------------------------------------
    def is_own(self, meta: Mapping[str, Any], deleted: bool) -> bool:
        """An event of one of our writes or reads (and, during a write, any event: decided
        when the write's answer comes)."""
        key = (meta["namespace"], meta["name"])
        return self.writes.is_own(KIND, key, meta.get("resourceVersion"), deleted=deleted)

    def known(self, namespace: str, name: str) -> bool:
        return self.writes.knows(KIND, (namespace, name))

    def saw(self, namespace: str, name: str, version: str) -> None:
        self.writes.saw(KIND, (namespace, name), version)

    def forget(self, identity: Key, secret_name: str) -> None:
        self.writes.forget(KIND, (identity[0], secret_name))
        self._bundle_only.pop(identity, None)

    def changed(self, identity: Key) -> None:
        """Somebody changed the identity's Secret: what was confirmed there is stale."""
        self._bundle_only.pop(identity, None)

    # --- reads and writes ---------------------------------------------------------------
    async def read(self, namespace: str, name: str) -> Json | None:
        secret = await self.kube.get(SECRETS, namespace, name)
        if secret is not None:
            self.saw(namespace, name, secret["metadata"].get("resourceVersion") or "")
        return secret

    async def write(
        self,
        spec: IdentitySpec,
        identity_uid: str,
        existing: Json | None,
        chain_pem: bytes,
        key_pem: bytes,
        bundle: bytes,
        checked: str | None,
    ) -> None:
        """Create (`existing` None) or replace the identity's Secret."""
        manifest = identity_secret(
            spec,
            identity_uid,
            chain_pem=chain_pem,
            private_key_pem=key_pem,
            bundle_pem=bundle,
            resource_version=existing["metadata"]["resourceVersion"] if existing else None,
            checked=checked,
        )
        waited = await self.budget.acquire()
        metrics.WRITE_BUDGET_WAIT.observe(waited)
        identity = (spec.namespace, spec.name)
        # The write's watch echo may come before its answer: events meanwhile wait for it.
        secret_key = (spec.namespace, spec.secret_name)
        with self.writes.writing(KIND, secret_key, lambda: self.on_raced(identity)) as write:
            if existing is None:
                written = await self.kube.create(SECRETS, manifest)
            else:
                written = await self.kube.replace(SECRETS, manifest)
            write.version = written["metadata"]["resourceVersion"]

    async def keep_bundle(
        self, identity: Key, secret_name: str, bundle: bytes | None
    ) -> float | None:
        """An identity the operator will not issue that still has a Secret of ours (issued
        before the name policy or the setting refused it): its certificate and key stay as
        they are until notAfter, but its ca.crt follows the trust bundle, or a root rotation
        would wait for that Secret for ever and the workload would stop trusting its peers'
        renewed certificates. Nothing is signed. Read only when the bundle changed since it
        was last confirmed there, or the Secret did (`changed`). Returns when to look again."""
        namespace, name = identity
        if not bundle or self._bundle_only.get(identity) == bundle:
            return None
        secret = await self.read(namespace, secret_name)
        if secret is None or not is_owned_by(secret["metadata"], name):
            return None
        manifest = bundle_only_secret(secret, bundle)
        if manifest is not None:
            waited = await self.budget.acquire()
            metrics.WRITE_BUDGET_WAIT.observe(waited)
            # A replace, as every Secret write here (the chart grants update, not patch),
            # carrying the resourceVersion read: certificate and key are the bytes read.
            try:
                written = await self.kube.replace(SECRETS, manifest)
            except ApiError as exc:
                if transient(exc):
                    raise  # retried with backoff; the status stays as reported
                if exc.status in (404, 409):
                    return 0.2  # raced with another write: look again
                log.warning("%s/%s: could not update the trust bundle: %s", *identity, exc)
                return None
            self.saw(namespace, secret_name, written["metadata"]["resourceVersion"])
            metrics.BUNDLE_UPDATES.labels("Secret").inc()
            log.info("%s/%s: not issued; the trust bundle in its Secret updated", *identity)
        self._bundle_only[identity] = bundle
        return None


__all__ = ["IdentitySecrets"]
