"""CA rotation (pure): when a leaf of a retired issuer is reissued (spread over a window, so a
rotation does not reissue every identity at once)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509

from meshless.pki.bundle import fingerprint
from meshless.pki.constraints import names_outside_constraints
from meshless.pki.rotation.state import RotationState
from meshless.pki.x509 import anchor_of


def spread_unit(namespace: str, name: str) -> float:
    """A number in [0, 1) from the identity's name: its place in a reissue window (stable
    across restarts, so nothing is reissued twice or early after one)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def retired_issuer_deadline(
    chain: Sequence[x509.Certificate],
    *,
    trusted_roots: Sequence[x509.Certificate],
    renewal_at: datetime,
    namespace: str,
    name: str,
    state: RotationState,
    window: timedelta,
    now: datetime,
) -> datetime | None:
    """For a leaf whose issuer is no longer the active one: when to reissue it. None means at
    once: the leaf has expired, no longer chains to a root in the current bundle (a CA that
    was replaced outright), or carries a name its own intermediate's NameConstraints do not
    permit (issued before a policy change reached the intermediate), so waiting would only
    prolong broken handshakes.

    - Under a root that is leaving (Switch): at its place in the window that began with Switch.
    - Under a root that stays (an intermediate rotated): at its own renewal, or, when the old
      intermediate is close to expiry, at its place in the window that ends one window before
      that intermediate's notAfter.
    The earlier of that and its own renewal time wins.
    """
    leaf = chain[0]
    if now >= leaf.not_valid_after_utc:
        return None
    if names_outside_constraints(chain):
        return None  # its own intermediate does not permit its names: it fails every handshake
    root = anchor_of(chain, trusted_roots)
    if root is None:
        return None
    unit = spread_unit(namespace, name)
    if fingerprint(root).hex() in state.old_roots and state.switched_at is not None:
        deadline = state.switched_at + window * unit
    else:
        issuer_end = (
            min(c.not_valid_after_utc for c in chain[1:])
            if len(chain) > 1
            else (leaf.not_valid_after_utc)
        )
        deadline = issuer_end - 2 * window + window * unit
    return min(deadline, renewal_at)
