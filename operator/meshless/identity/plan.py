"""What a reconcile of one WorkloadIdentity does, decided without the API (pure): from the
identity, its Secret as read, the CA and the clock, one plan: keep the certificate (rewriting
the Secret only if its bundle or metadata is behind), issue a new one (and why), or stop at a
Secret that is not ours. Also the statuses and Events the shell writes.

When a certificate is renewed: the ordered checks of pki/reissue.py say why it must be, and
`plan_secret` here says when a leaf of a retired issuer may still wait (a CA rotation's
window, pki/rotation.py).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from meshless.api import ConditionType
from meshless.api import Reason as R
from meshless.conditions import ConditionChange, conditions_with, find_condition
from meshless.identity.checked import checkmark, summary_from_status
from meshless.identity.render import (
    certificate_status,
    decode_secret_data,
    is_owned_by,
    metadata_drift,
)
from meshless.identity.rotation_marks import rotation_annotations
from meshless.identity.spec import IdentitySpec, SpecError
from meshless.pki.ca import CertificateAuthority
from meshless.pki.reissue import (
    CertificateSummary,
    ObservedSecret,
    ReissueCause,
    reissue_reason,
    renewal_time_for,
    summarize,
)
from meshless.pki.rotation import RotationState, retired_issuer_deadline
from meshless.pki.svid import parse_certificate_chain
from meshless.timestamps import rfc3339

Json = dict[str, Any]
FIRST_ISSUE = ReissueCause(R.SECRET_MISSING, "the Secret does not exist")
READY = ConditionType.READY.value
ISSUING = ConditionType.ISSUING.value
SECRET_FIELDS = ("name", "namespace", "resourceVersion", "labels", "annotations", "ownerReferences")


@dataclass(frozen=True, slots=True)
class CAView:
    """What the plan needs of the CA at the moment of the reconcile."""

    ca: CertificateAuthority
    bundle: bytes
    rotation: RotationState
    rotation_window: timedelta


@dataclass(frozen=True, slots=True)
class Keep:
    """The Secret's certificate stays; `rewrite`: written again with the current bundle and
    metadata (`checked`: the checkmark to write, None for a leaf kept through a rotation)."""

    summary: CertificateSummary
    chain_pem: bytes
    key_pem: bytes
    rewrite: bool
    bundle_behind: bool
    checked: str | None
    keep_until: datetime | None  # a retired issuer's leaf: reissued at this time at the latest


@dataclass(frozen=True, slots=True)
class Issue:
    reason: ReissueCause


@dataclass(frozen=True, slots=True)
class Conflict:
    message: str


SecretPlan = Keep | Issue | Conflict


def plan_secret(
    spec: IdentitySpec, identity_uid: str, secret: Json | None, view: CAView, now: datetime
) -> SecretPlan:
    """The identity's Secret as read (None: there is none) against the spec and the CA."""
    if secret is not None and not is_owned_by(secret["metadata"], spec.name):
        return Conflict(
            f"Secret {spec.namespace}/{spec.secret_name} exists and is not owned by "
            f"WorkloadIdentity {spec.name}; it is left untouched. Delete it or set "
            "spec.secretName to another name."
        )
    data = decode_secret_data(secret.get("data")) if secret is not None else None
    # Cheap for every algorithm: an RSA key is checked arithmetically when loaded, not by
    # OpenSSL's primality tests (0.26 s for RSA4096 while holding the GIL; see pki.keys).
    reason = reissue_reason(ObservedSecret(data), spec.desired, view.ca, now)
    keep_until: datetime | None = None
    if reason is not None and reason.code == R.ISSUER_RETIRED and data is not None:
        # A CA rotation: the leaf stays (its bundle kept current) until its place in the
        # rotation window or its own renewal, whichever comes first.
        keep_until = _retired_issuer_deadline(spec, data, view, now)
        if keep_until is None or keep_until <= now:
            keep_until = None
        else:
            reason = None
    if secret is None or data is None or (reason is not None and reason.code != R.BUNDLE_STALE):
        assert reason is not None
        return Issue(reason)
    # Good as it is, or only ca.crt is behind: the same certificate and key are rewritten
    # with the current bundle (a new key buys nothing here).
    leaf = parse_certificate_chain(data["tls.crt"])[0]
    bundle_behind = data.get("ca.crt") != view.bundle
    summary = summarize(leaf, spec.desired)
    # Verified against the current CA and spec: a write checkmarks it for the next sweep (not
    # a leaf kept through a CA rotation: that one the next sweep reads). A stale or missing
    # checkmark alone is no reason to write: the next sweep reads that Secret, and its next
    # write (renewal at the latest) checkmarks it.
    checked = None if keep_until is not None else mark_for(spec, view, summary)
    return Keep(
        summary=summary,
        chain_pem=data["tls.crt"],
        key_pem=data["tls.key"],
        rewrite=bundle_behind or metadata_drift(spec, secret["metadata"], identity_uid),
        bundle_behind=bundle_behind,
        checked=checked,
        keep_until=keep_until,
    )


