"""PodCertificate delivery on a real node: the kubelet makes the key and asks the signer
meshless.dev/spiffe through a PodCertificateRequest, the injector mounts the result where the
Secret would be, and everything else (mTLS between pods, refusal of a client without an
identity, the probes' Enforced) works as with Secrets. No Secret ever holds the key."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client

from tests.conftest import Kubectl
from tests.integration.conftest import OperatorFactory
from tests.integration.kubehelpers import condition
from tests.integration.policyhelpers import create_policy, wait_admission_label, wait_policy
from tests.node.pods import Node, pod
from tests.node.test_operator_on_node import IDENTITY_DIR, _switchable

pytestmark = pytest.mark.node

PROBE_INTERVAL_S = 5
POD_CERTIFICATES = {"delivery": "PodCertificate"}  # spec.identity of the policies
TRUST_DOMAIN = "cluster.local"  # the test operator's default
# argv: server IP, CA bundle, identity directory or "-" for none. Speaks first (the server of
# test_operator_on_node answers what it is sent).
CLIENT = r"""
import socket, ssl, sys
host, ca, identity = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False  # a SPIFFE peer is named by its URI SAN, printed below
ctx.load_verify_locations(ca)
if identity != "-":
    ctx.load_cert_chain(identity + "/tls.crt", identity + "/tls.key")
