"""metav1.Condition lists: set one condition, keeping lastTransitionTime when status holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from meshless.timestamps import rfc3339

Condition = dict[str, Any]


@dataclass(frozen=True)
class ConditionChange:
    """One condition to set: type, status, reason (CamelCase), message."""

    type: str
    status: bool
    reason: str
    message: str


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    type: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    wanted = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type:
            out.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime") if cond.get("status") == wanted else None
        out.append(
            _condition(type, wanted, reason, message, generation, transition or rfc3339(now))
        )
    if not found:
        out.append(_condition(type, wanted, reason, message, generation, rfc3339(now)))
    return out


def _condition(
    type: str, status: str, reason: str, message: str, generation: int | None, transition: str
) -> Condition:
    cond: Condition = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def find_condition(conditions: Sequence[Mapping[str, Any]], type: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type), None)
