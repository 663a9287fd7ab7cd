"""List-then-watch of one resource, resumed from its last resourceVersion: client-go's
Reflector, cut down to what the identity controller needs.

Kopf watches every other kind for us. WorkloadIdentities and their Secrets come through here
because Kopf's per-event pipeline (a task per object, a cause, a logger, kwargs, a patch
object per event) cost about 0.5 ms of CPU per event, a third of the operator's CPU per
issued identity, and each identity brings three events (docs/decisions.md, "Our own watches
for identities and Secrets"). Handlers get what Kopf gave them: the event type (None for an
object from a list) and the object.

What it does, as client-go's Reflector does: list in pages, then watch from the list's
resourceVersion with bookmarks; a stream the server ends (its timeout) is resumed from the
last resourceVersion seen; 410 Gone (expired) lists again; connection errors and 5xx back off
with jitter and resume; after a 401 the credentials are re-read. After every list the
handler learns which objects it held (`on_listed`), so an object deleted while no watch ran
is not held forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from meshless.kube import ApiError, Json, Kube, Resource

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
EventHandler = Callable[[str | None, Json], None]
ListedHandler = Callable[[str | None, set[Key]], None]  # (namespace scope, keys listed)

METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


class Gone(Exception):
    """The resourceVersion a watch resumes from has expired: list again."""


class Watch:
    """Runs until cancelled. `metadata_only`: objects arrive as PartialObjectMetadata (what
    the handler needs of them is their metadata; the API server sends a tenth of a Secret)."""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        namespace: str | None,
        on_event: EventHandler,
        *,
        on_listed: ListedHandler | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
        page_size: int = 500,
        server_timeout_s: int = 270,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.on_event = on_event
        self.on_listed = on_listed
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.metadata_only = metadata_only
        self.page_size = page_size
        self.server_timeout_s = server_timeout_s
        self.max_backoff_s = max_backoff_s
        self.resource_version: str | None = None  # where the next watch resumes
        self.streams = 0  # watch requests made (one per resume)

    @property
    def what(self) -> str:
        scope = self.namespace or "all namespaces"
        return f"{self.resource.plural} in {scope}"

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                started = time.monotonic()
                delivered = await self._watch()
                if delivered or time.monotonic() - started >= self.server_timeout_s / 2:
                    failures = 0  # the server ended the stream (its timeout): resume
                else:  # ended at once with nothing: not a timeout; do not spin on it
                    raise ConnectionError("the watch ended at once without events")
            except Gone:
                log.info("watch of %s expired (410 Gone); listing again", self.what)
                self.resource_version = None
                failures = 0
            except Exception as exc:  # a watch must outlive any failure: back off, resume
                delay = random.uniform(0, min(self.max_backoff_s, 0.5 * 2**failures))
                failures += 1
                log.warning(
                    "watch of %s failed (%s: %s); resuming in %.1fs",
                    self.what,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    def _query(self) -> list[tuple[str, str]]:
        query = [("labelSelector", self.label_selector)] if self.label_selector else []
        if self.field_selector:
            query.append(("fieldSelector", self.field_selector))
        return query

    async def _list(self) -> None:
        """Every object, a page at a time, handed over as type None (Kopf's convention for
        listed objects); then which keys were listed. The watch resumes from the list's
        resourceVersion, which every page of one list shares."""
        accept = METADATA_ONLY_LIST if self.metadata_only else "application/json"
        token = ""
        version = ""
        seen: set[Key] = set()
        while True:
            query = [*self._query(), ("limit", str(self.page_size))]
            if token:
                query.append(("continue", token))
            try:
                page = await self.kube.request(
                    "GET", self.resource.path(self.namespace), query=query, accept=accept
                )
            except ApiError as exc:
                if exc.status == 410 and token:  # the continue token expired: start over
                    token, version, seen = "", "", set()
                    continue
                raise
            meta = page.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            for item in page.get("items") or ():
                item_meta = item["metadata"]
                seen.add((item_meta.get("namespace", ""), item_meta["name"]))
                self._deliver(None, item)
            token = meta.get("continue") or ""
            if not token:
                break
        self.resource_version = version
        if self.on_listed is not None:
            self.on_listed(self.namespace, seen)

    async def _watch(self) -> int:
        """One watch request, until the server ends it. Returns how many events came."""
        assert self.resource_version is not None
        query = [
            *self._query(),
            ("resourceVersion", self.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.server_timeout_s)),
        ]
        self.streams += 1
        stream = self.kube.watch_stream(
            self.resource.path(self.namespace),
            query,
            accept=METADATA_ONLY if self.metadata_only else "application/json",
            # Bookmarks come about once a minute: a silent stream is a dead connection.
            read_timeout_s=self.server_timeout_s + 30,
        )
        delivered = 0
        # Closed on the way out, whatever ends it (Gone from an ERROR event, cancellation):
        # the stream's session and connection go with it, not when the collector finds them.
        async with contextlib.aclosing(stream) as events:
            try:
                async for event in events:
                    self._handle(event)
                    delivered += 1
            except ApiError as exc:
                if exc.status == 410:
                    raise Gone() from None
                raise
        return delivered

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise ApiError.of(int(obj.get("code") or 500), "", obj)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._deliver(kind, obj)

    def _deliver(self, kind: str | None, obj: Json) -> None:
        """One bad object must not stop the watch of all the others. The namespace is
        interned: what the stores keep of 50,000 objects then shares one string per
        namespace instead of one per object and event."""
        meta = obj.get("metadata")
        if isinstance(meta, dict) and type(meta.get("namespace")) is str:
            meta["namespace"] = sys.intern(meta["namespace"])
        try:
            self.on_event(kind, obj)
        except Exception:
            meta = obj.get("metadata") or {}
            log.exception(
                "handling %s of %s %s/%s failed",
                kind or "LISTED",
                self.resource.plural,
                meta.get("namespace"),
                meta.get("name"),
            )


__all__ = ["Watch"]
