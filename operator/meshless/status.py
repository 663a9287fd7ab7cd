"""What every controller shares about writing back: conditions, status patches whose watch
echoes are recognised, and Events whose tasks are kept and awaited on stop."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meshless.conditions import ConditionChange, conditions_with
from meshless.kube import ApiError, Json, Kube, Resource, event_name, transient
from meshless.runtime.writes import OwnWrites

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name

__all__ = ["ConditionChange", "EventRecorder", "Patched", "StatusWriter", "conditions_with"]


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (meta["namespace"], meta["name"])


@dataclass(frozen=True, slots=True)
class Patched:
    """A status write's answer: the updated object, and whether somebody else's change came
    in while it was in flight (then the caller's copy is the event's, newer than this)."""

    body: Json
    raced: bool = False


class StatusWriter:
    """Merge-patches the status subresource when it differs from what the object holds; its
    writes' watch echoes are recognised through the operator's one tracker of its own writes
    (runtime/writes.py), so they are not reconciled again.

    With `on_raced` given, events for an object whose write is in flight count as echoes until
    the answer comes; one with another resourceVersion was somebody else's change, and
    `on_raced` gets the key to reconcile it. (The caller must keep what such an event brings
    before asking `is_echo`, as the identity controller does.)"""

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        writes: OwnWrites,
        on_raced: Callable[[Key], None] | None = None,
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.kind = f"{resource.plural}/status"
        self.writes = writes
        self.on_raced = on_raced

    def is_echo(self, body: Mapping[str, Any]) -> bool:
        """True for the watch event our own last status write caused (and, until its answer
        decides, for any event during that write)."""
        return self.writes.is_own(self.kind, key_of(body), body["metadata"].get("resourceVersion"))

    def forget(self, key: Key) -> None:
        self.writes.forget(self.kind, key)

    async def patch(self, body: Json, wanted: Mapping[str, Any]) -> Patched | None:
        """Write the fields of `wanted` that differ; returns the updated object, or None when
        nothing differed or the object is gone. `body["status"]` is updated in place."""
        current = body.get("status") or {}
        if all(current.get(k) == v for k, v in wanted.items()):
            return None
        key = key_of(body)
        if self.on_raced is None:
            updated = await self._patch(key, wanted)
            if updated is None:
                return None
            self.writes.saw(self.kind, key, updated["metadata"]["resourceVersion"])
            raced = False
        else:
            on_raced = self.on_raced
            with self.writes.writing(self.kind, key, lambda: on_raced(key)) as write:
                updated = await self._patch(key, wanted)
                if updated is not None:
                    write.version = updated["metadata"]["resourceVersion"]
            if updated is None:
                return None
            raced = write.raced
        body["status"] = updated.get("status") or {}
        return Patched(updated, raced)

    async def _patch(self, key: Key, wanted: Mapping[str, Any]) -> Json | None:
        try:
            return await self.kube.patch_status(self.resource, *key, dict(wanted))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


def involved_object(body: Mapping[str, Any], api_version: str, kind: str) -> Json:
    meta = body["metadata"]
    involved: Json = {"apiVersion": api_version, "kind": kind, "name": meta["name"]}
    if meta.get("namespace"):
        involved["namespace"] = meta["namespace"]
    if meta.get("uid"):
        involved["uid"] = meta["uid"]
    return involved


EVENT_TRIES = 12  # client-go's maxTriesPerEvent
EVENT_RETRY_S = 10.0  # client-go's pause between tries (jittered here)


class EventRecorder:
    """Posts Events without making the caller wait; the tasks are kept, and `close` waits for
    the ones still running (bounded) so none is lost or left dangling at stop. An Event the
    API refuses for a transient reason (throttled, away, overloaded: each request already
    retried by the client) is tried again, as client-go's recorder does, under the same name:
    a 409 then means an earlier try whose answer was lost got through."""

    def __init__(
        self, kube: Kube, *, tries: int = EVENT_TRIES, retry_s: float = EVENT_RETRY_S
    ) -> None:
        self.kube = kube
        self.tries = tries
        self.retry_s = retry_s
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, involved: Json, type: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._post(involved, type=type, reason=reason, message=message)
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    async def _post(self, involved: Json, *, type: str, reason: str, message: str) -> None:
        name = event_name(involved)
        for attempt in range(1, self.tries + 1):
            try:
                await self.kube.post_event(
                    involved, type=type, reason=reason, message=message, name=name
                )
                return
            except Exception as exc:
                if isinstance(exc, ApiError) and exc.status == 409:
                    return  # posted by an earlier try
                if not transient(exc) or attempt == self.tries:
                    raise
            await asyncio.sleep(self.retry_s * (0.5 + random.random()))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not post an Event: %s", task.exception())

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        if not self._tasks:
            return
        _, still_running = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in still_running:
            task.cancel()
        await asyncio.gather(*still_running, return_exceptions=True)


Clock = Callable[[], datetime]
