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
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from meshless.pki.bundle import parse_pem_certificates
from meshless.podcert.trust_bundle import TRUST_BUNDLE_NAME
from tests.helmtool import render
from tests.pcrs import kubelet_key, pcr_body

from .conftest import PODCERT_STATE, OperatorProcess, remove_webhook_configurations
from .podcerts import (
    condition,
    create_bound_pod,
    create_node,
    create_request,
    node_client,
    trust_bundle,
    wait_request,
)
from .rotationpeers import fingerprints
from .test_ca_rotation import CAWatcher, meshless_cli
from .test_chart import assert_never_refused, operator_requests

TIMEOUT = 60
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
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def pc_api(podcert_kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=podcert_kubeconfig)


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


def test_the_cluster_trust_bundle_follows_a_root_rotation(
    chart_signer: ChartSigner,
    pc_api: client.ApiClient,
    podcert_kubeconfig: str,
    pc_namespace: str,
) -> None:
    ca = CAWatcher(client.CoreV1Api(pc_api), chart_signer.namespace)
    (old_root,) = fingerprints(ca.data()["ca.crt"])

    def published() -> set[str]:
        bundle = trust_bundle(pc_api, TRUST_BUNDLE_NAME)
        assert bundle is not None
        return fingerprints(bundle["spec"]["trustBundle"].encode())

    assert published() == {old_root}
    rotate = meshless_cli(podcert_kubeconfig, "--namespace", chart_signer.namespace, "rotate")
    assert rotate.returncode == 0, rotate.stderr
    both_seen = False
    deadline = time.monotonic() + 2 * TIMEOUT
    while ca.state().last_root_rotation is None:
        assert time.monotonic() < deadline, f"the rotation did not end: {ca.state()}"
        roots = published()
        both_seen = both_seen or (len(roots) == 2 and old_root in roots)
        time.sleep(0.1)
    (new_root,) = fingerprints(ca.data()["ca.crt"])
    assert new_root != old_root and both_seen
    deadline = time.monotonic() + TIMEOUT
    while published() != {new_root}:
        assert time.monotonic() < deadline, f"old root still published: {published()}"
        time.sleep(0.1)
    # A certificate signed now chains to the new root only.
    node = create_node(pc_api)
    try:
        pod = create_bound_pod(pc_api, pc_namespace, node)
        body = pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256"))
        issued = wait_request(
            pc_api, create_request(node_client(podcert_kubeconfig, pod.node), body), timeout=TIMEOUT
        )
    finally:
        client.CoreV1Api(pc_api).delete_node(node[0])
    chain = parse_pem_certificates(issued["status"]["certificateChain"].encode())
    roots = parse_pem_certificates(ca.data()["ca.crt"])
    assert chain[-1].issuer == roots[0].subject
    assert_never_refused(chart_signer.op)
