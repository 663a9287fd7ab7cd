"""The keyed work queue: deduplication, no self-concurrency, requeues, backoff, forget.

Every wait is bounded by asyncio.wait_for; results are awaited through Events, never by
sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from meshless.workqueue import WorkQueue

TIMEOUT = 5.0


async def wait(event: asyncio.Event, timeout: float = TIMEOUT) -> None:
    await asyncio.wait_for(event.wait(), timeout)


async def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until a condition on the queue's state holds."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


class Recorder:
    """A handler that records calls, per-key concurrency, and sets an Event per call."""

    def __init__(self, behaviour: Callable[[str, int], Awaitable[float | None]] | None = None):
        self.calls: list[str] = []
        self.times: dict[str, list[float]] = defaultdict(list)
        self.running: Counter[str] = Counter()
        self.max_running: Counter[str] = Counter()
        self.max_total = 0
        self.called: dict[tuple[str, int], asyncio.Event] = defaultdict(asyncio.Event)
        self.behaviour = behaviour

    def count(self, key: str) -> int:
        return self.calls.count(key)

    def event(self, key: str, nth: int) -> asyncio.Event:
        """Set when `key` has been handled for the nth time (1-based), once the handler ends."""
        return self.called[(key, nth)]

    async def __call__(self, key: str) -> float | None:
        self.calls.append(key)
        nth = self.count(key)
        self.times[key].append(time.monotonic())
        self.running[key] += 1
        self.max_running[key] = max(self.max_running[key], self.running[key])
        self.max_total = max(self.max_total, sum(self.running.values()))
        try:
            if self.behaviour is not None:
                return await self.behaviour(key, nth)
            return None
        finally:
            self.running[key] -= 1
            self.called[(key, nth)].set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def queues() -> AsyncIterator[list[WorkQueue[str]]]:
    """Queues a test makes are stopped at the end even if the test fails."""
    made: list[WorkQueue[str]] = []
    yield made
    for queue in made:
        await queue.stop()


async def test_key_added_many_times_while_queued_is_processed_once(
    queues: list[WorkQueue[str]],
) -> None:
    rec = Recorder()
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    queue.add("a")
    assert len(queue) == 2
    queue.start()
    # One worker, FIFO: once "b" is done, every pending "a" would have run already.
    await wait(rec.event("b", 1))
    assert rec.calls == ["a", "b"]
    await queue.stop()
    assert len(queue) == 0


async def test_key_added_while_processing_runs_again_afterwards_not_concurrently(
    queues: list[WorkQueue[str]],
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def behaviour(key: str, nth: int) -> None:
        if key == "a" and nth == 1:
            started.set()
            await wait(release)

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=4)
    queues.append(queue)
    queue.start()
    queue.add("a")
    await wait(started)
    for _ in range(3):
        queue.add("a")  # three adds while in progress collapse into one rerun
    queue.add("b")  # other keys still run while "a" is busy
    await wait(rec.event("b", 1))
    assert rec.count("a") == 1
    release.set()
    await wait(rec.event("a", 2))
    await wait_until(lambda: len(queue) == 0)
    assert rec.count("a") == 2
    assert rec.max_running["a"] == 1
    await queue.stop()


async def test_a_key_never_runs_concurrently_with_itself_under_load(
    queues: list[WorkQueue[str]],
) -> None:
    async def behaviour(key: str, nth: int) -> None:
        await asyncio.sleep(0.001)

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=8)
    queues.append(queue)
    queue.start()
    keys = ["a", "b", "c"]
    for _ in range(40):
        for key in keys:
            queue.add(key)
        await asyncio.sleep(0.0005)
    await wait_until(lambda: len(queue) == 0)
    await queue.stop()
    assert all(rec.count(key) >= 2 for key in keys)
    assert all(rec.max_running[key] == 1 for key in keys)
    assert rec.max_total > 1  # the workers did run in parallel, across keys


async def test_handler_returning_a_delay_requeues_after_it(
    queues: list[WorkQueue[str]],
) -> None:
    async def behaviour(key: str, nth: int) -> float | None:
        return 0.05 if nth == 1 else None

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=2)
    queues.append(queue)
    queue.start()
    queue.add("a")
    await wait(rec.event("a", 1))
    await wait(rec.event("a", 2))
    first, second = rec.times["a"]
    assert second - first >= 0.045
    await wait_until(lambda: len(queue) == 0)
    assert rec.count("a") == 2
    assert queue.scheduled("a") is None
    await queue.stop()


async def test_requeue_of_zero_runs_again_at_once(queues: list[WorkQueue[str]]) -> None:
    async def behaviour(key: str, nth: int) -> float | None:
        return 0.0 if nth < 3 else None

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    queue.start()
    queue.add("a")
    await wait(rec.event("a", 3))
    await wait_until(lambda: len(queue) == 0)
    assert rec.count("a") == 3
    await queue.stop()


async def test_failures_retry_with_exponential_backoff_and_reset_on_success(
    queues: list[WorkQueue[str]],
) -> None:
    """A fake clock makes the scheduled delays exact; the scheduler still waits that long in
    real time, so the delays are kept tiny."""
    clock = FakeClock()
    fail_on = {1, 2, 3, 4, 6}

    async def behaviour(key: str, nth: int) -> None:
        if nth in fail_on:
            raise RuntimeError(f"attempt {nth} fails")

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(
        rec, workers=1, clock=clock, base_backoff=0.01, max_backoff=0.05
    )
    queues.append(queue)
    queue.start()
    queue.add("a")

    expected_delays = {1: 0.01, 2: 0.02, 3: 0.04, 4: 0.05}  # doubling, capped at max_backoff
    for attempt, delay in expected_delays.items():
        await wait(rec.event("a", attempt))
        await wait_until(lambda: queue.scheduled("a") is not None)
        assert queue.scheduled("a") == pytest.approx(delay)
        assert rec.count("a") == attempt  # not retried before the clock reaches the due time
        clock.now += delay

    # Attempt 5 succeeds: nothing is scheduled and the failure count is reset ...
    await wait(rec.event("a", 5))
    await wait_until(lambda: len(queue) == 0)
    assert queue.scheduled("a") is None
    # ... so the next failure backs off from the base again, not from 0.05.
    queue.add("a")
    await wait(rec.event("a", 6))
    await wait_until(lambda: queue.scheduled("a") is not None)
    assert queue.scheduled("a") == pytest.approx(0.01)
    await queue.stop()


async def test_failures_retry_in_real_time(
    queues: list[WorkQueue[str]], caplog: pytest.LogCaptureFixture
) -> None:
    async def behaviour(key: str, nth: int) -> None:
        if nth <= 2:
            raise RuntimeError("boom")

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=2, base_backoff=0.02, max_backoff=1.0)
    queues.append(queue)
    queue.start()
    queue.add("a")
    await wait(rec.event("a", 3))
    t1, t2, t3 = rec.times["a"]
    assert t2 - t1 >= 0.019
    assert t3 - t2 >= 0.039
    failures = [r for r in caplog.records if r.name == "meshless.workqueue"]
    assert len(failures) == 2
    assert "attempt 1" in failures[0].getMessage()
    assert "attempt 2" in failures[1].getMessage()
    await queue.stop()


async def test_forget_cancels_a_scheduled_requeue(queues: list[WorkQueue[str]]) -> None:
    rec = Recorder()
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    queue.start()
    queue.add_after("a", 0.03)
    queue.add_after("b", 0.1)  # the sentinel: due after "a" would have been
    assert queue.scheduled("a") is not None
    queue.forget("a")
    assert queue.scheduled("a") is None
    await wait(rec.event("b", 1))
    assert rec.calls == ["b"]
    await queue.stop()


async def test_forget_resets_the_failure_count(queues: list[WorkQueue[str]]) -> None:
    clock = FakeClock()

    async def behaviour(key: str, nth: int) -> None:
        raise RuntimeError("always")

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=1, clock=clock, base_backoff=0.01)
    queues.append(queue)
    queue.start()
    queue.add("a")
    await wait(rec.event("a", 1))
    clock.now += 0.01
    await wait(rec.event("a", 2))
    await wait_until(lambda: queue.scheduled("a") is not None)
    assert queue.scheduled("a") == pytest.approx(0.02)
    queue.forget("a")
    queue.add("a")
    await wait(rec.event("a", 3))
    await wait_until(lambda: queue.scheduled("a") is not None)
    assert queue.scheduled("a") == pytest.approx(0.01)
    await queue.stop()


def test_add_after_keeps_the_earliest_due_time() -> None:
    clock = FakeClock()
    clock.now = 100.0

    async def never(key: str) -> None:
        raise AssertionError("not started")

    queue: WorkQueue[str] = WorkQueue(never, workers=1, clock=clock)
    queue.add_after("a", 5.0)
    assert queue.scheduled("a") == pytest.approx(5.0)
    queue.add_after("a", 10.0)  # later: ignored
    assert queue.scheduled("a") == pytest.approx(5.0)
    queue.add_after("a", 2.0)  # earlier: wins
    assert queue.scheduled("a") == pytest.approx(2.0)
    clock.now += 1.5
    assert queue.scheduled("a") == pytest.approx(0.5)
    assert queue.scheduled("b") is None
    assert len(queue) == 0  # scheduled keys are not queued yet


async def test_earlier_add_after_runs_once_at_the_earlier_time(
    queues: list[WorkQueue[str]],
) -> None:
    rec = Recorder()
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    queue.start()
    began = time.monotonic()
    queue.add_after("a", 0.2)
    queue.add_after("a", 0.02)  # replaces the 0.2 s schedule
    queue.add_after("b", 0.4)  # the sentinel, due after the stale 0.2 s entry
    await wait(rec.event("a", 1))
    assert rec.times["a"][0] - began < 0.2
    await wait(rec.event("b", 1))
    assert rec.calls == ["a", "b"]  # the stale 0.2 s entry did not run "a" again
    await queue.stop()


async def test_add_after_with_no_delay_adds_at_once(queues: list[WorkQueue[str]]) -> None:
    rec = Recorder()
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    queue.add_after("a", 0)
    queue.add_after("b", -1)
    assert len(queue) == 2
    assert queue.scheduled("a") is None
    queue.start()
    await wait(rec.event("b", 1))
    assert rec.calls == ["a", "b"]
    await queue.stop()


async def test_stop_cancels_a_running_handler(queues: list[WorkQueue[str]]) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def behaviour(key: str, nth: int) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rec = Recorder(behaviour)
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    queue.start()
    queue.add("a")
    await wait(started)
    await asyncio.wait_for(queue.stop(), TIMEOUT)
    assert cancelled.is_set()


async def test_background_keys_wait_behind_events_and_a_promoted_key_runs_once(
    queues: list[WorkQueue[str]],
) -> None:
    rec = Recorder()
    queue: WorkQueue[str] = WorkQueue(rec, workers=1)
    queues.append(queue)
    for key in ("sweep-1", "sweep-2", "sweep-3"):
        queue.add(key, background=True)
    queue.add("new")  # an event: ahead of the sweep
    queue.add("sweep-3")  # an event for a key the sweep also queued: promoted
    queue.add("sweep-1", background=True)  # already queued: nothing more
    assert len(queue) == 4
    queue.start()
    await wait(rec.event("sweep-2", 1))
    assert rec.calls == ["new", "sweep-3", "sweep-1", "sweep-2"]
    await wait_until(lambda: len(queue) == 0)
    assert rec.count("sweep-3") == 1


async def test_background_keys_use_every_idle_worker(queues: list[WorkQueue[str]]) -> None:
    release = asyncio.Event()
    started: list[str] = []
    all_started = asyncio.Event()

    async def behaviour(key: str, nth: int) -> None:
        started.append(key)
        if len(started) == 3:
            all_started.set()
        await wait(release)

    queue: WorkQueue[str] = WorkQueue(Recorder(behaviour), workers=3)
    queues.append(queue)
    queue.start()
    await wait_until(lambda: queue._idle == 3)  # the workers are waiting
    for key in ("a", "b", "c", "d"):
        queue.add(key, background=True)
    await wait(all_started)  # three at once, not one after another
    assert sorted(started) == ["a", "b", "c"]
    release.set()
    await wait_until(lambda: len(queue) == 0)
    assert sorted(started) == ["a", "b", "c", "d"]


async def test_wait_below_returns_once_the_backlog_has_drained(
    queues: list[WorkQueue[str]],
) -> None:
    release = asyncio.Event()

    async def behaviour(key: str, nth: int) -> None:
        await wait(release)

    queue: WorkQueue[str] = WorkQueue(Recorder(behaviour), workers=2)
    queues.append(queue)
    for i in range(5):
        queue.add(f"k{i}", background=True)
    queue.start()
    waiting = asyncio.create_task(queue.wait_below(2))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # five keys queued or running
    release.set()
    await asyncio.wait_for(waiting, TIMEOUT)
    assert len(queue) < 2