def _retired_issuer_deadline(
    spec: IdentitySpec, data: Mapping[str, bytes], view: CAView, now: datetime
) -> datetime | None:
    try:
        chain = parse_certificate_chain(data["tls.crt"])
    except (KeyError, ValueError):
        return None
    return retired_issuer_deadline(
        chain,
        trusted_roots=view.ca.roots,
        renewal_at=renewal_time_for(chain[0], spec.desired),
        namespace=spec.namespace,
        name=spec.name,
        state=view.rotation,
        window=view.rotation_window,
        now=now,
    )


def mark_for(spec: IdentitySpec, view: CAView, summary: CertificateSummary) -> str:
    """The checkmark a Secret holding this certificate gets (identity/checked.py)."""
    return checkmark(
        spec.desired, view.ca, view.bundle, certificate_status(summary, spec.secret_name)
    )


def vouched_summary(
    status: Mapping[str, Any], spec: IdentitySpec, mark: str, view: CAView, now: datetime
) -> CertificateSummary | None:
    """The sweep vouched for the Secret's metadata: when its checkmark matches the CA, spec
    and status as they are now, the status describes the Secret's certificate, so a Ready
    identity not yet due for renewal is checked without reading the Secret. None: read it."""
    ready = find_condition(status.get("conditions") or [], READY) or {}
    if ready.get("status") != "True":
        return None
    if mark != checkmark(spec.desired, view.ca, view.bundle, status):
        return None
    summary = summary_from_status(status, spec.desired)
    if summary is None or now >= summary.renewal_time:
        return None
    return summary


def never_issued(status: Mapping[str, Any], secret_known: bool) -> bool:
    """No certificate was ever issued and no Secret of that name seen: the reconcile tries to
    create the Secret straight away, saving a read per new identity."""
    ready = find_condition(status.get("conditions") or [], READY) or {}
    return (
        not status.get("serialNumber")
        and ready.get("reason") != R.SECRET_CONFLICT
        and not secret_known
    )


def next_check(
    summary: CertificateSummary, now: datetime, resync: timedelta, keep_until: datetime | None
) -> float:
    """Seconds until the identity is looked at again: its renewal, the resync, or the end of
    a retired issuer's wait, whichever comes first."""
    until_renewal = (summary.renewal_time - now).total_seconds()
    seconds = max(1.0, min(until_renewal, resync.total_seconds()))
    if keep_until is not None:
        seconds = min(seconds, max(0.5, (keep_until - now).total_seconds()))
    return seconds


def still_valid(status: Mapping[str, Any], now: datetime) -> bool:
    """Ready with a certificate not yet expired: kept Ready while no CA is usable."""
    ready = find_condition(status.get("conditions") or [], READY)
    not_after = status.get("notAfter")
    return bool(ready and ready.get("status") == "True" and not_after and not_after > rfc3339(now))


