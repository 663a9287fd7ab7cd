"""Trust bundles: deduplication, stable order, parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from meshless.pki.bundle import bundle_pem, parse_bundle
from meshless.pki.ca import bootstrap_self_signed

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def roots() -> list[x509.Certificate]:
    """Three roots: two made at the same time, one a day later."""
    same_time = [bootstrap_self_signed("cluster.local", NOW)[0].roots[0] for _ in range(2)]
    later = bootstrap_self_signed("cluster.local", NOW + timedelta(days=1))[0].roots[0]
    return [later, *same_time]


def _sha(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


def test_dedup_by_fingerprint(roots: list[x509.Certificate]) -> None:
    once = bundle_pem(roots)
    twice = bundle_pem([*roots, *reversed(roots), roots[0]])
    assert twice == once
    assert len(parse_bundle(once)) == 3


def test_order_is_stable_not_before_then_fingerprint(roots: list[x509.Certificate]) -> None:
    later, a, b = roots
    parsed = parse_bundle(bundle_pem(roots))
    first_two = sorted([a, b], key=_sha)
    assert parsed == [*first_two, later]
    assert bundle_pem([b, later, a]) == bundle_pem([later, a, b]) == bundle_pem([a, b, later])


def test_bundle_is_concatenated_pem(roots: list[x509.Certificate]) -> None:
    data = bundle_pem(roots[:1])
    assert data.startswith(b"-----BEGIN CERTIFICATE-----\n")
    assert data.endswith(b"-----END CERTIFICATE-----\n")
    assert data.count(b"BEGIN CERTIFICATE") == 1


def test_empty_bundle_is_empty_bytes() -> None:
    assert bundle_pem([]) == b""


def test_round_trip(roots: list[x509.Certificate]) -> None:
    data = bundle_pem(roots)
    assert bundle_pem(parse_bundle(data)) == data


@pytest.mark.parametrize("data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_parse_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_bundle(data)
