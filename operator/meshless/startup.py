"""Start-up that recovers: what the operator's start is doing, and which failures retrying can
clear.

The first thing a replica does is read the CA Secret. An API server that is unreachable,
refuses the credentials (401, 403: a token or RBAC not in place yet) or answers 5xx or 429 at
that moment delays the start and does not break it: the step is retried with a capped backoff,
and the replica starts within seconds of the API server answering. While it cannot start,
/readyz says why (503). /healthz fails only when start-up itself is stuck: an error that
retries do not clear (anything else, `STUCK_AFTER` times in a row), never merely because the
API server is down: an API outage must not restart every replica.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshless.kube import ApiError, transient

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 3.0
STUCK_AFTER = 5  # failures in a row that retrying does not explain


def is_transient(error: BaseException) -> bool:
    """Would retrying the same step later succeed without anybody changing the operator?"""
    if isinstance(error, ApiError) and error.status in (401, 403, 408):
        return True  # credentials or RBAC not in place yet: somebody else's step to finish
    return transient(error) or isinstance(error, OSError)


@dataclass
class StartupState:
    """Where start-up is; read by /healthz and /readyz."""

    started: bool = False
    attempts: int = 0
    last_error: str = ""
    stuck_failures: int = 0  # in a row, of the kind retrying does not explain

    def failed(self, error: BaseException) -> None:
        self.attempts += 1
        self.last_error = f"{type(error).__name__}: {error}"[:300]
        self.stuck_failures = 0 if is_transient(error) else self.stuck_failures + 1

    def succeeded(self) -> None:
        self.started = True
        self.last_error = ""
        self.stuck_failures = 0

    @property
    def stuck(self) -> bool:
        return not self.started and self.stuck_failures >= STUCK_AFTER

    def describe(self) -> str:
        if self.started:
            return "started"
        if not self.last_error:
            return "starting"
        return f"starting: attempt {self.attempts} failed ({self.last_error}); retrying"


def next_delay(previous: float) -> float:
    return min(RETRY_MAX_S, max(RETRY_INITIAL_S, previous * 2))
