"""Signing an identity's certificate (shell side of pki/svid.py): slow keys off the event
loop, and a certificate the API refused to store kept for the retry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from meshless import metrics
from meshless.identity.held import Key
from meshless.identity.spec import IdentitySpec
from meshless.pki.ca import CertificateAuthority
from meshless.pki.svid import IssuedSvid, SvidRequest, issuance_is_slow, issue_svid

UNWRITTEN_MAX_AGE = timedelta(minutes=5)


class Signer:
    def __init__(self, clock: Callable[[], datetime]) -> None:
        self.clock = clock
        # Signed but not yet stored (the API refused the write): reused on the retry.
        self._unwritten: dict[Key, tuple[SvidRequest, CertificateAuthority, IssuedSvid]] = {}

    async def sign(self, key: Key, spec: IdentitySpec, ca: CertificateAuthority) -> IssuedSvid:
        svid = self._unwritten_svid(key, spec, ca)
        if svid is not None:
            return svid
        request = spec.desired.request
        if issuance_is_slow(ca, request):
            # In a thread (OpenSSL releases the GIL while generating an RSA key): it would
            # stall watches, /healthz and webhooks (decisions.md, "Slow crypto off the event
            # loop").
            svid = await asyncio.to_thread(issue_svid, ca, request, self.clock())
        else:
            svid = issue_svid(ca, request, self.clock())
        metrics.CERTIFICATES_SIGNED.inc()
        self._unwritten[key] = (request, ca, svid)
        return svid

    def stored(self, key: Key) -> None:
        """The certificate signed for `key` is in its Secret (or no longer wanted)."""
        self._unwritten.pop(key, None)

    def _unwritten_svid(
        self, key: Key, spec: IdentitySpec, ca: CertificateAuthority
    ) -> IssuedSvid | None:
        """A certificate signed for this identity that the API refused to store, reused on
        the retry (not signed again on every backoff) while the request and CA are the same
        and it is young: a retry is seconds to a minute away."""
        kept = self._unwritten.get(key)
        if kept is None:
            return None
        request, kept_ca, svid = kept
        age = self.clock() - svid.certificate.not_valid_before_utc
        if request != spec.desired.request or kept_ca is not ca or age > UNWRITTEN_MAX_AGE:
            del self._unwritten[key]
            return None
        return svid


__all__ = ["Signer"]
