"""The `node` fixture: the local cluster with a real node (hack/localnode.py), for tests that
run pods. The session starts the node next to the control plane of tests/conftest.py and
stops it at the end (a node already running, e.g. from `make cluster NODE=1`, is left running).
A machine that cannot run the node fails these tests with the reason; nothing is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Kubectl
from tests.node.pods import Node, shim_sockets, veth_interfaces

ROOT = Path(__file__).resolve().parents[2]
LOCALNODE = [sys.executable, str(ROOT / "hack" / "localnode.py")]
IMAGES = ROOT / ".cache" / "cluster" / "node" / "images.json"
START_TIMEOUT_S = 240


def _node_running() -> bool:
    pids = ROOT / ".cache" / "cluster" / "node" / "pids.json"
    if not pids.exists():
        return False
    return all(Path(f"/proc/{pid}").exists() for pid in json.loads(pids.read_text()).values())


@pytest.fixture(scope="session")
def node(kubeconfig: str, kubectl: Kubectl) -> Iterator[Node]:
    if os.environ.get("MESHLESS_TEST_KUBECONFIG"):
        pytest.fail("node tests run on the local cluster's node; unset MESHLESS_TEST_KUBECONFIG")
    check = subprocess.run([*LOCALNODE, "check"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail(check.stderr.strip() or check.stdout.strip())
    built = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-node.sh"), "--check"], capture_output=True, text=True
    )
    if built.returncode != 0:
        pytest.fail(built.stderr.strip())
    already_running = _node_running()
    veths_before = frozenset() if already_running else veth_interfaces()
    sockets_before = frozenset() if already_running else shim_sockets()
    started = subprocess.run(
        [*LOCALNODE, "up"], capture_output=True, text=True, timeout=START_TIMEOUT_S
    )
    if started.returncode != 0:
        pytest.fail(f"the node did not start:\n{started.stderr.strip()}")
    handle = Node(
        kubectl=kubectl,
        images=json.loads(IMAGES.read_text()),
        veths_before=veths_before,
        shim_sockets_before=sockets_before,
    )
    try:
        yield handle
    finally:
        if not already_running and not handle.stopped:
            subprocess.run([*LOCALNODE, "down"], capture_output=True, timeout=120)


# The operator, as the integration tests start it (one per test, stopped at its end).
from tests.integration.conftest import operator_factory  # noqa: E402, F401
