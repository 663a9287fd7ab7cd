"""The cluster-wide write budget: a token bucket that every Secret write passes through.

A renewal storm is spread out in time, never dropped: `acquire` waits for its token in FIFO
order. The clock and the sleep are injected so tests need no real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class WriteBudget:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0 or burst < 1:  # `not rate > 0` rejects NaN too
            raise ValueError("write budget needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def expected_wait(self) -> float:
        """Seconds a caller arriving now would wait (ignoring callers already queued)."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)

    async def acquire(self) -> float:
        """Take one token, waiting for it if needed. Returns the seconds waited."""
        started = self._clock()
        # The lock keeps waiters in arrival order: a token goes to the oldest waiter.
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await self._sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1
        return self._clock() - started
