"""CA rotation (pure): a user-provided CA replaced by another; what kind of change it is."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from cryptography import x509

from meshless.pki.bundle import fingerprint
from meshless.pki.ca import CertificateAuthority
from meshless.pki.x509 import anchor_of


class Replacement(StrEnum):
    SAME = "Same"  # nothing changed
    INTERMEDIATE = "Intermediate"  # a new issuer under a root the bundle already has
    NEW_ROOT = "NewRoot"  # the new issuer chains to a root the current bundle lacks


def classify_replacement(
    current: CertificateAuthority, candidate: CertificateAuthority
) -> Replacement:
    """How a (valid: ca_from_secret_data accepted it) replacement CA relates to the current
    one. A broken replacement never gets here: loading it fails and the current CA stays."""
    same_issuer = fingerprint(current.issuer_cert) == fingerprint(candidate.issuer_cert)
    current_roots = {fingerprint(r) for r in current.roots}
    candidate_roots = {fingerprint(r) for r in candidate.roots}
    if same_issuer and current_roots == candidate_roots:
        return Replacement.SAME
    chain = [candidate.issuer_cert, *candidate.intermediates[1:]]
    if anchor_of(chain, current.roots) is not None:
        return Replacement.INTERMEDIATE
    if candidate_roots <= current_roots:
        return Replacement.INTERMEDIATE
    return Replacement.NEW_ROOT


def root_expiry(roots: Sequence[x509.Certificate]) -> datetime | None:
    return min((r.not_valid_after_utc for r in roots), default=None)
