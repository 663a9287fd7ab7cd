"""Leader election decisions (client-go's algorithm): who may write the Lease, and what."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from datetime import UTC, datetime
from typing import cast

import pytest

from meshless.kube import Json, Kube, Resource
from meshless.leader import (
    LeaderElector,
    LeaseRecord,
    Timings,
    lease_body,
    record_of,
    should_acquire,
)

T = Timings()
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)


def held_by(holder: str, lease_s: float = 15, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, lease_s, transitions, "2026-11-29T11:00:00.000000Z", None)


@pytest.mark.parametrize(
    ("record", "observed_at", "now", "expected"),
    [
        pytest.param(None, 0.0, 0.0, True, id="no Lease: take it"),
        pytest.param(held_by(""), 100.0, 100.0, True, id="released (empty holder): take it"),
        pytest.param(held_by("me"), 100.0, 100.0, True, id="ours: renew"),
        pytest.param(held_by("other"), 100.0, 114.9, False, id="other holder within duration"),
        pytest.param(held_by("other"), 100.0, 115.0, True, id="other holder expired"),
        pytest.param(
            held_by("other", lease_s=60), 100.0, 130.0, False, id="the holder's duration counts"
        ),
        pytest.param(
            held_by("other", lease_s=0), 100.0, 115.0, True, id="no duration: our default"
        ),
    ],
)
def test_should_acquire(
    record: LeaseRecord | None, observed_at: float, now: float, expected: bool
) -> None:
    assert should_acquire(record, "me", observed_at, now, T) is expected


def test_taking_over_counts_a_transition_and_sets_acquire_time() -> None:
    body = lease_body("ns", "lease", held_by("other", transitions=3), "me", NOW, T)
    spec = body["spec"]
    assert spec["holderIdentity"] == "me"
    assert spec["leaseTransitions"] == 4
    assert spec["acquireTime"] == spec["renewTime"] == "2026-11-29T12:00:00.000000Z"
    assert spec["leaseDurationSeconds"] == 10  # the default lease (see Timings)


def test_renewing_keeps_acquire_time_and_transitions() -> None:
    record = held_by("me", transitions=2)
    spec = lease_body("ns", "lease", record, "me", NOW, T)["spec"]
    assert spec["acquireTime"] == record.acquire_time
    assert spec["leaseTransitions"] == 2
    assert spec["renewTime"] == "2026-11-29T12:00:00.000000Z"


def test_the_first_holder_is_not_a_transition() -> None:
    assert lease_body("ns", "lease", None, "me", NOW, T)["spec"]["leaseTransitions"] == 0
    assert lease_body("ns", "lease", held_by(""), "me", NOW, T)["spec"]["leaseTransitions"] == 0


def test_release_empties_the_holder_and_shortens_the_lease() -> None:
    spec = lease_body("ns", "lease", held_by("me"), "me", NOW, T, release=True)["spec"]
    assert spec["holderIdentity"] == ""
    assert spec["leaseDurationSeconds"] == 1


def test_record_of_reads_the_lease_fields() -> None:
    lease = {"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 2}}
    assert record_of(lease) == LeaseRecord("a", 15.0, 2, None, None)
    assert record_of(None) is None


class StallingKube:
    """A Lease store whose API can be stalled: requests then hang, as on a SIGSTOPped server."""

    def __init__(self) -> None:
        self.lease: Json | None = None
        self.stalled = False
        self.rv = 0

    async def _wait(self) -> None:
        while self.stalled:
            await asyncio.sleep(0.01)

    async def get(self, resource: Resource, namespace: str, name: str) -> Json | None:
        await self._wait()
        return copy.deepcopy(self.lease)

    async def create(self, resource: Resource, body: Json) -> Json:
        return await self.replace(resource, body)

    async def replace(self, resource: Resource, body: Json) -> Json:
        await self._wait()
        self.rv += 1
        self.lease = {**body, "metadata": {**body["metadata"], "resourceVersion": str(self.rv)}}
        return copy.deepcopy(self.lease)


async def test_a_leader_whose_renewal_hangs_steps_down_within_the_deadline_then_returns() -> None:
    kube = StallingKube()
    started, stopped = asyncio.Event(), asyncio.Event()

    async def on_started() -> None:
        started.set()

    async def on_stopped() -> None:
        stopped.set()

    elector = LeaderElector(
        cast(Kube, kube),
        "ns",
        "me",
        on_started=on_started,
        on_stopped=on_stopped,
        timings=Timings(lease_s=1.5, renew_deadline_s=0.5, retry_s=0.05),
    )
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(started.wait(), 2)
        started.clear()
        kube.stalled = True  # every request hangs from now on
        stalled_at = time.monotonic()
        await asyncio.wait_for(stopped.wait(), 2)
        assert time.monotonic() - stalled_at < 0.5 + 0.2  # the deadline, plus one retry
        assert not elector.leading
        kube.stalled = False  # the API is back: the Lease is still ours, taken again
        await asyncio.wait_for(started.wait(), 2)
        assert elector.leading
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
