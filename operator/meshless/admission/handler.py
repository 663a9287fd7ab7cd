"""The webhooks' one handler (shell): `admit` over the current state, its records handed to
the policy status, its refusals logged.

Every webhook path is answered here; what the answer is, `admit.admit` alone decides. A
failure inside it (a bug) is a refusal with code 500, as Kopf answered a handler's crash:
the API server then applies the webhook's failurePolicy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from meshless.admission.admit import (
    AdmissionRequest,
    AdmissionResponse,
    AdmissionState,
    admit,
    refused,
)
from meshless.admission.validate import AdmissionRecord

log = logging.getLogger(__name__)

FAILED_CODE = 500
StateFn = Callable[[], AdmissionState]
RecordFn = Callable[[AdmissionRecord], None]


def _forget(record: AdmissionRecord) -> None:
    return None


class AdmissionHandler:
    """Answers one AdmissionRequest at a time from `state()`, the view the operator keeps
    current; `record` receives the Warn and Audit admissions (never a dry run's)."""

    def __init__(self, state: StateFn, record: RecordFn = _forget) -> None:
        self.state = state
        self.record = record

    def __call__(self, request: AdmissionRequest) -> AdmissionResponse:
        try:
            response = admit(request, self.state())
        except Exception:
            log.exception("admission at /%s failed (uid %s)", request.webhook, request.uid)
            return refused(
                f"meshless admission at /{request.webhook} failed; see the operator's log",
                FAILED_CODE,
            )
        if not response.allowed:
            log.info("admission refused: %s", response.message)
        if response.note:
            log.warning("%s", response.note)
        for record in response.records:
            self.record(record)
        return response
