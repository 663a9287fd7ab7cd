"""One namespace reconcile's plan (policy/plan.py), a policy's tally and status, and the
namespaces' admission labels: decided from what the stores hold, without the API."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from meshless.api import Mode
from meshless.conditions import ConditionChange
from meshless.delivery import Delivery
from meshless.policy.held import HeldPolicy, NamespaceInfo, slim_policy
from meshless.policy.model import PolicyRef
from meshless.policy.plan import label_changes, plan_namespace, policy_status, tally_policy
from meshless.policy.provision import identity_for
from meshless.policy.render import is_managed
from meshless.policy.resolve import PolicySet
from tests.policyfixtures import ROOT_NS, pod, policy

NS = "shop"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _everyone(policies, pods):  # type: ignore[no-untyped-def]
    ps = PolicySet.build(policies, ROOT_NS)
    return [(p, ps.resolve(p)) for p in pods]


def test_a_strict_namespace_plans_its_network_policy_and_identity() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    pods = [pod(NS, "web-1", {"app": "web"}, service_account="web")]
    everyone = _everyone([strict], pods)
    planned = plan_namespace(NS, everyone, {}, {strict.ref: strict}, [], [], {}, (), write=True)
    assert list(planned.resolutions) == [(NS, "web-1")]
    assert planned.resolutions[(NS, "web-1")].governing == strict.ref
    assert [m["metadata"]["name"] for m in planned.apply_identities] == ["meshless-web"]
    assert planned.apply_network_policies
    assert all(is_managed(m) for m in planned.apply_network_policies)
    assert planned.delete_network_policies == [] and planned.delete_identities == []
    assert planned.touched == {strict.ref}

    # The same namespace again, with what was written held: nothing more to write.
    written = [
        {**m, "metadata": {**m["metadata"], "uid": "np-1"}} for m in planned.apply_network_policies
    ]
    # As the API server stores it: with the CRD's defaults.
    stored = {**planned.apply_identities[0]["spec"], "privateKey": {"algorithm": "ECDSAP256"}}
    provisioned = {"meshless-web": stored}
    again = plan_namespace(
        NS,
        everyone,
        planned.resolutions,
        {strict.ref: strict},
        written,
        [],
        provisioned,
        (),
        write=True,
    )
    assert again.apply_network_policies == [] and again.apply_identities == []


def test_a_terminating_namespace_decides_but_writes_nothing() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    everyone = _everyone([strict], [pod(NS, "web-1", service_account="web")])
    planned = plan_namespace(NS, everyone, {}, {strict.ref: strict}, [], [], {}, (), write=False)
    assert planned.resolutions and planned.apply_identities == []
    assert planned.apply_network_policies == []


def test_gone_pods_and_unneeded_objects_are_removed() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    before = _everyone([strict], [pod(NS, "web-1", service_account="web")])
    first = plan_namespace(NS, before, {}, {strict.ref: strict}, [], [], {}, (), write=True)
    held = [
        {**m, "metadata": {**m["metadata"], "uid": "np-1"}} for m in first.apply_network_policies
    ]
    # The pod is gone and so is the policy.
    planned = plan_namespace(NS, [], first.resolutions, {}, held, [], {}, (), write=True)
    assert planned.resolutions == {}
    assert planned.touched == {strict.ref}  # its status counts one pod fewer
    assert [uid for _, uid in planned.delete_network_policies] == ["np-1"]


def test_a_policy_tally_counts_what_it_governs() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    pods = [
        pod(NS, "web-1", service_account="web", mounted=True),
        pod(NS, "web-2", service_account="web"),
    ]
    ps = PolicySet.build([strict], ROOT_NS)
    governed = [(p, r) for p, r in _everyone([strict], pods) if r is not None]
    tally = tally_policy(
        strict.ref,
        strict,
        ps,
        governed,
        [r for _, r in governed],
        lambda ns, sa: identity_for(ns, sa, [], "cluster.local"),
        lambda ns, sa: [],
        [],
        [(strict.ref, "NetworkPolicy x opens port 1 of pod y"), (PolicyRef(NS, "o"), "z")],
    )
    assert (tally.selected, tally.injected) == (2, 1)
    assert tally.identities == {(NS, "meshless-web")}
    assert tally.network_open == ["NetworkPolicy x opens port 1 of pod y"]


def _pod_certificates(_: PolicyRef) -> Delivery:
    return Delivery.POD_CERTIFICATE


def test_pods_with_pod_certificates_get_no_identity_and_need_the_bundle_configmap() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    pods = [
        pod(NS, "web-1", service_account="web"),  # re-created: a pod certificate
        replace(pod(NS, "api-1", service_account="api"), pod_certificate=True),
    ]
    everyone = _everyone([strict], pods)
    specs = {strict.ref: strict}
    planned = plan_namespace(
        NS,
        everyone,
        {},
        specs,
        [],
        [],
        {},
        (),
        write=True,
        delivery_of=_pod_certificates,
    )
    assert planned.apply_identities == []
    # the namespace keeps the ConfigMap bundle (their ca.crt may come from it, and it is what
    # the namespace's other programs read to check meshless identities)
    assert planned.bundle_needed

    # A pod still mounting its Secret keeps its identity until it is re-created.
    mounting = _everyone([strict], [pod(NS, "old-1", service_account="old", mounted=True)])
    kept = plan_namespace(
        NS, mounting, {}, specs, [], [], {}, (), write=True, delivery_of=_pod_certificates
    )
    assert [m["metadata"]["name"] for m in kept.apply_identities] == ["meshless-old"]
    assert not kept.bundle_needed

    # By Secret: an identity for the pod without a pod certificate; the one mounting a pod
    # certificate still reads ca.crt from the ConfigMap until it is re-created.
    secret = plan_namespace(NS, everyone, {}, specs, [], [], {}, (), write=True)
    assert [m["metadata"]["name"] for m in secret.apply_identities] == ["meshless-web"]
    assert secret.bundle_needed
    by_secret_only = _everyone([strict], [pod(NS, "web-1", service_account="web")])
    plain = plan_namespace(NS, by_secret_only, {}, specs, [], [], {}, (), write=True)
    assert not plain.bundle_needed


def test_a_policy_tally_names_its_delivery_and_counts_no_identity_for_pod_certificates() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    pods = [replace(pod(NS, "web-1", service_account="web"), pod_certificate=True)]
    ps = PolicySet.build([strict], ROOT_NS)
    governed = [(p, r) for p, r in _everyone([strict], pods) if r is not None]

    def tally(delivery_of):  # type: ignore[no-untyped-def]
        return tally_policy(
            strict.ref,
            strict,
            ps,
            governed,
            [r for _, r in governed],
            lambda ns, sa: identity_for(ns, sa, [], "cluster.local"),
            lambda ns, sa: [],
            [],
            [],
            delivery_of,
        )

    by_pod_certificate = tally(_pod_certificates)
    assert by_pod_certificate.delivery == "PodCertificate"
    assert by_pod_certificate.identities == set()
    assert by_pod_certificate.selected == 1
    by_secret = tally(lambda ref: Delivery.SECRET)
    assert by_secret.delivery == "Secret"
    # It mounts a pod certificate: no WorkloadIdentity serves it, whatever the policy says.
    assert by_secret.identities == set()


def test_a_policy_status_warns_only_when_it_turns_bad() -> None:
    strict = policy(NS, "strict", Mode.STRICT)
    body = slim_policy(
        {"metadata": {"namespace": NS, "name": "strict", "generation": 2}, "spec": {}}
    )
    held = HeldPolicy(body, strict, None)
    ps = PolicySet.build([strict], ROOT_NS)
    tally = tally_policy(
        strict.ref,
        strict,
        ps,
        [],
        [],
        lambda *a: None,
        lambda *a: [],
        [],
        [],  # type: ignore[arg-type,return-value]
    )
    enforced = ConditionChange("Enforced", False, "NotProven", "no probe yet")
    wanted, warnings = policy_status(
        held,
        tally,
        ROOT_NS,
        namespace_terminating=False,
        enforcement=({"ports": []}, enforced),
        admission={"wouldDeny": 1, "pods": ["p"]},
        now=NOW,
    )
    assert wanted["observedGeneration"] == 2
    assert wanted["enforcement"] == {"ports": []}
    assert wanted["admission"] == {"wouldDeny": 1, "pods": ["p"]}
    assert [c.type for c in warnings] == ["Enforced"]
    # Written: the same condition again is no news.
    body["status"] = {"conditions": wanted["conditions"]}
    _, again = policy_status(
        held,
        tally,
        ROOT_NS,
        namespace_terminating=False,
        enforcement=({"ports": []}, enforced),
        admission=None,
        now=NOW,
    )
    assert again == []


def test_label_changes_set_and_remove_only_what_differs() -> None:
    namespaces = [
        ("shop", NamespaceInfo({}, False)),
        ("bank", NamespaceInfo({"meshless.dev/mtls": "enabled"}, False)),
        ("kept", NamespaceInfo({"meshless.dev/mtls": "enabled"}, False)),
    ]
    wanted = [("meshless.dev/mtls", "enabled", frozenset({"shop", "kept"}))]
    assert label_changes(namespaces, wanted) == [
        ("shop", {"meshless.dev/mtls": "enabled"}),
        ("bank", {"meshless.dev/mtls": None}),
    ]
