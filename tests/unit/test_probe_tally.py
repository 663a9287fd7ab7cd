"""What the probes proved, per policy: counts, failing ports, the Enforced condition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meshless.api import ConditionType, Mode, Reason
from meshless.policy.model import PolicyRef
from meshless.probe.classify import Verdict
from meshless.probe.tally import PortProbe, enforcement_status, port_state

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=7, seconds=30)
P = PolicyRef("shop", "strict")


def probe(
    pod: str, port: int, mode: Mode, verdict: Verdict | None, age: timedelta = timedelta(0)
) -> PortProbe:
    return PortProbe(P, f"shop/{pod}", port, mode, verdict, NOW - age if verdict else None)


def test_every_strict_port_proven_is_enforced() -> None:
    status, cond = enforcement_status(
        [
            probe("a", 8443, Mode.STRICT, Verdict.STRICT, timedelta(minutes=2)),
            probe("b", 8443, Mode.STRICT, Verdict.STRICT),
            probe("b", 9090, Mode.PERMISSIVE, Verdict.PERMISSIVE),
        ],
        NOW,
        WINDOW,
    )
    assert (cond.type, cond.status, cond.reason) == (ConditionType.ENFORCED, True, Reason.PROVEN)
    assert status["strict"] == {"proven": 2, "failing": 0, "unreachable": 0}
    assert status["permissive"] == {"proven": 1, "failing": 0, "unreachable": 0}
    assert status["failing"] == []
    assert status["lastProven"] == "2026-11-29T11:58:00Z"  # the oldest proof still current


def test_a_permissive_or_plaintext_strict_port_fails_and_is_named() -> None:
    status, cond = enforcement_status(
        [
            probe("good", 8443, Mode.STRICT, Verdict.STRICT),
            probe("optional", 8443, Mode.STRICT, Verdict.PERMISSIVE),
            probe("plain", 8080, Mode.STRICT, Verdict.PLAINTEXT),
        ],
        NOW,
        WINDOW,
    )
    assert (cond.status, cond.reason) == (False, Reason.NOT_ENFORCED)
    assert "shop/optional:8443 (PERMISSIVE)" in cond.message
    assert "shop/plain:8080 (PLAINTEXT)" in cond.message
    assert status["failing"] == [
        {"pod": "shop/optional", "port": 8443, "observed": "PERMISSIVE"},
        {"pod": "shop/plain", "port": 8080, "observed": "PLAINTEXT"},
    ]
    assert "lastProven" not in status


def test_unreachable_is_apart_from_failing_and_not_proven() -> None:
    status, cond = enforcement_status(
        [probe("down", 8443, Mode.STRICT, Verdict.UNREACHABLE)], NOW, WINDOW
    )
    assert status["strict"] == {"proven": 0, "failing": 0, "unreachable": 1}
    assert (cond.status, cond.reason) == (False, Reason.PROBING)


def test_a_stale_proof_no_longer_counts() -> None:
    stale = probe("a", 8443, Mode.STRICT, Verdict.STRICT, WINDOW + timedelta(seconds=1))
    assert port_state(stale, NOW, WINDOW) == "pending"
    _, cond = enforcement_status([stale], NOW, WINDOW)
    assert cond.status is False


def test_not_probed_yet_is_probing_and_nothing_strict_is_nothing_to_prove() -> None:
    _, cond = enforcement_status([probe("new", 8443, Mode.STRICT, None)], NOW, WINDOW)
    assert (cond.status, cond.reason) == (False, Reason.PROBING)
    assert "not probed yet" in cond.message
    _, cond = enforcement_status(
        [probe("p", 9090, Mode.PERMISSIVE, Verdict.PERMISSIVE)], NOW, WINDOW
    )
    assert (cond.status, cond.reason) == (True, Reason.NOTHING_TO_PROVE)


def test_failing_list_is_bounded() -> None:
    many = [probe(f"p{i:02}", 8443, Mode.STRICT, Verdict.DISABLE) for i in range(30)]
    status, cond = enforcement_status(many, NOW, WINDOW)
    assert len(status["failing"]) == 20  # type: ignore[arg-type]
    assert "and 25 more" in cond.message
