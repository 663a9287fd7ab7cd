"""The namespaces exempt from enforcement have one definition (api.exempt_namespaces):
kube-system, kube-public, kube-node-lease and the operator's own. Under a cluster-wide STRICT
policy a kube-public pod is neither injected nor refused, its namespace is not labelled for
the webhooks, and no NetworkPolicy selects it; a pod of an ordinary namespace is injected."""

from __future__ import annotations

import contextlib
import uuid

from kubernetes import client

from meshless.api import ADMISSION_NAMESPACE_LABEL, IDENTITY_MOUNT_PATH, SYSTEM_NAMESPACES

from .conftest import OperatorFactory
from .policyhelpers import (
    create_pod,
    create_policy,
    delete_policy,
    list_network_policies,
    namespace_labels,
    wait_admission_label,
    wait_collection,
)

TIMEOUT = 60


def mounts_identity(pod: dict[str, object]) -> bool:
    containers = pod["spec"]["containers"]  # type: ignore[index]
    return any(
        m["mountPath"].rstrip("/") == IDENTITY_MOUNT_PATH.rstrip("/")
        for c in containers
        for m in c.get("volumeMounts") or []
    )


def test_a_kube_public_pod_under_a_cluster_wide_strict_policy_is_left_alone(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    assert "kube-public" in SYSTEM_NAMESPACES
    op = operator_factory()
    core = client.CoreV1Api(api_client)
    if not any(n.metadata.name == "kube-public" for n in core.list_namespace().items):
        core.create_namespace({"metadata": {"name": "kube-public"}})
    # Cluster-wide: in the root namespace (the operator's own), no selector.
    create_policy(api_client, op.namespace, "everywhere", "STRICT")
    public = f"public-{uuid.uuid4().hex[:6]}"
    try:
        # A kube-public pod first, then one of an ordinary namespace: once the operator has
        # acted on the second (label, NetworkPolicy), it has seen the first.
        create_pod(api_client, "kube-public", f"{public}-early", {"app": "web"})
        create_pod(api_client, namespace, "app", {"app": "web"})  # reaches the policy
        wait_admission_label(api_client, namespace)
        wait_collection(
            client.CustomObjectsApi(api_client).list_namespaced_custom_object,
            "networking.k8s.io",
            "v1",
            namespace,
            "networkpolicies",
            predicate=lambda items: len(items) == 1,
            timeout=TIMEOUT,
            what="the cluster-wide policy's NetworkPolicy in the ordinary namespace",
        )

        # Created after the webhooks are in effect for the ordinary namespace.
        injected = create_pod(api_client, namespace, "injected", {"app": "web"})
        assert mounts_identity(injected)
        stored = create_pod(api_client, "kube-public", public, {"app": "web"})  # not refused
        assert not mounts_identity(stored)
        assert ADMISSION_NAMESPACE_LABEL not in namespace_labels(api_client)["kube-public"]
        assert list_network_policies(api_client, "kube-public") == []
        assert list_network_policies(api_client, op.namespace) == []
    finally:
        delete_policy(api_client, op.namespace, "everywhere")
        for name in (public, f"{public}-early"):
            with contextlib.suppress(client.ApiException):
                core.delete_namespaced_pod(name, "kube-public", grace_period_seconds=0)
