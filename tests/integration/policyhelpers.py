"""Helpers for MtlsPolicy integration tests: policies, pods that the test labels itself, and
waits on policy status and NetworkPolicies driven by watches with explicit timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch

from .kubehelpers import GROUP, VERSION, condition, wait_custom_object, watch_until

POLICIES = "mtlspolicies"
Json = dict[str, Any]


def policy_manifest(name: str, mode: str | None = None, **spec: Any) -> Json:
    if mode is not None:
        spec["mode"] = mode
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MtlsPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_policy(
    api: client.ApiClient, namespace: str, name: str, mode: str | None = None, **spec: Any
) -> Json:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, POLICIES, policy_manifest(name, mode, **spec)
    )


def patch_policy(api: client.ApiClient, namespace: str, name: str, spec: Json) -> Json:
    return client.CustomObjectsApi(api).patch_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, POLICIES, name, {"spec": spec}
    )


def delete_policy(api: client.ApiClient, namespace: str, name: str) -> None:
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, POLICIES, name
    )


def create_pod(
    api: client.ApiClient,
    namespace: str,
    name: str,
    labels: Mapping[str, str] | None = None,
    ports: tuple[int, ...] = (8443,),
    service_account: str | None = None,
) -> Json:
    """A pod object (no node runs it here: it stays Pending, which is all a policy needs)."""
    body: Json = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "ports": [{"containerPort": p} for p in ports],
                }
            ]
        },
    }
    if service_account:
        body["spec"]["serviceAccountName"] = service_account
    return client.ApiClient.sanitize_for_serialization(  # type: ignore[no-any-return]
        api, client.CoreV1Api(api).create_namespaced_pod(namespace, body)
    )


def wait_policy(
    api: client.ApiClient,
    namespace: str,
    name: str,
    predicate: Callable[[Json], bool],
    timeout: float = 30,
    what: str = "status",
) -> Json:
    return wait_custom_object(api, POLICIES, namespace, name, predicate, timeout, what)


def status_is(**fields: Any) -> Callable[[Json], bool]:
    """Status fields equal (conditions by `<Type>=<status>` keys, e.g. Conflicted="True")."""

    def check(obj: Json) -> bool:
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"].get("generation"):
            return False
        for key, want in fields.items():
            if key[0].isupper():
                cond = condition(obj, key)
                if not cond or cond["status"] != want:
                    return False
            elif status.get(key) != want:
                return False
        return True

    return check


def list_network_policies(api: client.ApiClient, namespace: str) -> list[Json]:
    listed = client.NetworkingV1Api(api).list_namespaced_network_policy(namespace)
    return [
        client.ApiClient.sanitize_for_serialization(api, item)  # type: ignore[arg-type]
        for item in listed.items
    ]


def namespace_labels(api: client.ApiClient) -> dict[str, dict[str, str]]:
    return {
        ns.metadata.name: dict(ns.metadata.labels or {})
        for ns in client.CoreV1Api(api).list_namespace().items
    }


def wait_collection(
    list_fn: Callable[..., Any],
    *args: Any,
    predicate: Callable[[list[Json]], bool],
    timeout: float,
    what: str,
) -> list[Json]:
    """List custom objects until `predicate` holds for the whole list; between lists, wait
    for the next watch event. Fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        listed = list_fn(*args)
        items: list[Json] = listed["items"]
        if predicate(items):
            return items
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise AssertionError(f"no {what} within {timeout}s; last seen: {items}")
        stream = watch.Watch()
        for _ in stream.stream(
            list_fn,
            *args,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=remaining,
        ):
            stream.stop()
            break


def after_creation_second(obj: Json) -> None:
    """Wait (bounded, at most a second) until the wall clock is past the second of `obj`'s
    creationTimestamp: timestamps have one-second resolution, and a policy made within the same
    second would be ordered by name instead of age."""
    created = datetime.strptime(obj["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")
    wait = created.replace(tzinfo=UTC).timestamp() + 1.05 - time.time()
    if wait > 0:
        time.sleep(min(wait, 1.1))


def wait_admission_label(api: client.ApiClient, namespace: str, timeout: float = 30) -> None:
    """Watch the namespace until the operator has labelled it for admission (the webhooks
    select it by that label: pods made before it are not injected)."""
    watch_until(
        client.CoreV1Api(api).list_namespace,
        field_selector=f"metadata.name={namespace}",
        predicate=lambda ns: (ns.metadata.labels or {}).get("meshless.dev/mtls") == "enabled",
        timeout=timeout,
        what=f"the admission label on namespace {namespace}",
        resource_version=lambda listed: listed.metadata.resource_version,
        items=lambda listed: listed.items,
    )
