"""Proof of enforcement through the operator, without a node: loopback servers stand in for
pods (their pod IP set to 127.0.0.1 through the status subresource). One serves STRICT, one
asks for a certificate but lets clients in without one, one speaks plaintext; the policy's
Enforced condition names the two bad pods, a Warning Event goes to the pod, and fixing them
flips Enforced to True within one probe interval."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from pathlib import Path

from kubernetes import client

from .conftest import OperatorFactory
from .kubehelpers import GROUP, VERSION, condition, wait_event, wait_secret
from .policyhelpers import create_pod, create_policy, wait_policy

MODES = {"STRICT": ssl.CERT_REQUIRED, "PERMISSIVE": ssl.CERT_OPTIONAL}
INTERVAL_S = 3


class SwitchableServer:
    """A loopback server on a fixed port whose behaviour can change: STRICT or PERMISSIVE
    TLS with the given identity files, or PLAINTEXT (echo)."""

    def __init__(self, identity: Path, mode: str) -> None:
        self.mode = mode
        self.contexts = {}
        for name, verify in MODES.items():
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(identity / "tls.crt", identity / "tls.key")
            context.load_verify_locations(identity / "ca.crt")
            context.verify_mode = verify
            self.contexts[name] = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.mode == "PLAINTEXT":
                with conn:
                    while data := conn.recv(1024):
                        conn.sendall(b"echo: " + data)
                return
            with self.contexts[self.mode].wrap_socket(conn, server_side=True) as tls:
                if tls.recv(1024):
                    tls.sendall(b"hello\n")
        except (ssl.SSLError, OSError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _running_on_loopback(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CoreV1Api(api).patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
    )


def _strict_counts(obj: dict) -> object:  # type: ignore[type-arg]
    return ((obj.get("status") or {}).get("enforcement") or {}).get("strict")


def _enforced(status: str) -> object:
    def check(obj: dict) -> bool:  # type: ignore[type-arg]
        cond = condition(obj, "Enforced")
        return bool(cond and cond["status"] == status)

    return check


def test_probes_prove_strict_and_name_the_pods_that_are_not(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    operator_factory(probe_interval=f"{INTERVAL_S}s", probe_timeout="2s")
    # The workload identity the servers present, issued by the operator for SA "default".
    client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "workloadidentities",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkloadIdentity",
            "metadata": {"name": "app"},
            "spec": {"serviceAccountName": "default"},
        },
    )
    secret = wait_secret(api_client, namespace, "app-mtls", lambda s: bool(s.data))
    identity = tmp_path / "identity"
    identity.mkdir()
    for key, value in secret.data.items():
        (identity / key).write_bytes(base64.b64decode(value))

    servers = {
        "good": SwitchableServer(identity, "STRICT"),
        "optional": SwitchableServer(identity, "PERMISSIVE"),
        "plain": SwitchableServer(identity, "PLAINTEXT"),
    }
    try:
        create_policy(api_client, namespace, "strict", "STRICT")
        for name, server in servers.items():
            create_pod(api_client, namespace, name, {"app": name}, ports=(server.port,))
            _running_on_loopback(api_client, namespace, name)

        failing = wait_policy(
            api_client,
            namespace,
            "strict",
            lambda o: _strict_counts(o) == {"proven": 1, "failing": 2, "unreachable": 0},
            timeout=60,
            what="one STRICT port proven and two failing",
        )
        assert condition(failing, "Enforced")["status"] == "False"  # type: ignore[index]
        enforcement = failing["status"]["enforcement"]
        assert enforcement["strict"] == {"proven": 1, "failing": 2, "unreachable": 0}
        observed = {(f["pod"], f["observed"]) for f in enforcement["failing"]}
        assert observed == {
            (f"{namespace}/optional", "PERMISSIVE"),
            (f"{namespace}/plain", "PLAINTEXT"),
        }
        message = condition(failing, "Enforced")["message"]  # type: ignore[index]
        assert f"{namespace}/optional" in message and f"{namespace}/plain" in message
        event = wait_event(api_client, namespace, "optional", "StrictNotEnforced", timeout=30)
        assert event.type == "Warning" and "PERMISSIVE" in event.message

        servers["optional"].mode = "STRICT"
        servers["plain"].mode = "STRICT"
        fixed = wait_policy(
            api_client,
            namespace,
            "strict",
            _enforced("True"),
            timeout=INTERVAL_S * 2 + 20,
            what="Enforced=True after the fix",
        )
        assert fixed["status"]["enforcement"]["strict"] == {
            "proven": 3,
            "failing": 0,
            "unreachable": 0,
        }
        assert fixed["status"]["enforcement"]["lastProven"]
    finally:
        for server in servers.values():
            server.close()
