"""A WorkloadIdentity's spec with the operator's defaults, and SpecErrors that name the field."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from meshless.api import Reason
from meshless.identity.spec import (
    MIN_RENEWAL_INTERVAL,
    DnsNameNotAllowed,
    IdentitySpec,
    SpecError,
    default_secret_name,
    parse_identity,
)
from meshless.pki.keys import KeyAlgorithm
from meshless.settings import Settings

SETTINGS = Settings()


def parse(
    spec: dict[str, Any], settings: Settings = SETTINGS, name: str = "payments"
) -> IdentitySpec:
    return parse_identity("shop", name, spec, settings)


def test_defaults_from_a_minimal_spec() -> None:
    ident = parse({"serviceAccountName": "payments-sa"})
    assert ident.namespace == "shop"
    assert ident.name == "payments"
    assert ident.secret_name == "payments-mtls"
    request = ident.desired.request
    assert request.spiffe_id == "spiffe://cluster.local/ns/shop/sa/payments-sa"
    assert request.ttl == timedelta(hours=24)
    assert request.algorithm is KeyAlgorithm.ECDSAP256
    assert request.dns_names == ()
    assert ident.desired.renew_before == timedelta(hours=8)  # 24h * 1/3
    assert ident.desired.jitter_fraction == SETTINGS.identity.jitter
    assert dict(ident.secret_labels) == {}
    assert dict(ident.secret_annotations) == {}


def test_defaults_follow_the_settings() -> None:
    settings = replace(
        SETTINGS,
        identity=replace(
            SETTINGS.identity,
            trust_domain="prod.example.org",
            default_ttl=timedelta(hours=2),
            renewal_fraction=0.25,
            jitter=0.05,
        ),
    )
    ident = parse({"serviceAccountName": "api"}, settings)
    assert ident.desired.request.spiffe_id == "spiffe://prod.example.org/ns/shop/sa/api"
    assert ident.desired.request.ttl == timedelta(hours=2)
    assert ident.desired.renew_before == timedelta(minutes=30)
    assert ident.desired.jitter_fraction == 0.05


def test_default_renew_before_is_whole_seconds() -> None:
    ident = parse({"serviceAccountName": "a", "ttl": "10m1s"})  # 601 s / 3 = 200.33 s
    assert ident.desired.renew_before == timedelta(seconds=200)


def test_explicit_fields_are_used() -> None:
    ident = parse(
        {
            "serviceAccountName": "payments",
            "secretName": "custom-tls",
            "dnsNames": [
                "payments.shop.svc",
                "payments.shop.svc.cluster.local",
                "payments.shop.svc",
                "a.shop.svc",
            ],
            "ttl": "1h30m",
            "renewBefore": "20m",
            "privateKey": {"algorithm": "Ed25519"},
            "secretTemplate": {
                "labels": {"team": "payments"},
                "annotations": {"note": "hello"},
            },
        }
    )
    assert ident.secret_name == "custom-tls"
    assert ident.desired.request.dns_names == (
        "a.shop.svc",
        "payments.shop.svc",
        "payments.shop.svc.cluster.local",
    )
    assert ident.desired.request.ttl == timedelta(hours=1, minutes=30)
    assert ident.desired.renew_before == timedelta(minutes=20)
    assert ident.desired.request.algorithm is KeyAlgorithm.Ed25519
    assert dict(ident.secret_labels) == {"team": "payments"}
    assert dict(ident.secret_annotations) == {"note": "hello"}


@pytest.mark.parametrize("algorithm", [a.value for a in KeyAlgorithm])
def test_every_supported_algorithm_is_accepted(algorithm: str) -> None:
    ident = parse({"serviceAccountName": "a", "privateKey": {"algorithm": algorithm}})
    assert ident.desired.request.algorithm == KeyAlgorithm(algorithm)


@pytest.mark.parametrize(
    "spec",
    [
        {"serviceAccountName": "a", "privateKey": {}},
        {"serviceAccountName": "a", "privateKey": None},
        {"serviceAccountName": "a", "ttl": "", "renewBefore": None, "secretName": ""},
        {"serviceAccountName": "a", "dnsNames": None, "secretTemplate": None},
    ],
)
def test_empty_optional_fields_mean_defaults(spec: dict[str, Any]) -> None:
    ident = parse(spec)
    assert ident.secret_name == "payments-mtls"
    assert ident.desired.request.algorithm is KeyAlgorithm.ECDSAP256
    assert ident.desired.request.ttl == SETTINGS.identity.default_ttl
    assert ident.desired.request.dns_names == ()


def test_ttl_at_the_floor_is_accepted() -> None:
    ident = parse({"serviceAccountName": "a", "ttl": "10m"})
    assert ident.desired.request.ttl == timedelta(minutes=10)


def test_the_returned_template_is_a_copy() -> None:
    labels = {"team": "x"}
    ident = parse({"serviceAccountName": "a", "secretTemplate": {"labels": labels}})
    labels["team"] = "changed"
    assert dict(ident.secret_labels) == {"team": "x"}


def test_default_secret_name() -> None:
    assert default_secret_name("web") == "web-mtls"


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ({}, ["spec.serviceAccountName", "required"]),
        ({"serviceAccountName": ""}, ["spec.serviceAccountName"]),
        ({"serviceAccountName": "a", "ttl": "5m"}, ["spec.ttl", "5m", "floor", "10m"]),
        ({"serviceAccountName": "a", "ttl": "1h", "renewBefore": "1h"}, ["spec.renewBefore", "1h"]),
        ({"serviceAccountName": "a", "ttl": "1h", "renewBefore": "2h"}, ["spec.renewBefore", "2h"]),
        (
            {"serviceAccountName": "a", "ttl": "10m", "renewBefore": "9m45s"},
            ["spec.renewBefore", "9m45s", "30s", "10m"],
        ),
        (
            {"serviceAccountName": "a", "privateKey": {"algorithm": "DSA1024"}},
            ["spec.privateKey.algorithm", "'DSA1024'"],
        ),
        (
            {"serviceAccountName": "a", "privateKey": {"algorithm": "ecdsap256"}},
            ["spec.privateKey.algorithm", "'ecdsap256'"],
        ),
        ({"serviceAccountName": "a", "ttl": "a day"}, ["spec.ttl", "'a day'"]),
        ({"serviceAccountName": "a", "ttl": "1h", "renewBefore": "soon"}, ["spec.renewBefore"]),
    ],
)
def test_spec_errors_name_the_field(spec: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse(spec)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "\n" not in message


def test_renew_before_leaving_exactly_the_minimum_interval_is_accepted() -> None:
    ident = parse({"serviceAccountName": "a", "ttl": "10m", "renewBefore": "9m30s"})
    assert ident.desired.renew_before == timedelta(minutes=9, seconds=30)
    assert ident.desired.request.ttl - ident.desired.renew_before == MIN_RENEWAL_INTERVAL


def test_a_default_renew_before_can_also_leave_too_little_time() -> None:
    settings = replace(
        SETTINGS,
        identity=replace(SETTINGS.identity, ttl_floor=timedelta(minutes=1), renewal_fraction=0.6),
    )
    with pytest.raises(SpecError, match=r"spec\.renewBefore 36s leaves less than 30s"):
        parse({"serviceAccountName": "a", "ttl": "1m"}, settings)


def test_the_floor_is_a_setting() -> None:
    settings = replace(
        SETTINGS, identity=replace(SETTINGS.identity, ttl_floor=timedelta(minutes=2))
    )
    assert parse({"serviceAccountName": "a", "ttl": "2m"}, settings).desired.request.ttl == (
        timedelta(minutes=2)
    )
    with pytest.raises(SpecError, match=r"spec\.ttl 1m .*floor 2m"):
        parse({"serviceAccountName": "a", "ttl": "1m"}, settings)


def test_an_over_long_default_secret_name_asks_for_spec_secret_name() -> None:
    name = "x" * 249  # 249 + len("-mtls") = 254 > 253
    with pytest.raises(SpecError) as info:
        parse({"serviceAccountName": "a"}, name=name)
    message = str(info.value)
    assert "spec.secretName" in message
    assert "253" in message
    assert len(message) < 200  # the long name is shortened in the message


def test_the_longest_default_secret_name_that_fits() -> None:
    name = "x" * 248
    ident = parse({"serviceAccountName": "a"}, name=name)
    assert len(ident.secret_name) == 253


def test_an_explicit_secret_name_avoids_the_length_problem() -> None:
    ident = parse({"serviceAccountName": "a", "secretName": "short"}, name="x" * 253)
    assert ident.secret_name == "short"


# --- the name policy (pki/names.py), checked before anything is signed ---------------------


@pytest.mark.parametrize(
    "name",
    [
        "payments.other.svc",  # another namespace's Service
        "payments.other.svc.cluster.local",
        "kubernetes.default.svc",
        "meshless-webhook.meshless-system.svc",
        "example.com",
        "*.shop.svc",  # a wildcard, even in its own namespace
        "a.b.shop.svc",  # more than one label
    ],
)
def test_a_name_outside_the_policy_is_refused_with_its_own_reason(name: str) -> None:
    with pytest.raises(DnsNameNotAllowed) as info:
        parse({"serviceAccountName": "a", "dnsNames": ["api.shop.svc", name]})
    assert info.value.reason == Reason.DNS_NAME_NOT_ALLOWED
    message = str(info.value)
    assert message.startswith("spec.dnsNames: ")
    assert repr(name) in message
    assert "'api.shop.svc'" not in message  # only the refused names are named
    assert "\n" not in message


def test_an_invalid_spec_keeps_the_invalid_spec_reason() -> None:
    with pytest.raises(SpecError) as info:
        parse({"serviceAccountName": "a", "ttl": "5m"})
    assert info.value.reason == Reason.INVALID_SPEC
    assert not isinstance(info.value, DnsNameNotAllowed)


def test_every_refused_name_is_named_and_the_message_stays_bounded() -> None:
    names = [f"n{i}.other.svc" for i in range(10)]
    with pytest.raises(DnsNameNotAllowed) as info:
        parse({"serviceAccountName": "a", "dnsNames": names})
    message = str(info.value)
    assert all(repr(n) in message for n in names)
    assert message.count("rule:") == 3  # the rule spelled out for the first three
    assert len(message) < 2000


def test_the_namespaces_own_service_names_are_issued() -> None:
    names = ["api.shop.svc", "api.shop.svc.cluster.local"]
    ident = parse({"serviceAccountName": "a", "dnsNames": names})
    assert ident.desired.request.dns_names == tuple(names)


def test_the_administrators_patterns_widen_the_policy() -> None:
    spec = {"serviceAccountName": "a", "dnsNames": ["www.shop.example.com"]}
    with pytest.raises(DnsNameNotAllowed):
        parse(spec)
    widened = replace(
        SETTINGS, names=replace(SETTINGS.names, allowed_dns_names=("*.{namespace}.example.com",))
    )
    assert parse(spec, widened).desired.request.dns_names == ("www.shop.example.com",)
    with pytest.raises(DnsNameNotAllowed):  # the placeholder is the identity's own namespace
        parse({"serviceAccountName": "a", "dnsNames": ["www.other.example.com"]}, widened)


def test_the_cluster_domain_is_a_setting() -> None:
    spec = {"serviceAccountName": "a", "dnsNames": ["api.shop.svc.corp.example"]}
    with pytest.raises(DnsNameNotAllowed):
        parse(spec)
    assert parse(
        spec, replace(SETTINGS, names=replace(SETTINGS.names, cluster_domain="corp.example"))
    )


@pytest.mark.parametrize(
    ("name", "spec", "refused"),
    [
        ("mine", {"serviceAccountName": "atk", "secretName": "meshless-victim-mtls"}, True),
        ("meshless-victim", {"serviceAccountName": "atk"}, True),  # the default name
        ("meshless-atk", {"serviceAccountName": "atk"}, False),  # its own reserved Secret
        ("mine", {"serviceAccountName": "atk", "secretName": "meshless-atk-mtls"}, False),
        ("mine", {"serviceAccountName": "atk", "secretName": "victim-mtls"}, False),
    ],
)
def test_a_secret_name_reserved_for_another_service_account_is_refused(
    name: str, spec: dict[str, Any], refused: bool
) -> None:
    """A provisioned identity's Secret, meshless-<sa>-mtls, is <sa>'s: an identity of another
    ServiceAccount naming it first could hold it before the operator provisions <sa>'s."""
    if not refused:
        assert parse(spec, name=name).secret_name
        return
    with pytest.raises(SpecError) as info:
        parse(spec, name=name)
    assert info.value.reason == Reason.INVALID_SPEC
    assert "spec.secretName 'meshless-victim-mtls'" in str(info.value)
    assert "'meshless-atk-mtls'" in str(info.value)


def test_the_operators_own_namespace_keeps_its_prober_identity() -> None:
    """The prober's identity, meshless-prober in the operator's namespace (no tenant writes
    there), keeps its Secret meshless-prober-mtls."""
    spec = {"serviceAccountName": "meshless"}
    parsed = parse_identity(SETTINGS.runtime.namespace, "meshless-prober", spec, SETTINGS)
    assert parsed.secret_name == "meshless-prober-mtls"
    with pytest.raises(SpecError):
        parse_identity("shop", "meshless-prober", spec, SETTINGS)
