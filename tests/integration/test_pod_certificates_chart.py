"""The signer with only the chart's RBAC, on a control plane serving the Pod Certificates API:
the operator runs with a token of the chart's ServiceAccount, bound by the chart's own
ClusterRole and Role (rendered by helm, applied as they are). Requests are answered, a Deny
reads the pod by name, the ClusterTrustBundle is written (`attest`), no request is refused,
and the audit log shows the pod-certificate permissions in use. Then a whole root rotation:
the ClusterTrustBundle holds both roots while it runs and only the new one after Finish."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from meshless.podcert.trust_bundle import TRUST_BUNDLE_NAME
from tests.helmtool import render
from tests.pcrs import kubelet_key, pcr_body
from tests.tools import kubectl_path

from .conftest import PODCERT_STATE, OperatorProcess, remove_webhook_configurations
from .podcerts import (
    BoundPod,
    condition,
    create_bound_pod,
    create_node,
    create_request,
    node_client,
    trust_bundle,
    wait_request,
)
from .rotationpeers import fingerprints, leaf_root
from .test_ca_rotation import CAWatcher, meshless_cli
from .test_chart import assert_never_refused, operator_requests

TIMEOUT = 60
Json = dict[str, Any]
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


@dataclass(frozen=True)
class ChartSigner:
    op: OperatorProcess
    namespace: str
    username: str
    admin_kubeconfig: str


def kubectl(kubeconfig: str, *args: str, input: str | None = None) -> str:
    import subprocess

    done = subprocess.run(
        [kubectl_path(), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def chart_signer(
    podcert_kubeconfig: str, pc_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChartSigner]:
    namespace = f"meshless-pcchart-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(pc_api)
    core.create_namespace({"metadata": {"name": namespace}})
    objects = [
        o
        for o in render(namespace=namespace)
        if o["kind"] in RBAC_KINDS + WEBHOOK_KINDS and o["kind"] != "CustomResourceDefinition"
    ]
    manifest = yaml.safe_dump_all(objects)
    remove_webhook_configurations(pc_api)
    kubectl(podcert_kubeconfig, "apply", "-f", "-", input=manifest)
    account = next(o for o in objects if o["kind"] == "ServiceAccount")["metadata"]["name"]
    token = core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(podcert_kubeconfig).read_text())
    token_config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "meshless", "user": {"token": token}}],
        "contexts": [{"name": "meshless", "context": {"cluster": "local", "user": "meshless"}}],
        "current-context": "meshless",
    }
    path = tmp_path_factory.mktemp("pcchart") / "kubeconfig"
    path.write_text(json.dumps(token_config))
    env = {
        "MESHLESS_NAMESPACE": namespace,
        "MESHLESS_TTL_FLOOR": "1m",
        "MESHLESS_CA_POLL_INTERVAL": "1s",
        "MESHLESS_WEBHOOK_SERVICE": f"{account}-webhook",
        "MESHLESS_SERVICE_ACCOUNT": account,
        "POD_NAME": f"{account}-0",
        "MESHLESS_CA_SETTLE_TIME": "3s",
        "MESHLESS_CA_ROTATION_WINDOW": "4s",
        "MESHLESS_RESYNC_INTERVAL": "3s",
    }
    op = OperatorProcess(str(path), env, path.parent / "op.log")
    op.start()
    op.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    try:
        yield ChartSigner(
            op, namespace, f"system:serviceaccount:{namespace}:{account}", podcert_kubeconfig
        )
    finally:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
        remove_webhook_configurations(pc_api)
        kubectl(podcert_kubeconfig, "delete", "--ignore-not-found", "-f", "-", input=manifest)


@pytest.fixture
def pc_namespace(pc_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(pc_api)
    name = f"pcc-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def test_requests_are_answered_with_only_the_charts_rbac(
    chart_signer: ChartSigner,
    pc_api: client.ApiClient,
    podcert_kubeconfig: str,
    pc_namespace: str,
) -> None:
    node = create_node(pc_api)
    try:
        pod = create_bound_pod(pc_api, pc_namespace, node)
        kubelet = node_client(podcert_kubeconfig, pod.node)
        issued = wait_request(
            pc_api,
            create_request(kubelet, pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP384"))),
            timeout=TIMEOUT,
        )
        assert condition(issued)["type"] == "Issued", issued["status"]
        # A request for a pod that is gone: the signer reads the pod by name (pods: get).
        gone = pcr_body(**{**pod.request_fields(), "pod": "gone"}, key=kubelet_key("ECDSAP256"))
        denied = wait_request(pc_api, create_request(pc_api, gone), timeout=TIMEOUT)
        assert condition(denied)["reason"] == "PodNotFound"
        # Gone, so that the root rotation below does not wait for its certificate.
        client.CoreV1Api(pc_api).delete_namespaced_pod(
            pod.name, pc_namespace, grace_period_seconds=0
        )
    finally:
        client.CoreV1Api(pc_api).delete_node(node[0])
    bundle = trust_bundle(pc_api, TRUST_BUNDLE_NAME)
    assert bundle is not None and bundle["spec"]["signerName"] == "meshless.dev/spiffe"
    assert_never_refused(chart_signer.op)
    requests = operator_requests(chart_signer.username, PODCERT_STATE / "logs" / "audit.log")
    used = set()
    for event in requests:
        decision = (event.get("annotations") or {}).get("authorization.k8s.io/decision")
        assert decision == "allow", event["requestURI"]
        ref = event["objectRef"]
        used.add((ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else ""),
                  event["verb"]))  # fmt: skip
    assert {
        ("podcertificaterequests", "list"),
        ("podcertificaterequests", "watch"),
        ("podcertificaterequests/status", "update"),
        ("clustertrustbundles", "patch"),
        ("pods", "get"),
    } <= used


def test_a_root_rotation_waits_for_the_pods_certificates(
    chart_signer: ChartSigner,
    pc_api: client.ApiClient,
    podcert_kubeconfig: str,
    pc_namespace: str,
) -> None:
    """The ClusterTrustBundle holds both roots while the rotation runs and only the new one
    after Finish; a certificate signed during Prepare asks to be refreshed as early as the
    API allows; Finish waits until the pod's current certificate chains to the new root (its
    kubelet asked again), then the old root goes."""
    ca = CAWatcher(client.CoreV1Api(pc_api), chart_signer.namespace)
    (old_root,) = fingerprints(ca.data()["ca.crt"])

    def published() -> set[str]:
        bundle = trust_bundle(pc_api, TRUST_BUNDLE_NAME)
        assert bundle is not None
        return fingerprints(bundle["spec"]["trustBundle"].encode())

    def issue(pod: BoundPod) -> Json:
        body = pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256"))
        kubelet = node_client(podcert_kubeconfig, pod.node)
        answered = wait_request(pc_api, create_request(kubelet, body), timeout=TIMEOUT)
        assert condition(answered)["type"] == "Issued", answered["status"]
        return answered

    def root_of(answered: Json) -> str | None:
        return leaf_root(answered["status"]["certificateChain"].encode(), ca.roots())

    assert published() == {old_root}
    node = create_node(pc_api)
    core = client.CoreV1Api(pc_api)
    try:
        pod = create_bound_pod(pc_api, pc_namespace, node)
        before = issue(pod)
        rotate = meshless_cli(podcert_kubeconfig, "--namespace", chart_signer.namespace, "rotate")
        assert rotate.returncode == 0, rotate.stderr
        ca.wait(lambda s: s.phase.value == "Prepare", TIMEOUT, "Prepare")
        during = issue(pod)  # Prepare lasts the settle time at least: signed in it
        status = during["status"]
        refresh = datetime.fromisoformat(status["beginRefreshAt"].replace("Z", "+00:00"))
        start = datetime.fromisoformat(status["notBefore"].replace("Z", "+00:00"))
        assert refresh - start == timedelta(minutes=10), status
        ca.wait(lambda s: s.phase.value == "Switch", TIMEOUT, "Switch")
        assert published() == {old_root} | set(fingerprints(ca.data()["ca.crt"]))
        assert len(published()) == 2
        # The pod's current certificate still chains to the old root: Finish must not come.
        chart_signer.op.wait_for_metrics(
            lambda text: 'meshless_ca_rotation_leaves{state="old_chain"} 1.0' in text, TIMEOUT
        )
        # `meshless ca status` counts it too (from the requests in the API).
        status_run = meshless_cli(
            podcert_kubeconfig, "--namespace", chart_signer.namespace, "status", "-o", "json"
        )
        assert status_run.returncode == 0, status_run.stderr
        counted = json.loads(status_run.stdout)["progress"]
        assert counted["leavesOnOldRoot"] >= 1 and counted["bundlesWithNewRoot"] >= 1, counted
        deadline = time.monotonic() + 8  # > the rotation window (4 s) and settle time (3 s)
        while time.monotonic() < deadline:
            assert ca.state().phase.value == "Switch", ca.state()
            time.sleep(0.2)
        assert root_of(before) == root_of(during) == old_root
        after = issue(pod)  # the kubelet's refresh: under the new root
        ca.wait(lambda s: s.last_root_rotation is not None, 2 * TIMEOUT, "the end")
        assert root_of(after) != old_root
    finally:
        core.delete_namespaced_pod(pod.name, pc_namespace, grace_period_seconds=0)
        core.delete_node(node[0])
    (new_root,) = fingerprints(ca.data()["ca.crt"])
    assert new_root != old_root
    deadline = time.monotonic() + TIMEOUT
    while published() != {new_root}:
        assert time.monotonic() < deadline, f"old root still published: {published()}"
        time.sleep(0.1)
    assert_never_refused(chart_signer.op)
