"""The signer's answer to a PodCertificateRequest (pure), one rule per test: what it reads
from each API shape (1.36's stub PKCS#10 request, 1.35's pkixPublicKey + proofOfPossession),
every Deny reason, lifetimes and refresh times within the API server's bounds, DNS names from
the stub request only and only those the name policy allows, and the status it writes."""

from __future__ import annotations

import base64
import copy
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshless.pki.ca import bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.names import DnsNamePolicy
from meshless.pki.svid import CLOCK_SKEW, sign_leaf
from meshless.podcert.answer import issued_status, refused_status
from meshless.podcert.decide import (
    KUBELET_KEY_TYPES,
    MIN_LIFETIME,
    REFRESH_MARGIN,
    Deny,
    Fail,
    Issue,
    PodView,
    SignerSettings,
    decide,
    kubelet_key_type,
)
from meshless.podcert.request import (
    SIGNER_NAME,
    RequestError,
    is_ours,
    parse_request,
    terminal_condition,
)
from tests.pcrs import kubelet_key, pcr_body

NOW = datetime(2026, 3, 1, 12, 0, 30, 123456, tzinfo=UTC)
ISSUER = (NOW - timedelta(days=1), NOW + timedelta(days=300))
NS, POD, UID, SA = "shop", "payments-0", "0d1f5a3e-pod", "payments"
SETTINGS = SignerSettings(trust_domain="cluster.local", max_ttl=timedelta(hours=24), jitter=0.1)
THE_POD = PodView(namespace=NS, name=POD, uid=UID, service_account=SA, node_name="node-1")
KEY = kubelet_key("ECDSAP256")


def body(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        namespace=NS, pod=POD, pod_uid=UID, service_account=SA, key=KEY, name="payments-0-x"
    )
    args.update(kw)
    return pcr_body(**args)


def answer(
    b: dict[str, Any] | None = None,
    pod: PodView | None = THE_POD,
    settings: SignerSettings = SETTINGS,
    jitter: float = 0.0,
    **kw: Any,
) -> Issue | Deny | Fail:
    return decide(
        parse_request(b or body()),
        pod,
        settings,
        issuer_validity=kw.pop("issuer", ISSUER),
        now=NOW,
        jitter=jitter,
        **kw,
    )


def issued(decision: Issue | Deny | Fail) -> Issue:
    assert isinstance(decision, Issue), decision
    return decision


# --- reading the request -------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ECDSAP256", "ECDSAP384", "ED25519", "RSA3072"])
@pytest.mark.parametrize("legacy", [False, True], ids=["stubPKCS10Request", "pkixPublicKey"])
def test_reads_the_key_from_either_api_shape(key_type: str, legacy: bool) -> None:
    key = kubelet_key(key_type)
    request = parse_request(body(key=key, legacy=legacy))
    assert request.key_error == ""
    assert request.public_key is not None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert request.public_key.public_bytes(*der) == key.public_key().public_bytes(*der)


def test_a_proof_of_possession_over_another_uid_is_denied() -> None:
    b = body(legacy=True)
    forged = body(legacy=True, pod_uid="another-uid")
    b["spec"]["proofOfPossession"] = forged["spec"]["proofOfPossession"]
    decision = answer(b)
    assert isinstance(decision, Deny) and decision.reason == "InvalidKey"
    assert "proofOfPossession" in decision.message


def test_a_stub_request_whose_signature_fails_is_denied() -> None:
    b = body()
    der = bytearray(base64.b64decode(b["spec"]["stubPKCS10Request"]))
    der[-1] ^= 0x01  # the signature's last byte
    b["spec"]["stubPKCS10Request"] = base64.b64encode(bytes(der)).decode()
    decision = answer(b)
    assert isinstance(decision, Deny) and decision.reason == "InvalidKey"


def test_a_request_without_any_key_field_names_the_fields() -> None:
    b = body()
    del b["spec"]["stubPKCS10Request"]
    with pytest.raises(RequestError, match="stubPKCS10Request"):
        parse_request(b)


def test_a_missing_max_expiration_is_the_api_default_of_a_day() -> None:
    assert parse_request(body(max_expiration_seconds=None)).max_expiration_seconds == 86400


def test_other_signers_are_recognised_and_never_answered() -> None:
    other = body(signer="example.com/other")
    assert not is_ours(other) and is_ours(body())
    with pytest.raises(ValueError, match="not our signer"):
        answer(other)


