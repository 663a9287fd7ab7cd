"""The event-loop watchdog: a stall is reported once with where the loop was stuck (the
source line included), and the source it read for that is not kept afterwards."""

from __future__ import annotations

import asyncio
import linecache
import logging
import time

import pytest

from meshless.loopwatch import LoopWatch


def _block_the_loop() -> None:
    time.sleep(0.4)  # the stall under test: the loop thread does nothing else meanwhile


async def test_a_stall_is_reported_with_its_source_line_which_is_not_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="meshless.loopwatch")
    watch = LoopWatch(threshold=0.15)
    watch.start()
    try:
        await asyncio.sleep(0.1)  # a tick first: the watch measures from the last one
        linecache.clearcache()
        _block_the_loop()
        for _ in range(100):  # the loop's next ticks run the clearing the report queued
            await asyncio.sleep(0.01)
            if __file__ not in linecache.cache:
                break
    finally:
        await watch.stop()
    reports = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(reports) == 1
    assert "in _block_the_loop" in reports[0]
    assert "time.sleep(0.4)" in reports[0]  # the line's source, read for the report
    assert __file__ not in linecache.cache
