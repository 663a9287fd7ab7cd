"""Pods admitted under Warn or Audit that Enforce would have denied, counted into the
policy's status (`status.admission`) as deltas on what the status already holds, so a
restart loses no count (pure: the policy controller writes what `status_for` gives)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from meshless.policy.model import PolicyRef

MAX_RECORDED = 20  # pod names kept per policy (status lists are bounded)


class AdmissionAudit:
    def __init__(self) -> None:
        self._pending: dict[PolicyRef, list[str]] = defaultdict(list)

    def record(self, policy: PolicyRef, pod: str) -> None:
        self._pending[policy].append(pod)

    def status_for(
        self, policy: PolicyRef, stored: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any] | None, int]:
        """The status.admission to write (stored counts plus what is pending), and how many
        pending records it includes (to drop once written)."""
        pending = self._pending.get(policy) or []
        if not pending and not stored:
            return None, 0
        stored = stored or {}
        pods = [p for p in stored.get("pods") or [] if p not in pending] + pending
        return {
            "wouldDeny": int(stored.get("wouldDeny") or 0) + len(pending),
            "pods": pods[-MAX_RECORDED:],
        }, len(pending)

    def written(self, policy: PolicyRef, count: int) -> None:
        pending = self._pending.get(policy)
        if pending:
            del pending[:count]
            if not pending:
                del self._pending[policy]


__all__ = ["MAX_RECORDED", "AdmissionAudit"]
