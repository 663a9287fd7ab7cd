"""An MtlsPolicy's status from what the resolver decided (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from meshless.api import ConditionType, Reason
from meshless.conditions import ConditionChange
from meshless.policy.model import PolicyRef, Scope

MAX_LISTED = 5  # names listed in a condition message before "and N more"
MAX_UNUSABLE = 20  # entries of status.unusableIdentities


@dataclass
class PolicyTally:
    """What the controller counted for one policy across every namespace it reaches."""

    selected: int = 0  # pods it governs (the narrowest policy applied to them)
    injected: int = 0  # of those, running with the identity mounted
    identities: set[tuple[str, str]] = field(default_factory=set)  # (namespace, identity)
    network_policies: int = 0
    beaten_by: set[PolicyRef] = field(default_factory=set)  # policies that win over it
    network_open: list[str] = field(default_factory=list)  # "np ns/name opens port P of pod"
    # User-made identities of the governed pods' ServiceAccounts that are passed over:
    # (namespace, name) -> (why, the identity the pods get instead).
    unusable: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    delivery: str = ""  # Secret | PodCertificate: how its pods get their identity now
    delivery_unavailable: str = ""  # PodCertificate asked of an API server without it
    unrequested: list[str] = field(default_factory=list)  # "pod ns/name on node N"


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def policy_conditions(
    scope: Scope | None,
    tally: PolicyTally,
    *,
    spec_error: str | None = None,
    namespace_terminating: bool = False,
) -> list[ConditionChange]:
    """Ready and Conflicted. A policy that loses on every pod (or, namespace- or cluster-wide,
    to an older one) is not in effect: Ready=False, reason Conflict."""
    conflicted = ConditionChange(
        ConditionType.CONFLICTED, False, Reason.NO_CONFLICT, "No other policy takes precedence"
    )
    if tally.beaten_by:
        winners = _listed(sorted(str(w) for w in tally.beaten_by))
        why = {
            Scope.WORKLOAD: "an older workload policy selects the same pods",
            Scope.NAMESPACE: "only the oldest namespace-wide policy of a namespace takes effect",
            Scope.ROOT: "only the oldest policy without selector in the root namespace takes "
            "effect",
        }.get(scope or Scope.WORKLOAD, "")
        conflicted = ConditionChange(
            ConditionType.CONFLICTED,
            True,
            Reason.CONFLICT,
            f"Ignored in favour of {winners} ({why})"
            + (f"; still governs {tally.selected} pods" if tally.selected else ""),
        )
    if spec_error is not None:
        ready = ConditionChange(ConditionType.READY, False, Reason.INVALID_SPEC, spec_error)
    elif namespace_terminating:
        ready = ConditionChange(
            ConditionType.READY,
            False,
            Reason.NAMESPACE_TERMINATING,
            "The namespace is being deleted; nothing is written for this policy",
        )
    elif tally.network_open:
        ready = ConditionChange(
            ConditionType.READY,
            False,
            Reason.NETWORK_OPEN,
            "NetworkPolicies not owned by meshless open STRICT ports to peers without an "
            f"identity: {_listed(tally.network_open)}. meshless never edits them.",
        )
    elif tally.delivery_unavailable:
        ready = ConditionChange(
            ConditionType.READY,
            False,
            Reason.POD_CERTIFICATE_API_UNAVAILABLE,
            tally.delivery_unavailable,
        )
    elif tally.unrequested:
        ready = ConditionChange(
            ConditionType.READY,
            False,
            Reason.POD_CERTIFICATE_NOT_REQUESTED,
            "No PodCertificateRequest within a minute for "
            f"{_listed(tally.unrequested)}: the kubelet on that node may not have the "
            "PodCertificateRequest feature gate (invisible to the API). Turn it on there, "
            "or set spec.identity.delivery: Secret and re-create the pods.",
        )
    elif tally.beaten_by and tally.selected == 0:
        ready = ConditionChange(
            ConditionType.READY, False, Reason.CONFLICT, "Not in effect: " + conflicted.message
        )
    else:
        ready = ConditionChange(
            ConditionType.READY,
            True,
            Reason.IN_EFFECT,
            f"In effect for {tally.selected} pods" + unusable_note(tally),
        )
    return [ready, conflicted]


def unusable_note(tally: PolicyTally) -> str:
    """What the Ready message says of passed-over user-made identities ("" when none)."""
    if not tally.unusable:
        return ""
    named = [
        f"{ns}/{name} ({why}; its pods get {instead})"
        for (ns, name), (why, instead) in sorted(tally.unusable.items())
    ]
    return (
        f"; WorkloadIdentities not used because they cannot be issued: {_listed(named)} "
        "(see status.unusableIdentities)"
    )


def unusable_identities_field(tally: PolicyTally) -> list[dict[str, str]] | None:
    """status.unusableIdentities, None (the field removed) when there are none."""
    if not tally.unusable:
        return None
    return [
        {"namespace": ns, "name": name, "reason": why, "usedInstead": instead}
        for (ns, name), (why, instead) in sorted(tally.unusable.items())[:MAX_UNUSABLE]
    ]


def policy_status_fields(scope: Scope | None, tally: PolicyTally) -> dict[str, object]:
    fields: dict[str, object] = {
        "selectedPods": tally.selected,
        "injectedPods": tally.injected,
        "identities": len(tally.identities),
        "networkPolicies": tally.network_policies,
        "unusableIdentities": unusable_identities_field(tally),
    }
    if scope is not None:
        fields["scope"] = scope.value
    if tally.delivery:
        fields["delivery"] = tally.delivery
    return fields
