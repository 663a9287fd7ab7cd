"""kube-controller-manager at work: deleting a namespace deletes its pods (their containers
stop on the node), WorkloadIdentities and Secrets, and the namespace goes away."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.node.pods import Node, pod, secret

pytestmark = pytest.mark.node


def test_deleting_a_namespace_deletes_what_is_in_it(node: Node) -> None:
    ns = f"t-{uuid.uuid4().hex[:10]}"
    node.kubectl("create", "namespace", ns)
    node.apply(
        ns,
        secret("payload", {"token": b"not-a-key"}),
        pod("sleeper", node.images["busybox"], ["sleep", "3600"], secrets={"payload": "/data"}),
        {
            "apiVersion": "meshless.dev/v1alpha1",
            "kind": "WorkloadIdentity",
            "metadata": {"name": "sleeper"},
            "spec": {"serviceAccountName": "default"},
        },
    )
    node.wait_ready(ns, "sleeper")
    status = json.loads(node.kubectl("get", "pod", "-n", ns, "sleeper", "-o", "json").stdout)
    container_id = status["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("containerd://")
    assert node.container_running(container_id.removeprefix("containerd://"))

    node.kubectl("delete", "namespace", ns, "--wait=false")
    node.kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=120s")

    for kind in ("pods", "secrets", "workloadidentities.meshless.dev"):
        left = node.kubectl("get", kind, "-n", ns, "-o", "name").stdout
        assert left.strip() == "", f"{kind} left in deleted namespace {ns}: {left}"
    assert not node.container_running(container_id.removeprefix("containerd://"))
