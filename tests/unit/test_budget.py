"""The write budget: a token bucket on an injected clock; a storm is spread, never dropped."""

from __future__ import annotations

import asyncio

import pytest

from meshless.budget import WriteBudget


class FakeTime:
    """A clock that only moves when someone sleeps.

    `sleep(d)` yields to the event loop (so that other tasks get to queue up, as they would
    during a real sleep) and then moves the clock to at least the moment it was called plus
    `d`. Sleeps that overlap in time therefore end together, as real ones would: a budget that
    let its waiters sleep side by side would finish early, not take the expected time.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.start = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        wake = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, wake)

    @property
    def elapsed(self) -> float:
        return self.now - self.start


def make_budget(rate: float, burst: int) -> tuple[WriteBudget, FakeTime]:
    fake = FakeTime()
    return WriteBudget(rate, burst, clock=fake.clock, sleep=fake.sleep), fake


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (float("nan"), 1)])
def test_rejects_a_budget_that_cannot_work(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        WriteBudget(rate, burst)


async def test_burst_is_free_then_tokens_come_at_rate() -> None:
    budget, fake = make_budget(rate=2, burst=3)
    waits = [await budget.acquire() for _ in range(3)]
    assert waits == [0.0, 0.0, 0.0]
    assert fake.sleeps == []
    # The bucket is empty: each next token takes 1/rate seconds.
    assert await budget.acquire() == pytest.approx(0.5)
    assert await budget.acquire() == pytest.approx(0.5)
    assert fake.elapsed == pytest.approx(1.0)
    assert fake.sleeps == pytest.approx([0.5, 0.5])


async def test_idle_time_refills_but_never_beyond_burst() -> None:
    budget, fake = make_budget(rate=2, burst=3)
    for _ in range(3):
        await budget.acquire()
    fake.now += 1.0  # two tokens' worth of idle time
    assert [await budget.acquire() for _ in range(2)] == [0.0, 0.0]
    assert await budget.acquire() == pytest.approx(0.5)

    fake.now += 3600.0  # a long idle period refills only up to the burst
    assert [await budget.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await budget.acquire() == pytest.approx(0.5)


async def test_partial_token_shortens_the_wait() -> None:
    budget, fake = make_budget(rate=4, burst=1)
    await budget.acquire()
    fake.now += 0.1  # 0.4 of a token
    assert await budget.acquire() == pytest.approx(0.15)


async def test_expected_wait_reflects_tokens_without_taking_any() -> None:
    budget, fake = make_budget(rate=10, burst=2)
    assert budget.expected_wait() == 0.0
    await budget.acquire()
    assert budget.expected_wait() == 0.0  # one token left
    await budget.acquire()
    assert budget.expected_wait() == pytest.approx(0.1)
    assert budget.expected_wait() == pytest.approx(0.1)  # asking again takes nothing
    fake.now += 0.04
    assert budget.expected_wait() == pytest.approx(0.06)
    fake.now += 1.0
    assert budget.expected_wait() == 0.0
    assert fake.sleeps == []


async def test_a_storm_of_100_writes_is_spread_over_nine_seconds_and_none_is_dropped() -> None:
    budget, fake = make_budget(rate=10, burst=10)
    order: list[int] = []

    async def writer(i: int) -> float:
        waited = await budget.acquire()
        order.append(i)
        return waited

    waits = await asyncio.wait_for(asyncio.gather(*(writer(i) for i in range(100))), timeout=10)

    assert len(waits) == 100
    assert order == list(range(100))  # FIFO: tokens go to the oldest waiter
    assert fake.elapsed == pytest.approx(9.0)
    # All 100 arrived at the same moment: the first 10 pass at once, the k-th after that
    # waits k tenths of a second.
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.1 * k for k in range(1, 91)])
    assert max(waits) == pytest.approx(9.0)


async def test_waiters_are_served_in_arrival_order_even_when_arriving_late() -> None:
    budget, fake = make_budget(rate=1, burst=1)
    await budget.acquire()
    served: list[str] = []

    async def writer(name: str) -> None:
        await budget.acquire()
        served.append(name)

    first = asyncio.create_task(writer("first"))
    await asyncio.sleep(0)  # `first` is now waiting for the token
    second = asyncio.create_task(writer("second"))
    third = asyncio.create_task(writer("third"))
    await asyncio.wait_for(asyncio.gather(first, second, third), timeout=5)
    assert served == ["first", "second", "third"]
    assert fake.elapsed == pytest.approx(3.0)


async def test_acquire_returns_the_time_spent_waiting_including_the_queue() -> None:
    budget, fake = make_budget(rate=5, burst=1)
    await budget.acquire()
    a = asyncio.create_task(budget.acquire())
    b = asyncio.create_task(budget.acquire())
    waited_a, waited_b = await asyncio.wait_for(asyncio.gather(a, b), timeout=5)
    assert waited_a == pytest.approx(0.2)
    assert waited_b == pytest.approx(0.4)  # 0.2 behind `a`, then 0.2 for its own token
    assert fake.elapsed == pytest.approx(0.4)


async def test_real_clock_and_sleep_are_the_defaults() -> None:
    budget = WriteBudget(rate=1000, burst=1)
    assert await budget.acquire() == pytest.approx(0.0, abs=0.01)
    waited = await asyncio.wait_for(budget.acquire(), timeout=5)
    assert 0.0 < waited < 1.0
