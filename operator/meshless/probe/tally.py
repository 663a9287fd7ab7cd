"""What the probes proved, per policy (pure): status.enforcement and the Enforced condition.

A port counts as proven when its last probe, no older than the window (the probe interval
plus slack), observed exactly the mode the policy gives it. UNREACHABLE is reported apart: a
port that refuses TCP says nothing about enforcement. A port not probed yet is pending.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from meshless.api import ConditionType, Mode, Reason
from meshless.conditions import ConditionChange
from meshless.policy.model import PolicyRef
from meshless.probe.classify import Verdict
from meshless.timestamps import rfc3339

MAX_FAILING_LISTED = 20
MESSAGE_LISTED = 5


@dataclass(frozen=True)
class PortProbe:
    """One probed port of one pod: what it should be, what was seen last and when."""

    policy: PolicyRef  # the policy in effect for the pod (its status counts the port)
    pod: str  # namespace/name
    port: int
    mode: Mode  # STRICT or PERMISSIVE
    verdict: Verdict | None = None  # None: not probed yet
    at: datetime | None = None


def port_state(probe: PortProbe, now: datetime, window: timedelta) -> str:
    if probe.verdict is None or probe.at is None:
        return "pending"
    if probe.verdict is Verdict.UNREACHABLE:
        return "unreachable"
    if probe.verdict.value != probe.mode.value:
        return "failing"
    return "proven" if now - probe.at <= window else "pending"


def enforcement_status(
    probes: Iterable[PortProbe], now: datetime, window: timedelta
) -> tuple[dict[str, object], ConditionChange]:
    counts = {
        mode: {"proven": 0, "failing": 0, "unreachable": 0}
        for mode in (Mode.STRICT, Mode.PERMISSIVE)
    }
    failing: list[dict[str, object]] = []
    strict_not_proven: list[str] = []
    strict_total = 0
    strict_failing = 0
    oldest_proof: datetime | None = None
    all_proven = True
    for probe in sorted(probes, key=lambda p: (p.pod, p.port)):
        state = port_state(probe, now, window)
        if state in counts[probe.mode]:
            counts[probe.mode][state] += 1
        if state == "failing" and probe.verdict is not None:
            failing.append({"pod": probe.pod, "port": probe.port, "observed": probe.verdict.value})
        if state == "proven" and probe.at is not None:
            oldest_proof = probe.at if oldest_proof is None else min(oldest_proof, probe.at)
        else:
            all_proven = False
        if probe.mode is Mode.STRICT:
            strict_total += 1
            strict_failing += state == "failing"
            if state != "proven":
                observed = probe.verdict.value if probe.verdict else "not probed yet"
                strict_not_proven.append(f"{probe.pod}:{probe.port} ({observed})")
    status: dict[str, object] = {
        "strict": counts[Mode.STRICT],
        "permissive": counts[Mode.PERMISSIVE],
        "failing": failing[:MAX_FAILING_LISTED],
    }
    if all_proven and oldest_proof is not None:
        status["lastProven"] = rfc3339(oldest_proof)
    if strict_total == 0:
        condition = ConditionChange(
            ConditionType.ENFORCED,
            True,
            Reason.NOTHING_TO_PROVE,
            "No running pod has a STRICT port",
        )
    elif not strict_not_proven:
        condition = ConditionChange(
            ConditionType.ENFORCED,
            True,
            Reason.PROVEN,
            f"All {strict_total} STRICT ports refused a client without a certificate and "
            "accepted the prober's identity",
        )
    else:
        shown = ", ".join(strict_not_proven[:MESSAGE_LISTED])
        more = len(strict_not_proven) - MESSAGE_LISTED
        reason = Reason.NOT_ENFORCED if strict_failing else Reason.PROBING
        condition = ConditionChange(
            ConditionType.ENFORCED,
            False,
            reason,
            f"{len(strict_not_proven)} of {strict_total} STRICT ports not proven: {shown}"
            + (f" and {more} more" if more > 0 else ""),
        )
    return status, condition
