"""Trust bundles: the set of roots a workload should trust, as one PEM document."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509

from meshless.pki.x509 import certificates_pem, fingerprint, parse_pem_certificates

__all__ = ["bundle_pem", "fingerprint", "parse_bundle", "parse_pem_certificates"]


def bundle_pem(roots: Iterable[x509.Certificate]) -> bytes:
    """Deduplicated (by SHA-256 fingerprint) roots in a stable order (notBefore, fingerprint)."""
    unique = {fingerprint(cert): cert for cert in roots}
    ordered = sorted(unique.items(), key=lambda item: (item[1].not_valid_before_utc, item[0]))
    return certificates_pem(cert for _, cert in ordered)


def parse_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a trust bundle; ValueError on garbage or an empty bundle."""
    return parse_pem_certificates(pem, "trust bundle")