def test_terminal_condition_is_read_from_status() -> None:
    b = body()
    assert terminal_condition(b) == ""
    b["status"] = {"conditions": [{"type": "Denied", "status": "True"}]}
    assert terminal_condition(b) == "Denied"


# --- Deny rules, in order --------------------------------------------------------------------


def test_user_annotations_are_denied_naming_the_keys() -> None:
    decision = answer(body(user_annotations={"example.com/x": "y"}))
    assert decision == Deny("UnsupportedUserAnnotations", decision.message)  # type: ignore[union-attr]
    assert "example.com/x" in decision.message  # type: ignore[union-attr]


def test_pod_gone_is_denied() -> None:
    decision = answer(pod=None)
    assert isinstance(decision, Deny) and decision.reason == "PodNotFound"
    assert f"{NS}/{POD}" in decision.message


def test_pod_uid_mismatch_is_denied() -> None:
    other = PodView(namespace=NS, name=POD, uid="re-created", service_account=SA)
    decision = answer(pod=other)
    assert isinstance(decision, Deny) and decision.reason == "PodUIDMismatch"
    assert "re-created" in decision.message and UID in decision.message


def test_service_account_mismatch_is_denied() -> None:
    decision = answer(body(service_account="admin"))
    assert isinstance(decision, Deny) and decision.reason == "ServiceAccountMismatch"
    assert "'payments'" in decision.message and "'admin'" in decision.message


def test_node_mismatch_is_denied_when_the_node_is_known() -> None:
    decision = answer(body(node="node-2"))
    assert isinstance(decision, Deny) and decision.reason == "NodeMismatch"
    unknown_node = PodView(namespace=NS, name=POD, uid=UID, service_account=SA)
    assert isinstance(answer(body(node="node-2"), pod=unknown_node), Issue)


@pytest.mark.parametrize("key_type", ["ECDSAP521", "RSA2048"])
def test_unsupported_key_types_are_denied_with_the_types_that_work(key_type: str) -> None:
    decision = answer(body(key=kubelet_key(key_type)))
    assert isinstance(decision, Deny) and decision.reason == "UnsupportedKeyType"
    assert key_type in decision.message and "ECDSAP256" in decision.message


@pytest.mark.parametrize("key_type", ["ECDSAP256", "ECDSAP384", "ED25519", "RSA3072", "RSA4096"])
def test_every_kubelet_key_type_we_support_is_issued(key_type: str) -> None:
    issued(answer(body(key=kubelet_key(key_type))))


def test_policy_algorithms_map_to_kubelet_key_types() -> None:
    assert kubelet_key_type(KeyAlgorithm.Ed25519) == "ED25519"
    assert kubelet_key_type(KeyAlgorithm.RSA2048) is None
    assert set(KUBELET_KEY_TYPES) == set(KeyAlgorithm) - {KeyAlgorithm.RSA2048}


# --- what is issued ----------------------------------------------------------------------------


def test_spiffe_id_comes_from_namespace_and_service_account() -> None:
    assert issued(answer()).spiffe_id == "spiffe://cluster.local/ns/shop/sa/payments"


def test_no_dns_names_without_a_stub_request_asking_for_them() -> None:
    assert issued(answer()).dns_names == ()
    assert issued(answer(body(legacy=True))).dns_names == ()


def test_only_dns_names_the_name_policy_allows_are_signed() -> None:
    names = ("payments.shop.svc", "payments.other.svc", "*.shop.svc", "api.example.com")
    decision = issued(answer(body(dns_names=names)))
    assert decision.dns_names == ("payments.shop.svc",)
    assert decision.dropped_dns_names == names[1:]
    widened = SignerSettings(names=DnsNamePolicy(allowed=("*.{namespace}.example.com",)))
    assert (
        "api.example.com" not in issued(answer(body(dns_names=names), settings=widened)).dns_names
    )
    assert issued(
        answer(body(dns_names=("api.shop.example.com",)), settings=widened)
    ).dns_names == ("api.shop.example.com",)


def test_lifetime_is_the_request_capped_by_the_setting() -> None:
    capped = issued(answer(body(max_expiration_seconds=7 * 86400)))
    assert capped.not_after - capped.not_before == timedelta(hours=24)
    shorter = issued(answer(body(max_expiration_seconds=2 * 3600)))
    assert shorter.not_after - shorter.not_before == timedelta(hours=2)


def test_lifetime_never_below_the_api_minimum_of_one_hour() -> None:
    tiny_cap = SignerSettings(max_ttl=timedelta(minutes=10))
    decision = issued(answer(body(max_expiration_seconds=3600), settings=tiny_cap))
    assert decision.not_after - decision.not_before == MIN_LIFETIME


