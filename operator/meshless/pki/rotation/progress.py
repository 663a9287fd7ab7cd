"""CA rotation (pure): how far a rotation has come, counted from what the bundles and leaves
in the cluster say."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from meshless.pki.rotation.state import RotationState
from meshless.pki.x509 import anchor_of, certificates_in, fingerprint, parse_pem_certificates


@dataclass(frozen=True)
class Progress:
    bundles_total: int = 0  # trust-bundle ConfigMaps + identity Secrets' ca.crt
    bundles_with_new_root: int = 0
    bundles_with_old_root: int = 0
    leaves_total: int = 0
    leaves_on_old_root: int = 0  # still valid and chaining to a root that leaves

    def __add__(self, other: Progress) -> Progress:
        """Counts over two parts (pages of Secrets) add up to the counts over both."""
        return Progress(
            self.bundles_total + other.bundles_total,
            self.bundles_with_new_root + other.bundles_with_new_root,
            self.bundles_with_old_root + other.bundles_with_old_root,
            self.leaves_total + other.leaves_total,
            self.leaves_on_old_root + other.leaves_on_old_root,
        )

    @property
    def leaves_reissued(self) -> int:
        return self.leaves_total - self.leaves_on_old_root

    def as_dict(self) -> dict[str, int]:
        return {
            "bundlesTotal": self.bundles_total,
            "bundlesWithNewRoot": self.bundles_with_new_root,
            "bundlesWithOldRoot": self.bundles_with_old_root,
            "leavesTotal": self.leaves_total,
            "leavesOnOldRoot": self.leaves_on_old_root,
            "leavesReissued": self.leaves_reissued,
        }


def _fingerprints(pem: bytes | None) -> set[str]:
    return {fingerprint(c).hex() for c in certificates_in(pem)}


def count_progress(
    bundles: Iterable[bytes | None],
    leaf_chains: Iterable[bytes | None],
    state: RotationState,
    old_roots: Sequence[x509.Certificate],
    now: datetime,
) -> Progress:
    """How far the rotation in `state` has come, from every bundle (ConfigMaps' and Secrets'
    ca.crt) and every identity Secret's tls.crt."""
    old = set(state.old_roots)
    bundles_total = with_new = with_old = 0
    for pem in bundles:
        prints = _fingerprints(pem)
        bundles_total += 1
        with_new += state.new_root in prints
        with_old += bool(prints & old)
    leaves_total = on_old = 0
    for chain_pem in leaf_chains:
        leaves_total += 1
        if not chain_pem:
            continue
        try:
            chain = parse_pem_certificates(chain_pem)
        except ValueError:
            continue
        if now >= chain[0].not_valid_after_utc:
            continue
        if anchor_of(chain, old_roots) is not None:
            on_old += 1
    return Progress(bundles_total, with_new, with_old, leaves_total, on_old)


def bundle_contains(bundle: bytes | None, root: x509.Certificate) -> bool:
    return fingerprint(root).hex() in _fingerprints(bundle)
