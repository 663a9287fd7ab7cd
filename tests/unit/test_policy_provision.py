"""Which identities policies provision, and which identity serves a ServiceAccount."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from meshless.api import PROVISIONED_LABEL, Mode
from meshless.policy.provision import (
    IdentityRecord,
    identity_for,
    identity_record,
    plan_identities,
    provisioned_identity,
    provisioned_name,
    unusable_identities,
)
from meshless.policy.resolve import PolicySet
from meshless.settings import Settings
from tests.policyfixtures import ROOT_NS, pod, policy

NS = "shop"


def _resolved(policies, pods):  # type: ignore[no-untyped-def]
    ps = PolicySet.build(policies, ROOT_NS)
    return [(p, r) for p in pods if (r := ps.resolve(p)) is not None]


def test_strict_and_permissive_accounts_get_identities_disable_does_not() -> None:
    policies = [
        policy(NS, "ns-strict", Mode.STRICT, ttl="12h", algorithm="ECDSAP384"),
        policy(NS, "off", Mode.DISABLE, labels={"app": "legacy"}),
    ]
    pods = [
        pod(NS, "a-1", {"app": "payments"}, service_account="payments"),
        pod(NS, "a-2", {"app": "payments"}, service_account="payments"),
        pod(NS, "b-1", {"app": "legacy"}, service_account="legacy"),
    ]
    plan = plan_identities(NS, _resolved(policies, pods), {p.ref: p for p in policies}, [])
    assert [m["metadata"]["name"] for m in plan.create_or_update] == ["meshless-payments"]
    manifest = plan.create_or_update[0]
    assert manifest["spec"] == {
        "serviceAccountName": "payments",
        "ttl": "12h",
        "privateKey": {"algorithm": "ECDSAP384"},
    }
    assert manifest["metadata"]["labels"][PROVISIONED_LABEL] == "true"
    assert plan.delete == ()


def test_a_disable_pod_with_a_strict_port_override_needs_an_identity() -> None:
    policies = [policy(NS, "w", Mode.DISABLE, labels={"app": "x"}, ports={9443: Mode.STRICT})]
    pods = [pod(NS, "x-1", {"app": "x"}, ports=(80,), service_account="x")]
    plan = plan_identities(NS, _resolved(policies, pods), {p.ref: p for p in policies}, [])
    assert [m["spec"]["serviceAccountName"] for m in plan.create_or_update] == ["x"]


def test_a_user_identity_is_used_and_the_provisioned_one_is_deleted() -> None:
    policies = [policy(NS, "ns-strict", Mode.STRICT)]
    pods = [pod(NS, "a-1", service_account="payments")]
    records = [
        IdentityRecord(NS, "mine", "payments", "mine-mtls", provisioned=False),
        IdentityRecord(NS, "meshless-payments", "payments", "x", provisioned=True),
    ]
    plan = plan_identities(NS, _resolved(policies, pods), {p.ref: p for p in policies}, records)
    assert plan.create_or_update == ()
    assert plan.delete == ("meshless-payments",)
    ref = identity_for(NS, "payments", records, "cluster.local")
    assert (ref.name, ref.secret_name, ref.provisioned) == ("mine", "mine-mtls", False)
    assert ref.spiffe_id == "spiffe://cluster.local/ns/shop/sa/payments"


def test_provisioned_identities_go_when_no_policy_needs_them() -> None:
    records = [IdentityRecord(NS, "meshless-old", "old", "meshless-old-mtls", provisioned=True)]
    plan = plan_identities(NS, [], {}, records)
    assert plan.delete == ("meshless-old",)


def test_identity_for_an_account_without_one_names_what_will_be_provisioned() -> None:
    ref = identity_for(NS, "api", [], "example.org")
    assert (ref.name, ref.secret_name, ref.provisioned) == (
        "meshless-api",
        "meshless-api-mtls",
        True,
    )


def test_long_account_names_stay_within_the_name_limit() -> None:
    name = provisioned_name("a" * 253)
    assert len(name) + len("-mtls") <= 253
    assert name != provisioned_name("a" * 252 + "b")


def test_identity_record_reads_labels_and_defaults() -> None:
    body = {
        "metadata": {"namespace": NS, "name": "p", "labels": {PROVISIONED_LABEL: "true"}},
        "spec": {"serviceAccountName": "sa"},
    }
    assert identity_record(body) == IdentityRecord(NS, "p", "sa", "p-mtls", provisioned=True)


def test_a_stored_spec_with_crd_defaults_is_current() -> None:
    from meshless.policy.provision import spec_is_current

    stored = {"serviceAccountName": "a", "privateKey": {"algorithm": "ECDSAP256"}}
    assert spec_is_current(stored, {"serviceAccountName": "a"})
    assert not spec_is_current(stored, {"serviceAccountName": "a", "ttl": "12h"})
    assert not spec_is_current({**stored, "ttl": "12h"}, {"serviceAccountName": "a"})
    rsa = {"serviceAccountName": "a", "privateKey": {"algorithm": "RSA2048"}}
    assert not spec_is_current(stored, rsa) and spec_is_current(rsa, rsa)


# --- an unusable user-made identity is never chosen for a pod -------------------------------

SETTINGS = Settings()


def _body(
    name: str = "mine",
    *,
    spec: dict[str, Any] | None = None,
    reason: str | None = None,
    ready: str = "False",
    generation: int = 1,
    observed: int | None = 1,
    provisioned: bool = False,
) -> dict[str, Any]:
    labels = {PROVISIONED_LABEL: "true"} if provisioned else {}
    body: dict[str, Any] = {
        "metadata": {"namespace": NS, "name": name, "generation": generation, "labels": labels},
        "spec": spec if spec is not None else {"serviceAccountName": "web"},
    }
    if reason is not None:
        body["status"] = {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": ready, "reason": reason}],
        }
    return body


@pytest.mark.parametrize(
    ("body", "settings", "unusable", "why"),
    [
        (_body(), SETTINGS, "", "a new identity, no status yet"),
        (_body(reason="Ready", ready="True"), SETTINGS, "", "issued"),
        (_body(reason="CAUnavailable"), SETTINGS, "", "passes by itself"),
        (_body(reason="IssuingFailed"), SETTINGS, "", "retried by the operator"),
        (_body(reason="SecretConflict"), SETTINGS, "SecretConflict", "someone else's Secret"),
        (
            _body(reason="SecretConflict", generation=2, observed=1),
            SETTINGS,
            "",
            "reported for an earlier spec (another secretName, perhaps)",
        ),
        (
            _body(spec={"serviceAccountName": "web", "dnsNames": ["payments.other.svc"]}),
            SETTINGS,
            "DNSNameNotAllowed",
            "judged from the spec before any status says so",
        ),
        (
            _body(spec={"serviceAccountName": "web", "ttl": "1m"}),
            SETTINGS,
            "InvalidSpec",
            "below the ttl floor",
        ),
        (
            _body(
                spec={"serviceAccountName": "web", "dnsNames": ["www.shop.example.com"]},
                reason="DNSNameNotAllowed",
            ),
            replace(
                SETTINGS,
                names=replace(SETTINGS.names, allowed_dns_names=("*.{namespace}.example.com",)),
            ),
            "",
            "a wider setting since: the status is behind, the spec passes",
        ),
        (_body(reason="DNSNameNotAllowed"), None, "DNSNameNotAllowed", "no settings: the status"),
        (_body(reason="InvalidSpec"), None, "InvalidSpec", "no settings: the status"),
        (
            _body(
                spec={"serviceAccountName": "web", "dnsNames": ["x.other.svc"]}, provisioned=True
            ),
            SETTINGS,
            "",
            "a provisioned identity is never passed over",
        ),
    ],
)
def test_which_user_made_identities_are_unusable(
    body: dict[str, Any], settings: Settings | None, unusable: str, why: str
) -> None:
    record = identity_record(body, settings)
    assert record.unusable == unusable, why
    assert record.usable == (not unusable)


def _records(*entries: tuple[str, str, str]) -> list[IdentityRecord]:
    """(name, creationTimestamp, unusable) -> user-made records of ServiceAccount web."""
    return [
        IdentityRecord(NS, name, "web", f"{name}-mtls", False, created, unusable)
        for name, created, unusable in entries
    ]


@pytest.mark.parametrize(
    ("records", "chosen"),
    [
        ([], "meshless-web"),
        (_records(("mine", "t1", "")), "mine"),
        (_records(("mine", "t1", "DNSNameNotAllowed")), "meshless-web"),
        (_records(("mine", "t1", "SecretConflict")), "meshless-web"),
        (_records(("mine", "t1", "InvalidSpec")), "meshless-web"),
        # the oldest usable one, an older unusable one passed over
        (_records(("old", "t1", "DNSNameNotAllowed"), ("new", "t2", "")), "new"),
        (_records(("old", "t1", ""), ("new", "t2", "SecretConflict")), "old"),
        (
            [
                *_records(("mine", "t1", "DNSNameNotAllowed")),
                IdentityRecord(NS, "meshless-web", "web", "meshless-web-mtls", True),
            ],
            "meshless-web",
        ),
    ],
)
def test_the_identity_chosen_for_a_pod(records: list[IdentityRecord], chosen: str) -> None:
    ref = identity_for(NS, "web", records, "cluster.local")
    assert ref.name == chosen
    assert ref.secret_name == f"{chosen}-mtls"
    assert ref.spiffe_id == "spiffe://cluster.local/ns/shop/sa/web"


@pytest.mark.parametrize(
    ("unusable", "provisioned"),
    [("", ()), ("DNSNameNotAllowed", ("meshless-web",)), ("SecretConflict", ("meshless-web",))],
)
def test_an_unusable_user_identity_gets_a_provisioned_one_beside_it(
    unusable: str, provisioned: tuple[str, ...]
) -> None:
    policies = [policy(NS, "ns-strict", Mode.STRICT)]
    pods = [pod(NS, "web-1", service_account="web")]
    records = _records(("mine", "t1", unusable))
    plan = plan_identities(NS, _resolved(policies, pods), {p.ref: p for p in policies}, records)
    assert tuple(m["metadata"]["name"] for m in plan.create_or_update) == provisioned
    assert plan.delete == ()


def test_the_unusable_identities_of_an_account_are_listed() -> None:
    records = _records(("b", "t1", "SecretConflict"), ("a", "t2", "InvalidSpec"), ("c", "t3", ""))
    assert [r.name for r in unusable_identities(NS, "web", records)] == ["a", "b"]
    assert unusable_identities(NS, "other", records) == []


def test_provisioned_identities_carry_no_dns_name_and_pass_the_name_policy() -> None:
    """What policies provision goes through the same check as what users make."""
    manifest = provisioned_identity(NS, "web", policy(NS, "p", Mode.STRICT, ttl="12h"))
    assert "dnsNames" not in manifest["spec"]
    assert identity_record(manifest, SETTINGS).usable
    assert identity_record(
        {**manifest, "metadata": {**manifest["metadata"], "labels": {}}}, SETTINGS
    ).usable
