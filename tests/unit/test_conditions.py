"""metav1.Condition lists: lastTransitionTime moves only when the status flips."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from meshless.conditions import find_condition, set_condition
from meshless.timestamps import rfc3339

T0 = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5, seconds=7)


def ready(
    status: bool,
    *,
    reason: str = "Issued",
    message: str = "ok",
    generation: int = 1,
    now: datetime = T0,
    conditions: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    return set_condition(
        conditions or [],
        type="Ready",
        status=status,
        reason=reason,
        message=message,
        generation=generation,
        now=now,
    )


def test_rfc3339_is_utc_with_z_and_whole_seconds() -> None:
    assert rfc3339(datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)) == "2026-03-04T05:06:07Z"


def test_rfc3339_converts_another_zone_to_utc() -> None:
    # The same moment written in UTC+02:00: labelling 07:06:07 "Z" would be two hours off.
    plus_two = timezone(timedelta(hours=2))
    assert rfc3339(datetime(2026, 3, 4, 7, 6, 7, tzinfo=plus_two)) == "2026-03-04T05:06:07Z"


def test_rfc3339_takes_a_naive_moment_as_utc_whatever_the_local_zone() -> None:
    code = (
        "from datetime import datetime; from meshless.timestamps import rfc3339; "
        "print(rfc3339(datetime(2026, 3, 4, 5, 6, 7)))"
    )
    env = {**os.environ, "TZ": "America/New_York"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "2026-03-04T05:06:07Z", out.stderr


def test_adds_a_condition_to_an_empty_list() -> None:
    out = ready(True, generation=3)
    assert out == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Issued",
            "message": "ok",
            "lastTransitionTime": "2026-01-15T12:00:00Z",
            "observedGeneration": 3,
        }
    ]


def test_false_status_is_the_string_false() -> None:
    out = ready(False, reason="SecretConflict")
    assert out[0]["status"] == "False"
    assert out[0]["reason"] == "SecretConflict"


def test_same_status_keeps_transition_time_but_updates_the_rest() -> None:
    first = ready(True, now=T0, generation=1)
    second = ready(
        True, reason="Renewed", message="new cert", generation=2, now=T1, conditions=first
    )
    assert len(second) == 1
    cond = second[0]
    assert cond["lastTransitionTime"] == "2026-01-15T12:00:00Z"
    assert cond["reason"] == "Renewed"
    assert cond["message"] == "new cert"
    assert cond["observedGeneration"] == 2


def test_status_flip_changes_transition_time() -> None:
    first = ready(True, now=T0)
    flipped = ready(False, reason="IssuerUnavailable", now=T1, conditions=first)
    assert flipped[0]["status"] == "False"
    assert flipped[0]["lastTransitionTime"] == "2026-01-15T12:05:07Z"
    back = ready(True, now=T1 + timedelta(hours=1), conditions=flipped)
    assert back[0]["lastTransitionTime"] == "2026-01-15T13:05:07Z"


def test_missing_transition_time_is_filled_in() -> None:
    old = [{"type": "Ready", "status": "True", "reason": "Old", "message": ""}]
    out = ready(True, now=T1, conditions=old)
    assert out[0]["lastTransitionTime"] == rfc3339(T1)


def test_other_types_are_untouched_and_order_is_kept() -> None:
    issuing = {
        "type": "Issuing",
        "status": "True",
        "reason": "Renewing",
        "message": "renewal time reached",
        "lastTransitionTime": "2025-12-31T23:59:59Z",
        "observedGeneration": 7,
    }
    existing = [dict(issuing), *ready(False, now=T0)]
    out = ready(True, now=T1, generation=8, conditions=existing)
    assert [c["type"] for c in out] == ["Issuing", "Ready"]
    assert out[0] == issuing
    assert out[1]["status"] == "True"
    assert out[1]["lastTransitionTime"] == rfc3339(T1)


def test_a_new_type_is_appended_after_the_others() -> None:
    existing = ready(True, now=T0)
    out = set_condition(
        existing,
        type="Issuing",
        status=False,
        reason="UpToDate",
        message="",
        generation=1,
        now=T1,
    )
    assert [c["type"] for c in out] == ["Ready", "Issuing"]
    assert out[0] == existing[0]
    assert out[1]["lastTransitionTime"] == rfc3339(T1)


def test_input_list_is_not_mutated() -> None:
    existing = ready(True, now=T0, generation=1)
    snapshot = [dict(c) for c in existing]
    out = ready(False, now=T1, generation=2, conditions=existing)
    assert existing == snapshot
    assert out[0] is not existing[0]


def test_no_generation_means_no_observed_generation() -> None:
    out = set_condition(
        [], type="Ready", status=True, reason="Issued", message="", generation=None, now=T0
    )
    assert "observedGeneration" not in out[0]


def test_find_condition() -> None:
    conditions = [
        {"type": "Ready", "status": "True"},
        {"type": "Issuing", "status": "False"},
    ]
    found = find_condition(conditions, "Issuing")
    assert found is not None
    assert found["status"] == "False"
    assert find_condition(conditions, "Conflicted") is None
    assert find_condition([], "Ready") is None
