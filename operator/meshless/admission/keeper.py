"""The serving certificate's keeper (shell): issues the webhook server's certificate from
the webhook CA and renews it at 2/3 of its lifetime or when the CA's signing root changes,
loading each new one into the live server (no restart, no refused connection)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from meshless.admission.serving import ServingCertificate, issue_serving_certificate
from meshless.pki.bundle import bundle_pem, fingerprint
from meshless.pki.ca import CertificateAuthority

log = logging.getLogger(__name__)


class Serving(Protocol):
    """What the keeper needs of a server: its certificate, and a way to swap it."""

    @property
    def certificate(self) -> ServingCertificate | None: ...

    def load_certificate(self, certificate: ServingCertificate) -> None: ...


@dataclass
class ServingCertificateKeeper:
    """Issues the serving certificate and renews it at 2/3 of its lifetime or when the
    issuing CA changes. `ca` returns the current CA (None while there is none)."""

    ca: Callable[[], CertificateAuthority | None]
    hosts: tuple[str, ...]
    clock: Callable[[], datetime]
    ttl: timedelta = timedelta(hours=24)
    _issuer: bytes = b""

    def issue(self) -> tuple[ServingCertificate, bytes]:
        """A fresh certificate and the CA bundle that verifies it."""
        ca = self.ca()
        if ca is None:
            raise RuntimeError("no issuing CA is loaded")
        self._issuer = fingerprint(ca.issuer_cert)
        certificate = issue_serving_certificate(ca, self.hosts, self.clock(), self.ttl)
        return certificate, bundle_pem(ca.roots)

    def due(self, current: ServingCertificate) -> bool:
        ca = self.ca()
        if ca is not None and fingerprint(ca.issuer_cert) != self._issuer:
            return True
        return self.clock() >= current.renewal_time()

    async def run(
        self, server: Serving, check_every: float = 10.0
    ) -> None:  # pragma: no cover - a loop around issue() and due()
        while True:
            await asyncio.sleep(check_every)
            try:
                if server.certificate is None or self.due(server.certificate):
                    certificate, _ = self.issue()
                    server.load_certificate(certificate)
            except Exception:
                log.exception("renewing the webhook serving certificate failed; retrying")
