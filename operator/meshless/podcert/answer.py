"""The status a decision writes on a PodCertificateRequest (pure), as the API server accepts
it: one condition (Issued, Denied or Failed, status True, a CamelCase reason, a
lastTransitionTime); for Issued also the PEM chain (leaf first, then the intermediates, never
a root) and notBefore/beginRefreshAt/notAfter equal to the leaf's; for Denied and Failed
nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshless.podcert.decide import Deny, Fail, Issue
from meshless.podcert.request import DENIED, FAILED, ISSUED

Json = dict[str, Any]


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC, whole seconds (the precision of metav1.Time and of X.509)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(type_: str, reason: str, message: str, now: datetime) -> Json:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": timestamp(now),
    }


def issued_status(
    issue: Issue, leaf: x509.Certificate, intermediates_pem: bytes, now: datetime
) -> Json:
    chain = leaf.public_bytes(serialization.Encoding.PEM) + intermediates_pem
    names = ", ".join((issue.spiffe_id, *issue.dns_names))
    message = f"signed by meshless.dev/spiffe for {names} (serial {leaf.serial_number:x})"
    if issue.dropped_dns_names:
        message += (
            f"; DNS names the name policy does not allow were left out: "
            f"{', '.join(issue.dropped_dns_names)}"
        )
    return {
        "conditions": [_condition(ISSUED, "Issued", message, now)],
        "certificateChain": chain.decode(),
        "notBefore": timestamp(issue.not_before),
        "beginRefreshAt": timestamp(issue.begin_refresh_at),
        "notAfter": timestamp(issue.not_after),
    }


def refused_status(decision: Deny | Fail, now: datetime) -> Json:
    type_ = DENIED if isinstance(decision, Deny) else FAILED
    return {"conditions": [_condition(type_, decision.reason, decision.message, now)]}