def unusable_message(body: Mapping[str, Any], error: SpecError) -> str:
    """The condition and Event message for a spec that cannot be honoured; for names the
    policy refuses, what becomes of a certificate issued before (a name policy that makes an
    identity invalid is reported, never a silent revocation)."""
    message = str(error)
    if error.reason != R.DNS_NAME_NOT_ALLOWED:
        return message
    status = body.get("status") or {}
    if status.get("serialNumber") and status.get("notAfter"):
        message += (
            f". The certificate issued before (serial {status['serialNumber']}, Secret "
            f"{status.get('secretName') or '?'}) is not renewed: it stays valid until "
            f"{status['notAfter']}, then the workload has none"
        )
    return message


# --- statuses ---------------------------------------------------------------------------------
def ready_status(
    body: Mapping[str, Any], spec: IdentitySpec, summary: CertificateSummary, now: datetime
) -> Json:
    changes = (
        ConditionChange(
            READY, True, R.READY, f"Certificate is valid until {rfc3339(summary.not_after)}"
        ),
        ConditionChange(ISSUING, False, R.UP_TO_DATE, f"Renews at {rfc3339(summary.renewal_time)}"),
    )
    return {
        **certificate_status(summary, spec.secret_name),
        "conditions": conditions_with(body, changes, now),
        "observedGeneration": body["metadata"].get("generation"),
    }


def not_ready_status(body: Mapping[str, Any], reason: str, message: str, now: datetime) -> Json:
    changes = (
        ConditionChange(READY, False, reason, message),
        ConditionChange(ISSUING, False, reason, message),
    )
    return {
        "conditions": conditions_with(body, changes, now),
        "observedGeneration": body["metadata"].get("generation"),
    }


def issuing_status(body: Mapping[str, Any], reason: ReissueCause, now: datetime) -> Json:
    """Issuing=True while the write budget makes the issuance wait."""
    message = f"Waiting for the write budget to issue a certificate: {reason.message}"
    return {
        "conditions": conditions_with(
            body, (ConditionChange(ISSUING, True, reason.code, message),), now
        )
    }


def failure_is_news(body: Mapping[str, Any], reason: str, message: str) -> bool:
    """Whether Ready=False for this reason and message is a change worth an Event."""
    before = find_condition((body.get("status") or {}).get("conditions") or [], READY)
    return before is None or before.get("reason") != reason or before.get("message") != message


def issued_event(
    spec: IdentitySpec, summary: CertificateSummary, reason: ReissueCause
) -> tuple[str, str]:
    """The Event's reason and message for a certificate that replaced another."""
    return (
        R.RENEWED if reason.code == R.RENEWAL_DUE else R.REISSUED,
        f"Issued certificate {summary.serial_number} for {summary.spiffe_id} into "
        f"Secret {spec.secret_name}, valid until {rfc3339(summary.not_after)} "
        f"({reason.code}: {reason.message})",
    )


# --- a refused identity's Secret ----------------------------------------------------------
def bundle_only_secret(secret: Mapping[str, Any], bundle: bytes) -> Json | None:
    """For an identity the operator will not issue whose Secret is still ours: the Secret
    with only its ca.crt set to `bundle` (certificate and key the bytes read, the
    resourceVersion read kept), or None when its ca.crt is current already."""
    data = decode_secret_data(secret.get("data"))
    if data.get("ca.crt") == bundle:
        return None
    meta = {
        **secret["metadata"],
        # What a rotation's count reads of it: the chain kept, the bundle written.
        "annotations": {
            **(secret["metadata"].get("annotations") or {}),
            **rotation_annotations(data.get("tls.crt"), bundle),
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {k: meta[k] for k in SECRET_FIELDS if k in meta},
        "type": secret.get("type") or "kubernetes.io/tls",
        "data": {**(secret.get("data") or {}), "ca.crt": base64.b64encode(bundle).decode()},
    }


__all__ = [
    "FIRST_ISSUE",
    "CAView",
    "Conflict",
    "Issue",
    "Keep",
    "SecretPlan",
    "bundle_only_secret",
    "never_issued",
    "next_check",
    "plan_secret",
    "unusable_message",
    "vouched_summary",
]
