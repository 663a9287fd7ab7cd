"""What every controller shares about writing back: conditions, status patches whose watch
echoes are recognised, and Events whose tasks are kept and awaited on stop."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from meshless.conditions import ConditionChange, set_condition
from meshless.kube import ApiError, Json, Kube, Resource, event_name, transient

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name

__all__ = ["ConditionChange", "EventRecorder", "StatusWriter", "conditions_with"]


def conditions_with(
    body: Mapping[str, Any], changes: Iterable[ConditionChange], now: datetime
) -> list[dict[str, Any]]:
    """The object's conditions with each change applied (lastTransitionTime kept when the
    status holds), observedGeneration from the object's generation."""
    conditions = list((body.get("status") or {}).get("conditions") or [])
    generation = body["metadata"].get("generation")
    for change in changes:
        conditions = set_condition(
            conditions,
            type=change.type,
            status=change.status,
            reason=change.reason,
            message=change.message,
            generation=generation,
            now=now,
        )
    return conditions


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (meta["namespace"], meta["name"])


class StatusWriter:
    """Merge-patches the status subresource when it differs from what the object holds, and
    recognises its own writes' watch echoes so they are not reconciled again.

    The echo may arrive before the write's answer (the API server sends both after the same
    commit). With `on_raced` given, events for an object whose write is in flight count as
    echoes until the answer comes; one with another resourceVersion was somebody else's
    change, and `on_raced` gets the key to reconcile it. (The caller must keep what such an
    event brings before asking `is_echo`, as the identity controller does.)"""

    def __init__(
        self, kube: Kube, resource: Resource, on_raced: Callable[[Key], None] | None = None
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.on_raced = on_raced
        self._own_rv: dict[Key, str] = {}
        self._in_flight: dict[Key, list[str | None]] = {}
        self._raced: set[Key] = set()

    def is_echo(self, body: Mapping[str, Any]) -> bool:
        """True for the watch event our own last status write caused (and, until its answer
        decides, for any event during that write)."""
        key = key_of(body)
        rv = body["metadata"].get("resourceVersion")
        during = self._in_flight.get(key)
        if during is not None:
            during.append(rv)
            return True
        return rv is not None and rv == self._own_rv.get(key)

    def forget(self, key: Key) -> None:
        self._own_rv.pop(key, None)
        self._raced.discard(key)

    def take_raced(self, key: Key) -> bool:
        """Whether somebody else's change came in during our last write of `key` (then the
        caller's copy of the object is the event's, newer than our write's answer)."""
        if key in self._raced:
            self._raced.discard(key)
            return True
        return False

    async def patch(self, body: Json, wanted: Mapping[str, Any]) -> Json | None:
        """Write the fields of `wanted` that differ; returns the updated object, or None when
        nothing differed or the object is gone. `body["status"]` is updated in place."""
        current = body.get("status") or {}
        if all(current.get(k) == v for k, v in wanted.items()):
            return None
        namespace, name = key = key_of(body)
        own: str | None = None
        if self.on_raced is not None:
            self._in_flight[key] = []
        try:
            updated = await self.kube.patch_status(self.resource, namespace, name, dict(wanted))
            own = updated["metadata"]["resourceVersion"]
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        finally:
            during = self._in_flight.pop(key, [])
            if self.on_raced is not None and any(rv != own for rv in during):
                self._raced.add(key)
                self.on_raced(key)
        assert own is not None
        self._own_rv[key] = own
        body["status"] = updated.get("status") or {}
        return updated


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
