"""Start-up that recovers (startup.py): which failures retrying clears, and when start-up
counts as stuck (the only time /healthz fails)."""

from __future__ import annotations

import aiohttp
import pytest

from meshless.kube import ApiError
from meshless.startup import (
    RETRY_INITIAL_S,
    RETRY_MAX_S,
    STUCK_AFTER,
    StartupState,
    is_transient,
    next_delay,
)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (aiohttp.ClientConnectionError("reset"), True),
        (TimeoutError(), True),
        (ApiError(401, "Unauthorized", "token expired"), True),
        (ApiError(403, "Forbidden", "RBAC not bound yet"), True),
        (ApiError(429, "TooManyRequests", "APF"), True),
        (ApiError(500, "InternalError", "etcd"), True),
        (ApiError(503, "ServiceUnavailable", ""), True),
        (ApiError(404, "NotFound", "no such namespace"), False),
        (ApiError(422, "Invalid", "bad body"), False),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
)
def test_which_failures_retrying_clears(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_an_api_outage_never_makes_start_up_stuck() -> None:
    state = StartupState()
    for _ in range(STUCK_AFTER * 10):
        state.failed(ConnectionRefusedError(111, "Connection refused"))
    assert not state.stuck
    assert "Connection refused" in state.describe()
    assert state.attempts == STUCK_AFTER * 10


def test_repeated_errors_that_retries_do_not_explain_make_it_stuck() -> None:
    state = StartupState()
    for _ in range(STUCK_AFTER - 1):
        state.failed(ValueError("a bug"))
    assert not state.stuck
    state.failed(ValueError("a bug"))
    assert state.stuck


def test_a_transient_failure_in_between_resets_the_count() -> None:
    state = StartupState()
    for _ in range(STUCK_AFTER - 1):
        state.failed(ValueError("a bug"))
    state.failed(ApiError(503, "ServiceUnavailable", ""))
    state.failed(ValueError("a bug"))
    assert not state.stuck


def test_success_clears_the_error_and_is_never_stuck() -> None:
    state = StartupState()
    for _ in range(STUCK_AFTER):
        state.failed(ValueError("a bug"))
    state.succeeded()
    assert state.started and not state.stuck
    assert state.describe() == "started"


def test_retry_delay_doubles_up_to_its_cap() -> None:
    delays = [next_delay(0.0)]
    for _ in range(6):
        delays.append(next_delay(delays[-1]))
    assert delays[0] == RETRY_INITIAL_S
    assert delays == sorted(delays)
    assert delays[-1] == RETRY_MAX_S
