"""The CLI's pure parts: the chain verdict on real certificates, durations, tables."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from meshless.commands.certificate import chain_verdict, inspect_identity
from meshless.commands.output import human_duration, table
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.svid import IssuedSvid, SvidRequest, issue_svid, parse_certificate_chain

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
SPIFFE = "spiffe://cluster.local/ns/shop/sa/payments"


def _issued(ttl: timedelta = timedelta(hours=1)) -> tuple[CertificateAuthority, IssuedSvid]:
    ca, _ = bootstrap_self_signed("cluster.local", NOW - timedelta(days=1))
    svid = issue_svid(ca, SvidRequest(SPIFFE, ("a.shop.svc",), ttl, KeyAlgorithm.ECDSAP256), NOW)
    return ca, svid


def test_chain_verdicts_on_real_certificates() -> None:
    ca, svid = _issued()
    rogue, _ = _issued()
    chain = parse_certificate_chain(svid.chain_pem)
    ok = chain_verdict(chain, ca.roots, NOW)
    assert ok.ok and ok.detail == "chains to root CN=meshless root CA,O=meshless in ca.crt"
    wrong = chain_verdict(chain, rogue.roots, NOW)
    assert not wrong.ok and wrong.detail.startswith("no root in ca.crt signed")
    late = chain_verdict(chain, ca.roots, NOW + timedelta(hours=2))
    assert not late.ok and late.detail.startswith("leaf expired at 2026-11-29T13:00:00Z")
    assert not chain_verdict(chain[:1], ca.roots, NOW).ok  # the intermediate is missing


def test_inspect_report_from_secret_bytes() -> None:
    ca, svid = _issued()
    identity = {
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {"serviceAccountName": "payments"},
        "status": {
            "serialNumber": format(svid.certificate.serial_number, "x"),
            "renewalTime": "2026-11-29T12:40:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
        },
    }
    data = {
        "tls.crt": svid.chain_pem,
        "tls.key": svid.private_key_pem,
        "ca.crt": bundle_pem(ca.roots),
    }
    secret = {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    report = inspect_identity(identity, secret, NOW)
    cert = report["certificate"]
    assert cert["uriSANs"] == [SPIFFE] and cert["dnsNames"] == ["a.shop.svc"]
    assert cert["timeLeft"] == "1h" and report["renewsIn"] == "40m"
    assert cert["chain"]["verdict"] == "VALID" and report["statusMatchesSecret"]
    assert report["secret"] == "payments-mtls"
    empty_key = {"data": {**secret["data"], "tls.key": ""}}
    assert inspect_identity(identity, empty_key, NOW)["problem"] == "the Secret lacks tls.key"
    assert inspect_identity(identity, None, NOW)["certificate"] is None


def test_durations_and_tables() -> None:
    assert human_duration(timedelta(hours=23, minutes=59, seconds=30)) == "23h59m"
    assert human_duration(timedelta(days=6, minutes=5)) == "6d"
    assert human_duration(timedelta(seconds=-300)) == "-5m"
    assert human_duration(timedelta(0)) == "0s"
    assert table(("A", "BB"), [["x", None], ["long", 3]]).splitlines() == [
        "A      BB",
        "x      -",
        "long   3",
    ]
