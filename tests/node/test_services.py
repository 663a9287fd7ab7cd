"""Services on the node: kube-proxy (nftables mode) translates a ClusterIP for pods, for the
host and for the API server's webhook calls; CoreDNS answers `<svc>.<ns>.svc.cluster.local`
in pods; a pod's projected ServiceAccount token reaches the API server through the
`kubernetes` Service at https://kubernetes.default.svc, its certificate verified with the
mounted ca.crt."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.node.pods import Node, pod, secret

pytestmark = pytest.mark.node

KUBE_DNS_IP = "10.0.0.10"
KUBERNETES_SERVICE_IP = "10.0.0.1"
PROGRAMMED_WITHIN_S = 30.0  # pod Ready -> EndpointSlice -> kube-proxy's next sync

ECHO = r"""
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"pong " + self.rfile.readline())
socketserver.ThreadingTCPServer(("0.0.0.0", 8080), Echo).serve_forever()
"""

# argv: host (IP or name), port, seconds to keep trying; prints "reply ..." or "failed ..."
CLIENT = r"""
import socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"ping\n")
            print("reply", s.recv(100).decode().strip())
            break
    except OSError as err:
        if time.monotonic() > deadline:
            print("failed", type(err).__name__, err)
            break
        time.sleep(0.3)
"""

# argv: names; prints one JSON object: name -> sorted IPv4 addresses (or the error)
RESOLVE = r"""
import json, socket, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})
    except OSError as err:
        out[name] = "error: " + str(err)
print(json.dumps(out))
"""

# In a pod: the mounted token and CA, the `kubernetes` Service's address from the environment
# the kubelet sets, a SelfSubjectReview (every authenticated user may create one).
WHOAMI = r"""
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(sa + "/token").read()
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")  # verifies the name, too
env = {k: os.environ.get(k) for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")}
review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
req = urllib.request.Request(
    "https://kubernetes.default.svc/apis/authentication.k8s.io/v1/selfsubjectreviews",
    data=json.dumps(review).encode(),
    headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
    review = json.loads(resp.read())
print(json.dumps({"env": env, "namespace": open(sa + "/namespace").read(),
                  "user": review["status"]["userInfo"]}))
"""

# A validating webhook server in a pod: refuses what it is asked about, naming itself.
HOOK = r"""
import http.server, json, ssl
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "response": {"uid": review["request"]["uid"], "allowed": False,
                               "status": {"code": 403, "message": "refused by the hook pod"}}}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Hook)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def service(name: str, app: str, port: int, target: int) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": app},
            "ports": [{"port": port, "targetPort": target, "protocol": "TCP"}],
        },
    }


def cluster_ip(node: Node, namespace: str, name: str) -> str:
    ip = node.kubectl(
        "get", "service", "-n", namespace, name, "-o", "jsonpath={.spec.clusterIP}"
    ).stdout.strip()
    assert ip.startswith("10.0.0."), f"Service {name} has no ClusterIP in 10.0.0.0/24: {ip!r}"
    return ip


def host_client(ip: str, port: int, within_s: float) -> str:
    """The CLIENT program's answer, from this (host) process."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            with socket.create_connection((ip, port), timeout=2) as s:
                s.sendall(b"ping\n")
                return "reply " + s.recv(100).decode().strip()
        except OSError as err:
            if time.monotonic() > deadline:
                return f"failed {type(err).__name__} {err}"
            time.sleep(0.3)


def _echo_service_and_client(node: Node, namespace: str) -> str:
    """Pods `echo` (behind the Service `echo`, port 80 -> 8080) and `client`, both Ready; the
    Service's ClusterIP."""
    python = node.images["python"]
    node.apply(
        namespace,
        pod("echo", python, ["python3", "-c", ECHO], labels={"app": "echo"}, ready_port=8080),
        pod("client", python, ["sleep", "3600"]),
        service("echo", "echo", 80, 8080),
    )
    node.wait_ready(namespace, "echo", "client")
    return cluster_ip(node, namespace, "echo")


def test_cluster_ip_reaches_its_endpoints_from_pods_and_from_the_host(
    node: Node, namespace: str
) -> None:
    ip = _echo_service_and_client(node, namespace)
    within = str(PROGRAMMED_WITHIN_S)

    assert node.python(namespace, "client", CLIENT, ip, "80", within).strip() == "reply pong ping"
    assert host_client(ip, 80, PROGRAMMED_WITHIN_S) == "reply pong ping"
    # a pod reaching itself through its own Service (hairpin: kube-proxy masquerades it)
    assert node.python(namespace, "echo", CLIENT, ip, "80", within).strip() == "reply pong ping"

    # no endpoint, no answer: the pod goes, and the ClusterIP stops leading anywhere
    node.kubectl("delete", "pod", "-n", namespace, "echo", "--wait=true")
    refused = host_client(ip, 80, 0)
    deadline = time.monotonic() + PROGRAMMED_WITHIN_S
    while refused.startswith("reply") and time.monotonic() < deadline:
        time.sleep(0.3)
        refused = host_client(ip, 80, 0)
    assert refused.startswith("failed"), refused


