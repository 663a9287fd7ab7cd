"""Delivery on a control plane that serves PodCertificateRequests and ClusterTrustBundles (the
podcert control plane): `auto` picks pod certificates, and changing a policy's delivery moves
pods over as they are created, while a provisioned identity stays as long as a pod still
mounts its Secret. No node runs here: pods stay Pending, which is all admission and
provisioning need."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.integration.conftest import (
    OperatorProcess,
    podcert_operator,
)
from tests.integration.kubehelpers import condition, wait_event
from tests.integration.policyhelpers import create_pod, create_policy, patch_policy, wait_policy

pytestmark = pytest.mark.integration
TIMEOUT = 30


@pytest.fixture(scope="module")
def operator(
    podcert_kubeconfig: str, pc_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with podcert_operator(
        podcert_kubeconfig, pc_api, tmp_path_factory.mktemp("delivery"), identity_delivery="auto"
    ) as op:
        yield op


@pytest.fixture
def pc_namespace(pc_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(pc_api)
    name = f"dl-{time.monotonic_ns() % 10**10}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    custom = client.CustomObjectsApi(pc_api)
    for plural in ("mtlspolicies", "workloadidentities"):
        custom.delete_collection_namespaced_custom_object("meshless.dev", "v1alpha1", name, plural)
    core.delete_namespace(name)


def _volume(pod: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in pod["spec"]["volumes"] if v["name"] == "meshless-identity")


def _create_when_labelled(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The first pod may meet the namespace before the operator labelled it for admission."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        created = create_pod(api, namespace, name)
        if any(v["name"] == "meshless-identity" for v in created["spec"].get("volumes") or ()):
            return created
        client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        assert time.monotonic() < deadline, "the injector never saw the namespace"
        time.sleep(0.5)


def _identities(api: client.ApiClient, namespace: str) -> list[str]:
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "meshless.dev", "v1alpha1", namespace, "workloadidentities"
    )
    return [i["metadata"]["name"] for i in listed["items"]]


def _selected(api: client.ApiClient, namespace: str, pods: int) -> None:
    """The policy's status counts `pods`: a reconcile of the namespace with them has run
    (identities are provisioned before the status is written)."""
    wait_policy(
        api,
        namespace,
        "strict",
        lambda o: (o.get("status") or {}).get("selectedPods") == pods,
        what=f"selectedPods {pods}",
    )


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_auto_picks_pod_certificates_and_a_change_moves_new_pods(
    operator: OperatorProcess, pc_api: client.ApiClient, pc_namespace: str
) -> None:
    ns = pc_namespace
    create_policy(pc_api, ns, "strict", "STRICT")
    policy = wait_policy(
        pc_api, ns, "strict", lambda o: (o.get("status") or {}).get("delivery"), what="delivery"
    )
    assert policy["status"]["delivery"] == "PodCertificate"  # auto, the API being served
    first = _create_when_labelled(pc_api, ns, "a")
    sources = _volume(first)["projected"]["sources"]
    assert sources[0]["podCertificate"]["signerName"] == "meshless.dev/spiffe"
    assert sources[0]["podCertificate"]["keyType"] == "ECDSAP256"
    assert sources[1]["clusterTrustBundle"]["signerName"] == "meshless.dev/spiffe"
    _selected(pc_api, ns, 1)  # the namespace was reconciled with pod a in it
    assert _identities(pc_api, ns) == []

    patch_policy(pc_api, ns, "strict", {"identity": {"delivery": "Secret"}})
    wait_policy(
        pc_api, ns, "strict", lambda o: o["status"].get("delivery") == "Secret", what="Secret"
    )
    second = create_pod(pc_api, ns, "b")
    assert _volume(second) == {
        "name": "meshless-identity",
        "secret": {"secretName": "meshless-default-mtls", "defaultMode": 420},
    }
    _wait(lambda: _identities(pc_api, ns) == ["meshless-default"], "the identity provisioned")

    # Back to pod certificates: new pods get them, the identity stays for pod b...
    patch_policy(pc_api, ns, "strict", {"identity": {"delivery": "PodCertificate"}})
    wait_policy(
        pc_api,
        ns,
        "strict",
        lambda o: o["status"].get("delivery") == "PodCertificate",
        what="PodCertificate",
    )
    third = create_pod(pc_api, ns, "c")
    assert "podCertificate" in _volume(third)["projected"]["sources"][0]
    _selected(pc_api, ns, 3)
    assert _identities(pc_api, ns) == ["meshless-default"]
    # ...until the last pod that mounts its Secret is gone.
    client.CoreV1Api(pc_api).delete_namespaced_pod("b", ns, grace_period_seconds=0)
    _wait(lambda: _identities(pc_api, ns) == [], "the identity deleted after pod b")


def test_a_pod_whose_kubelet_never_asks_is_named_with_its_node(
    operator: OperatorProcess, pc_api: client.ApiClient, pc_namespace: str
) -> None:
    """No kubelet runs here: a pod bound to a node is exactly a pod whose kubelet lacks the
    PodCertificateRequest gate. After a minute without a request its policy names it."""
    ns = pc_namespace
    create_policy(pc_api, ns, "strict", "STRICT", identity={"delivery": "PodCertificate"})
    first = _create_when_labelled(pc_api, ns, "probe-pod")  # admitted: the label is in place
    client.CoreV1Api(pc_api).delete_namespaced_pod(
        first["metadata"]["name"], ns, grace_period_seconds=0
    )
    body = {
        "metadata": {"name": "waiting"},
        "spec": {
            "nodeName": "node-without-the-gate",
            "containers": [{"name": "app", "image": "busybox"}],
        },
    }
    client.CoreV1Api(pc_api).create_namespaced_pod(ns, body)
    named = wait_policy(
        pc_api,
        ns,
        "strict",
        lambda o: (condition(o, "Ready") or {}).get("reason") == "PodCertificateNotRequested",
        timeout=120,
        what="Ready=False PodCertificateNotRequested",
    )
    ready = condition(named, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert f"pod {ns}/waiting on node node-without-the-gate" in ready["message"]
    assert "spec.identity.delivery: Secret" in ready["message"]
    # The Event is posted after the status it describes: waited for, not listed once.
    event = wait_event(pc_api, ns, "strict", "PodCertificateNotRequested")
    assert event.type == "Warning"