try:
    with socket.create_connection((host, 8443), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
            print("server", ",".join(uris))
            tls.sendall(b"hi\n")
            print("reply", tls.recv(1024).decode().strip())
except ssl.SSLError as err:
    print("tls-error", err.reason)
"""
CAT = "import sys; sys.stdout.write(open(sys.argv[1]).read())"
LIST = "import os, sys; print(' '.join(sorted(n for n in os.listdir(sys.argv[1]) if n[0] != '.')))"


def _file(node: Node, namespace: str, pod_name: str, name: str) -> str:
    return node.python(namespace, pod_name, CAT, f"{IDENTITY_DIR}/{name}")


def _uri_sans(chain_pem: str) -> list[str]:
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _requests(api_client: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "certificates.k8s.io", "v1beta1", namespace, "podcertificaterequests"
    )
    return list(listed["items"])


def test_pods_with_pod_certificates_talk_mtls_and_no_secret_holds_a_key(
    node: Node,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    operator_factory(
        identity_delivery="PodCertificate",
        probe_interval=f"{PROBE_INTERVAL_S}s",
        probe_timeout="2s",
    )
    create_policy(api_client, namespace, "strict", "STRICT", identity=POD_CERTIFICATES)
    wait_admission_label(api_client, namespace)
    core = client.CoreV1Api(api_client)
    for account in ("server", "client"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    python = node.images["python"]
    server = _switchable("server", python, "STRICT")
    server["spec"]["serviceAccountName"] = "server"
    caller = pod("client", python, ["sleep", "3600"], service_account="client")
    node.apply(namespace, server, caller)
    node.wait_ready(namespace, "server", "client")

    # The injector mounted a pod certificate of our signer, not a Secret.
    stored = core.read_namespaced_pod("server", namespace)
    volume = next(v for v in stored.spec.volumes if v.name == "meshless-identity")
    assert volume.secret is None
    assert volume.projected.sources[0].pod_certificate.signer_name == "meshless.dev/spiffe"
    assert stored.metadata.labels["meshless.dev/identity"] == "server"

    # tls.key, tls.crt and ca.crt where a Secret would put them.
    assert node.python(namespace, "server", LIST, IDENTITY_DIR).split() == [
        "ca.crt",
        "tls.crt",
        "tls.key",
    ]
    for name, account in (("server", "server"), ("client", "client")):
        chain = _file(node, namespace, name, "tls.crt")
        assert _uri_sans(chain) == [f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"]

    # The kubelet asked for it: an Issued request names the pod, its UID and its node.
    issued = [
        r
        for r in _requests(api_client, namespace)
        if r["spec"]["podName"] == "server" and r["spec"]["podUID"] == stored.metadata.uid
    ]
    assert issued, "no PodCertificateRequest for the server pod"
    assert issued[0]["spec"]["nodeName"] == stored.spec.node_name
    assert (condition(issued[0], "Issued") or {}).get("status") == "True"

    # No Secret anywhere holds the key, and none was made for these pods.
    key = _file(node, namespace, "server", "tls.key").encode()
    for secret in core.list_secret_for_all_namespaces().items:
        for value in (secret.data or {}).values():
            assert key.strip() not in base64.b64decode(value), (
                f"Secret {secret.metadata.namespace}/{secret.metadata.name} holds the pod's key"
            )
    assert core.list_namespaced_secret(namespace).items == []
    identities = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "meshless.dev", "v1alpha1", namespace, "workloadidentities"
    )
    assert identities["items"] == []

    # Two such pods talk mTLS; a client without an identity is refused.
    ip = node.pod_ip(namespace, "server")
    ca = f"{IDENTITY_DIR}/ca.crt"
    mutual = node.python(namespace, "client", CLIENT, ip, ca, IDENTITY_DIR)
    assert f"server spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/server" in mutual
    assert "reply hello" in mutual
    anonymous = node.python(namespace, "client", CLIENT, ip, ca, "-")
    assert "tls-error TLSV13_ALERT_CERTIFICATE_REQUIRED" in anonymous

    # The probes prove it: Enforced=True, and the policy says how its pods get identities.
    enforced = wait_policy(
        api_client,
        namespace,
        "strict",
        lambda o: (condition(o, "Enforced") or {}).get("status") == "True",
        timeout=PROBE_INTERVAL_S * 2 + 60,
        what="Enforced=True through the probes",
    )
    assert enforced["status"]["delivery"] == "PodCertificate"
    assert enforced["status"]["injectedPods"] == 2
    assert enforced["status"]["identities"] == 0  # no WorkloadIdentity serves them

    # `meshless describe pod` shows the certificate the kubelet fetched (its serial).
    command = ["describe", "pod", "server", "-n", namespace, "-o", "json"]
    described = subprocess.run(
        [sys.executable, "-m", "meshless", *command],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(described.stdout)
    leaf = x509.load_pem_x509_certificates(_file(node, namespace, "server", "tls.crt").encode())[0]
    assert report["identity"]["delivery"] == "PodCertificate"
    assert report["identity"]["spiffeID"] == f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/server"
    assert report["podCertificate"]["state"] == "Issued"
    assert report["podCertificate"]["serial"] == format(leaf.serial_number, "x")
    assert (condition(enforced, "Ready") or {}).get("status") == "True"


# A client that handshakes once a second for as long as it runs, loading its (refreshed)
# identity anew each time, printing "ok <server serial hex>" or "error <reason>".
HANDSHAKE_LOOP = r"""
import socket, ssl, sys, time
host, identity = sys.argv[1], sys.argv[2]
while True:
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(identity + "/ca.crt")
        ctx.load_cert_chain(identity + "/tls.crt", identity + "/tls.key")
        with socket.create_connection((host, 8443), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                serial = int(tls.getpeercert()["serialNumber"], 16)
                tls.sendall(b"hi\n")
                tls.recv(1024)
        print("ok", format(serial, "x"), flush=True)
    except (ssl.SSLError, OSError) as err:
        print("error", getattr(err, "reason", None) or err, flush=True)
    time.sleep(1)
"""
REFRESH_AFTER_MIN = 10  # the API's least: beginRefreshAt >= notBefore + 10 min
REFRESH_TIMEOUT_S = (REFRESH_AFTER_MIN + 5 + 4) * 60  # + the kubelet's jitter (< 5 min) + slack


@pytest.mark.timeout(REFRESH_TIMEOUT_S + 180)
def test_the_kubelet_refreshes_and_the_server_serves_the_new_certificate(
    node: Node,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubectl: Kubectl,
) -> None:
    """1-hour certificates, beginRefreshAt 10 minutes after issue: the kubelet fetches a new
    one and the server (loading its files per connection) presents it, with no failed
    handshake from a client that keeps connecting throughout."""
    operator_factory(
        identity_delivery="PodCertificate",
        pod_certificate_max_ttl="1h",
        pod_certificate_refresh_after=f"{REFRESH_AFTER_MIN}m",
    )
    create_policy(api_client, namespace, "strict", "STRICT", identity=POD_CERTIFICATES)
    wait_admission_label(api_client, namespace)
    core = client.CoreV1Api(api_client)
    for account in ("server", "client"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    python = node.images["python"]
    server = _switchable("server", python, "STRICT")
    server["spec"]["serviceAccountName"] = "server"
    node.apply(namespace, server)
    node.wait_ready(namespace, "server")
    first = x509.load_pem_x509_certificates(_file(node, namespace, "server", "tls.crt").encode())
    assert first[0].not_valid_after_utc - first[0].not_valid_before_utc <= timedelta(hours=1)
    first_serial = format(first[0].serial_number, "x")
    ip = node.pod_ip(namespace, "server")
    loop = ["python3", "-u", "-c", HANDSHAKE_LOOP, ip, IDENTITY_DIR]
    node.apply(namespace, pod("client", python, loop, service_account="client"))
    node.wait_ready(namespace, "client")

    deadline = time.monotonic() + REFRESH_TIMEOUT_S
    seen: list[str] = []
    while time.monotonic() < deadline:
        seen = kubectl("logs", "-n", namespace, "client").stdout.splitlines()
        if any(line.startswith("ok ") and line != f"ok {first_serial}" for line in seen):
            break
        time.sleep(15)
    assert any(line == f"ok {first_serial}" for line in seen), "never served the first one"
    served = {line.split()[1] for line in seen if line.startswith("ok ")}
    assert served - {first_serial}, f"no refreshed certificate within {REFRESH_TIMEOUT_S}s"
    assert [line for line in seen if not line.startswith("ok ")] == []  # no failed handshake
    # The new certificate is the answer to the kubelet's second request for the server pod.
    uid = core.read_namespaced_pod("server", namespace).metadata.uid
    chains = [
        r["status"]["certificateChain"]
        for r in _requests(api_client, namespace)
        if r["spec"]["podUID"] == uid and (r.get("status") or {}).get("certificateChain")
    ]
    issued = {
        format(x509.load_pem_x509_certificates(c.encode())[0].serial_number, "x") for c in chains
    }
    assert served - {first_serial} <= issued
