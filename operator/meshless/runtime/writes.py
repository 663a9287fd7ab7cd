"""One tracker of the operator's own writes, for every controller: which watch events are
the echoes of what we wrote (or read), so they are not reconciled again.

Every write and read of an object leaves its resourceVersion here; an event that carries it
again (our write's echo, a re-list) changes nothing. A write's echo may come before its
answer (the API server sends both after the same commit): while a write is in flight
(`writing`), every event for that object is held as an echo, and when the answer comes, an
event that carried another resourceVersion was somebody else's change: the write is marked
raced (`OwnWrite.raced`) and `on_raced` is called, so the object is reconciled again.

Objects are named by kind (the resource's plural) and (namespace, name).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Key = tuple[str, str]  # namespace, name
Ref = tuple[str, str, str]  # kind, namespace, name


@dataclass(slots=True)
class OwnWrite:
    """One write in flight: the caller sets `version` from the API's answer."""

    version: str | None = None
    raced: bool = False


class OwnWrites:
    def __init__(self) -> None:
        self._known: dict[Ref, str] = {}  # resourceVersion we last wrote or read
        self._in_flight: dict[Ref, list[str | None]] = {}  # events during a write

    def is_own(self, kind: str, key: Key, version: str | None, *, deleted: bool = False) -> bool:
        """Whether an event for the object is ours: the echo of our last write (or of a read
        at that version), or any event while a write of it is in flight (held until its
        answer decides). A deletion is never an echo, except during a write."""
        ref = (kind, *key)
        during = self._in_flight.get(ref)
        if during is not None:
            during.append(None if deleted else version)
            return True
        return not deleted and version is not None and version == self._known.get(ref)

    def saw(self, kind: str, key: Key, version: str | None) -> None:
        """We read (or wrote) the object at `version`: an event carrying it is not news."""
        if version:
            self._known[(kind, *key)] = version

    def knows(self, kind: str, key: Key) -> bool:
        """Whether we wrote or read the object at some version."""
        return (kind, *key) in self._known

    def forget(self, kind: str, key: Key) -> None:
        self._known.pop((kind, *key), None)

    @contextlib.contextmanager
    def writing(
        self, kind: str, key: Key, on_raced: Callable[[], None] | None = None
    ) -> Iterator[OwnWrite]:
        """Around one write: events meanwhile are held, and decided when it ends (the caller
        sets the answer's resourceVersion on the OwnWrite; none if the write failed)."""
        ref = (kind, *key)
        write = OwnWrite()
        self._in_flight[ref] = []
        try:
            yield write
        finally:
            during = self._in_flight.pop(ref, [])
            if write.version is not None:
                self._known[ref] = write.version
            if any(version != write.version for version in during):
                write.raced = True
                if on_raced is not None:
                    on_raced()

    def __len__(self) -> int:
        return len(self._known)


__all__ = ["OwnWrite", "OwnWrites"]
