"""The signer meshless.dev/spiffe against a real kube-apiserver serving the Pod Certificates
API (certificates.k8s.io/v1beta1, Node authorizer, NodeRestriction): requests made as the
pod's node are Issued with an X.509-SVID that openssl verifies against the CA; requests the
API server let through but that do not match the pod are Denied with their reason, and a
Warning Event; other signers' requests are never touched; the ClusterTrustBundle holds the
CA's roots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client

from meshless.pki.bundle import bundle_pem, parse_pem_certificates
from meshless.pki.ca import ca_from_secret_data
from meshless.podcert.trust_bundle import TRUST_BUNDLE_NAME
from tests.pcrs import kubelet_key, pcr_body

from .conftest import OperatorProcess, podcert_operator
from .kubehelpers import wait_event
from .podcerts import (
    BoundPod,
    condition,
    create_bound_pod,
    create_node,
    create_request,
    get_request,
    node_client,
    trust_bundle,
    wait_request,
)
from .rotationpeers import secret_data

TIMEOUT = 30
MAX_TTL_S = 2 * 3600  # the operator's cap in this module


@pytest.fixture(scope="module")
def signer(
    podcert_kubeconfig: str, pc_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    with podcert_operator(
        podcert_kubeconfig, pc_api, tmp_path_factory.mktemp("signer"), pod_certificate_max_ttl="2h"
    ) as op:
        yield op


@pytest.fixture
def pc_namespace(pc_api: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(pc_api)
    name = f"pc-{time.monotonic_ns() % 10**10}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def node(pc_api: client.ApiClient) -> Iterator[tuple[str, str]]:
    created = create_node(pc_api)
    yield created
    client.CoreV1Api(pc_api).delete_node(created[0])


@pytest.fixture
def pod(pc_api: client.ApiClient, pc_namespace: str, node: tuple[str, str]) -> BoundPod:
    return create_bound_pod(pc_api, pc_namespace, node)


def ca_roots(pc_api: client.ApiClient, op: OperatorProcess) -> list[x509.Certificate]:
    data = secret_data(client.CoreV1Api(pc_api), op.namespace, "meshless-ca")
    assert data is not None
    return list(ca_from_secret_data(data, datetime.now().astimezone()).roots)


def openssl_verify(chain_pem: str, roots_pem: str, tmp_path: Path) -> None:
    (tmp_path / "roots.pem").write_text(roots_pem)
    (tmp_path / "chain.pem").write_text(chain_pem)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem"),
         "-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "chain.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_request_from_the_pods_node_is_issued_an_svid_that_openssl_verifies(
    signer: OperatorProcess,
    pc_api: client.ApiClient,
    podcert_kubeconfig: str,
    pod: BoundPod,
    tmp_path: Path,
) -> None:
    kubelet = node_client(podcert_kubeconfig, pod.node)
    body = pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256"))
    answered = wait_request(pc_api, create_request(kubelet, body), timeout=TIMEOUT)
    assert condition(answered)["type"] == "Issued", answered["status"]
    status = answered["status"]
    chain = parse_pem_certificates(status["certificateChain"].encode())
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    spiffe = f"spiffe://cluster.local/ns/{pod.namespace}/sa/{pod.service_account}"
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe]
    assert san.get_values_for_type(x509.DNSName) == []
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The API server checked these against the leaf; so do we, and the cap of this operator.
    assert status["notAfter"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime.total_seconds() == MAX_TTL_S  # asked for 86400: capped, not refused
    roots = ca_roots(pc_api, signer)
    openssl_verify(status["certificateChain"], bundle_pem(roots).decode(), tmp_path)
    assert signer.counter("meshless_pod_certificates_signed_total") >= 1


def test_a_request_in_the_deprecated_shape_is_issued(
    signer: OperatorProcess, pc_api: client.ApiClient, podcert_kubeconfig: str, pod: BoundPod
) -> None:
    """1.35's pkixPublicKey + proofOfPossession, which 1.36 still serves."""
    kubelet = node_client(podcert_kubeconfig, pod.node)
    body = pcr_body(**pod.request_fields(), key=kubelet_key("ED25519"), legacy=True,
                    max_expiration_seconds=3600)  # fmt: skip
    answered = wait_request(pc_api, create_request(kubelet, body), timeout=TIMEOUT)
    assert condition(answered)["type"] == "Issued", answered["status"]
    leaf = parse_pem_certificates(answered["status"]["certificateChain"].encode())[0]
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds() == 3600


