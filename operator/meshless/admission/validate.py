"""Admission decisions (pure) for Pod CREATE and UPDATE.

Two independent judgements, served by two webhooks with different scopes:

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshless.admission import pods
from meshless.admission.inject import IdentityRef
from meshless.api import (
    IDENTITY_LABEL,
    IDENTITY_MOUNT_PATH,
    INJECT_ANNOTATION,
    AdmissionAction,
    Mode,
)
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
    info = pods.admission_pod_info(pod, namespace)
    if info.identity_mounted:
        return ALLOW
    deciders = strict_deciders(policies.resolve(info))
    if not deciders:
        return ALLOW
    if operation == UPDATE and old_pod is not None:
        before = strict_deciders(policies.resolve(pods.admission_pod_info(old_pod, namespace)))
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