def test_service_names_resolve_in_pods(node: Node, namespace: str) -> None:
    ip = _echo_service_and_client(node, namespace)

    resolv = node.kubectl("exec", "-n", namespace, "client", "--", "cat", "/etc/resolv.conf")
    lines = resolv.stdout.splitlines()
    assert f"nameserver {KUBE_DNS_IP}" in lines
    assert f"search {namespace}.svc.cluster.local svc.cluster.local cluster.local" in lines

    fqdn = f"echo.{namespace}.svc.cluster.local"
    names = [fqdn, "echo", f"echo.{namespace}", "kubernetes.default.svc.cluster.local"]
    answers = json.loads(node.python(namespace, "client", RESOLVE, *names))
    assert answers == {
        fqdn: [ip],
        "echo": [ip],  # through the pod's search path
        f"echo.{namespace}": [ip],
        "kubernetes.default.svc.cluster.local": [KUBERNETES_SERVICE_IP],
    }
    missing = json.loads(node.python(namespace, "client", RESOLVE, f"nothing.{namespace}.svc"))
    assert str(missing[f"nothing.{namespace}.svc"]).startswith("error"), missing

    # and the name leads to the endpoint
    reply = node.python(namespace, "client", CLIENT, fqdn, "80", str(PROGRAMMED_WITHIN_S))
    assert reply.strip() == "reply pong ping"


def test_pod_token_reaches_the_api_server_through_the_kubernetes_service(
    node: Node, namespace: str
) -> None:
    node.apply(namespace, pod("caller", node.images["python"], ["sleep", "3600"]))
    node.wait_ready(namespace, "caller")

    # the ServiceAccount admission plugin mounted a projected token (kube-api-access-*)
    spec = json.loads(node.kubectl("get", "pod", "-n", namespace, "caller", "-o", "json").stdout)[
        "spec"
    ]
    projected = [v for v in spec["volumes"] if v["name"].startswith("kube-api-access-")]
    assert len(projected) == 1, spec["volumes"]
    sources = projected[0]["projected"]["sources"]
    assert any("serviceAccountToken" in s for s in sources), sources

    answer = json.loads(node.python(namespace, "caller", WHOAMI))
    assert answer["env"] == {
        "KUBERNETES_SERVICE_HOST": KUBERNETES_SERVICE_IP,
        "KUBERNETES_SERVICE_PORT": "443",
    }
    assert answer["namespace"] == namespace
    user = answer["user"]
    assert user["username"] == f"system:serviceaccount:{namespace}:default"
    assert f"system:serviceaccounts:{namespace}" in user["groups"]
    # a token bound to this pod (the kubelet's TokenRequest), not a legacy Secret token
    assert user["extra"]["authentication.kubernetes.io/pod-name"] == ["caller"]


def test_the_api_server_certificate_names_the_kubernetes_service(node: Node) -> None:
    """Its serving certificate, fetched through the Service's IP (kube-proxy on the host)."""
    import ssl

    with socket.create_connection((KUBERNETES_SERVICE_IP, 443), timeout=5) as raw:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # read, then checked below
        with ctx.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    san = (
        x509.load_der_x509_certificate(der)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert {
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    } <= set(san.get_values_for_type(x509.DNSName))
    assert KUBERNETES_SERVICE_IP in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _webhook_tls(dns_name: str) -> tuple[bytes, dict[str, bytes]]:
    """A CA (PEM) and a serving certificate for `dns_name` signed by it (tls.crt, tls.key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hook test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), {"tls.crt": leaf.public_bytes(pem), "tls.key": key_pem}


def test_the_api_server_calls_a_webhook_through_its_service(node: Node, namespace: str) -> None:
    """As for the chart's webhooks: a `service` reference, resolved by the API server to the
    Service's ClusterIP, which kube-proxy on the host translates to the pod."""
    ca_pem, tls = _webhook_tls(f"hook.{namespace}.svc")
    node.apply(
        namespace,
        secret("hook-tls", tls),
        pod(
            "hook",
            node.images["python"],
            ["python3", "-c", HOOK],
            labels={"app": "hook"},
            secrets={"hook-tls": "/tls"},
            ready_port=8443,
        ),
        service("hook", "hook", 443, 8443),
    )
    node.wait_ready(namespace, "hook")
    config = f"hook-{uuid.uuid4().hex[:8]}"
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": config},
        "webhooks": [
            {
                "name": "hook.services.node.test",
                "clientConfig": {
                    "service": {"namespace": namespace, "name": "hook", "port": 443},
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
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"hooked": "yes"}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
            }
        ],
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(webhook))
    try:
        probe = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "probe", "namespace": namespace, "labels": {"hooked": "yes"}},
        }
        # the API server sees the new configuration within a moment; dry runs change nothing
        deadline = time.monotonic() + PROGRAMMED_WITHIN_S
        while True:
            attempt = node.kubectl(
                "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
            )
            if "refused by the hook pod" in attempt.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert attempt.returncode != 0
        assert "refused by the hook pod" in attempt.stderr, attempt.stdout + attempt.stderr
    finally:
        node.kubectl("delete", "validatingwebhookconfiguration", config, check=False)
