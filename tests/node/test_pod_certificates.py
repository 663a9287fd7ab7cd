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
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client

from meshless.podcert.trust_bundle import TRUST_BUNDLE_NAME
from tests.conftest import Kubectl
from tests.integration.conftest import OperatorFactory
from tests.integration.kubehelpers import condition
from tests.integration.podcerts import trust_bundle
from tests.integration.policyhelpers import create_policy, wait_admission_label, wait_policy
from tests.integration.rotationpeers import fingerprints, leaf_root
from tests.integration.test_ca_rotation import CAWatcher, meshless_cli
from tests.node.identities import CLIENT
from tests.node.pods import Node, pod
from tests.node.test_operator_on_node import IDENTITY_DIR, _switchable

pytestmark = pytest.mark.node

PROBE_INTERVAL_S = 5
POD_CERTIFICATES = {"delivery": "PodCertificate"}  # spec.identity of the policies
TRUST_DOMAIN = "cluster.local"  # the test operator's default
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
    mutual = node.python(namespace, "client", CLIENT, ip, ca, IDENTITY_DIR, "hi")
    assert f"server spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/server" in mutual
    assert "reply hello" in mutual
    # Nothing sent first: the refusal is the server's alert, read by the client's first read
    # (a line sent after the server had closed could be answered with a reset instead).
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
KUBELET_JITTER_MIN = 5  # the kubelet refreshes within a few minutes after beginRefreshAt
SETTLE_S = 60  # the CA's settle time: > the kubelet's sync period (10 s) for ca.crt
# Issue, then each pod's refresh under the new root, then Finish and ca.crt without the old root.
ROTATION_TIMEOUT_S = (REFRESH_AFTER_MIN + KUBELET_JITTER_MIN + 5) * 60
AFTER_FINISH_S = 60  # handshakes go on this long with only the new root in ca.crt


def _roots_of(pem: str) -> set[str]:
    return fingerprints(pem.encode())


@pytest.mark.timeout(ROTATION_TIMEOUT_S + AFTER_FINISH_S + 300)
def test_a_root_rotation_under_serving_pods_fails_no_handshake(
    node: Node,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubectl: Kubectl,
    kubeconfig: str,
) -> None:
    """A whole root rotation while two pods with PodCertificates talk mTLS once a second
    (both sides loading their files anew for every connection), 1-hour certificates with
    beginRefreshAt 10 minutes after issue:

    - Prepare: the ClusterTrustBundle, and so each pod's ca.crt, carries both roots;
    - Switch: the kubelets' refreshes bring certificates under the new root, which the
      server presents and the client's certificate carries (the kubelet refresh, end to end);
    - Finish only once both pods' current certificates chain to the new root; then the old
      root leaves the ClusterTrustBundle and the pods' ca.crt;

    and not one handshake fails from the first to a minute after Finish."""
    op = operator_factory(
        identity_delivery="PodCertificate",
        pod_certificate_max_ttl="1h",
        pod_certificate_refresh_after=f"{REFRESH_AFTER_MIN}m",
        ca_settle_time=f"{SETTLE_S}s",
        ca_rotation_window="10s",
    )
    core = client.CoreV1Api(api_client)
    ca = CAWatcher(core, op.namespace)
    create_policy(api_client, namespace, "strict", "STRICT", identity=POD_CERTIFICATES)
    wait_admission_label(api_client, namespace)
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
    (old_root,) = _roots_of(_file(node, namespace, "client", "ca.crt"))

    def handshakes() -> list[str]:
        return kubectl("logs", "-n", namespace, "client").stdout.splitlines()

    def wait_for(what: str, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            failed = [line for line in handshakes() if not line.startswith("ok ")]
            assert failed == [], f"failed handshakes while waiting for {what}: {failed[:5]}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f}s"
            time.sleep(5)

    wait_for("a first handshake", lambda: f"ok {first_serial}" in handshakes(), 60)
    rotate = meshless_cli(kubeconfig, "--namespace", op.namespace, "rotate")
    assert rotate.returncode == 0, rotate.stderr
    ca.wait(lambda s: s.phase.value == "Prepare", 60, "Prepare")
    both: dict[str, float] = {}  # pod -> seconds after rotate when its ca.crt held two roots
    started = time.monotonic()

    def both_roots_everywhere() -> bool:
        for name in ("server", "client"):
            if name not in both and len(_roots_of(_file(node, namespace, name, "ca.crt"))) == 2:
                both[name] = time.monotonic() - started
        return len(both) == 2

    wait_for("both roots in every pod's ca.crt", both_roots_everywhere, SETTLE_S + 60)
    assert ca.state().phase.value == "Prepare", "switched before the pods trusted the new root"
    ca.wait(lambda s: s.phase.value == "Switch", SETTLE_S + 60, "Switch")
    new_root = (_roots_of(ca.data()["ca.crt"].decode()) - {old_root}).pop()

    def finished() -> bool:
        return ca.state().last_root_rotation is not None

    wait_for("Finish", finished, ROTATION_TIMEOUT_S)
    rotated_in = time.monotonic() - started
    # Finish came only once both pods' current certificates chain to the new root.
    roots = ca.roots()
    for name in ("server", "client"):
        chain = _file(node, namespace, name, "tls.crt").encode()
        assert leaf_root(chain, roots) == new_root, name

    def new_root_only() -> bool:
        return all(
            _roots_of(_file(node, namespace, name, "ca.crt")) == {new_root}
            for name in ("server", "client")
        )

    wait_for("ca.crt with the new root only", new_root_only, 120)
    bundle = trust_bundle(api_client, TRUST_BUNDLE_NAME)
    assert bundle is not None and _roots_of(bundle["spec"]["trustBundle"]) == {new_root}
    until = time.monotonic() + AFTER_FINISH_S
    wait_for("a minute after Finish", lambda: time.monotonic() > until, AFTER_FINISH_S + 30)

    seen = handshakes()
    assert [line for line in seen if not line.startswith("ok ")] == []  # no failed handshake
    served = {line.split()[1] for line in seen if line.startswith("ok ")}
    assert first_serial in served
    refreshed = served - {first_serial}
    assert refreshed, "the server never presented a refreshed certificate"
    # What the server presents at the end is the answer to the kubelet's later request, under
    # the new root.
    last = x509.load_pem_x509_certificates(_file(node, namespace, "server", "tls.crt").encode())
    assert format(last[0].serial_number, "x") == seen[-1].split()[1]
    uid = core.read_namespaced_pod("server", namespace).metadata.uid
    chains = [
        r["status"]["certificateChain"]
        for r in _requests(api_client, namespace)
        if r["spec"]["podUID"] == uid and (r.get("status") or {}).get("certificateChain")
    ]
    issued = {
        format(x509.load_pem_x509_certificates(c.encode())[0].serial_number, "x") for c in chains
    }
    assert seen[-1].split()[1] in issued
    print(
        f"root rotation under serving pods: {len(seen)} handshakes, 0 failed; ca.crt with both"
        f" roots after {both}; Finish {rotated_in:.0f}s after rotate; serials {sorted(served)}"
    )
