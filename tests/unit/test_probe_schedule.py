"""The prober's schedule runs on the work queue: every port of a new term is probed, a port is
never probed by two workers at once, the next probe comes at the interval, and a rotated
certificate owes one probe after ROTATION_REPROBE_S without postponing a sooner one.

The probe itself (a TLS handshake) is replaced by a recorder: what is tested here is when
probes happen, not what they find. Waits are bounded; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from meshless.api import Mode
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PortMode
from meshless.probe import runner
from meshless.probe.runner import EnforcementProber, TargetKey, TargetState
from meshless.settings import ProbeSettings, Settings

POLICY = PolicyRef("shop", "strict")
TIMEOUT = 10.0


def pod(name: str, ip: str = "10.0.0.1") -> tuple[PodInfo, PodResolution]:
    info = PodInfo("shop", name, {}, "payments", frozenset({8443}), True, ip=ip, running=True)
    resolution = PodResolution(
        Mode.STRICT, POLICY, {8443: PortMode(Mode.STRICT, POLICY)}, (POLICY,)
    )
    return info, resolution


class Prober(EnforcementProber):
    """The real scheduler around a recorded probe (no handshake, no API)."""

    def __init__(self, interval_s: float, probe_s: float = 0.0) -> None:
        settings = Settings(probe=replace(ProbeSettings(), interval=timedelta(seconds=interval_s)))
        super().__init__(
            None,  # type: ignore[arg-type]  # never used: nothing here calls the API
            settings,
            None,  # type: ignore[arg-type]
            lambda: datetime.now(UTC),
            time.monotonic,
            lambda policy: None,
        )
        self.probe_s = probe_s
        self.probed: list[tuple[TargetKey, float]] = []
        self.running: Counter[TargetKey] = Counter()
        self.overlaps = 0

    async def ensure_identity(self) -> None:
        return None

    async def _probe(self, key: TargetKey, state: TargetState) -> bool:
        self.running[key] += 1
        self.overlaps += self.running[key] > 1
        self.probed.append((key, time.monotonic()))
        try:
            await asyncio.sleep(self.probe_s)
        finally:
            self.running[key] -= 1
        return True

    def times_of(self, name: str) -> list[float]:
        return [at for (_, pod_name, _), at in self.probed if pod_name == name]


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), TIMEOUT)


@pytest.fixture
async def probers() -> AsyncIterator[list[Prober]]:
    made: list[Prober] = []
    yield made
    for prober in made:
        await prober.stop()


async def test_a_new_term_probes_every_port_then_again_at_the_interval(
    probers: list[Prober],
) -> None:
    prober = Prober(interval_s=1.0)
    probers.append(prober)
    prober.update_namespace("shop", [pod("a"), pod("b", "10.0.0.2")])
    assert prober.probed == []  # not leading: nothing is scheduled
    prober.start()
    await until(lambda: len(prober.times_of("a")) >= 2 and len(prober.times_of("b")) >= 2)
    first, second = prober.times_of("a")[:2]
    assert 0.85 <= second - first <= 1.5  # the interval, +-10% jitter, plus the loop's slack


async def test_a_port_changed_while_it_is_probed_is_probed_again_after_not_alongside(
    probers: list[Prober],
) -> None:
    prober = Prober(interval_s=60.0, probe_s=0.3)
    probers.append(prober)
    prober.start()
    prober.update_namespace("shop", [pod("a")])
    await until(lambda: prober.running[("shop", "a", 8443)] == 1)
    prober.update_namespace("shop", [pod("a", "10.0.0.9")])  # a new IP: probe again now
    await until(lambda: len(prober.times_of("a")) == 2)
    assert prober.overlaps == 0


async def test_a_rotation_owes_a_later_probe_without_postponing_a_sooner_one(
    probers: list[Prober], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "ROTATION_REPROBE_S", 1.6)
    prober = Prober(interval_s=1.0)  # the next regular probe (0.9-1.1 s) is due before 1.6 s
    probers.append(prober)
    prober.update_namespace("shop", [pod("a")])
    prober.start()
    await until(lambda: len(prober.times_of("a")) == 1)
    rotated = time.monotonic()
    prober.certificate_rotated("shop", "spiffe://cluster.local/ns/shop/sa/payments")
    await until(lambda: len(prober.times_of("a")) == 3)
    regular, owed = (at - rotated for at in prober.times_of("a")[1:3])
    assert regular < 1.45  # the regular probe came at the interval, not postponed to 1.6 s
    assert owed >= 1.55  # and the rotation's probe came after ROTATION_REPROBE_S
