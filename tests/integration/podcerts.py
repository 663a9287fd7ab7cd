"""Helpers for the pod-certificate tests: a node, a pod bound to it, and PodCertificateRequests
created as that node creates them (its identity impersonated: user system:node:<name> in
group system:nodes, which the Node authorizer and NodeRestriction judge)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from meshless.podcert.request import terminal_condition

from .kubehelpers import watch_until

GROUP, VERSION, PLURAL = "certificates.k8s.io", "v1beta1", "podcertificaterequests"
BUNDLES = "clustertrustbundles"
Json = dict[str, Any]


@dataclass(frozen=True)
class BoundPod:
    namespace: str
    name: str
    uid: str
    service_account: str
    service_account_uid: str
    node: str
    node_uid: str

    def request_fields(self) -> dict[str, str]:
        """The pcr_body arguments that name this pod as its kubelet does."""
        return {
            "namespace": self.namespace,
            "pod": self.name,
            "pod_uid": self.uid,
            "service_account": self.service_account,
            "service_account_uid": self.service_account_uid,
            "node": self.node,
            "node_uid": self.node_uid,
        }


def create_node(api: client.ApiClient, name: str | None = None) -> tuple[str, str]:
    name = name or f"node-{uuid.uuid4().hex[:6]}"
    node = client.CoreV1Api(api).create_node({"metadata": {"name": name}})
    return name, str(node.metadata.uid)


def create_bound_pod(
    api: client.ApiClient, namespace: str, node: tuple[str, str], account: str = "app"
) -> BoundPod:
    core = client.CoreV1Api(api)
    try:
        sa = core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        sa = core.read_namespaced_service_account(account, namespace)
    name = f"pod-{uuid.uuid4().hex[:6]}"
    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "nodeName": node[0],
                "serviceAccountName": account,
                "automountServiceAccountToken": False,
                "containers": [{"name": "app", "image": "registry.invalid/app"}],
            },
        },
    )
    return BoundPod(namespace, name, pod.metadata.uid, account, sa.metadata.uid, node[0], node[1])


def node_client(kubeconfig: str, node: str) -> client.ApiClient:
    """The admin's client acting as the node's kubelet."""
    api = config.new_client_from_config(config_file=kubeconfig)
    api.set_default_header("Impersonate-User", f"system:node:{node}")
    api.set_default_header("Impersonate-Group", "system:nodes")
    return api


def create_request(api: client.ApiClient, body: Json) -> Json:
    ns = body["metadata"]["namespace"]
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, ns, PLURAL, body
    )


def get_request(api: client.ApiClient, namespace: str, name: str) -> Json:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL, name
    )


def wait_request(
    api: client.ApiClient,
    request: Json,
    predicate: Callable[[Json], bool] = lambda r: terminal_condition(r) != "",
    timeout: float = 30,
) -> Json:
    """Watch one PodCertificateRequest until it is answered (or `predicate` holds)."""
    meta = request["metadata"]
    return watch_until(  # type: ignore[no-any-return]
        client.CustomObjectsApi(api).list_namespaced_custom_object,
        GROUP,
        VERSION,
        meta["namespace"],
        PLURAL,
        field_selector=f"metadata.name={meta['name']}",
        predicate=predicate,
        timeout=timeout,
        what=f"an answer to PodCertificateRequest {meta['namespace']}/{meta['name']}",
        resource_version=lambda listed: listed["metadata"]["resourceVersion"],
        items=lambda listed: listed["items"],
    )


def condition(request: Json) -> Json:
    (cond,) = request["status"]["conditions"]
    return cond  # type: ignore[no-any-return]


def trust_bundle(api: client.ApiClient, name: str) -> Json | None:
    try:
        return client.CustomObjectsApi(api).get_cluster_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, BUNDLES, name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
