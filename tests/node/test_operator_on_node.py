"""The operator with a real node: pods injected by the admission webhook run, the prober
proves (or not) what each STRICT port enforces, and a renewal the operator makes reaches the
process with no failed handshake."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.integration.conftest import OperatorFactory
from tests.integration.kubehelpers import (
    condition,
    create_identity,
    is_ready,
    wait_event,
)
from tests.integration.kubehelpers import wait_identity as wait_wid
from tests.integration.policyhelpers import create_policy, wait_admission_label, wait_policy
from tests.node.pods import Node, pod
from tests.node.test_mtls import SERVER

pytestmark = pytest.mark.node

PROBE_INTERVAL_S = 5
IDENTITY_DIR = "/var/run/secrets/meshless"

# A server on 8443 whose behaviour the test switches through a control port (9000, not a
# declared port, so never probed): STRICT, PERMISSIVE (certificate optional) or PLAINTEXT.
SWITCHABLE = r"""
import os, socket, ssl, sys, threading
mode = [sys.argv[1]]
def context(verify):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    d = os.environ["DIR"]
    ctx.load_cert_chain(d + "/tls.crt", d + "/tls.key")
    ctx.load_verify_locations(d + "/ca.crt")
    ctx.verify_mode = verify
    return ctx
def control():
    srv = socket.create_server(("127.0.0.1", 9000))
    while True:
        conn, _ = srv.accept()
        with conn:
            mode[0] = conn.recv(64).decode().strip()
            conn.sendall(b"ok\n")
threading.Thread(target=control, daemon=True).start()
def handle(conn):
    conn.settimeout(10)
    try:
        if mode[0] == "PLAINTEXT":
            with conn:
                while data := conn.recv(1024):
                    conn.sendall(b"echo " + data)
            return
        verify = ssl.CERT_REQUIRED if mode[0] == "STRICT" else ssl.CERT_OPTIONAL
        with context(verify).wrap_socket(conn, server_side=True) as tls:
            if tls.recv(1024):
                tls.sendall(b"hello\n")
    except (ssl.SSLError, OSError):
        pass
    finally:
        conn.close()
srv = socket.create_server(("0.0.0.0", 8443))
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""

# argv: server IP, the first certificate's serial (hex), seconds: handshakes again and again
# with the mounted identity until the server presents another certificate, printing
# "ok <serial>" or "error <reason>" for each (serials compared as numbers).
ROTATION_AWAY = r"""
import socket, ssl, sys, time
host, first, seconds = sys.argv[1], int(sys.argv[2], 16), float(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations("/identity/ca.crt")
ctx.load_cert_chain("/identity/tls.crt", "/identity/tls.key")
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with socket.create_connection((host, 8443), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                serial = int(tls.getpeercert()["serialNumber"], 16)
                tls.recv(1024)
        print("ok", format(serial, "x"), flush=True)
        if serial != first:
            break
    except (ssl.SSLError, OSError) as err:
        print("error", getattr(err, "reason", None) or err, flush=True)
    time.sleep(0.2)
"""

SWITCH = r"""
import socket, sys
with socket.create_connection(("127.0.0.1", 9000), timeout=5) as s:
    s.sendall(sys.argv[1].encode()); print(s.recv(16).decode().strip())
"""


def _switchable(name: str, image: str, mode: str) -> dict:  # type: ignore[type-arg]
    body = pod(name, image, ["python3", "-u", "-c", SWITCHABLE, mode], labels={"app": name})
    container = body["spec"]["containers"][0]
    container["env"] = [{"name": "DIR", "value": IDENTITY_DIR}]
    container["ports"] = [{"containerPort": 8443}]
    container["readinessProbe"] = {"tcpSocket": {"port": 8443}, "periodSeconds": 1}
    return body


def _strict_counts(obj: dict) -> object:  # type: ignore[type-arg]
    return ((obj.get("status") or {}).get("enforcement") or {}).get("strict")


