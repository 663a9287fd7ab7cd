"""Pods on the local node for tests: manifests, waits, exec. Everything goes through kubectl
against the real API server, kubelet and containerd."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]
NODE_STATE = ROOT / ".cache" / "cluster" / "node"
READY_TIMEOUT = "120s"


@dataclass
class Node:
    kubectl: Kubectl
    images: dict[str, str]  # short name (pause, busybox, python, ...) -> image reference
    # veth interfaces that existed before the node started (not the node's to remove)
    veths_before: frozenset[str] = field(default=frozenset())
    # entries of containerd 1.6's fixed shim socket directory before the node started
    shim_sockets_before: frozenset[str] = field(default=frozenset())
    stopped: bool = field(default=False)

    def stop(self) -> subprocess.CompletedProcess[str]:
        """Stops the node (the control plane stays); later tests in the session get none."""
        self.stopped = True
        return subprocess.run(
            [sys.executable, str(ROOT / "hack" / "localnode.py"), "down"],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def apply(self, namespace: str, *objects: dict[str, Any]) -> None:
        manifest = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        self.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def wait_ready(self, namespace: str, *pods: str) -> None:
        self.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            f"--timeout={READY_TIMEOUT}",
            *[f"pod/{p}" for p in pods],
        )

    def pod_ip(self, namespace: str, pod: str) -> str:
        ip = self.kubectl(
            "get", "pod", "-n", namespace, pod, "-o", "jsonpath={.status.podIP}"
        ).stdout.strip()
        assert ip.startswith("10.244.0."), f"pod {pod} has no pod-network IP: {ip!r}"
        return ip

    def container_running(self, container_id: str) -> bool:
        """Whether containerd runs a task for this container (asked directly, not the API)."""
        tasks = subprocess.run(
            ["ctr", "-a", str(NODE_STATE / "containerd.sock"), "-n", "k8s.io", "tasks", "ls"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()[1:]
        return any(t.split()[0] == container_id and t.split()[2] == "RUNNING" for t in tasks)

    def python(self, namespace: str, pod: str, program: str, *args: str) -> str:
        """Runs `python3 -c program args...` in the pod; its stdout."""
        return self.kubectl(
            "exec", "-n", namespace, pod, "--", "python3", "-c", program, *args
        ).stdout


def pod(
    name: str,
    image: str,
    command: list[str],
    *,
    labels: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
    config_maps: dict[str, str] | None = None,
    ready_port: int | None = None,
    service_account: str = "default",
) -> dict[str, Any]:
    """A pod running `command` in `image` (never pulled), each Secret and ConfigMap mounted at
    its path (names must differ), Ready once something listens on `ready_port`. A pod may
    mount only its own ServiceAccount's meshless identity (docs/security.md)."""
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "command": command,
        "volumeMounts": [
            {"name": volume, "mountPath": path, "readOnly": True}
            for volume, path in {**(secrets or {}), **(config_maps or {})}.items()
        ],
    }
    if ready_port is not None:  # the kubelet connects from the node (10.244.0.1)
        container["readinessProbe"] = {"tcpSocket": {"port": ready_port}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "serviceAccountName": service_account,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": [
                *({"name": s, "secret": {"secretName": s}} for s in secrets or {}),
                *({"name": c, "configMap": {"name": c}} for c in config_maps or {}),
            ],
        },
    }


def secret(name: str, data: dict[str, bytes], type_: str = "Opaque") -> dict[str, Any]:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": type_,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def veth_interfaces() -> frozenset[str]:
    out = subprocess.run(
        ["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True, check=True
    ).stdout
    return frozenset(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def shim_sockets() -> frozenset[str]:
    directory = Path("/run/containerd/s")
    return frozenset(p.name for p in directory.iterdir()) if directory.is_dir() else frozenset()
