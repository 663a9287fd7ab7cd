"""Admission decisions (pure) for Pod CREATE and UPDATE, and for WorkloadIdentity names.

Independent judgements, served by webhooks with different scopes:

- `judge_identity_label`: the label meshless.dev/identity is trusted by NetworkPolicies, so a
  pod may carry it only with its identity mounted and with its own ServiceAccount's name; an
  update may not add or change it (removing it only gives up trust).
- `judge_strict`: a pod under STRICT without its identity mount is denied (Enforce), admitted
  with a warning (Warn) or admitted and recorded (Audit). Opting out of injection does not opt
  out of this. Mirror pods (static pods' reflections) are not judged: the kubelet runs
  them from files whatever the API says. On UPDATE only a change that brings the pod under
  STRICT is judged: pod specs are immutable, so a pod that was already outside the rule
  before the update (created before its policy) is reported by the policy's status, not
  blocked from metadata updates (finalizers, owner references) it needs to be deleted.
- `judge_binding`: a pod may use only its own ServiceAccount's identity Secret, however it
  references it (secret volume, projected source, env, envFrom; every container list), and
  uses an identity Secret whole and required (no `optional: true`, no `items`). On UPDATE only
  the references the update adds are judged (ephemeral containers are the only way to add
  one): a pod admitted before an identity claimed its Secret is not blocked from updates.
- `judge_dns_names`: a WorkloadIdentity's spec.dnsNames must pass the name policy
  (`meshless.pki.names`), the same code the operator runs again before it signs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshless.admission import pods
from meshless.api import (
    IDENTITY_LABEL,
    IDENTITY_MOUNT_PATH,
    INJECT_ANNOTATION,
    AdmissionAction,
    Mode,
)
from meshless.identity.spec import (
    MAX_NAME,
    PROVISIONED_PREFIX,
    SECRET_SUFFIX,
    IdentityRef,
    default_secret_name,
    provisioned_name,
)
from meshless.pki.names import DnsNamePolicy
from meshless.pki.spiffe import spiffe_id
from meshless.policy.model import PodResolution, PolicyRef, PolicySpec
from meshless.policy.resolve import PolicySet

CREATE, UPDATE = "CREATE", "UPDATE"
DENIED_CODE = 403


@dataclass(frozen=True)
class AdmissionRecord:
    """A pod a policy would have denied but admitted under Warn or Audit: the policy's
    status counts these (`record_admission`)."""

    policy: PolicyRef
    pod: str  # namespace/name
    action: AdmissionAction
    message: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    message: str = ""  # why it is denied (empty when allowed)
    code: int = DENIED_CODE
    warnings: tuple[str, ...] = ()
    records: tuple[AdmissionRecord, ...] = field(default=())

    @classmethod
    def allow(cls) -> Decision:
        return cls(allowed=True)

    @classmethod
    def deny(cls, message: str, code: int = DENIED_CODE) -> Decision:
        return cls(allowed=False, message=message, code=code)


ALLOW = Decision.allow()


# --- the identity label -------------------------------------------------------------------
def judge_identity_label(
    operation: str,
    pod: Mapping[str, Any],
    old_pod: Mapping[str, Any] | None,
    namespace: str,
    identity: IdentityRef | None = None,
) -> Decision:
    """Only the injector sets meshless.dev/identity. `identity` is the pod's ServiceAccount
    identity; when given, the mounted Secret must be its Secret."""
    value = pods.labels_of(pod).get(IDENTITY_LABEL)
    if value is None:
        return ALLOW  # absent, or removed by this update
    name = pods.display_name(pod, namespace)
    if operation == UPDATE and old_pod is not None:
        old_value = pods.labels_of(old_pod).get(IDENTITY_LABEL)
        if old_value == value:
            return ALLOW
        if old_value is None:
            return Decision.deny(
                f"pod {name}: an update may not add the label {IDENTITY_LABEL}; only the "
                "injector sets it when the pod is created"
            )
        return Decision.deny(
            f"pod {name}: an update may not change the label {IDENTITY_LABEL} "
            f"from {old_value!r} to {value!r}"
        )
    service_account = pods.service_account(pod)
    if value != service_account:
        return Decision.deny(
            f"pod {name} carries {IDENTITY_LABEL}={value!r} but runs as ServiceAccount "
            f"{service_account!r}; the label must name the pod's own ServiceAccount and only "
            "the injector sets it"
        )
    secret = identity.secret_name if identity is not None else None
    if not pods.identity_mounted(pod, secret):
        which = f" (Secret {secret!r})" if secret else ""
        return Decision.deny(
            f"pod {name} carries {IDENTITY_LABEL}={value!r} without its identity{which} "
            f"mounted read-only at {IDENTITY_MOUNT_PATH} in every container; only the "
            "injector sets this label"
        )
    return ALLOW


# --- STRICT without an identity -----------------------------------------------------------
def strict_deciders(resolution: PodResolution | None) -> dict[PolicyRef, list[int]]:
    """The policies that put the pod (or some of its ports) under STRICT, each with its STRICT
    ports ([] when only the pod-level mode is STRICT and the pod declares no port)."""
    out: dict[PolicyRef, list[int]] = {}
    if resolution is None:
        return out
    if resolution.mode is Mode.STRICT and resolution.decided_by is not None:
        out.setdefault(resolution.decided_by, [])
    for port in sorted(resolution.ports):
        decided = resolution.ports[port]
        if decided.mode is Mode.STRICT and decided.decided_by is not None:
            out.setdefault(decided.decided_by, []).append(port)
    return out


_SEVERITY = {AdmissionAction.ENFORCE: 0, AdmissionAction.WARN: 1, AdmissionAction.AUDIT: 2}


def _policies_by_ref(policies: PolicySet) -> dict[PolicyRef, PolicySpec]:
    return {policy.ref: policy for policy in policies.all()}


def judge_strict(
    operation: str,
    pod: Mapping[str, Any],
    old_pod: Mapping[str, Any] | None,
    namespace: str,
    policies: PolicySet,
) -> Decision:
    """Enforce / Warn / Audit for a pod under STRICT that would run without its identity."""
    if pods.metadata(pod).get("deletionTimestamp") or pods.is_mirror(pod):
        return ALLOW
    info = pods.pod_info(pod, namespace)
    if info.identity_mounted:
        return ALLOW
    deciders = strict_deciders(policies.resolve(info))
    if not deciders:
        return ALLOW
    if operation == UPDATE and old_pod is not None:
        before = strict_deciders(policies.resolve(pods.pod_info(old_pod, namespace)))
        if before:
            return ALLOW  # already under STRICT before this update: not this update's doing
    specs = _policies_by_ref(policies)

    def action_of(ref: PolicyRef) -> AdmissionAction:
        spec = specs.get(ref)
        return spec.admission if spec is not None else AdmissionAction.ENFORCE

    name = pods.display_name(pod, namespace)
    opted = (
        f' (injection is turned off by {INJECT_ANNOTATION}: "false", which does not lift STRICT)'
        if pods.opted_out(pod)
        else ""
    )

    def message(ref: PolicyRef, ports: list[int]) -> str:
        where = ""
        if ports:
            where = f" on port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))}"
        return (
            f"pod {name} is under STRICT mTLS{where} by MtlsPolicy {ref} but does not mount "
            f"its identity at {IDENTITY_MOUNT_PATH}{opted}"
        )

    ordered = sorted(deciders.items(), key=lambda kv: (_SEVERITY[action_of(kv[0])], kv[0]))
    first_ref, first_ports = ordered[0]
    if action_of(first_ref) is AdmissionAction.ENFORCE:
        return Decision.deny(message(first_ref, first_ports))
    warnings: list[str] = []
    records: list[AdmissionRecord] = []
    for ref, ports in ordered:
        action = action_of(ref)
        text = message(ref, ports)
        if action is AdmissionAction.WARN:
            warnings.append(f"{text}; admitted because the policy's admission is Warn")
        records.append(AdmissionRecord(ref, name, action, text))
    return Decision(allowed=True, warnings=tuple(warnings), records=tuple(records))


# --- pods bound to their own identity -------------------------------------------------------
RULE_OWN_IDENTITY = "a pod may use only its own ServiceAccount's identity"
RULE_NOT_OPTIONAL = "an identity Secret is never optional: the pod must not start without it"
RULE_NO_ITEMS = "an identity Secret is mounted whole: no items that leave files out"


@dataclass(frozen=True)
class IdentitySecret:
    """A Secret that holds (or will hold) the identity of a ServiceAccount: the Secret of a
    WorkloadIdentity, or the name the operator gives the one it provisions."""

    secret_name: str
    service_account: str
    identity: str  # the WorkloadIdentity's name
    spiffe_id: str


# The Secret of the identity the operator provisions for ServiceAccount <sa>.
_PROVISIONED_SECRET = re.compile(rf"{re.escape(PROVISIONED_PREFIX)}(.+)-mtls")


# Who holds a reserved name at the length limit when no reading of it is known: a name of
# that length may be a longer ServiceAccount's, shortened with a digest (provisioned_name).
SHORTENED_ACCOUNT = "(a long name)"  # never a ServiceAccount's: not a DNS subdomain


def provisioned_secret(
    namespace: str, secret: str, trust_domain: str, account: str | None = None
) -> IdentitySecret | None:
    """The identity a Secret of this name will hold once the operator provisions it
    (`meshless-<sa>-mtls` for ServiceAccount <sa>), claimed or not: a pod that mounts it
    before it exists would start with that identity when it comes.

    At the length limit the name may be a long ServiceAccount's, shortened with a digest, and
    cannot be read back: it is `account`'s if it is the name `account`'s would be, and
    otherwise reserved for a ServiceAccount that is not `account` (SHORTENED_ACCOUNT)."""
    match = _PROVISIONED_SECRET.fullmatch(secret)
    if match is None:
        return None
    if account is not None and _provisioned_for(secret, account):
        reading = account
    elif len(secret) < MAX_NAME + len(SECRET_SUFFIX):
        reading = match.group(1)
    else:
        return IdentitySecret(
            secret, SHORTENED_ACCOUNT, secret[: -len(SECRET_SUFFIX)], "(not known before it is)"
        )
    identity = provisioned_name(reading)
    if default_secret_name(identity) != secret:
        return None
    try:
        sid = spiffe_id(trust_domain, namespace, reading)
    except ValueError:
        return None  # no ServiceAccount can have this name
    return IdentitySecret(secret, reading, identity, sid)


def identity_secrets_of(
    namespace: str,
    secrets: Sequence[str],
    claimed: Mapping[str, Sequence[IdentitySecret]],
    trust_domain: str,
    account: str,
) -> dict[str, tuple[IdentitySecret, ...]]:
    """For each of `secrets`, the identities it holds: those of the WorkloadIdentities that
    name it (`claimed`) and, always, the provisioned identity its name is reserved for: an
    identity of another ServiceAccount that claimed a reserved name first must not make the
    Secret its own before the operator provisions the one it is reserved for. `account`: the
    ServiceAccount of the pod that asks, the one reading of a shortened name that can be
    checked (see `provisioned_secret`)."""
    out: dict[str, tuple[IdentitySecret, ...]] = {}
    for secret in secrets:
        holders = tuple(claimed.get(secret) or ())
        reserved = provisioned_secret(namespace, secret, trust_domain, account)
        if reserved is not None and reserved.service_account == SHORTENED_ACCOUNT:
            owners = [h for h in holders if _provisioned_for(secret, h.service_account)]
            reserved = None if owners else reserved  # a claim says whose shortened name it is
        if reserved is not None and reserved not in holders:
            holders = (*holders, reserved)
        if holders:
            out[secret] = holders
    return out


def _provisioned_for(secret: str, account: str) -> bool:
    return default_secret_name(provisioned_name(account)) == secret


def judge_binding(
    operation: str,
    pod: Mapping[str, Any],
    old_pod: Mapping[str, Any] | None,
    namespace: str,
    identities: Mapping[str, Sequence[IdentitySecret]],
) -> Decision:
    """Refuse a pod that uses an identity Secret of another ServiceAccount, or uses one
    optional or with items. `identities`: the identity Secrets among those the pod references
    (see `identity_secrets_of`); a Secret several identities name counts for each of them."""
    if pods.is_mirror(pod):
        return ALLOW  # the kubelet may not reference Secrets in a mirror pod at all
    references = pods.secret_references(pod)
    if operation == UPDATE and old_pod is not None:
        before = set(pods.secret_references(old_pod))
        references = [r for r in references if r not in before]
    account = pods.service_account(pod)
    problems: list[str] = []
    for ref in references:
        holders = identities.get(ref.secret) or ()
        if not holders:
            continue
        for other in sorted({h for h in holders if h.service_account != account}, key=str):
            if other.service_account == SHORTENED_ACCOUNT:
                problems.append(
                    f"{ref.where} uses Secret {ref.secret!r}, reserved for the identity meshless "
                    f"provisions for another ServiceAccount (one whose name is too long to read "
                    f"from the Secret's) (rule: {RULE_OWN_IDENTITY})"
                )
                continue
            problems.append(
                f"{ref.where} uses Secret {ref.secret!r}, which holds the identity "
                f"{other.spiffe_id} of ServiceAccount {other.service_account!r} "
                f"(WorkloadIdentity {other.identity!r}) (rule: {RULE_OWN_IDENTITY})"
            )
        if ref.optional:
            problems.append(
                f"{ref.where} uses identity Secret {ref.secret!r} with optional: true "
                f"(rule: {RULE_NOT_OPTIONAL})"
            )
        if ref.items:
            problems.append(
                f"{ref.where} mounts only some items of identity Secret {ref.secret!r} "
                f"(rule: {RULE_NO_ITEMS})"
            )
    if not problems:
        return ALLOW
    name = pods.display_name(pod, namespace)
    unique = list(dict.fromkeys(problems))
    return Decision.deny(f"pod {name} runs as ServiceAccount {account!r}: " + "; ".join(unique))


# --- the names of a WorkloadIdentity --------------------------------------------------------
def dns_names_of(identity: Mapping[str, Any]) -> list[str]:
    names = pods.spec(identity).get("dnsNames")
    return [str(n) for n in names] if isinstance(names, list) else []


def judge_dns_names(
    operation: str,
    identity: Mapping[str, Any],
    old_identity: Mapping[str, Any] | None,
    namespace: str,
    policy: DnsNamePolicy,
) -> Decision:
    """Refuse a WorkloadIdentity whose spec.dnsNames carries a name the policy refuses, each
    named with its rule. An update is judged only when it changes dnsNames: an identity that
    broke a narrowed policy can still have its labels or finalizers edited, and is reported
    by the operator (Ready=False, DNSNameNotAllowed)."""
    names = dns_names_of(identity)
    if operation == UPDATE and old_identity is not None and dns_names_of(old_identity) == names:
        return ALLOW
    violations = policy.violations(namespace, names)
    if not violations:
        return ALLOW
    meta = pods.metadata(identity)
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "")
    return Decision.deny(
        f"WorkloadIdentity {namespace}/{name or '<unnamed>'}: "
        + "; ".join(v.message for v in violations)
        + "; nothing is issued for it"
    )
