"""The CLI's pure parts: the chain verdict on real certificates, durations, tables."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from meshless.commands.certificate import chain_verdict, inspect_identity
from meshless.commands.output import human_duration, table
from meshless.commands.views import describe_lines, describe_pod, policy_rows, resolve
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


def _policy(ns: str, name: str, created: str, **spec: object) -> dict[str, object]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": name, "creationTimestamp": created},
        "spec": spec,
    }


def _pod(name: str, labels: dict[str, str], ports: tuple[int, ...], sa: str) -> dict[str, object]:
    return {
        "metadata": {"namespace": "shop", "name": name, "labels": labels},
        "spec": {
            "serviceAccountName": sa,
            "containers": [{"name": "app", "ports": [{"containerPort": p} for p in ports]}],
        },
    }


def test_status_rows_and_pod_description_from_objects() -> None:
    web = _pod("web-1", {"app": "web"}, (8443, 9090), "web")
    policies = [
        _policy("mesh", "root", "2026-01-01T00:00:00Z", mode="STRICT"),
        _policy("shop", "ns", "2026-01-01T00:00:00Z", mode="PERMISSIVE"),
        _policy(
            "shop",
            "web-old",
            "2026-01-02T00:00:00Z",
            selector={"matchLabels": {"app": "web"}},
            portLevelMtls={"9090": {"mode": "DISABLE"}},
        ),
        _policy(
            "shop", "web-new", "2026-01-03T00:00:00Z", selector={"matchLabels": {"app": "web"}}
        ),
        _policy("shop", "broken", "2026-01-04T00:00:00Z", mode="STRICTT"),
    ]
    resolved = resolve(policies, [web, _pod("api-1", {"app": "api"}, (8080,), "api")], "mesh")
    rows = {r["name"]: r for r in policy_rows(resolved, {"shop"})}
    assert set(rows) == {"ns", "web-old", "web-new", "broken"}  # the root policy is elsewhere
    assert rows["web-old"]["winsOver"] == ["shop/web-new"]
    assert rows["web-new"]["ignoredInFavourOf"] == ["shop/web-old"]
    assert (
        rows["broken"]["invalid"]
        == "spec.mode 'STRICTT' is not one of STRICT, PERMISSIVE, DISABLE, UNSET"
    )
    assert (rows["ns"]["scope"], rows["web-old"]["scope"]) == ("Namespace", "Workload")
    assert rows["ns"]["strictPortsProven"] is None

    described = describe_pod(web, resolved, [], "cluster.local")
    # UNSET inherits the namespace's PERMISSIVE (not the root's STRICT): the narrowest wins
    assert (described["mode"], described["decidedBy"]) == ("PERMISSIVE", "shop/ns")
    assert [(p["port"], p["mode"], p["decidedBy"]) for p in described["ports"]] == [
        (8443, "PERMISSIVE", "shop/ns"),
        (9090, "DISABLE", "shop/web-old"),
    ]
    assert [a["policy"] for a in described["applied"]] == ["shop/web-old", "shop/ns", "mesh/root"]
    assert described["ignored"] == [{"policy": "shop/web-new", "inFavourOf": "shop/web-old"}]
    assert described["identity"]["name"] == "meshless-web"
    assert described["identity"]["exists"] is False
    assert described["identity"]["spiffeID"] == "spiffe://cluster.local/ns/shop/sa/web"
    assert described["invalidPolicies"][0]["policy"] == "shop/broken"
    text = describe_lines(described)
    assert "Invalid:" in text and "shop/broken (not applied: spec.mode" in text
