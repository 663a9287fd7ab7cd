"""A store per kind: what the operator holds of one kind of object, by key, with the indexes
its controllers ask for.

A store is fed by a watch (ours, meshless.watch, or Kopf's event handlers) and read by the
controllers; it never calls the API. Each index maps an index value (a namespace, a
ServiceAccount, a Secret name, a governing policy) to the keys whose values produce it, kept
up to date on every put and pop, so that no reader scans every object: with tens of
thousands of identities, nothing may cost a scan per event. Where a reader only asks how
many objects there are under a value (does a namespace hold any identity, does a pod there
run as this ServiceAccount), a counting index holds just the count, not a reference per
object.

Most index values hold one object (an identity's ServiceAccount, the Secret it names): such a
value holds that object's key itself, and only a value with several holds a dict of their
keys. A dict per value cost some 270 bytes per identity and index: 544 bytes per identity for
the policy controller's two, 27 MB at 50,000 identities (docs/decisions/scale.md).

A store can be observed (`observe`): the callback gets the key of every put and pop, after
the change. Admission's child process is kept in step that way (admission/process.py).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeAlias, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# An index function: the index values a (key, value) is found under (none, one or several).
IndexFn = Callable[[K, V], Iterable[Hashable]]
# What an index holds under one value: the one key there, or a dict of the keys (2 or more).
# Keys are hashable, so never a dict: the two cannot be confused.
Bucket: TypeAlias = "K | dict[K, None]"


def by_namespace(key: tuple[str, str], _: object) -> tuple[str]:
    """The usual index of a namespaced kind: its (namespace, name) key's namespace."""
    return (key[0],)


class Store(Generic[K, V]):
    """Values by key, plus named indexes (`indexes`: name -> index function) and counting
    indexes (`counts`: name -> index function)."""

    def __init__(
        self,
        indexes: Mapping[str, IndexFn[K, V]] | None = None,
        counts: Mapping[str, IndexFn[K, V]] | None = None,
    ) -> None:
        self._items: dict[K, V] = {}
        self._index_fns: dict[str, IndexFn[K, V]] = dict(indexes or {})
        self._indexes: dict[str, dict[Hashable, Bucket[K]]] = {n: {} for n in self._index_fns}
        self._count_fns: dict[str, IndexFn[K, V]] = dict(counts or {})
        self._counts: dict[str, dict[Hashable, int]] = {n: {} for n in self._count_fns}
        self._observers: list[Callable[[K], None]] = []

    # --- reading ------------------------------------------------------------------------
    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def keys(self) -> Iterable[K]:
        return self._items.keys()

    def items(self) -> Iterable[tuple[K, V]]:
        return self._items.items()

    def values(self) -> Iterable[V]:
        return self._items.values()

    def indexed(self, index: str, value: Hashable) -> Mapping[K, V]:
        """The objects found under `value` in the index `index` (empty if none), by key: a
        new dict, which later changes of the store do not touch."""
        bucket = self._indexes[index].get(value)
        if bucket is None:
            return {}
        items = self._items
        if isinstance(bucket, dict):
            return {key: items[key] for key in bucket}
        return {bucket: items[bucket]}

    def index_values(self, index: str) -> Iterable[Hashable]:
        """Every value the index `index` holds objects under (each with at least one)."""
        return self._indexes[index].keys()

    def has(self, index: str, value: Hashable) -> bool:
        return value in self._indexes[index]

    def count(self, index: str, value: Hashable) -> int:
        """How many objects the counting index `index` holds under `value`."""
        return self._counts[index].get(value, 0)

    def counted(self, index: str) -> Iterable[Hashable]:
        """Every value the counting index `index` holds at least one object under."""
        return self._counts[index].keys()

    # --- writing ------------------------------------------------------------------------
    def observe(self, changed: Callable[[K], None]) -> None:
        """Call `changed(key)` after every put and pop of `key` (and for each key a `clear`
        forgets); it must only take note (it runs inside the write)."""
        self._observers.append(changed)

    def put(self, key: K, value: V) -> V | None:
        """Hold `value` for `key`; returns what it replaced."""
        before = self._items.get(key)
        self._items[key] = value
        for name, fn in self._index_fns.items():
            index = self._indexes[name]
            found = tuple(fn(key, value))
            if before is not None:
                gone = tuple(fn(key, before))
                if gone != found:
                    self._drop(index, key, gone)
            for value_of in found:
                held = index.get(value_of)
                if held is None or held == key:
                    index[value_of] = key
                elif isinstance(held, dict):
                    held[key] = None
                else:
                    index[value_of] = {held: None, key: None}
        for name, fn in self._count_fns.items():
            counts = self._counts[name]
            found = tuple(fn(key, value))
            if before is not None:
                gone = tuple(fn(key, before))
                if gone == found:
                    continue  # counted under the same values already
                self._uncount(counts, gone)
            for value_of in found:
                counts[value_of] = counts.get(value_of, 0) + 1
        for changed in self._observers:
            changed(key)
        return before

    def pop(self, key: K) -> V | None:
        """Forget `key`; returns what was held."""
        before = self._items.pop(key, None)
        if before is not None:
            self._unindex(key, before)
            for changed in self._observers:
                changed(key)
        return before

    def clear(self) -> None:
        forgotten = list(self._items) if self._observers else []
        self._items.clear()
        for index in self._indexes.values():
            index.clear()
        for counts in self._counts.values():
            counts.clear()
        for key in forgotten:
            for changed in self._observers:
                changed(key)

    def _unindex(self, key: K, value: V) -> None:
        for name, fn in self._index_fns.items():
            self._drop(self._indexes[name], key, tuple(fn(key, value)))
        for name, fn in self._count_fns.items():
            self._uncount(self._counts[name], tuple(fn(key, value)))

    @staticmethod
    def _drop(index: dict[Hashable, Bucket[K]], key: K, values: tuple[Hashable, ...]) -> None:
        for value_of in values:
            held = index.get(value_of)
            if isinstance(held, dict):
                held.pop(key, None)
                if len(held) == 1:
                    index[value_of] = next(iter(held))  # one left: its key itself
                elif not held:
                    del index[value_of]
            elif held is not None and held == key:
                del index[value_of]

    @staticmethod
    def _uncount(counts: dict[Hashable, int], values: tuple[Hashable, ...]) -> None:
        for value_of in values:
            left = counts.get(value_of, 0) - 1
            if left > 0:
                counts[value_of] = left
            else:
                counts.pop(value_of, None)


__all__ = ["IndexFn", "Store", "by_namespace"]
