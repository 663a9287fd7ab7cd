"""MtlsPolicy end to end against the local control plane, with the operator running as users
run it: precedence read back from status, NetworkPolicies judged as a CNI would, provisioned
identities, foreign NetworkPolicies reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from meshless.api import IDENTITY_LABEL, PROVISIONED_LABEL

from .conftest import OperatorFactory, OperatorProcess
from .kubehelpers import GROUP, VERSION, condition, is_ready, wait_identity
from .policyhelpers import (
    Json,
    after_creation_second,
    create_pod,
    create_policy,
    delete_policy,
    list_network_policies,
    namespace_labels,
    patch_policy,
    status_is,
    wait_admission_label,
    wait_collection,
    wait_policy,
)
from .reachability import reachable

TIMEOUT = 30


@pytest.fixture
def operator(operator_factory: OperatorFactory) -> Iterator[OperatorProcess]:
    yield operator_factory()


def _identities(api: client.ApiClient, namespace: str) -> list[Json]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, "workloadidentities"
    )
    return list(listed["items"])


def test_precedence_through_real_objects(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    create_pod(api_client, ns, "web-1", {"app": "web"})
    create_pod(api_client, ns, "api-1", {"app": "api"})
    # Rule: only the oldest namespace-wide policy of a namespace takes effect.
    first = create_policy(api_client, ns, "zz-first", "STRICT")
    wait_policy(api_client, ns, "zz-first", status_is(selectedPods=2, Conflicted="False"))
    after_creation_second(first)  # older by time, later by name: age must decide
    create_policy(api_client, ns, "second", "PERMISSIVE")
    second = wait_policy(api_client, ns, "second", status_is(Conflicted="True", Ready="False"))
    assert f"{ns}/zz-first" in condition(second, "Conflicted")["message"]  # type: ignore[index]
    # Rule: workload beats namespace; among workload policies the oldest wins.
    old_w = create_policy(
        api_client, ns, "z-old-w", "DISABLE", selector={"matchLabels": {"app": "api"}}
    )
    wait_policy(api_client, ns, "z-old-w", status_is(selectedPods=1, scope="Workload"))
    after_creation_second(old_w)
    create_policy(api_client, ns, "new-w", "STRICT", selector={"matchLabels": {"app": "api"}})
    new_w = wait_policy(api_client, ns, "new-w", status_is(Conflicted="True", selectedPods=0))
    assert f"{ns}/z-old-w" in condition(new_w, "Conflicted")["message"]  # type: ignore[index]
    wait_policy(api_client, ns, "zz-first", status_is(selectedPods=1))
    # Effective modes, read from the stored NetworkPolicies: web-1 is STRICT, api-1 DISABLE.
    nps = list_network_policies(api_client, ns)
    pods = _pods(api_client, ns)
    stranger = ("elsewhere", {"app": "x"})
    assert not reachable(nps, namespace_labels(api_client), stranger, pods["web-1"], 8443)
    assert reachable(nps, namespace_labels(api_client), stranger, pods["api-1"], 8443)
    # Rule: deleting the winner hands over to the next in line.
    delete_policy(api_client, ns, "zz-first")
    wait_policy(api_client, ns, "second", status_is(Conflicted="False", selectedPods=1))
    delete_policy(api_client, ns, "z-old-w")
    wait_policy(api_client, ns, "new-w", status_is(Conflicted="False", selectedPods=1))


def test_root_namespace_policy_reaches_every_namespace_unless_narrower(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    root = operator.namespace
    create_pod(api_client, namespace, "p-1", {"app": "p"})
    create_policy(api_client, root, "mesh", "STRICT")
    wait_policy(
        api_client,
        root,
        "mesh",
        lambda o: (
            (o.get("status") or {}).get("selectedPods", 0) >= 1
            and (o.get("status") or {}).get("scope") == "Root"
        ),
    )
    create_policy(api_client, namespace, "local", "UNSET")  # inherits STRICT from the root
    wait_policy(api_client, namespace, "local", status_is(selectedPods=1, scope="Namespace"))
    nps = list_network_policies(api_client, namespace)
    pods = _pods(api_client, namespace)
    labels = namespace_labels(api_client)
    assert not reachable(nps, labels, ("elsewhere", {}), pods["p-1"], 8443)
    assert reachable(nps, labels, ("elsewhere", {IDENTITY_LABEL: "client"}), pods["p-1"], 8443)
    delete_policy(api_client, root, "mesh")  # UNSET with nothing wider: PERMISSIVE, all open
    wait_policy(api_client, namespace, "local", status_is(selectedPods=1, networkPolicies=0))


def test_strict_namespace_with_disable_workload_and_port_override(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    create_pod(api_client, ns, "strict-1", {"app": "payments"}, ports=(8443, 9090))
    create_pod(api_client, ns, "legacy-1", {"app": "legacy"}, ports=(8080,))
    create_pod(api_client, ns, "metrics-1", {"app": "metrics"}, ports=(8443, 9090))
    create_policy(api_client, ns, "ns-strict", "STRICT")
    create_policy(api_client, ns, "legacy", "DISABLE", selector={"matchLabels": {"app": "legacy"}})
    create_policy(
        api_client,
        ns,
        "metrics",
        "UNSET",
        selector={"matchLabels": {"app": "metrics"}},
        portLevelMtls={"9090": {"mode": "DISABLE"}},
    )
    wait_policy(api_client, ns, "ns-strict", status_is(selectedPods=1, networkPolicies=1))
    wait_policy(api_client, ns, "metrics", status_is(selectedPods=1, networkPolicies=1))
    wait_policy(api_client, ns, "legacy", status_is(selectedPods=1, networkPolicies=0))
    nps = list_network_policies(api_client, ns)
    pods = _pods(api_client, ns)
    labels = namespace_labels(api_client)
    plain = (ns, {"app": "client"})
    with_identity = ("other", {"app": "client", IDENTITY_LABEL: "client"})
    expected = {
        ("strict-1", 8443): False,
        ("strict-1", 9090): False,
        ("legacy-1", 8080): True,
        ("metrics-1", 8443): False,
        ("metrics-1", 9090): True,
    }
    for (pod, port), open_to_plain in expected.items():
        assert reachable(nps, labels, plain, pods[pod], port) is open_to_plain, (pod, port)
        assert reachable(nps, labels, with_identity, pods[pod], port), (pod, port)
    # Every STRICT/PERMISSIVE ServiceAccount got a provisioned identity (all pods use
    # "default" here), which the identity controller issues.
    provisioned = [
        i for i in _identities(api_client, ns) if i["metadata"]["labels"].get(PROVISIONED_LABEL)
    ]
    assert [i["spec"]["serviceAccountName"] for i in provisioned] == ["default"]
    wait_identity(api_client, ns, provisioned[0]["metadata"]["name"], is_ready)


def test_mode_change_and_delete_clean_up_only_what_the_policy_made(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    create_pod(api_client, ns, "a-1", {"app": "a"}, service_account="a")
    create_pod(api_client, ns, "b-1", {"app": "b"}, service_account="b")
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "workloadidentities",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkloadIdentity",
            "metadata": {"name": "b-mine"},
            "spec": {"serviceAccountName": "b"},
        },
    )
    create_policy(api_client, ns, "all", "STRICT")
    wait_policy(api_client, ns, "all", status_is(selectedPods=2, networkPolicies=2, identities=2))
    names = sorted(i["metadata"]["name"] for i in _identities(api_client, ns))
    assert names == ["b-mine", "meshless-a"]  # the user's identity serves b
    patch_policy(api_client, ns, "all", {"mode": "DISABLE"})
    wait_policy(api_client, ns, "all", status_is(selectedPods=2, networkPolicies=0))
    assert [i["metadata"]["name"] for i in _wait_identities(api_client, ns, 1)] == ["b-mine"]
    patch_policy(api_client, ns, "all", {"mode": "PERMISSIVE"})
    wait_policy(api_client, ns, "all", status_is(identities=2, networkPolicies=0))
    delete_policy(api_client, ns, "all")
    assert [i["metadata"]["name"] for i in _wait_identities(api_client, ns, 1)] == ["b-mine"]
    assert list_network_policies(api_client, ns) == []
    user = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, ns, "workloadidentities", "b-mine"
    )
    assert not (user["metadata"].get("labels") or {}).get(PROVISIONED_LABEL)
    assert user["metadata"]["generation"] == 1  # its spec was never written
    assert user["spec"]["serviceAccountName"] == "b"


def test_a_foreign_allow_all_network_policy_is_reported_not_edited(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    create_pod(api_client, ns, "s-1", {"app": "s"})
    create_policy(api_client, ns, "strict", "STRICT")
    wait_policy(api_client, ns, "strict", status_is(Ready="True", networkPolicies=1))
    allow_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all"},
        "spec": {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]},
    }
    created = client.NetworkingV1Api(api_client).create_namespaced_network_policy(ns, allow_all)
    reported = wait_policy(api_client, ns, "strict", status_is(Ready="False"))
    ready = condition(reported, "Ready")
    assert ready is not None and ready["reason"] == "NetworkOpen"
    assert f"{ns}/allow-all" in ready["message"]
    stored = client.NetworkingV1Api(api_client).read_namespaced_network_policy("allow-all", ns)
    assert stored.metadata.resource_version == created.metadata.resource_version
    client.NetworkingV1Api(api_client).delete_namespaced_network_policy("allow-all", ns)
    wait_policy(api_client, ns, "strict", status_is(Ready="True"))


def test_an_identity_ttl_below_the_operator_floor_is_reported(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    # The schema accepts 1m..30d; the floor is the operator's setting, only it can judge.
    operator_factory(ttl_floor="1h")
    create_pod(api_client, namespace, "x-1")
    create_policy(api_client, namespace, "short", "STRICT", identity={"ttl": "30m"})
    got = wait_policy(api_client, namespace, "short", status_is(Ready="False"))
    ready = condition(got, "Ready")
    assert ready is not None and ready["reason"] == "InvalidSpec"
    assert "spec.identity.ttl" in ready["message"]
    assert _identities(api_client, namespace) == []


def _pods(api: client.ApiClient, namespace: str) -> dict[str, tuple[str, dict[str, str]]]:
    return {
        p.metadata.name: (namespace, dict(p.metadata.labels or {}))
        for p in client.CoreV1Api(api).list_namespaced_pod(namespace).items
    }


def _wait_identities(api: client.ApiClient, namespace: str, count: int) -> list[Json]:
    return wait_collection(
        client.CustomObjectsApi(api).list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        "workloadidentities",
        predicate=lambda items: len(items) == count,
        timeout=TIMEOUT,
        what=f"{count} WorkloadIdentities in {namespace}",
    )


def test_injected_pods_reach_strict_ports_plain_ones_do_not_forged_ones_never_exist(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str, unique: Any
) -> None:
    """Admission and NetworkPolicies together, judged from what the API server stored."""
    ns = namespace
    create_policy(api_client, ns, "strict", "STRICT")
    core = client.CoreV1Api(api_client)
    wait_admission_label(api_client, ns)  # before pods arrive
    server = create_pod(api_client, ns, "server", {"app": "server"}, service_account="server")
    client_pod = create_pod(api_client, ns, "client", {"app": "client"}, service_account="client")
    assert server["metadata"]["labels"][IDENTITY_LABEL] == "server"  # injected
    assert client_pod["metadata"]["labels"][IDENTITY_LABEL] == "client"
    plain_ns = unique("plain")
    core.create_namespace({"metadata": {"name": plain_ns}})
    try:
        plain = create_pod(api_client, plain_ns, "plain", {"app": "client"})
        assert IDENTITY_LABEL not in plain["metadata"]["labels"]  # no policy there
        with pytest.raises(client.ApiException) as forged:
            create_pod(api_client, plain_ns, "forged", {"app": "x", IDENTITY_LABEL: "server"})
        assert forged.value.status in (400, 403)
        assert "meshless.dev/identity" in str(forged.value.body)
        wait_policy(api_client, ns, "strict", status_is(selectedPods=2, networkPolicies=2))
        nps = list_network_policies(api_client, ns)
        labels = namespace_labels(api_client)
        target = (ns, server["metadata"]["labels"])
        assert reachable(nps, labels, (ns, client_pod["metadata"]["labels"]), target, 8443)
        assert not reachable(nps, labels, (plain_ns, plain["metadata"]["labels"]), target, 8443)
        stored = [p.metadata.name for p in core.list_namespaced_pod(plain_ns).items]
        assert stored == ["plain"]  # the forged pod never got in
    finally:
        core.delete_namespace(plain_ns)
