"""A WorkloadIdentity's spec, with the operator's defaults applied (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from meshless.api import Reason
from meshless.durations import format_duration, parse_duration
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.reissue import DesiredIdentity
from meshless.pki.spiffe import spiffe_id
from meshless.pki.svid import SvidRequest
from meshless.settings import Settings

# The least time between issuing a certificate and renewing it: a renewBefore that leaves
# less would make the operator reissue in a loop.
MIN_RENEWAL_INTERVAL = timedelta(seconds=30)


MAX_LISTED_VIOLATIONS = 3  # refused names spelled out in one message


class SpecError(ValueError):
    """The spec passed the schema but cannot be honoured; the message names the field.
    `reason` is the condition reason the controller reports it with."""

    reason: str = Reason.INVALID_SPEC


class DnsNameNotAllowed(SpecError):
    """spec.dnsNames holds a name the name policy refuses (pki/names.py): nothing is signed.
    The message names each refused name and the rule."""

    reason = Reason.DNS_NAME_NOT_ALLOWED


@dataclass(frozen=True)
class IdentitySpec:
    namespace: str
    name: str
    secret_name: str
    desired: DesiredIdentity
    secret_labels: Mapping[str, str] = field(default_factory=dict)
    secret_annotations: Mapping[str, str] = field(default_factory=dict)


def default_secret_name(identity_name: str) -> str:
    return f"{identity_name}{SECRET_SUFFIX}"


@dataclass(frozen=True)
class IdentityRef:
    """The identity that serves a ServiceAccount: its WorkloadIdentity, its Secret and the
    SPIFFE ID its certificate carries (policy/provision.py `identity_for` picks it; admission
    mounts its Secret)."""

    namespace: str
    name: str  # the WorkloadIdentity
    secret_name: str
    spiffe_id: str
    provisioned: bool  # the operator's meshless-<sa>, not a user's


def provisioned_identity_ref(
    trust_domain: str, namespace: str, service_account: str
) -> IdentityRef:
    """The identity the operator provisions for a ServiceAccount: the WorkloadIdentity
    `meshless-<sa>` with the Secret `meshless-<sa>-mtls` (which may not exist yet: the kubelet
    waits for the Secret before it starts the pod)."""
    name = provisioned_name(service_account)
    sid = spiffe_id(trust_domain, namespace, service_account)
    return IdentityRef(namespace, name, default_secret_name(name), sid, True)


# The identities the operator provisions for a ServiceAccount are named meshless-<sa>; their
# Secrets, meshless-<sa>-mtls, are reserved for that ServiceAccount.
PROVISIONED_PREFIX = "meshless-"
SECRET_SUFFIX = "-mtls"  # an identity's Secret by default: <identity>-mtls
MAX_NAME = 253 - len(SECRET_SUFFIX)  # the Secret name adds the suffix


def provisioned_name(service_account: str) -> str:
    name = PROVISIONED_PREFIX + service_account
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(service_account.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11]}-{digest}"


def reserved_secret_name(secret_name: str, service_account: str) -> bool:
    """Whether `secret_name` has the shape of a provisioned identity's Secret
    (meshless-...-mtls) without being the one of `service_account`: such a Secret is reserved
    for another ServiceAccount, and an identity naming it could hold it before the operator
    provisions that one."""
    if not (secret_name.startswith(PROVISIONED_PREFIX) and secret_name.endswith(SECRET_SUFFIX)):
        return False
    return secret_name != default_secret_name(provisioned_name(service_account))


def parse_identity(
    namespace: str, name: str, spec: Mapping[str, Any], settings: Settings
) -> IdentitySpec:
    sa = spec.get("serviceAccountName")
    if not sa:
        raise SpecError("spec.serviceAccountName is required")
    dns_names = tuple(sorted(set(spec.get("dnsNames") or ())))
    check_dns_names(namespace, dns_names, settings)
    ttl = _duration(spec, "ttl") or settings.identity.default_ttl
    if ttl < settings.identity.ttl_floor:
        raise SpecError(
            f"spec.ttl {format_duration(ttl)} is below the operator's ttl floor "
            f"{format_duration(settings.identity.ttl_floor)}"
        )
    renew_before = _duration(spec, "renewBefore")
    if renew_before is not None and renew_before >= ttl:
        raise SpecError(
            f"spec.renewBefore {format_duration(renew_before)} must be shorter than the ttl "
            f"{format_duration(ttl)}"
        )
    if renew_before is None:
        renew_before = timedelta(
            seconds=int(ttl.total_seconds() * settings.identity.renewal_fraction)
        )
    if ttl - renew_before < MIN_RENEWAL_INTERVAL:
        raise SpecError(
            f"spec.renewBefore {format_duration(renew_before)} leaves less than "
            f"{format_duration(MIN_RENEWAL_INTERVAL)} between issuance and renewal "
            f"(ttl {format_duration(ttl)})"
        )
    algorithm_name = (spec.get("privateKey") or {}).get("algorithm") or KeyAlgorithm.ECDSAP256
    try:
        algorithm = KeyAlgorithm(algorithm_name)
    except ValueError:
        raise SpecError(f"spec.privateKey.algorithm {algorithm_name!r} is not supported") from None
    secret_name = spec.get("secretName") or default_secret_name(name)
    # The operator's own namespace (the prober's identity, meshless-prober) is not a tenant's.
    if namespace != settings.runtime.namespace and reserved_secret_name(secret_name, sa):
        raise SpecError(
            f"spec.secretName {secret_name!r}: Secrets named meshless-<ServiceAccount>-mtls are "
            f"reserved for the identities meshless provisions; the one for ServiceAccount "
            f"{sa!r} is {default_secret_name(provisioned_name(sa))!r}; choose another name"
        )
    if len(secret_name) > 253:
        raise SpecError(
            f"the Secret name {secret_name[:40]}... is longer than 253 characters; "
            "set spec.secretName"
        )
    template = spec.get("secretTemplate") or {}
    request = SvidRequest(
        spiffe_id=spiffe_id(settings.identity.trust_domain, namespace, sa),
        dns_names=dns_names,
        ttl=ttl,
        algorithm=algorithm,
    )
    return IdentitySpec(
        namespace=namespace,
        name=name,
        secret_name=secret_name,
        desired=DesiredIdentity(
            request=request, renew_before=renew_before, jitter_fraction=settings.identity.jitter
        ),
        secret_labels=dict(template.get("labels") or {}),
        secret_annotations=dict(template.get("annotations") or {}),
    )


def check_dns_names(namespace: str, dns_names: Iterable[str], settings: Settings) -> None:
    """Raise DnsNameNotAllowed when the name policy refuses any of `dns_names` for an
    identity in `namespace`. Checked before anything is signed, on every reconcile: a name
    that was allowed when its certificate was issued and is not any more stops its renewal."""
    violations = settings.names.policy.violations(namespace, dns_names)
    if not violations:
        return
    shown = "; ".join(v.message for v in violations[:MAX_LISTED_VIOLATIONS])
    more = len(violations) - MAX_LISTED_VIOLATIONS
    if more > 0:
        others = ", ".join(repr(v.name) for v in violations[MAX_LISTED_VIOLATIONS:])
        shown += f"; also refused: {others}"
    raise DnsNameNotAllowed(f"spec.dnsNames: {shown}")


def _duration(spec: Mapping[str, Any], key: str) -> timedelta | None:
    raw = spec.get(key)
    if raw in (None, ""):
        return None
    try:
        return parse_duration(str(raw))
    except ValueError as exc:
        raise SpecError(f"spec.{key}: {exc}") from None
