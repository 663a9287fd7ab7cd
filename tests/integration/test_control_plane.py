"""The local control plane is a real Kubernetes API: storage, RBAC with service-account
tokens, structural schemas, admission webhooks, and the pinned version."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from tests.conftest import ROOT, Kubectl
from tests.tools import kubectl_path


def pinned_kubernetes_version() -> str:
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBERNETES_VERSION not pinned in hack/versions.env")


def test_the_api_server_is_the_pinned_version(kubectl: Kubectl) -> None:
    version = json.loads(kubectl("get", "--raw", "/version").stdout)
    assert version["gitVersion"] == pinned_kubernetes_version()


def test_kubectl_is_the_pinned_build_of_the_api_servers_version(kubectl: Kubectl) -> None:
    """The tests' kubectl is hack/build-kubectl.sh's, never a kubectl from PATH, and it is the
    API server's own version (client and server versions agree)."""
    path = Path(kubectl_path())
    assert path == ROOT / ".cache" / "bin" / f"kubectl-{pinned_kubernetes_version()}" / "kubectl"
    versions = json.loads(kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == pinned_kubernetes_version()
    assert versions["serverVersion"]["gitVersion"] == pinned_kubernetes_version()


def test_a_secret_is_stored_and_read_back(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    payload = bytes(range(256))
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "blob"}, "data": {"b": base64.b64encode(payload).decode()}},
    )
    back = core.read_namespaced_secret("blob", namespace)
    assert base64.b64decode(back.data["b"]) == payload
    assert namespace in [n.metadata.name for n in core.list_namespace().items]


def test_rbac_refuses_a_service_account_token_until_a_role_allows(
    api_client: client.ApiClient, kubeconfig: str, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token

    as_reader = client.Configuration()
    as_reader.host = api_client.configuration.host
    as_reader.ssl_ca_cert = api_client.configuration.ssl_ca_cert
    as_reader.api_key = {"BearerToken": f"Bearer {token}"}
    reader = client.CoreV1Api(client.ApiClient(as_reader))

    with pytest.raises(client.ApiException) as refused:
        reader.list_namespaced_secret(namespace)
    assert refused.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in str(refused.value.body)

    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "secret-reader"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "secret-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    assert reader.list_namespaced_secret(namespace).items == []
    with pytest.raises(client.ApiException) as still_refused:
        reader.list_namespaced_config_map(namespace)
    assert still_refused.value.status == 403


class _Deny(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": review["request"]["uid"],
                "allowed": False,
                "status": {"code": 403, "message": "denied by the test webhook"},
            },
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def denying_webhook(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An HTTPS admission webhook on loopback that denies every request it sees."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "tls.crt").write_bytes(pem)
    (tmp_path / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = HTTPServer(("127.0.0.1", 0), _Deny)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], pem
    server.shutdown()


def test_admission_webhooks_are_called(
    api_client: client.ApiClient, namespace: str, denying_webhook: tuple[int, bytes]
) -> None:
    port, ca_pem = denying_webhook
    admission = client.AdmissionregistrationV1Api(api_client)
    name = f"deny-{namespace}"
    admission.create_validating_webhook_configuration(
        {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "deny.test.meshless.dev",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/",
                        "caBundle": base64.b64encode(ca_pem).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "timeoutSeconds": 5,
                }
            ],
        }
    )
    try:
        with pytest.raises(client.ApiException) as denied:
            client.CoreV1Api(api_client).create_namespaced_config_map(
                namespace, {"metadata": {"name": "x"}, "data": {"a": "b"}}
            )
        assert denied.value.status == 403
        assert "denied by the test webhook" in str(denied.value.body)
    finally:
        admission.delete_validating_webhook_configuration(name)
