"""kube-network-policies on the node: a NetworkPolicy that admits only labelled peers on port
8443 drops a plaintext connection from an unlabelled pod and lets a labelled pod through."""

from __future__ import annotations

import time

import pytest

from tests.node.pods import Node, pod

pytestmark = pytest.mark.node

ENFORCED_WITHIN_S = 30

ECHO = r"""
import socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"pong " + self.rfile.readline())
socketserver.ThreadingTCPServer(("0.0.0.0", 8443), Echo).serve_forever()
"""

# argv: server IP; prints "reply ..." or "failed <exception type>"
PLAINTEXT_CLIENT = r"""
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 8443), timeout=3) as s:
        s.sendall(b"ping\n")
        print("reply", s.recv(100).decode().strip())
except OSError as err:
    print("failed", type(err).__name__)
"""


def test_policy_admits_only_labelled_peers(node: Node, namespace: str) -> None:
    python = node.images["python"]
    node.apply(
        namespace,
        pod("echo", python, ["python3", "-c", ECHO], labels={"app": "echo"}, ready_port=8443),
        pod("granted", python, ["sleep", "3600"], labels={"access": "granted"}),
        pod("other", python, ["sleep", "3600"]),
    )
    node.wait_ready(namespace, "echo", "granted", "other")
    ip = node.pod_ip(namespace, "echo")

    def attempt(client: str) -> str:
        return node.python(namespace, client, PLAINTEXT_CLIENT, ip).strip()

    # without a policy both get through: what follows is the policy's doing
    assert attempt("granted") == "reply pong ping"
    assert attempt("other") == "reply pong ping"

    node.apply(
        namespace,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "only-granted"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "echo"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"podSelector": {"matchLabels": {"access": "granted"}}}],
                        "ports": [{"protocol": "TCP", "port": 8443}],
                    }
                ],
            },
        },
    )
    deadline = time.monotonic() + ENFORCED_WITHIN_S
    while (result := attempt("other")) == "reply pong ping":
        assert time.monotonic() < deadline, f"policy not enforced after {ENFORCED_WITHIN_S}s"
    assert result == "failed TimeoutError"  # dropped, not refused: no reply at all
    assert attempt("granted") == "reply pong ping"
    assert attempt("other") == "failed TimeoutError"
