"""A keyed work queue with delayed requeues, like client-go's: one key is never processed by
two workers at once, a key added while in progress is processed again afterwards, failures
back off per key, and `add_after` schedules level-based re-checks (such as renewals).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)

# A handler returns the seconds until the key should be looked at again, or None.
Handler = Callable[[K], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    def __init__(
        self,
        handler: Handler[K],
        *,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
        base_backoff: float = 0.5,
        max_backoff: float = 60.0,
    ) -> None:
        self._handler = handler
        self._workers = workers
        self._clock = clock
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        # Sweeps (a resync, a new leader checking everything) wait behind events: a new
        # identity is not queued behind 50,000 routine checks.
        self._background: collections.deque[K] = collections.deque()
        self._in_background: set[K] = set()
        self._idle = 0  # workers waiting for a key
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._due: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._progress = asyncio.Event()  # set each time a key is done

    def add(self, key: K, *, background: bool = False) -> None:
        """Queue `key`; with `background`, behind every key added without it (a key added
        both ways is taken at the first chance)."""
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            if not background and key in self._in_background:
                self._in_background.discard(key)  # promoted; its background entry is skipped
                self._ready.put_nowait(key)
            return
        self._queued.add(key)
        if background and self._idle <= self._ready.qsize():
            self._in_background.add(key)
            self._background.append(key)
        else:
            self._ready.put_nowait(key)

    def _take_background(self) -> K | None:
        while self._background:
            key = self._background.popleft()
            if key in self._in_background:
                self._in_background.discard(key)
                return key
        return None

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        due = self._clock() + delay
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._wakeup.set()

    def forget(self, key: K) -> None:
        """Drop a key's schedule and failure count (the object is gone)."""
        self._due.pop(key, None)
        self._failures.pop(key, None)

    def scheduled(self, key: K) -> float | None:
        due = self._due.get(key)
        return None if due is None else due - self._clock()

    def __len__(self) -> int:
        """Keys queued or being processed (not those only scheduled for later)."""
        return len(self._queued) + len(self._active)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def wait_below(self, count: int) -> None:
        """Until fewer than `count` keys are queued or in progress (back-pressure for a
        sweep that feeds the queue a page at a time)."""
        while len(self) >= count:
            self._progress.clear()
            await self._progress.wait()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        self._tasks.append(asyncio.create_task(self._scheduler()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _scheduler(self) -> None:
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                if self._due.get(key) == due:
                    del self._due[key]
                    self.add(key)
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _next(self) -> K:
        while True:
            if self._ready.empty():
                key = self._take_background()
                if key is not None:
                    return key
                self._idle += 1
                try:
                    key = await self._ready.get()
                finally:
                    self._idle -= 1
            else:
                key = self._ready.get_nowait()
            if key in self._queued:
                return key

    async def _worker(self) -> None:
        while True:
            key = await self._next()
            self._queued.discard(key)
            self._active.add(key)
            try:
                requeue = await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(self._max_backoff, self._base_backoff * 2 ** (failures - 1))
                log.exception(
                    "reconcile of %s failed (attempt %d); retrying in %.1fs", key, failures, delay
                )
                self.add_after(key, delay)
            else:
                self._failures.pop(key, None)
                if requeue is not None:
                    self.add_after(key, requeue)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                self._progress.set()
