"""The reissue chain: a table of broken Secrets, each with the exact reason code it must give."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.reissue import (
    CHECKS,
    DesiredIdentity,
    ObservedSecret,
    reissue_reason,
    renewal_time_for,
    summarize,
)
from meshless.pki.svid import IssuedSvid, SvidRequest, issue_svid, parse_certificate_chain

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TD = "cluster.local"
SPIFFE = f"spiffe://{TD}/ns/shop/sa/payments"
TTL = timedelta(hours=24)
DESIRED = DesiredIdentity(
    request=SvidRequest(SPIFFE, ("payments.shop.svc",), TTL, KeyAlgorithm.ECDSAP256),
    renew_before=None,
    jitter_fraction=0.1,
)


def secret_data(svid: IssuedSvid, ca: CertificateAuthority) -> dict[str, bytes]:
    return {
        "tls.crt": svid.chain_pem,
        "tls.key": svid.private_key_pem,
        "ca.crt": bundle_pem(ca.roots),
    }


@dataclass(frozen=True)
class World:
    ca: CertificateAuthority
    retired: CertificateAuthority  # another bootstrap, no longer active
    svid: IssuedSvid  # healthy, issued at NOW by ca for DESIRED
    other: IssuedSvid  # same spec, another key

    @property
    def healthy(self) -> dict[str, bytes]:
        return secret_data(self.svid, self.ca)


@pytest.fixture(scope="module")
def world() -> World:
    ca, _ = bootstrap_self_signed(TD, NOW)
    retired, _ = bootstrap_self_signed(TD, NOW)
    return World(
        ca=ca,
        retired=retired,
        svid=issue_svid(ca, DESIRED.request, NOW),
        other=issue_svid(ca, DESIRED.request, NOW),
    )


Case = tuple[ObservedSecret, DesiredIdentity, datetime]
Scenario = Callable[[World], Case]


def data(fn: Callable[[World], dict[str, bytes]]) -> Scenario:
    return lambda w: (ObservedSecret(fn(w)), DESIRED, NOW)


def desired(**changes: object) -> Scenario:
    req = replace(DESIRED.request, **changes)  # type: ignore[arg-type]
    return lambda w: (ObservedSecret(w.healthy), replace(DESIRED, request=req), NOW)


def at(fn: Callable[[World], datetime]) -> Scenario:
    return lambda w: (ObservedSecret(w.healthy), DESIRED, fn(w))


def _without(key: str) -> Scenario:
    return data(lambda w: {k: v for k, v in w.healthy.items() if k != key})


def _with(key: str, value: bytes) -> Scenario:
    return data(lambda w: {**w.healthy, key: value})


def _retired_issuer(w: World) -> dict[str, bytes]:
    old = issue_svid(w.retired, DESIRED.request, NOW)
    return {**secret_data(old, w.ca)}


def _chain_without_intermediate(w: World) -> dict[str, bytes]:
    leaf_only = parse_certificate_chain(w.svid.chain_pem)[0]
    return {**w.healthy, "tls.crt": leaf_only.public_bytes(serialization.Encoding.PEM)}


def _signed_by_impostor(w: World) -> dict[str, bytes]:
    # Same issuer name and SKI as the active CA, but signed with another key.
    impostor = CertificateAuthority(
        issuer_cert=w.ca.issuer_cert,
        issuer_key=w.retired.issuer_key,
        intermediates=w.ca.intermediates,
        roots=w.ca.roots,
    )
    return secret_data(issue_svid(impostor, DESIRED.request, NOW), w.ca)


def _renewal(w: World) -> datetime:
    return renewal_time_for(w.svid.certificate, DESIRED)


BAD_CERT = b"-----BEGIN CERTIFICATE-----\nTUlJ\n-----END CERTIFICATE-----\n"
BAD_KEY = b"-----BEGIN PRIVATE KEY-----\nTUlJ\n-----END PRIVATE KEY-----\n"

CASES: list[tuple[str, Scenario, str | None]] = [
    ("healthy", data(lambda w: w.healthy), None),
    ("secret-missing", lambda w: (ObservedSecret(None), DESIRED, NOW), "SecretMissing"),
    ("no-tls.crt", _without("tls.crt"), "MissingData"),
    ("no-tls.key", _without("tls.key"), "MissingData"),
    ("no-ca.crt", _without("ca.crt"), "MissingData"),
    ("empty-tls.crt", _with("tls.crt", b""), "MissingData"),
    ("empty-data", data(lambda w: {}), "MissingData"),
    ("garbage-cert", _with("tls.crt", b"garbage"), "InvalidCertificate"),
    ("broken-cert-pem", _with("tls.crt", BAD_CERT), "InvalidCertificate"),
    ("garbage-key", _with("tls.key", b"garbage"), "InvalidKey"),
    ("broken-key-pem", _with("tls.key", BAD_KEY), "InvalidKey"),
    (
        "key-mismatch",
        data(lambda w: {**w.healthy, "tls.key": w.other.private_key_pem}),
        "KeyMismatch",
    ),
    ("wrong-spiffe-id", desired(spiffe_id=f"spiffe://{TD}/ns/shop/sa/other"), "SpecChanged"),
    (
        "wrong-trust-domain",
        desired(spiffe_id="spiffe://other.td/ns/shop/sa/payments"),
        "SpecChanged",
    ),
    ("wrong-dns", desired(dns_names=("payments.shop.svc", "extra.shop.svc")), "SpecChanged"),
    ("no-dns-wanted", desired(dns_names=()), "SpecChanged"),
    ("wrong-algorithm", desired(algorithm=KeyAlgorithm.ECDSAP384), "SpecChanged"),
    ("longer-ttl", desired(ttl=TTL * 2), "SpecChanged"),
    ("shorter-ttl", desired(ttl=TTL - timedelta(minutes=2)), "SpecChanged"),
    ("ttl-within-tolerance", desired(ttl=TTL + timedelta(seconds=30)), None),
    ("retired-issuer", data(_retired_issuer), "IssuerRetired"),
    ("chain-missing-intermediate", data(_chain_without_intermediate), "IssuerRetired"),
    ("signed-by-impostor", data(_signed_by_impostor), "IssuerRetired"),
    (
        "stale-bundle",
        data(lambda w: {**w.healthy, "ca.crt": bundle_pem(w.retired.roots)}),
        "BundleStale",
    ),
    (
        "bundle-missing-new-root",
        data(lambda w: {**w.healthy, "ca.crt": bundle_pem([*w.ca.roots, *w.retired.roots])}),
        "BundleStale",
    ),
    ("expired", at(lambda w: w.svid.certificate.not_valid_after_utc), "Expired"),
    (
        "long-expired",
        at(lambda w: w.svid.certificate.not_valid_after_utc + timedelta(days=9)),
        "Expired",
    ),
    ("renewal-due", at(_renewal), "RenewalDue"),
    ("just-before-renewal", at(lambda w: _renewal(w) - timedelta(seconds=1)), None),
]


@pytest.mark.parametrize(("scenario", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reissue_reason(world: World, scenario: Scenario, code: str | None) -> None:
    observed, want, now = scenario(world)
    reason = reissue_reason(observed, want, world.ca, now)
    if code is None:
        assert reason is None
    else:
        assert reason is not None
        assert reason.code == code
        assert reason.message
        assert "PRIVATE KEY" not in reason.message
        assert "PRIVATE KEY" not in repr(reason)


def test_spec_message_says_what_changed(world: World) -> None:
    observed, want, now = desired(dns_names=(), algorithm=KeyAlgorithm.Ed25519)(world)
    reason = reissue_reason(observed, want, world.ca, now)
    assert reason is not None
    assert "DNS SANs" in reason.message
    assert "key algorithm" in reason.message
    assert "URI" not in reason.message
    assert "lifetime" not in reason.message


def test_renewal_time_is_within_jitter_window(world: World) -> None:
    cert = world.svid.certificate
    two_thirds = (
        cert.not_valid_before_utc + (cert.not_valid_after_utc - cert.not_valid_before_utc) * 2 / 3
    )
    due = _renewal(world)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert (
        two_thirds - lifetime * DESIRED.jitter_fraction - timedelta(seconds=1) <= due <= two_thirds
    )


def test_clipped_leaf_is_not_a_spec_change(world: World) -> None:
    long = replace(DESIRED.request, ttl=timedelta(days=400))
    svid = issue_svid(world.ca, long, NOW)
    assert svid.certificate.not_valid_after_utc == world.ca.issuer_cert.not_valid_after_utc
    observed = ObservedSecret(secret_data(svid, world.ca))
    assert reissue_reason(observed, replace(DESIRED, request=long), world.ca, NOW) is None
    # But a ttl shorter than what was issued is a change.
    reason = reissue_reason(observed, DESIRED, world.ca, NOW)
    assert reason is not None and reason.code == "SpecChanged"


def test_order_earlier_checks_win(world: World) -> None:
    # Expired, stale bundle, wrong spec and retired issuer at once: the spec is reported.
    old = issue_svid(world.retired, DESIRED.request, NOW)
    observed = ObservedSecret({**secret_data(old, world.retired)})
    want = replace(DESIRED, request=replace(DESIRED.request, dns_names=()))
    reason = reissue_reason(observed, want, world.ca, NOW + timedelta(days=2))
    assert reason is not None and reason.code == "SpecChanged"


def test_checks_are_in_the_documented_order() -> None:
    assert [c.__name__ for c in CHECKS] == [
        "secret_missing",
        "data_missing",
        "unparseable",
        "key_mismatch",
        "spec_mismatch",
        "issuer_retired",
        "bundle_stale",
        "expired",
        "renewal_due",
    ]


def test_summarize(world: World) -> None:
    cert = world.svid.certificate
    summary = summarize(cert, DESIRED)
    assert summary.spiffe_id == SPIFFE
    assert summary.serial_number == format(cert.serial_number, "x")
    assert summary.serial_number == summary.serial_number.lower()
    assert ":" not in summary.serial_number
    assert int(summary.serial_number, 16) == cert.serial_number
    assert summary.not_before == NOW - timedelta(minutes=1)
    assert summary.not_after == NOW + TTL
    assert summary.renewal_time == _renewal(world)
    assert summary.dns_names == ("payments.shop.svc",)
    # The same certificate gives the same renewal time after a "restart".
    assert summarize(cert, DESIRED) == summary
