"""Which identities policies provision, and which identity serves a ServiceAccount."""

from __future__ import annotations

from meshless.api import PROVISIONED_LABEL, Mode
from meshless.policy.provision import (
    IdentityRecord,
    identity_for,
    identity_record,
    plan_identities,
    provisioned_name,
)
from meshless.policy.resolve import PolicySet
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
