"""Renewal timing: cert-manager's 2/3 default, explicit renewBefore, jitter bounds, and the
deterministic per-serial jitter unit."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from meshless.pki.renewal import jitter_unit, renewal_time

NB = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(hours=24)
NA = NB + LIFETIME


def test_default_renews_at_two_thirds() -> None:
    when = renewal_time(NB, NA, renew_before=None, jitter_fraction=0.1, jitter=0.0)
    assert when == NB + timedelta(hours=16)


def test_explicit_renew_before() -> None:
    when = renewal_time(NB, NA, renew_before=timedelta(hours=2), jitter_fraction=0.0, jitter=0.9)
    assert when == NA - timedelta(hours=2)


@pytest.mark.parametrize("renew_before", [LIFETIME, LIFETIME * 2, timedelta(0)])
def test_unusable_renew_before_falls_back_to_two_thirds(renew_before: timedelta) -> None:
    # e.g. a certificate clipped at its issuer's expiry is shorter than renewBefore.
    when = renewal_time(NB, NA, renew_before=renew_before, jitter_fraction=0.0, jitter=0.0)
    assert when == NB + timedelta(hours=16)


def test_full_jitter_moves_by_at_most_the_fraction_of_lifetime() -> None:
    base = renewal_time(NB, NA, renew_before=None, jitter_fraction=0.1, jitter=0.0)
    full = renewal_time(NB, NA, renew_before=None, jitter_fraction=0.1, jitter=1.0)
    assert full == base - LIFETIME * 0.1


@pytest.mark.parametrize("jitter", [0.0, 0.01, 0.25, 0.5, 0.75, 0.999999])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_jitter_bounds(jitter: float, fraction: float) -> None:
    base = renewal_time(NB, NA, renew_before=None, jitter_fraction=fraction, jitter=0.0)
    when = renewal_time(NB, NA, renew_before=None, jitter_fraction=fraction, jitter=jitter)
    assert base - LIFETIME * fraction <= when <= base
    assert when.microsecond == 0


def test_never_before_not_before() -> None:
    when = renewal_time(
        NB, NA, renew_before=LIFETIME - timedelta(seconds=1), jitter_fraction=1.0, jitter=0.99
    )
    assert when == NB


def test_more_jitter_is_never_later() -> None:
    times = [
        renewal_time(NB, NA, renew_before=None, jitter_fraction=0.1, jitter=j / 10)
        for j in range(10)
    ]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(("fraction", "jitter"), [(-0.1, 0.5), (1.5, 0.5), (0.1, -0.1), (0.1, 2.0)])
def test_out_of_range_jitter_is_rejected(fraction: float, jitter: float) -> None:
    with pytest.raises(ValueError):
        renewal_time(NB, NA, renew_before=None, jitter_fraction=fraction, jitter=jitter)


def test_jitter_unit_is_deterministic() -> None:
    serial = 0x5A3F_1234_DEAD_BEEF_0000_1111_2222_3333
    assert jitter_unit(serial) == jitter_unit(serial)
    assert jitter_unit(serial) == jitter_unit(int(hex(serial), 16))
    assert jitter_unit(serial) != jitter_unit(serial + 1)


def test_jitter_unit_handles_edge_serials() -> None:
    for serial in (0, 1, -1, 2**127, 2**159 - 1):
        assert 0.0 <= jitter_unit(serial) < 1.0


def test_jitter_unit_spreads_over_unit_interval() -> None:
    values = [jitter_unit(secrets.randbits(127) | (1 << 126)) for _ in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert min(values) < 0.02
    assert max(values) > 0.98
    deciles = [0] * 10
    for v in values:
        deciles[int(v * 10)] += 1
    # Expected 100 per decile; 50..150 is > 10 standard deviations wide.
    assert all(50 <= n <= 150 for n in deciles), deciles


def test_jitter_unit_spreads_sequential_serials() -> None:
    values = [jitter_unit(n) for n in range(1, 1001)]
    deciles = [0] * 10
    for v in values:
        deciles[int(v * 10)] += 1
    assert all(50 <= n <= 150 for n in deciles), deciles
