"""A Python server that requires client certificates, in a pod with a WorkloadIdentity-style
Secret mounted: a pod presenting an identity from the same CA is accepted, a pod without one
and a pod with a stranger's are refused at the handshake."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshless.pki.ca import bootstrap_self_signed
from tests.node.identities import CLIENT, TLS, TRUST_DOMAIN, identity, root_pem
from tests.node.pods import Node, pod, secret

pytestmark = pytest.mark.node

ROTATION_WITHIN_S = 90

# Reads the mounted files for each connection, so it always presents what the kubelet wrote;
# from one snapshot (the ..data directory the kubelet swaps atomically), so a certificate and
# a key of different generations are never paired.
SERVER = r"""
import os, socket, ssl
def context():
    for _ in range(5):
        snapshot = os.path.realpath("/identity/..data")
        try:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_cert_chain(snapshot + "/tls.crt", snapshot + "/tls.key")
            ctx.load_verify_locations(snapshot + "/ca.crt")
            return ctx
        except FileNotFoundError:  # the kubelet removed that snapshot meanwhile: take the new one
            continue
    raise RuntimeError("no stable snapshot of /identity")
srv = socket.create_server(("0.0.0.0", 8443))
while True:
    conn, _ = srv.accept()
    try:
        with context().wrap_socket(conn, server_side=True) as tls:
            uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
            tls.sendall(("hello " + ",".join(uris) + "\n").encode())
    except (ssl.SSLError, OSError) as err:
        print("refused:", err, flush=True)
"""

# argv: server IP, serial (hex) to wait for, seconds; connects again and again with the mounted
# identity, printing "ok <server serial>" or "error <reason>" for each handshake.
ROTATION_WATCHER = r"""
import socket, ssl, sys, time
host, wanted, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations("/identity/ca.crt")
ctx.load_cert_chain("/identity/tls.crt", "/identity/tls.key")
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, 8443), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                serial = tls.getpeercert()["serialNumber"].lower()
                tls.recv(1024)
        print("ok", serial, flush=True)
        if serial == wanted:
            break
    except (ssl.SSLError, OSError) as err:
        print("error", getattr(err, "reason", None) or err, flush=True)
    time.sleep(0.2)
"""


def test_server_requires_a_client_certificate_from_its_ca(node: Node, namespace: str) -> None:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed(TRUST_DOMAIN, now)
    stranger_ca, _ = bootstrap_self_signed(TRUST_DOMAIN, now)
    server_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/server"
    client_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/client"
    python = node.images["python"]
    sleep = ["sleep", "3600"]
    node.apply(
        namespace,
        secret("server-identity", identity(ca, server_id, now)[0], TLS),
        secret("client-identity", identity(ca, client_id, now)[0], TLS),
        secret("stranger-identity", identity(stranger_ca, client_id, now)[0], TLS),
        secret("trust-bundle", {"ca.crt": root_pem(ca)}),
        pod(
            "server",
            python,
            ["python3", "-u", "-c", SERVER],
            secrets={"server-identity": "/identity"},
            ready_port=8443,
        ),
        pod("client", python, sleep, secrets={"client-identity": "/identity"}),
        pod(
            "stranger",
            python,
            sleep,
            secrets={"stranger-identity": "/identity", "trust-bundle": "/trust"},
        ),
        pod("anonymous", python, sleep, secrets={"trust-bundle": "/trust"}),
    )
    node.wait_ready(namespace, "server", "client", "stranger", "anonymous")
    ip = node.pod_ip(namespace, "server")

    accepted = node.python(namespace, "client", CLIENT, ip, "/identity/ca.crt", "/identity")
    assert f"server {server_id}" in accepted
    assert f"reply hello {client_id}" in accepted

    anonymous = node.python(namespace, "anonymous", CLIENT, ip, "/trust/ca.crt", "-")
    assert "tls-error TLSV13_ALERT_CERTIFICATE_REQUIRED" in anonymous
    assert "reply" not in anonymous

    stranger = node.python(namespace, "stranger", CLIENT, ip, "/trust/ca.crt", "/identity")
    assert "tls-error TLSV1_ALERT_UNKNOWN_CA" in stranger
    assert "reply" not in stranger

    server_log = node.kubectl("logs", "-n", namespace, "server").stdout
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in server_log
    assert "CERTIFICATE_VERIFY_FAILED" in server_log


def test_rotated_secret_reaches_the_server_with_no_failed_handshake(
    node: Node, namespace: str
) -> None:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed(TRUST_DOMAIN, now)
    server_id = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/server"
    first, first_serial = identity(ca, server_id, now)
    python = node.images["python"]
    node.apply(
        namespace,
        secret("server-identity", first, TLS),
        secret("client-identity", identity(ca, f"{server_id}-client", now)[0], TLS),
        pod(
            "server",
            python,
            ["python3", "-u", "-c", SERVER],
            secrets={"server-identity": "/identity"},
            ready_port=8443,
        ),
        pod("client", python, ["sleep", "3600"], secrets={"client-identity": "/identity"}),
    )
    node.wait_ready(namespace, "server", "client")
    ip = node.pod_ip(namespace, "server")
    before = node.python(namespace, "client", ROTATION_WATCHER, ip, f"{first_serial:x}", "5")
    assert before.split() == ["ok", f"{first_serial:x}"]

    # what a renewal does to the Secret: a new key and certificate, same identity
    second, second_serial = identity(ca, server_id, datetime.now(UTC))
    node.apply(namespace, secret("server-identity", second, TLS))
    seen = node.python(
        namespace, "client", ROTATION_WATCHER, ip, f"{second_serial:x}", str(ROTATION_WITHIN_S)
    ).splitlines()

    assert seen, "no handshake at all"
    assert [line for line in seen if not line.startswith("ok ")] == []
    assert seen[-1] == f"ok {second_serial:x}", f"not rotated within {ROTATION_WITHIN_S}s"
    assert {line.split()[1] for line in seen} <= {f"{first_serial:x}", f"{second_serial:x}"}


# the project's own code, in a pod, on the files the kubelet mounted
READ_IDENTITY = r"""
from pathlib import Path
from cryptography import x509
from meshless.pki.svid import parse_certificate_chain
chain = parse_certificate_chain(Path("/identity/tls.crt").read_bytes())
san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
print(len(chain), *san.get_values_for_type(x509.UniformResourceIdentifier))
"""


def test_project_code_reads_the_mounted_identity_in_a_pod(node: Node, namespace: str) -> None:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed(TRUST_DOMAIN, now)
    workload = f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/workload"
    node.apply(
        namespace,
        secret("workload-identity", identity(ca, workload, now)[0], TLS),
        pod(
            "workload",
            node.images["python-meshless"],
            ["sleep", "3600"],
            secrets={"workload-identity": "/identity"},
        ),
    )
    node.wait_ready(namespace, "workload")
    # leaf and intermediate; the one URI SAN is the workload's SPIFFE ID
    assert node.python(namespace, "workload", READ_IDENTITY).split() == ["2", workload]
