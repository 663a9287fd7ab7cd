"""The issuing CA, kept in a Secret in the operator's namespace (shell around pki.ca).

`self-signed`: the operator bootstraps a root and an intermediate once and stores them in the
Secret `meshless-ca`. Otherwise the named Secret holds a user's intermediate, copied into
`meshless-ca` when it first loads. A CA that fails to load never replaces the last good one;
the failure is kept for status and Events.

The issuing intermediate's NameConstraints are compared with the ones the settings ask for
(meshless.pki.constraints) each time the CA changes: a self-signed one that differs is
replaced by the rotation (meshless.ca_rotation); a user-provided one keeps issuing and is
reported (`constraints`, a Warning Event on the user's Secret, `meshless ca status`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography import x509

from meshless.api import MANAGED_BY
from meshless.identity.render import decode_secret_data
from meshless.kube import SECRETS, ApiError, Json, Kube
from meshless.pki.bundle import bundle_pem, fingerprint
from meshless.pki.ca import (
    CAError,
    CertificateAuthority,
    bootstrap_self_signed,
    ca_from_secret_data,
    ca_to_secret_data,
)
from meshless.pki.constraints import ConstraintsState, name_constraints
from meshless.pki.constraints import report as constraints_report
from meshless.pki.rotation import RotationState, state_from_secret_data
from meshless.settings import CA_SECRET_NAME, CA_SELF_SIGNED, Settings

log = logging.getLogger(__name__)


def desired_constraints(settings: Settings) -> x509.NameConstraints:
    """The NameConstraints the issuing intermediate must carry under these settings."""
    return name_constraints(
        settings.identity.trust_domain, settings.names.policy.permitted_dns_subtrees()
    )


class CAStore:
    def __init__(self, kube: Kube, settings: Settings, clock: Callable[[], datetime]) -> None:
        self._kube = kube
        self._settings = settings
        self._clock = clock
        self.current: CertificateAuthority | None = None
        self.error: CAError | None = None
        self._identity: bytes | None = None
        self._secret_meta: dict[str, Any] | None = None
        self._bundle: bytes | None = None
        # The CA Secret as last read (data decoded) and the rotation recorded in it.
        self.secret: Json | None = None
        self.data: dict[str, bytes] = {}
        self.rotation = RotationState()
        # How the active issuer's NameConstraints compare with the settings' (None: no CA).

    @property
    def bundle(self) -> bytes | None:
        """ca.crt for every identity: the trusted roots (computed once per CA change)."""
        return self._bundle

    async def load(self) -> bool:
        """Read the CA Secret (bootstrapping it if self-signed and missing).
        Returns True when the active CA or the CA's error changed."""
        try:
            ca = await self._read_or_bootstrap()
        except CAError as exc:
            if self.error is not None and self.error.reason == exc.reason:
                return False
            self.error = exc
            await self._report(exc)
            return True
        error_cleared = self.error is not None
        self.error = None
        self.rotation = state_from_secret_data(self.data)
        identity = fingerprint(ca.issuer_cert) + b"".join(fingerprint(r) for r in ca.roots)
        if identity == self._identity:
            return error_cleared
        self._identity = identity
        self.current = ca
        self._bundle = bundle_pem(ca.roots)
        log.info(
            "issuing CA %s (expires %s)",
            ca.issuer_cert.subject.rfc4514_string(),
            ca.issuer_cert.not_valid_after_utc.isoformat(),
        )
        await self._note_constraints(ca)
        return True

    async def _note_constraints(self, ca: CertificateAuthority) -> None:
        """Compare the issuer's NameConstraints with the settings'. Never refuses the CA: a
        user-provided one without (or with other) constraints keeps issuing and is reported
        with a Warning Event on its Secret; a self-signed one is rotated by CARotation."""
        found = constraints_report(ca.issuer_cert, desired_constraints(self._settings))
        if found.state is ConstraintsState.MATCHES:
            return
        if self._settings.ca.source == CA_SELF_SIGNED:
            log.info("%s; the operator replaces the intermediate", found.message)
            return
        log.warning("%s", found.message)
        ns, name = self._settings.runtime.namespace, self._settings.ca.secret_name
        involved = {"apiVersion": "v1", "kind": "Secret", "name": name, "namespace": ns}
        uid = (self._secret_meta or {}).get("uid")
        if uid:
            involved["uid"] = uid
        try:
            await self._kube.post_event(
                involved, type="Warning", reason=found.state.value, message=found.message
            )
        except ApiError as exc:
            log.warning("could not post an Event about the CA Secret: %s", exc)

    async def _report(self, error: CAError) -> None:
        """Log the error and put a Warning Event on the CA Secret. While a last good CA is
        loaded it stays in use; identities only fail when there is none."""
        ns, name = self._settings.runtime.namespace, self._settings.ca.secret_name
        keeping = " (the last good CA stays in use)" if self.current else ""
        log.error("CA Secret %s/%s unusable: %s%s", ns, name, error, keeping)
        secret = self._secret_meta or {}
        involved = {"apiVersion": "v1", "kind": "Secret", "name": name, "namespace": ns}
        if secret.get("uid"):
            involved["uid"] = secret["uid"]
        try:
            await self._kube.post_event(
                involved, type="Warning", reason=error.reason, message=f"{error}{keeping}"
            )
        except ApiError as exc:
            log.warning("could not post an Event about the CA Secret: %s", exc)

    async def _read_or_bootstrap(self) -> CertificateAuthority:
        """The active CA is always the operator's own Secret `meshless-ca` (which records the
        rotation too). Self-signed: bootstrapped once. User-provided: a copy of the user's
        Secret made when it first loads; later replacements reach it through a rotation
        (meshless.ca_rotation), so a broken one never replaces it, even across restarts."""
        ns, name = self._settings.runtime.namespace, CA_SECRET_NAME
        secret = await self._kube.get(SECRETS, ns, name)
        user_mode = self._settings.ca.source != CA_SELF_SIGNED
        if secret is None:
            secret = await (self._adopt(ns) if user_mode else self._bootstrap(ns))
        if not user_mode:
            self._secret_meta = (secret or {}).get("metadata")
        if secret is None:
            raise CAError("CASecretMissing", f"CA Secret {ns}/{name} does not exist")
        data = decode_secret_data(secret.get("data"))
        ca = ca_from_secret_data(data, self._clock())
        self.secret, self.data = secret, data
        return ca

    async def _adopt(self, ns: str) -> Json | None:
        """The user's CA, validated, copied into the operator's CA Secret."""
        source = self._settings.ca.source
        user = await self._kube.get(SECRETS, ns, source)
        self._secret_meta = (user or {}).get("metadata")
        if user is None:
            raise CAError("CASecretMissing", f"CA Secret {ns}/{source} does not exist")
        ca = ca_from_secret_data(decode_secret_data(user.get("data")), self._clock())
        created = await self._create(ns, ca_to_secret_data(ca, None))
        log.info("using the CA from Secret %s/%s (copied into %s)", ns, source, CA_SECRET_NAME)
        return created

    async def _bootstrap(self, ns: str) -> Json | None:
        ca, root_key = await asyncio.to_thread(
            bootstrap_self_signed,
            self._settings.identity.trust_domain,
            self._clock(),
            dns_subtrees=self._settings.names.policy.permitted_dns_subtrees(),
        )
        created = await self._create(ns, ca_to_secret_data(ca, root_key))
        log.info(
            "bootstrapped a self-signed root and intermediate in Secret %s/%s", ns, CA_SECRET_NAME
        )
        return created

    async def _create(self, ns: str, data: dict[str, bytes]) -> Json | None:
        name = CA_SECRET_NAME
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": dict(MANAGED_BY)},
            "type": "Opaque",
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
        }
        try:
            return await self._kube.create(SECRETS, body)
        except ApiError as exc:
            if exc.status == 409:  # another replica won the race: use theirs
                return await self._kube.get(SECRETS, ns, name)
            if exc.status == 404:
                raise CAError(
                    "CANamespaceMissing", f"namespace {ns} for the CA Secret does not exist"
                ) from None
            raise