def test_an_unsupported_key_type_is_denied(
    signer: OperatorProcess, pc_api: client.ApiClient, podcert_kubeconfig: str, pod: BoundPod
) -> None:
    kubelet = node_client(podcert_kubeconfig, pod.node)
    body = pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP521"))
    answered = wait_request(pc_api, create_request(kubelet, body), timeout=TIMEOUT)
    cond = condition(answered)
    assert (cond["type"], cond["reason"]) == ("Denied", "UnsupportedKeyType")
    assert "ECDSAP256" in cond["message"]
    assert set(answered["status"]) == {"conditions"}
    wait_event(pc_api, pod.namespace, pod.name, "UnsupportedKeyType", timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"service_account": "admin"}, "ServiceAccountMismatch"),
        ({"pod_uid": "6b1bd1f4-0000-4000-8000-000000000000"}, "PodUIDMismatch"),
        ({"pod": "no-such-pod"}, "PodNotFound"),
    ],
    ids=["service account", "pod uid", "pod gone"],
)
def test_a_request_that_does_not_match_its_pod_is_denied(
    signer: OperatorProcess,
    pc_api: client.ApiClient,
    pod: BoundPod,
    change: dict[str, str],
    reason: str,
) -> None:
    """NodeRestriction refuses such requests from a node; anyone else allowed to create
    PodCertificateRequests (here the admin) gets them past the API server. The signer
    checks the pod as it is."""
    body = pcr_body(**{**pod.request_fields(), **change}, key=kubelet_key("ECDSAP256"))
    answered = wait_request(pc_api, create_request(pc_api, body), timeout=TIMEOUT)
    cond = condition(answered)
    assert (cond["type"], cond["reason"]) == ("Denied", reason), cond
    assert "certificateChain" not in answered["status"]
    # The Warning Event goes on the pod when it is the pod asked for, else on the request.
    about = pod.name if reason == "ServiceAccountMismatch" else answered["metadata"]["name"]
    wait_event(pc_api, pod.namespace, about, reason, timeout=TIMEOUT)


def test_a_request_for_another_signer_is_never_touched(
    signer: OperatorProcess, pc_api: client.ApiClient, podcert_kubeconfig: str, pod: BoundPod
) -> None:
    kubelet = node_client(podcert_kubeconfig, pod.node)
    other = create_request(
        kubelet,
        pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256"), signer="example.com/x"),
    )
    ours = create_request(kubelet, pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256")))
    wait_request(pc_api, ours, timeout=TIMEOUT)  # made after the other one, and answered
    untouched = get_request(pc_api, pod.namespace, other["metadata"]["name"])
    assert untouched["metadata"]["resourceVersion"] == other["metadata"]["resourceVersion"]
    assert not untouched.get("status")


def test_a_node_may_not_ask_for_a_pod_of_another_node(
    signer: OperatorProcess, pc_api: client.ApiClient, podcert_kubeconfig: str, pod: BoundPod
) -> None:
    """The API server's half of the bargain, which the signer relies on."""
    other_node = node_client(podcert_kubeconfig, "some-other-node")
    with pytest.raises(client.ApiException) as refused:
        create_request(other_node, pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256")))
    assert refused.value.status == 403


def test_the_cluster_trust_bundle_holds_the_ca_roots(
    signer: OperatorProcess, pc_api: client.ApiClient
) -> None:
    deadline = time.monotonic() + TIMEOUT
    while (bundle := trust_bundle(pc_api, TRUST_BUNDLE_NAME)) is None:
        assert time.monotonic() < deadline, "no ClusterTrustBundle"
        time.sleep(0.2)
    assert bundle["spec"]["signerName"] == "meshless.dev/spiffe"
    published = parse_pem_certificates(bundle["spec"]["trustBundle"].encode())
    assert published == ca_roots(pc_api, signer)


def test_describe_pod_shows_the_pods_current_certificate(
    signer: OperatorProcess, pc_api: client.ApiClient, podcert_kubeconfig: str, pod: BoundPod
) -> None:
    kubelet = node_client(podcert_kubeconfig, pod.node)
    body = pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256"))
    answered = wait_request(pc_api, create_request(kubelet, body), timeout=TIMEOUT)
    leaf = parse_pem_certificates(answered["status"]["certificateChain"].encode())[0]
    done = subprocess.run(
        [sys.executable, "-m", "meshless", "describe", "pod", pod.name, "-n", pod.namespace,
         "-o", "json"],
        env={**os.environ, "KUBECONFIG": podcert_kubeconfig},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    current = json.loads(done.stdout)["podCertificate"]
    assert current["request"] == answered["metadata"]["name"]
    assert (current["state"], current["serial"]) == ("Issued", f"{leaf.serial_number:x}")
    assert current["notAfter"] == answered["status"]["notAfter"]
