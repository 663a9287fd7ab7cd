"""Helpers for integration tests: WorkloadIdentity objects, and waits driven by watch events
with explicit timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, watch

GROUP, VERSION, PLURAL = "meshless.dev", "v1alpha1", "workloadidentities"
Json = dict[str, Any]


def identity_manifest(name: str, **spec: Any) -> Json:
    spec.setdefault("serviceAccountName", name)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_identity(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> Json:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL, identity_manifest(name, **spec)
    )


def get_identity(api: client.ApiClient, namespace: str, name: str) -> Json:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL, name
    )


def condition(obj: Json, type_: str) -> Json | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def wait_identity(
    api: client.ApiClient,
    namespace: str,
    name: str,
    predicate: Callable[[Json], bool],
    timeout: float = 30,
    what: str = "condition",
) -> Json:
    """Watch one identity until `predicate` holds; fail after `timeout` seconds."""
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout
    last: Json | None = None
    while time.monotonic() < deadline:
        current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        last = current
        if predicate(current):
            return current  # type: ignore[no-any-return]
        remaining = max(1, int(deadline - time.monotonic()))
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=current["metadata"]["resourceVersion"],
            timeout_seconds=remaining,
        ):
            last = event["object"]
            if predicate(last):
                stream.stop()
                return last
    raise AssertionError(f"{namespace}/{name}: no {what} within {timeout}s; last: {last}")


def is_ready(obj: Json) -> bool:
    cond = condition(obj, "Ready")
    return bool(cond and cond["status"] == "True")


def ready_with_reason(reason: str) -> Callable[[Json], bool]:
    def check(obj: Json) -> bool:
        cond = condition(obj, "Ready")
        return bool(cond and cond["status"] == "False" and cond["reason"] == reason)

    return check


def wait_secret(
    api: client.ApiClient,
    namespace: str,
    name: str,
    predicate: Callable[[client.V1Secret], bool],
    timeout: float = 30,
) -> client.V1Secret:
    core = client.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        secrets = core.list_namespaced_secret(namespace, field_selector=f"metadata.name={name}")
        for secret in secrets.items:
            if predicate(secret):
                return secret
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise AssertionError(f"Secret {namespace}/{name}: not as expected within {timeout}s")
        stream = watch.Watch()
        for event in stream.stream(
            core.list_namespaced_secret,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=secrets.metadata.resource_version,
            timeout_seconds=remaining,
        ):
            if event["type"] != "DELETED" and predicate(event["object"]):
                stream.stop()
                return event["object"]  # type: ignore[no-any-return]


def wait_event(
    api: client.ApiClient, namespace: str, name: str, reason: str, timeout: float = 15
) -> client.CoreV1Event:
    """Watch Events about `name` until one with `reason` arrives (Events are posted after the
    status they describe, so a test must wait for them)."""
    core = client.CoreV1Api(api)
    selector = f"involvedObject.name={name},reason={reason}"
    deadline = time.monotonic() + timeout
    while True:
        events = core.list_namespaced_event(namespace, field_selector=selector)
        if events.items:
            return events.items[0]
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise AssertionError(f"no {reason} Event for {namespace}/{name} within {timeout}s")
        stream = watch.Watch()
        for event in stream.stream(
            core.list_namespaced_event,
            namespace,
            field_selector=selector,
            resource_version=events.metadata.resource_version,
            timeout_seconds=remaining,
        ):
            stream.stop()
            return event["object"]
