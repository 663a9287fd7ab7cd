"""Our list+watch (meshless.watch) against the real API server: a paged list handed over as
listed objects, then the changes, resumed from the last resourceVersion each time the server
ends the stream (nothing replayed, nothing missed), Secrets as metadata only."""

from __future__ import annotations

import asyncio
import base64
import time

from kubernetes import client

from meshless.api import IDENTITY_LABEL
from meshless.kube import SECRETS, Json, Kube, load_configuration
from meshless.watch import Watch

TIMEOUT = 20.0


def _secret(core: client.CoreV1Api, namespace: str, name: str, identity: str | None) -> None:
    labels = {IDENTITY_LABEL: identity} if identity else {}
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            data={"tls.key": base64.b64encode(b"not for the watch").decode()},
        ),
    )


async def _next(events: asyncio.Queue[tuple[str | None, Json]]) -> tuple[str | None, Json]:
    return await asyncio.wait_for(events.get(), timeout=TIMEOUT)


async def test_a_metadata_watch_lists_follows_and_resumes_without_replays(
    kubeconfig: str, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    for i in range(3):
        _secret(core, namespace, f"s-{i}", f"id-{i}")
    _secret(core, namespace, "unlabelled", None)
    events: asyncio.Queue[tuple[str | None, Json]] = asyncio.Queue()
    listed: list[tuple[str | None, set[tuple[str, str]]]] = []
    kube = Kube(load_configuration(kubeconfig))
    watch = Watch(
        kube,
        SECRETS,
        namespace,
        lambda kind, obj: events.put_nowait((kind, obj)),
        on_listed=lambda scope, keys: listed.append((scope, keys)),
        label_selector=IDENTITY_LABEL,
        metadata_only=True,
        page_size=2,  # the list comes in two pages
        server_timeout_s=1,  # the server ends every watch after a second
    )
    task = asyncio.create_task(watch.run())
    try:
        first = [await _next(events) for _ in range(3)]
        assert sorted(obj["metadata"]["name"] for _, obj in first) == ["s-0", "s-1", "s-2"]
        assert {kind for kind, _ in first} == {None}  # listed, as Kopf hands a list over
        assert {obj["kind"] for _, obj in first} == {"PartialObjectMetadata"}
        assert not [obj for _, obj in first if "data" in obj]
        assert listed == [(namespace, {(namespace, f"s-{i}") for i in range(3)})]

        # Let the server end the stream a few times: each time the watch resumes.
        deadline = time.monotonic() + TIMEOUT
        while watch.streams < 3:
            assert time.monotonic() < deadline, f"{watch.streams} watch requests in {TIMEOUT}s"
            await asyncio.sleep(0.1)
        _secret(core, namespace, "s-3", "id-3")
        kind, obj = await _next(events)
        assert (kind, obj["metadata"]["name"]) == ("ADDED", "s-3")  # no replay came first
        assert obj["metadata"]["labels"] == {IDENTITY_LABEL: "id-3"} and "data" not in obj
        core.delete_namespaced_secret("s-0", namespace)
        kind, obj = await _next(events)
        assert (kind, obj["metadata"]["name"]) == ("DELETED", "s-0")
        assert events.empty()
        assert len(listed) == 1  # resumed each time, never listed again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()
