"""What a new term's sweep may trust of an identity Secret without reading its data (pure).

The sweep lists the labelled Secrets as metadata only: their data never reaches the operator,
so a tenant's Secret that carries an identity's label costs a few hundred bytes, whatever it
holds (docs/decisions/scale.md, "Memory no tenant can blow"). An identity whose Secret the
metadata vouches for is checked from its status; every other one reads its own Secret by name.

The metadata vouches for a Secret when all of these hold:
- it is the identity's own: named as the identity's `secretName`, with the identity's uid as
  its controlling owner;
- its data was last written by us: every `managedFields` entry that touches `data` is our
  field manager's (a `kubectl edit`, apply or patch of the data leaves another manager's
  entry);
- it carries our checkmark (`meshless.dev/checked`), written with the data: a digest of the
  inputs the certificate was issued or verified against (the desired SVID, the issuer and its
  chain, the trust bundle) and of what the status reports about it (serial, validity, renewal
  time). The sweep recomputes the digest from the identity's current spec and status and the
  CA's current state; any difference (a new CA or bundle, a changed spec, a status that does
  not describe this Secret's certificate) means the Secret is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from meshless.api import GROUP, Kind
from meshless.pki.bundle import fingerprint
from meshless.pki.ca import CertificateAuthority
from meshless.pki.reissue import CertificateSummary, DesiredIdentity

CHECKED_ANNOTATION = f"{GROUP}/checked"
KIND = Kind.WORKLOAD_IDENTITY.value
# The status fields the checkmark covers (identity.render.certificate_status writes them).
STATUS_FIELDS = ("spiffeID", "serialNumber", "notBefore", "notAfter", "renewalTime", "secretName")
_VERSION = "v1"


def checkmark(
    desired: DesiredIdentity,
    ca: CertificateAuthority,
    bundle: bytes,
    status_fields: Mapping[str, Any],
) -> str:
    """The digest written as the Secret's checkmark: `status_fields` are what the status
    reports of the certificate in the Secret (certificate_status's fields)."""
    request = desired.request
    parts = [
        _VERSION,
        request.spiffe_id,
        ",".join(sorted(request.dns_names)),
        str(request.ttl.total_seconds()),
        str(request.algorithm),
        "" if desired.renew_before is None else str(desired.renew_before.total_seconds()),
        repr(desired.jitter_fraction),
        fingerprint(ca.issuer_cert).hex(),
        ",".join(fingerprint(c).hex() for c in ca.intermediates),
        hashlib.sha256(bundle).hexdigest(),
        *(f"{key}={status_fields.get(key) or ''}" for key in STATUS_FIELDS),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def data_written_only_by(secret_meta: Mapping[str, Any], manager: str) -> bool:
    """True when `manager` wrote the Secret's data and no other field manager touched it
    since (managedFields: another writer's entry owns the data fields it changed)."""
    ours = False
    for entry in secret_meta.get("managedFields") or ():
        fields = entry.get("fieldsV1") or {}
        if not any(k in fields for k in ("f:data", "f:stringData", "f:binaryData")):
            continue
        if entry.get("manager") != manager or entry.get("subresource"):
            return False
        ours = True
    return ours


def owned_by_uid(secret_meta: Mapping[str, Any], identity_name: str, identity_uid: str) -> bool:
    """The Secret's controlling owner is exactly this WorkloadIdentity (name and uid)."""
    return any(
        ref.get("kind") == KIND
        and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
        and ref.get("name") == identity_name
        and ref.get("uid") == identity_uid
        and ref.get("controller") is True
        for ref in secret_meta.get("ownerReferences") or ()
    )


def is_own_secret(
    secret_meta: Mapping[str, Any], identity_name: str, identity_uid: str, secret_name: str
) -> bool:
    """The identity's own Secret: its `secretName`, owned by the identity's uid. Any other
    Secret labelled with the identity's name is not ours to read."""
    return secret_meta.get("name") == secret_name and owned_by_uid(
        secret_meta, identity_name, identity_uid
    )


def summary_from_status(
    status: Mapping[str, Any], desired: DesiredIdentity
) -> CertificateSummary | None:
    """The certificate as the status reports it (None when a field is missing or garbled)."""
    try:
        return CertificateSummary(
            spiffe_id=str(status["spiffeID"]),
            serial_number=str(status["serialNumber"]),
            not_before=_parse_time(status["notBefore"]),
            not_after=_parse_time(status["notAfter"]),
            renewal_time=_parse_time(status["renewalTime"]),
            dns_names=desired.request.dns_names,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise ValueError(f"not an RFC 3339 UTC time: {value!r}")
    return datetime.fromisoformat(value[:-1] + "+00:00")


__all__ = [
    "CHECKED_ANNOTATION",
    "STATUS_FIELDS",
    "checkmark",
    "data_written_only_by",
    "is_own_secret",
    "owned_by_uid",
    "summary_from_status",
]
