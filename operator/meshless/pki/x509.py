"""X.509 helpers (pure), one definition each: reading PEM, names (SANs), key identifiers and
"issued by". Everything that reads a certificate's fields or checks a signature uses these.

- `parse_pem_certificates` raises on garbage (a CA Secret, a tls.crt we must understand);
  `certificates_in` returns what parses and nothing on garbage (counting, reporting).
- `issued_by(child, parent)` checks the signature only (no validity, no constraints); a
  certificate of an algorithm `cryptography` cannot verify is "not issued by".
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization


# --- PEM --------------------------------------------------------------------------------------
def parse_pem_certificates(pem: bytes, what: str = "PEM") -> list[x509.Certificate]:
    """Every certificate in a PEM document, in order; ValueError naming `what` if there are
    none or one does not parse."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{what} holds no parseable certificate: {exc}") from None
    if not certs:
        raise ValueError(f"{what} holds no certificate")
    return certs


def certificates_in(pem: bytes | None) -> list[x509.Certificate]:
    """The certificates of a PEM document; empty when it is absent, empty or garbage."""
    if not pem:
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def certificates_pem(certs: Iterable[x509.Certificate]) -> bytes:
    """The certificates as one PEM document, in the order given."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def fingerprint(cert: x509.Certificate) -> bytes:
    """SHA-256 over the certificate's DER."""
    return cert.fingerprint(hashes.SHA256())


# --- names ------------------------------------------------------------------------------------
def subject_alt_names(cert: x509.Certificate) -> list[x509.GeneralName]:
    """Every name in the SubjectAlternativeName extension (none when it is absent)."""
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The URI SANs, in the certificate's order."""
    return [
        n.value for n in subject_alt_names(cert) if isinstance(n, x509.UniformResourceIdentifier)
    ]


def dns_sans(cert: x509.Certificate) -> list[str]:
    """The DNS SANs, in the certificate's order."""
    return [n.value for n in subject_alt_names(cert) if isinstance(n, x509.DNSName)]


# --- key identifiers --------------------------------------------------------------------------
def _subject_key_identifier(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def subject_key_id(cert: x509.Certificate) -> bytes:
    """The certificate's SubjectKeyIdentifier (computed from its key if the extension is absent)."""
    return _subject_key_identifier(cert).digest


def authority_key_id(cert: x509.Certificate) -> bytes | None:
    """The key identifier in the certificate's AuthorityKeyIdentifier, or None."""
    try:
        return cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def authority_key_id_for(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AKI extension value for a certificate issued by `issuer`."""
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
        _subject_key_identifier(issuer)
    )


# --- issued by --------------------------------------------------------------------------------
def issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    """Whether `parent`'s key signed `child` (and `child` names `parent` as its issuer)."""
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    return issued_by(cert, cert)


def anchor_of(
    chain: Sequence[x509.Certificate], roots: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The root in `roots` that the chain (leaf, intermediates...) ends at, or None. Each
    certificate must be signed by the next; the last one by the root (a root whose key id
    differs from the last certificate's authority key id is not tried)."""
    if not chain:
        return None
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            return None
    top = chain[-1]
    top_aki = authority_key_id(top)
    for root in roots:
        if top_aki is not None and top_aki != subject_key_id(root):
            continue
        if issued_by(top, root):
            return root
    return None
