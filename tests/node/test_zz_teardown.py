"""Stopping the node leaves nothing behind: no process, shim, mount, network namespace,
interface, route, nftables/iptables rule or cgroup. Runs last among the node tests (file name): it
stops the session's node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.node.pods import NODE_STATE, ROOT, Node, shim_sockets, veth_interfaces

pytestmark = pytest.mark.node


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in argv for n in needles):
            found.append(f"{proc.name}: {argv[:200]}")
    return found


def _sh(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


def test_stopping_the_node_leaves_nothing_behind(node: Node) -> None:
    # a pod running at the time of the stop, so there is something to clean up
    node.kubectl(
        "run",
        "last",
        f"--image={node.images['busybox']}",
        "--image-pull-policy=Never",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    )
    node.wait_ready("default", "last")
    assert _sh("ip", "link", "show", "meshless0").returncode == 0

    stopped = node.stop()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr

    assert _processes_mentioning(str(NODE_STATE), str(ROOT / ".cache" / "bin" / "node-")) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(NODE_STATE) not in mounts
    assert _sh("ip", "link", "show", "meshless0").returncode != 0
    assert veth_interfaces() <= node.veths_before
    assert shim_sockets() <= node.shim_sockets_before
    ruleset = _sh("nft", "list", "ruleset").stdout
    assert "kube-network-policies" not in ruleset
    assert "KUBE-" not in ruleset
    assert "kube-proxy" not in ruleset  # its nftables mode's tables, ip and ip6
    assert "meshless-node" not in ruleset
    assert _sh("ip", "route", "show", "10.0.0.0/24").stdout == ""  # the Service range's route
    assert list(Path("/sys/fs/cgroup").glob("*/meshless")) == []
    assert not NODE_STATE.exists()
    gone = node.kubectl("get", "node", "meshless-node", check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    leftover = node.kubectl("get", "pod", "-n", "default", "last", check=False)
    assert leftover.returncode != 0 and "NotFound" in leftover.stderr
    dns = node.kubectl("get", "service", "-n", "kube-system", "kube-dns", check=False)
    assert dns.returncode != 0 and "NotFound" in dns.stderr
    found = _sh(sys.executable, str(ROOT / "hack" / "localnode.py"), "leftovers")
    assert (found.returncode, found.stdout.strip()) == (0, "[]")
