"""Trust bundles: the set of roots a workload should trust, as one PEM document."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 over the certificate's DER."""
    return cert.fingerprint(hashes.SHA256())


def parse_pem_certificates(pem: bytes, what: str = "PEM") -> list[x509.Certificate]:
    """Every certificate in a PEM document, in order; ValueError if there are none."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{what} holds no parseable certificate: {exc}") from None
    if not certs:
        raise ValueError(f"{what} holds no certificate")
    return certs


def bundle_pem(roots: Iterable[x509.Certificate]) -> bytes:
    """Deduplicated (by SHA-256 fingerprint) roots in a stable order (notBefore, fingerprint)."""
    unique = {fingerprint(cert): cert for cert in roots}
    ordered = sorted(unique.items(), key=lambda item: (item[1].not_valid_before_utc, item[0]))
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for _, cert in ordered)


def parse_bundle(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a trust bundle; ValueError on garbage or an empty bundle."""
    return parse_pem_certificates(pem, "trust bundle")