def test_probes_on_real_pods_name_the_ones_that_do_not_enforce(
    node: Node,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    operator_factory(probe_interval=f"{PROBE_INTERVAL_S}s", probe_timeout="2s")
    create_policy(api_client, namespace, "strict", "STRICT")
    core = client.CoreV1Api(api_client)
    wait_admission_label(api_client, namespace)
    python = node.images["python"]
    node.apply(
        namespace,
        _switchable("good", python, "STRICT"),
        _switchable("optional", python, "PERMISSIVE"),
        _switchable("plain", python, "PLAINTEXT"),
    )
    node.wait_ready(namespace, "good", "optional", "plain")
    stored = core.read_namespaced_pod("good", namespace)
    assert stored.metadata.labels["meshless.dev/identity"] == "default"  # injected
    assert any(
        m.mount_path.rstrip("/") == IDENTITY_DIR for m in stored.spec.containers[0].volume_mounts
    )

    failing = wait_policy(
        api_client,
        namespace,
        "strict",
        lambda o: _strict_counts(o) == {"proven": 1, "failing": 2, "unreachable": 0},
        timeout=90,
        what="one STRICT port proven, two failing",
    )
    enforced = condition(failing, "Enforced")
    assert enforced is not None and enforced["status"] == "False"
    assert (
        f"{namespace}/optional" in enforced["message"]
        and f"{namespace}/plain" in enforced["message"]
    )
    observed = {(f["pod"], f["observed"]) for f in failing["status"]["enforcement"]["failing"]}
    assert observed == {
        (f"{namespace}/optional", "PERMISSIVE"),
        (f"{namespace}/plain", "PLAINTEXT"),
    }
    event = wait_event(api_client, namespace, "optional", "StrictNotEnforced", timeout=30)
    assert event.type == "Warning"

    for name in ("optional", "plain"):
        assert node.python(namespace, name, SWITCH, "STRICT").strip() == "ok"
    fixed = wait_policy(
        api_client,
        namespace,
        "strict",
        lambda o: (condition(o, "Enforced") or {}).get("status") == "True",
        timeout=PROBE_INTERVAL_S * 2 + 30,
        what="Enforced=True within an interval of the fix",
    )
    assert _strict_counts(fixed) == {"proven": 3, "failing": 0, "unreachable": 0}


def test_a_renewal_by_the_operator_reaches_the_server_process(
    node: Node,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    operator_factory()
    # ttl 10m, renewBefore 9m: renewed 30-60 s after issuance (with jitter).
    create_identity(api_client, namespace, "server", ttl="10m", renewBefore="9m")
    create_identity(api_client, namespace, "client", ttl="1h")
    first = wait_wid(api_client, namespace, "server", is_ready)
    wait_wid(api_client, namespace, "client", is_ready)
    python = node.images["python"]
    core = client.CoreV1Api(api_client)
    for account in ("server", "client"):  # each pod runs as its identity's ServiceAccount
        core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    node.apply(
        namespace,
        pod(
            "server",
            python,
            ["python3", "-u", "-c", SERVER],
            secrets={"server-mtls": "/identity"},
            ready_port=8443,
            service_account="server",
        ),
        pod(
            "client",
            python,
            ["sleep", "3600"],
            secrets={"client-mtls": "/identity"},
            service_account="client",
        ),
    )
    node.wait_ready(namespace, "server", "client")
    ip = node.pod_ip(namespace, "server")
    first_serial = first["status"]["serialNumber"]
    wait_wid(
        api_client,
        namespace,
        "server",
        lambda o: (o.get("status") or {}).get("serialNumber") not in (None, first_serial),
        timeout=120,
        what="a renewal",
    )
    # The kubelet syncs mounted Secrets every 10 s here (syncFrequency); renewals come every
    # 30-60 s, so the server may skip one: any certificate after the first will do.
    seen = node.python(namespace, "client", ROTATION_AWAY, ip, first_serial, "100").splitlines()
    assert seen, "no handshake at all"
    assert [line for line in seen if not line.startswith("ok ")] == []  # no failed handshake
    last = int(seen[-1].split()[1], 16)
    assert last != int(first_serial, 16), "the renewed certificate never reached the server"
    renewals = (
        client.CoreV1Api(api_client)
        .list_namespaced_event(
            namespace, field_selector="involvedObject.name=server,reason=Renewed"
        )
        .items
    )
    assert any(format(last, "x") in e.message for e in renewals), "not a renewal of ours"
