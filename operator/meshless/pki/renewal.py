"""When to renew a certificate: cert-manager's 2/3 rule plus deterministic jitter."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta


def jitter_unit(serial_number: int) -> float:
    """A number in [0, 1) derived from the serial (SHA-256 of its big-endian two's-complement
    bytes), so the renewal time can be recomputed after a restart with no stored state."""
    length = serial_number.bit_length() // 8 + 1
    digest = hashlib.sha256(serial_number.to_bytes(length, "big", signed=True)).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def renewal_time(
    not_before: datetime,
    not_after: datetime,
    *,
    renew_before: timedelta | None,
    jitter_fraction: float,
    jitter: float,
) -> datetime:
    """notAfter - renewBefore - jitter * min(jitter_fraction * lifetime, half the time from
    notBefore to notAfter - renewBefore), never before notBefore.

    renewBefore defaults to a third of the lifetime (renew at 2/3, as cert-manager does); a
    renewBefore that is not shorter than the issued lifetime (e.g. the certificate was clipped
    at its issuer's expiry) also falls back to that default. The result is truncated to whole
    seconds, the precision of the certificate's own times.
    """
    if not 0.0 <= jitter_fraction <= 1.0:
        raise ValueError("jitter_fraction must be within [0, 1]")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be within [0, 1]")
    lifetime = not_after - not_before
    if renew_before is None or renew_before <= timedelta(0) or renew_before >= lifetime:
        renew_before = lifetime / 3
    base = not_after - renew_before
    # Jitter never eats more than half of the time before the un-jittered renewal point, so a
    # renewBefore close to the lifetime cannot make a fresh certificate due at once.
    spread = min(lifetime * jitter_fraction, max(base - not_before, timedelta(0)) / 2)
    result = base - spread * jitter
    return max(result.replace(microsecond=0), not_before)
