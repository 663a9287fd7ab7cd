"""The admission webhooks' own CA, kept in the Secret `meshless-webhook-ca` in the operator's
namespace (shell around pki.webhook_ca).

Every replica serves the webhooks, so every replica loads this CA; whichever first finds the
Secret missing creates it (create-if-absent: a replica that loses the race reads back the
winner's, so all serve from one root). Only the leader rotates it, one step per poll, and
writes the webhook configurations' caBundle from it (the operator does that after `load`
reports a change). A Secret of that name that meshless does not manage is never touched.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from meshless.api import (
    MANAGED_BY,
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    ROTATE_ANNOTATION,
    Reason,
)
from meshless.identity.render import decode_secret_data
from meshless.kube import MUTATING_WEBHOOKS, SECRETS, VALIDATING_WEBHOOKS, ApiError, Json, Kube
from meshless.pki.bundle import fingerprint
from meshless.pki.ca import CAError, CertificateAuthority
from meshless.pki.webhook_ca import (
    WEBHOOK_CA_SECRET_NAME,
    Action,
    Observed,
    Phase,
    Step,
    WebhookCA,
    apply_step,
    common_fingerprints,
    new_webhook_ca_data,
    next_step,
    webhook_ca_from_secret_data,
)

log = logging.getLogger(__name__)

NOT_OURS = "WebhookCASecretConflict"
EVENT_REASONS = {
    Action.PREPARE: Reason.WEBHOOK_CA_PREPARE,
    Action.SWITCH: Reason.WEBHOOK_CA_SWITCH,
    Action.FINISH: Reason.WEBHOOK_CA_FINISH,
    Action.REPLACE: Reason.WEBHOOK_CA_REPLACED,
}


def configured_bundles(configurations: list[Json | None]) -> list[bytes]:
    """The caBundle of every webhook in the configurations (decoded PEM)."""
    bundles: list[bytes] = []
    for configuration in configurations:
        for webhook in (configuration or {}).get("webhooks") or ():
            raw = (webhook.get("clientConfig") or {}).get("caBundle") or ""
            try:
                bundles.append(base64.b64decode(raw))
            except ValueError:
                bundles.append(b"")
    return bundles


class WebhookCAStore:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        clock: Callable[[], datetime],
        settle: timedelta,
        configuration: str,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._clock = clock
        self._settle = settle
        self._configuration = configuration
        self.current: WebhookCA | None = None
        self.error: CAError | None = None
        self.secret: Json | None = None
        self._identity = b""
        # The leader's observation of the configurations: what they carry, since when.
        self._configured: frozenset[bytes] | None = None
        self._configured_since: datetime | None = None

    @property
    def authority(self) -> CertificateAuthority | None:
        """What signs serving certificates (None until the CA has loaded once)."""
        return self.current.authority if self.current is not None else None

    @property
    def bundle(self) -> bytes | None:
        """The configurations' caBundle: this CA's roots, never a workload root."""
        return self.current.bundle if self.current is not None else None

    async def load(self) -> bool:
        """Read the Secret (creating it if missing). True when the signing root or the
        trusted roots changed. A CA that does not load never replaces the last good one."""
        secret = await self._kube.get(SECRETS, self._namespace, WEBHOOK_CA_SECRET_NAME)
        if secret is None:
            secret = await self._create(new_webhook_ca_data(self._clock()))
        if secret is None:  # made by another replica and deleted again: the next poll
            return False
        self.secret = secret
        try:
            ca = self._parse(secret)
        except CAError as exc:
            if self.error is None or self.error.reason != exc.reason:
                keeping = " (the last good one stays in use)" if self.current else ""
                log.error(
                    "webhook CA Secret %s/%s unusable: %s%s",
                    self._namespace,
                    WEBHOOK_CA_SECRET_NAME,
                    exc,
                    keeping,
                )
            self.error = exc
            return False
        self.error = None
        identity = fingerprint(ca.root) + b"".join(fingerprint(r) for r in ca.authority.roots)
        self.current = ca
        if identity == self._identity:
            return False
        self._identity = identity
        log.info(
            "webhook CA: root %s signs (expires %s), caBundle %s, phase %s",
            fingerprint(ca.root).hex()[:16],
            ca.root.not_valid_after_utc.isoformat(),
            "+".join(fingerprint(r).hex()[:16] for r in ca.authority.roots),
            ca.record.phase.value,
        )
        return True

    def _parse(self, secret: Json) -> WebhookCA:
        labels = (secret.get("metadata") or {}).get("labels") or {}
        if labels.get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
            raise CAError(
                NOT_OURS,
                f"Secret {self._namespace}/{WEBHOOK_CA_SECRET_NAME} exists but is not managed "
                f"by meshless (no label {MANAGED_BY_KEY}={MANAGED_BY_VALUE}); it is left alone",
            )
        return webhook_ca_from_secret_data(decode_secret_data(secret.get("data")), self._clock())

    async def _create(self, data: Mapping[str, bytes]) -> Json | None:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": WEBHOOK_CA_SECRET_NAME,
                "namespace": self._namespace,
                "labels": dict(MANAGED_BY),
            },
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        try:
            created = await self._kube.create(SECRETS, body)
        except ApiError as exc:
            if exc.status == 409:  # another replica made it first: serve from theirs
                return await self._kube.get(SECRETS, self._namespace, WEBHOOK_CA_SECRET_NAME)
            raise
        log.info("created the webhook CA in Secret %s/%s", self._namespace, WEBHOOK_CA_SECRET_NAME)
        return created

    async def observe_configurations(self) -> frozenset[bytes] | None:
        """The roots both configurations carry in every webhook (None: they differ, or a
        configuration is missing), and since when they have (kept by the leader)."""
        configurations = [
            await self._kube.get(resource, None, self._configuration)
            for resource in (MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS)
        ]
        bundles = configured_bundles(configurations)
        roots = None if None in configurations else common_fingerprints(bundles)
        if roots != self._configured:
            self._configured = roots
            self._configured_since = self._clock() if roots is not None else None
        return roots

    async def step(self, serving_chain: bytes | None) -> bool:
        """The leader's rotation step (one per poll). True when the Secret was written (the
        caller loads it again and updates the configurations)."""
        secret = self.secret
        if secret is None or (self.error is not None and self.error.reason == NOT_OURS):
            return False
        ca = self.current if self.error is None else None
        if ca is not None and ca.record.phase is not Phase.IDLE:
            await self.observe_configurations()
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        observed = Observed(
            ca=ca,
            error=self.error,
            request=annotations.get(ROTATE_ANNOTATION) or None,
            configured=self._configured,
            configured_since=self._configured_since,
            serving_chain=serving_chain,
            now=self._clock(),
            settle=self._settle,
        )
        step = next_step(observed)
        if step is None or step.action is Action.WAIT:
            if step is not None:
                log.debug("webhook CA rotation waits: %s", step.message)
            return False
        data = await asyncio.to_thread(apply_step, step, observed)
        assert data is not None
        if not await self._write(secret, data):
            return False
        log.info("webhook CA rotation: %s: %s", step.action.value, step.message)
        await self._event(secret, step)
        return True

    async def _event(self, secret: Json, step: Step) -> None:
        """An Event on the Secret for each step (`kubectl describe secret` tells the story)."""
        meta = secret["metadata"]
        involved = {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        }
        try:
            await self._kube.post_event(
                involved,
                type="Warning" if step.action is Action.REPLACE else "Normal",
                reason=EVENT_REASONS[step.action],
                message=step.message,
            )
        except ApiError as exc:
            log.warning("could not post an Event about the webhook CA Secret: %s", exc)

    async def _write(self, secret: Json, data: Mapping[str, bytes]) -> bool:
        if await self._kube.replace_secret_data(secret, data):
            return True
        log.info("webhook CA Secret changed while rotating; deciding again")
        return False
