"""One tracker of the operator's own writes, for every controller: which watch events are
the echoes of what we wrote (or read), so they are not reconciled again.

Every write and read of an object leaves its resourceVersion here; an event that carries it
again (our write's echo, a re-list) changes nothing. A write's echo may come before its
answer (the API server sends both after the same commit): while a write is in flight
(`writing`), every event for that object is held as an echo, and when the answer comes, an
event that carried another resourceVersion was somebody else's change: the write is marked
raced (`OwnWrite.raced`) and `on_raced` is called, so the object is reconciled again.

Objects are named by kind (the resource's plural, or "<plural>/status") and (namespace,
name); each kind has its own table, keyed by the same (namespace, name) tuples the stores
hold, so tracking an object costs no key of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Key = tuple[str, str]  # namespace, name


@dataclass(slots=True)
class OwnWrite:
    """One write in flight: the caller sets `version` from the API's answer."""

    version: str | None = None
    raced: bool = False


class OwnWrites:
    def __init__(self) -> None:
        self._known: dict[str, dict[Key, str]] = {}  # resourceVersion we last wrote or read
        self._in_flight: dict[str, dict[Key, list[str | None]]] = {}  # events during a write

    def is_own(self, kind: str, key: Key, version: str | None, *, deleted: bool = False) -> bool:
        """Whether an event for the object is ours: the echo of our last write (or of a read
        at that version), or any event while a write of it is in flight (held until its
        answer decides). A deletion is never an echo, except during a write."""
        in_flight = self._in_flight.get(kind)
        if in_flight:
            during = in_flight.get(key)
            if during is not None:
                during.append(None if deleted else version)
                return True
        if deleted or version is None:
            return False
        known = self._known.get(kind)
        return known is not None and known.get(key) == version

    def saw(self, kind: str, key: Key, version: str | None) -> None:
        """We read (or wrote) the object at `version`: an event carrying it is not news."""
        if version:
            self._known.setdefault(kind, {})[key] = version

    def knows(self, kind: str, key: Key) -> bool:
        """Whether we wrote or read the object at some version."""
        return key in self._known.get(kind, {})

    def forget(self, kind: str, key: Key) -> None:
        known = self._known.get(kind)
        if known is not None:
            known.pop(key, None)

    @contextlib.contextmanager
    def writing(
        self, kind: str, key: Key, on_raced: Callable[[], None] | None = None
    ) -> Iterator[OwnWrite]:
        """Around one write: events meanwhile are held, and decided when it ends (the caller
        sets the answer's resourceVersion on the OwnWrite; none if the write failed)."""
        write = OwnWrite()
        in_flight = self._in_flight.setdefault(kind, {})
        in_flight[key] = []
        try:
            yield write
        finally:
            during = in_flight.pop(key, [])
            if write.version is not None:
                self._known.setdefault(kind, {})[key] = write.version
            if any(version != write.version for version in during):
                write.raced = True
                if on_raced is not None:
                    on_raced()

    def __len__(self) -> int:
        return sum(len(known) for known in self._known.values())


__all__ = ["OwnWrite", "OwnWrites"]
