"""Leader election on a coordination.k8s.io Lease, with client-go's algorithm.

Only the leader reconciles and writes; every replica keeps watching (warm caches make a
takeover fast) and serves admission webhooks. A standby takes the Lease when its holder has
not renewed it for leaseDurationSeconds, measured on the standby's own clock from the moment
it last saw the record change (clocks of different machines are never compared). The leader
gives up when it cannot renew within the renew deadline, and releases the Lease when it stops
cleanly, so a restart or a rolling update hands over at once.

The decisions are pure functions (`should_acquire`, `lease_body`); `LeaderElector` is the thin
shell that reads and writes the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from meshless.kube import LEASES, ApiError, Json, Kube

log = logging.getLogger(__name__)

LEASE_NAME = "meshless-operator-leader"


@dataclass(frozen=True)
class Timings:
    """client-go's algorithm with a shorter lease than its defaults (15/10/2 s): a standby
    takes over 8-12 s after the leader died, inside the 15 s a failover may take
    (docs/decisions/scale.md). The proportions stay client-go's: renew deadline below the
    lease, retries every 2 s."""

    lease_s: float = 10.0
    renew_deadline_s: float = 7.0
    retry_s: float = 2.0


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    lease_s: float
    transitions: int
    acquire_time: str | None
    renew_time: str | None


def record_of(lease: Json | None) -> LeaseRecord | None:
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_s=float(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
    )


def should_acquire(
    record: LeaseRecord | None, me: str, observed_at: float, now: float, timings: Timings
) -> bool:
    """Whether `me` may write the Lease now: nobody holds it, we hold it, it was released
    (empty holder), or its holder has not renewed it within its duration since we last saw
    the record change (`observed_at`, on our monotonic clock)."""
    if record is None or not record.holder or record.holder == me:
        return True
    duration = record.lease_s or timings.lease_s
    return now >= observed_at + duration


def micro_time(moment: datetime) -> str:
    """metav1.MicroTime."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    namespace: str,
    name: str,
    record: LeaseRecord | None,
    me: str,
    now: datetime,
    timings: Timings,
    *,
    release: bool = False,
) -> Json:
    """The Lease `me` writes to take, renew or (with `release`) give it up."""
    taking_over = record is None or record.holder != me
    transitions = (record.transitions if record else 0) + (
        1 if taking_over and record is not None and record.holder else 0
    )
    acquire = micro_time(now) if taking_over or record is None else record.acquire_time
    spec: dict[str, Any] = {
        "holderIdentity": "" if release else me,
        "leaseDurationSeconds": 1 if release else round(timings.lease_s),
        "acquireTime": acquire,
        "renewTime": micro_time(now),
        "leaseTransitions": transitions,
    }
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def default_identity() -> str:
    """The pod name in a cluster; host name and process id outside."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    return f"{socket.gethostname()}_{os.getpid()}"


Callback = Callable[[], Awaitable[None]]


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        identity: str,
        *,
        on_started: Callback,
        on_stopped: Callback,
        name: str = LEASE_NAME,
        timings: Timings = Timings(),
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings
        self._on_started = on_started
        self._on_stopped = on_stopped
        self._monotonic = monotonic
        self._wall = wall
        self.leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._observed_rv: str | None = None
        self._last_renew = 0.0

    async def run(self) -> None:
        """Try to acquire, then renew, forever (cancel to stop; `release` afterwards)."""
        while True:
            # One attempt never outlasts the renew deadline (client-go bounds it the same way):
            # a request hanging on a stalled API server (retried, 30 s per try) must not keep
            # a leader that can no longer renew leading after a standby may have taken over.
            budget = self.timings.renew_deadline_s
            if self.leading:
                budget = self._last_renew + budget - self._monotonic()
            try:
                renewed = await asyncio.wait_for(self._try_acquire_or_renew(), max(0.01, budget))
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                log.warning("leader election: no answer within %.1fs", max(0.0, budget))
                renewed = False
            except Exception as exc:  # the API away: keep trying, lose the lease on time
                log.warning("leader election: %s", exc)
                renewed = False
            now = self._monotonic()
            if renewed:
                self._last_renew = now
                if not self.leading:
                    self.leading = True
                    log.info(
                        "became leader (%s, Lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    await self._on_started()
            elif self.leading and now - self._last_renew >= self.timings.renew_deadline_s:
                self.leading = False
                log.error(
                    "lost the leader Lease: could not renew within %.0fs",
                    self.timings.renew_deadline_s,
                )
                await self._on_stopped()
            await asyncio.sleep(self.timings.retry_s * (1 + 0.2 * random.random()))

    async def _try_acquire_or_renew(self) -> bool:
        lease = await self.kube.get(LEASES, self.namespace, self.name)
        record = record_of(lease)
        rv = (lease or {}).get("metadata", {}).get("resourceVersion")
        if record != self._observed or rv != self._observed_rv:
            self._observed, self._observed_rv = record, rv
            self._observed_at = self._monotonic()
        if not should_acquire(
            record, self.identity, self._observed_at, self._monotonic(), self.timings
        ):
            return False
        body = lease_body(
            self.namespace, self.name, record, self.identity, self._wall(), self.timings
        )
        try:
            if lease is None:
                written = await self.kube.create(LEASES, body)
            else:
                body["metadata"]["resourceVersion"] = rv
                written = await self.kube.replace(LEASES, body)
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise
        self._observed = record_of(written)
        self._observed_rv = written["metadata"].get("resourceVersion")
        self._observed_at = self._monotonic()
        return True

    async def release(self) -> None:
        """Give the Lease up if we hold it, so a standby takes over without waiting."""
        if not self.leading:
            return
        self.leading = False
        with contextlib.suppress(Exception):
            lease = await self.kube.get(LEASES, self.namespace, self.name)
            record = record_of(lease)
            if lease is None or record is None or record.holder != self.identity:
                return
            body = lease_body(
                self.namespace,
                self.name,
                record,
                self.identity,
                self._wall(),
                self.timings,
                release=True,
            )
            body["metadata"]["resourceVersion"] = lease["metadata"].get("resourceVersion")
            await self.kube.replace(LEASES, body)
            log.info("released the leader Lease")