def test_not_before_is_back_dated_a_little_in_whole_seconds() -> None:
    decision = issued(answer())
    assert decision.not_before == (NOW - CLOCK_SKEW).replace(microsecond=0)
    assert NOW - decision.not_before < timedelta(minutes=5)  # the API's window


def test_clipped_at_the_issuer_and_failed_below_an_hour() -> None:
    soon = (ISSUER[0], NOW + timedelta(hours=3))
    clipped = issued(answer(issuer=soon))
    assert clipped.not_after == soon[1].replace(microsecond=0)
    expiring = answer(issuer=(ISSUER[0], NOW + timedelta(minutes=30)))
    assert isinstance(expiring, Fail) and expiring.reason == "IssuerExpiring"


def test_refresh_at_two_thirds_minus_jitter() -> None:
    plain = issued(answer(jitter=0.0))
    assert plain.begin_refresh_at == plain.not_before + timedelta(hours=16)
    jittered = issued(answer(jitter=0.99))
    assert jittered.begin_refresh_at < plain.begin_refresh_at
    assert jittered.begin_refresh_at >= plain.not_before + timedelta(hours=16) - timedelta(
        hours=2.4
    )


def test_refresh_after_setting_for_tests_is_bounded_by_the_api() -> None:
    quick = SignerSettings(refresh_after=timedelta(minutes=12))
    decision = issued(answer(body(max_expiration_seconds=3600), settings=quick))
    assert decision.begin_refresh_at == decision.not_before + timedelta(minutes=12)
    too_quick = SignerSettings(refresh_after=timedelta(minutes=1))
    decision = issued(answer(settings=too_quick))
    assert decision.begin_refresh_at == decision.not_before + REFRESH_MARGIN


def test_refresh_by_caps_refresh_during_a_rotation() -> None:
    by = NOW + timedelta(minutes=30)
    assert issued(answer(refresh_by=by)).begin_refresh_at == by.replace(microsecond=0)


@pytest.mark.parametrize("seconds", [3600, 3601, 5400, 86400])
@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
def test_refresh_always_within_the_api_bounds(seconds: int, jitter: float) -> None:
    d = issued(answer(body(max_expiration_seconds=seconds), jitter=jitter))
    assert d.not_before + REFRESH_MARGIN <= d.begin_refresh_at <= d.not_after - REFRESH_MARGIN
    assert d.not_after - d.not_before <= timedelta(seconds=seconds)


# --- the status written ------------------------------------------------------------------------


def test_issued_status_matches_the_leaf_and_chains_to_the_root(tmp_path: Path) -> None:
    ca = bootstrap_self_signed("cluster.local", NOW - timedelta(days=1))[0]
    decision = answer(issuer=ca.validity)
    issue = issued(decision)
    leaf = sign_leaf(
        ca, issue.public_key, issue.spiffe_id, issue.dns_names, issue.not_before, issue.not_after
    )
    status = issued_status(issue, leaf, ca.intermediates_pem, NOW)
    assert [c["type"] for c in status["conditions"]] == ["Issued"]
    assert status["conditions"][0]["status"] == "True"
    chain = x509.load_pem_x509_certificates(status["certificateChain"].encode())
    assert chain[0] == leaf and len(chain) == 1 + len(ca.intermediates)
    assert status["notBefore"] == leaf.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["notAfter"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [issue.spiffe_id]
    (tmp_path / "roots.pem").write_bytes(b"".join(pem(r) for r in ca.roots))
    (tmp_path / "chain.pem").write_text(status["certificateChain"])
    verified = subprocess.run(
        [
            "openssl",
            "verify",
            "-attime",
            str(int(NOW.timestamp())),
            "-CAfile",
            str(tmp_path / "roots.pem"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "chain.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_refused_status_has_only_the_condition() -> None:
    status = refused_status(Deny("PodNotFound", "gone"), NOW)
    assert status == {
        "conditions": [
            {
                "type": "Denied",
                "status": "True",
                "reason": "PodNotFound",
                "message": "gone",
                "lastTransitionTime": "2026-03-01T12:00:30Z",
            }
        ]
    }
    assert refused_status(Fail("IssuerExpiring", "x"), NOW)["conditions"][0]["type"] == "Failed"


def test_the_request_body_is_not_modified() -> None:
    b = body()
    before = copy.deepcopy(b)
    answer(b)
    assert b == before and b["spec"]["signerName"] == SIGNER_NAME
