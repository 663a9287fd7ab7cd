"""Helpers for integration tests: WorkloadIdentity objects, and waits driven by watch events
with explicit timeouts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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


def create_identities(
    api: client.ApiClient, namespace: str, names: Iterable[str], threads: int = 4
) -> None:
    """Create many identities at once (a storm): a few requests in flight, not one by one."""
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda name: create_identity(api, namespace, name), names))


def list_all(
    list_fn: Callable[..., Any], *args: Any, page_size: int = 500, **kwargs: Any
) -> list[Any]:
    """Every item of a typed client's list call, following `continue` across pages."""
    items: list[Any] = []
    token: str | None = None
    while True:
        page = list_fn(*args, limit=page_size, _continue=token, **kwargs)
        items.extend(page.items)
        token = page.metadata._continue
        if not token:
            return items


def get_identity(api: client.ApiClient, namespace: str, name: str) -> Json:
    return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, PLURAL, name
    )


def condition(obj: Json, type_: str) -> Json | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def watch_until(
    list_fn: Callable[..., Any],
    *args: Any,
    field_selector: str,
    predicate: Callable[[Any], bool],
    timeout: float,
    what: str,
    resource_version: Callable[[Any], str],
    items: Callable[[Any], list[Any]],
) -> Any:
    """List what `field_selector` selects; return the first item for which `predicate` holds,
    else watch from the list's resourceVersion until one arrives. Fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        listed = list_fn(*args, field_selector=field_selector)
        for item in items(listed):
            last = item
            if predicate(item):
                return item
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise AssertionError(f"no {what} within {timeout}s; last seen: {last}")
        stream = watch.Watch()
        for event in stream.stream(
            list_fn,
            *args,
            field_selector=field_selector,
            resource_version=resource_version(listed),
            timeout_seconds=remaining,
        ):
            if event["type"] == "DELETED":
                continue
            last = event["object"]
            if predicate(last):
                stream.stop()
                return last


def wait_custom_object(
    api: client.ApiClient,
    plural: str,
    namespace: str,
    name: str,
    predicate: Callable[[Json], bool],
    timeout: float,
    what: str,
) -> Json:
    """Watch one meshless.dev object until `predicate` holds; fail after `timeout` s."""
    return watch_until(  # type: ignore[no-any-return]
        client.CustomObjectsApi(api).list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        plural,
        field_selector=f"metadata.name={name}",
        predicate=predicate,
        timeout=timeout,
        what=f"{what} on {plural} {namespace}/{name}",
        resource_version=lambda listed: listed["metadata"]["resourceVersion"],
        items=lambda listed: listed["items"],
    )


def wait_identity(
    api: client.ApiClient,
    namespace: str,
    name: str,
    predicate: Callable[[Json], bool],
    timeout: float = 30,
    what: str = "condition",
) -> Json:
    """Watch one identity until `predicate` holds; fail after `timeout` seconds."""
    return wait_custom_object(api, PLURAL, namespace, name, predicate, timeout, what)


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
    return watch_until(  # type: ignore[no-any-return]
        client.CoreV1Api(api).list_namespaced_secret,
        namespace,
        field_selector=f"metadata.name={name}",
        predicate=predicate,
        timeout=timeout,
        what=f"expected content in Secret {namespace}/{name}",
        resource_version=lambda listed: listed.metadata.resource_version,
        items=lambda listed: listed.items,
    )


def wait_event(
    api: client.ApiClient, namespace: str, name: str, reason: str, timeout: float = 15
) -> client.CoreV1Event:
    """Wait for an Event about `name` with `reason` (Events are posted after the status they
    describe, so a test must wait for them)."""
    return watch_until(  # type: ignore[no-any-return]
        client.CoreV1Api(api).list_namespaced_event,
        namespace,
        field_selector=f"involvedObject.name={name},reason={reason}",
        predicate=lambda event: True,
        timeout=timeout,
        what=f"{reason} Event for {namespace}/{name}",
        resource_version=lambda listed: listed.metadata.resource_version,
        items=lambda listed: listed.items,
    )
