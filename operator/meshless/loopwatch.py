"""A watchdog for the event loop: a thread that notices when the loop has not run a tick for
longer than a threshold, and logs where it is stuck (the loop thread's stack) once per stall.
Everything the operator does shares that loop (watches, reconciles, webhooks, /healthz): a
stall is worth a line. The longest recent stall is also a metric."""

from __future__ import annotations

import asyncio
import linecache
import logging
import sys
import threading
import time
import traceback

from meshless import metrics

log = logging.getLogger(__name__)

TICK_S = 0.05
STALL_S = 0.25


class LoopWatch:
    def __init__(self, threshold: float = STALL_S) -> None:
        self.threshold = threshold
        self._last_tick = time.monotonic()
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._tick())
        self._thread = threading.Thread(target=self._watch, name="loopwatch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            metrics.EVENT_LOOP_LAG.observe(max(0.0, now - before - TICK_S))
            self._last_tick = now

    def _watch(self) -> None:
        reported_for = 0.0
        while not self._stop.wait(TICK_S):
            stalled = time.monotonic() - self._last_tick
            if stalled < self.threshold or reported_for == self._last_tick:
                continue
            reported_for = self._last_tick
            frame = sys._current_frames().get(self._loop_thread or 0)
            where = "".join(traceback.format_stack(frame, limit=12)) if frame else "(unknown)"
            log.warning("event loop blocked for over %.2fs, in:\n%s", stalled, where)
            # Formatting read every source file the stack names into linecache, where they
            # would stay for the life of the process (1.6 to 3.3 MB in a benchmark's run).
            # Stalls are rare: the loop drops them, on its own thread, and a report reads
            # them again.
            if self._loop is not None:
                self._loop.call_soon_threadsafe(linecache.clearcache)
