"""What a reconcile of the policy controller writes, decided without the API (pure): for a
namespace, from its pods' resolutions (policy/resolve.py: which policy wins for a pod and a
port), the NetworkPolicies (policy/render.py) and WorkloadIdentities (policy/provision.py) to
write or delete, and which policies' status may have changed; for a policy, its status
(policy/report.py) from what the namespace reconciles decided; for the namespaces, the
admission labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meshless import api
from meshless.api import ConditionType
from meshless.conditions import ConditionChange, conditions_with, find_condition
from meshless.identity.spec import IdentityRef
from meshless.policy.held import HeldPolicy, Key, NamespaceInfo
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec, Scope
from meshless.policy.provision import (
    DeliveryOf,
    IdentityRecord,
    plan_identities,
    secret_delivery,
    spec_is_current,
    unusable_identities,
    uses_pod_certificate,
)
from meshless.policy.render import (
    foreign_open_ports,
    is_managed,
    label_value,
    needs_write,
    render_network_policies,
)
from meshless.policy.report import PolicyTally, policy_conditions, policy_status_fields
from meshless.policy.resolve import PolicySet, scope_of

Json = dict[str, Any]
Resolved = list[tuple[PodInfo, PodResolution | None]]


@dataclass
class NamespacePlan:
    """One namespace reconcile's decisions and writes."""

    resolutions: dict[Key, PodResolution]  # the namespace's pods' resolutions now
    everyone: Resolved  # every pod with its resolution (None: not enforced)
    apply_network_policies: list[Json] = field(default_factory=list)
    delete_network_policies: list[tuple[str, str | None]] = field(default_factory=list)
    apply_identities: list[Json] = field(default_factory=list)
    delete_identities: list[str] = field(default_factory=list)
    network_open: tuple[tuple[PolicyRef, str], ...] = ()
    touched: set[PolicyRef] = field(default_factory=set)  # whose status may have changed
    # Pods here read ca.crt from the trust bundle ConfigMap next to a pod certificate (no
    # ClusterTrustBundles served): the namespace must hold that ConfigMap.
    bundle_needed: bool = False


def plan_namespace(
    namespace: str,
    everyone: Resolved,
    before: Mapping[Key, PodResolution],
    specs: Mapping[PolicyRef, PolicySpec],
    network_policies: Iterable[Json],
    identities: Sequence[IdentityRecord],
    provisioned: Mapping[str, Json],
    open_before: Iterable[tuple[PolicyRef, str]],
    *,
    write: bool,
    delivery_of: DeliveryOf = secret_delivery,
) -> NamespacePlan:
    """`everyone`: each pod of the namespace with its resolution now; `before`: what the
    last reconcile decided for the namespace's pods; `provisioned`: the spec of each
    provisioned identity there, by name; `write`: the namespace is watched and not
    terminating (otherwise nothing is written, only decided); `delivery_of`: how a policy's
    pods get their identity (pods with pod certificates need no WorkloadIdentity, but their
    namespace keeps the trust-bundle ConfigMap)."""
    resolutions: dict[Key, PodResolution] = {}
    touched: set[PolicyRef] = set()
    for pod, resolution in everyone:
        key = (pod.namespace, pod.name)
        old = before.get(key)
        if old is not None:
            touched.update(old.applied)
            touched.update(old.ignored)
        if resolution is not None:
            resolutions[key] = resolution
            touched.update(resolution.applied)
            touched.update(resolution.ignored)
    present = {(pod.namespace, pod.name) for pod, _ in everyone}
    for key, gone in before.items():  # pods that are gone
        if key not in present:
            touched.update(gone.applied)
    held = list(network_policies)
    foreign = [body for body in held if not is_managed(body)]
    plan = NamespacePlan(resolutions, everyone)
    if write:
        _plan_network_policies(plan, held, foreign, specs)
        resolved = [(p, r) for p, r in everyone if r is not None]
        wanted = plan_identities(namespace, resolved, specs, identities, delivery_of)
        # The ConfigMap bundle is what a namespace's other programs read to check meshless
        # identities (a client without one, another TLS stack, the examples' bad client):
        # kept wherever pods hold pod certificates, even where their own ca.crt comes from a
        # ClusterTrustBundle (Secret-delivered identities keep it through the identities).
        plan.bundle_needed = any(uses_pod_certificate(p, r, delivery_of) for p, r in resolved)
        for manifest in wanted.create_or_update:
            current = provisioned.get(manifest["metadata"]["name"])
            if current is None or not spec_is_current(current, manifest["spec"]):
                plan.apply_identities.append(manifest)
        plan.delete_identities = list(wanted.delete)
    found = foreign_open_ports(foreign, everyone, specs) if foreign else []
    plan.network_open = tuple(
        (o.policy, f"NetworkPolicy {o.network_policy} opens port {o.port} of pod {o.pod}")
        for o in found
    )
    touched |= {ref for ref, _ in open_before} | {o.policy for o in found}
    plan.touched = touched
    return plan


def _plan_network_policies(
    plan: NamespacePlan,
    held: list[Json],
    foreign: list[Json],
    specs: Mapping[PolicyRef, PolicySpec],
) -> None:
    desired = {
        m["metadata"]["name"]: m for m in render_network_policies(plan.everyone, specs, foreign)
    }
    stored = {body["metadata"]["name"]: body for body in held if is_managed(body)}
    plan.apply_network_policies = [
        manifest
        for name, manifest in sorted(desired.items())
        if needs_write(manifest, stored.get(name))
    ]
    plan.delete_network_policies = [
        (name, stored[name]["metadata"].get("uid")) for name in sorted(set(stored) - set(desired))
    ]


# --- a policy's status ----------------------------------------------------------------------
def tally_policy(
    ref: PolicyRef,
    spec: PolicySpec | None,
    policies: PolicySet,
    governed: Iterable[tuple[PodInfo, PodResolution]],
    in_namespace: Iterable[PodResolution],
    identity_for: Callable[[str, str], IdentityRef],
    identities_of: Callable[[str, str], Iterable[IdentityRecord]],
    network_policies: Iterable[Json],
    network_open: Iterable[tuple[PolicyRef, str]],
    delivery_of: DeliveryOf = secret_delivery,
) -> PolicyTally:
    """What the policy's status counts. `governed`: the pods it governs; `in_namespace`: the
    resolutions of the pods of its namespace; `identity_for(namespace, service account)`:
    the IdentityRef serving it; `identities_of(namespace, service account)`: its records;
    `delivery_of`: how a policy's pods get their identity (a pod with a pod certificate
    counts no WorkloadIdentity)."""
    tally = PolicyTally()
    if spec is not None:
        tally.delivery = delivery_of(ref).value
    if spec is not None:
        shadow = policies.shadowed().get(ref)
        if shadow is not None:
            tally.beaten_by.add(shadow)
    for pod, resolution in governed:
        tally.selected += 1
        if pod.identity_mounted and pod.running:
            tally.injected += 1
        if resolution.needs_identity() and not uses_pod_certificate(pod, resolution, delivery_of):
            identity = identity_for(pod.namespace, pod.service_account)
            tally.identities.add((identity.namespace, identity.name))
            account = (pod.namespace, pod.service_account)
            for record in unusable_identities(*account, identities_of(*account)):
                tally.unusable[(record.namespace, record.name)] = (record.unusable, identity.name)
    if spec is not None and scope_of(spec, policies.root_namespace) is Scope.WORKLOAD:
        for resolution in in_namespace:
            if ref in resolution.ignored:
                tally.beaten_by.add(resolution.ignored[ref])
    tally.network_policies = sum(1 for body in network_policies if _counts_for(body, ref))
    tally.network_open.extend(e for owner, e in network_open if owner == ref)
    tally.network_open.sort()
    return tally


def _counts_for(body: Json, ref: PolicyRef) -> bool:
    labels = body["metadata"].get("labels") or {}
    return (
        is_managed(body)
        and labels.get(api.POLICY_LABEL) == label_value(ref.name)
        and labels.get(api.POLICY_NAMESPACE_LABEL) == ref.namespace
    )


def policy_status(
    held: HeldPolicy,
    tally: PolicyTally,
    root_namespace: str,
    *,
    namespace_terminating: bool,
    enforcement: tuple[Json, ConditionChange] | None,
    admission: Json | None,
    now: datetime,
) -> tuple[Json, list[ConditionChange]]:
    """The policy's status to write, and the Warnings to post once it is written."""
    spec = held.spec
    scope = scope_of(spec, root_namespace) if spec else None
    changes = policy_conditions(
        scope, tally, spec_error=held.error, namespace_terminating=namespace_terminating
    )
    if enforcement is not None:
        changes.append(enforcement[1])
    wanted: Json = {
        **policy_status_fields(scope, tally),
        "conditions": conditions_with(held.body, changes, now),
        "observedGeneration": held.body["metadata"].get("generation"),
    }
    if enforcement is not None:
        wanted["enforcement"] = enforcement[0]
    if admission is not None:
        wanted["admission"] = admission
    return wanted, warnings(held.body, changes)


def warnings(
    before: Mapping[str, Any], changes: Iterable[ConditionChange]
) -> list[ConditionChange]:
    """The changes worth a Warning Event once written: a policy turned not Ready, not
    Enforced or Conflicted, with a reason or message other than its status held."""
    conditions = (before.get("status") or {}).get("conditions") or []
    found = []
    for change in changes:
        old = find_condition(conditions, change.type) or {}
        turned_bad = (
            change.type in (ConditionType.READY, ConditionType.ENFORCED) and not change.status
        ) or (change.type == ConditionType.CONFLICTED and change.status)
        if turned_bad and (
            old.get("reason") != change.reason or old.get("message") != change.message
        ):
            found.append(change)
    return found


# --- the namespaces' admission labels -------------------------------------------------------
def label_changes(
    namespaces: Iterable[tuple[str, NamespaceInfo]],
    wanted: Iterable[tuple[str, str, frozenset[str]]],
) -> list[tuple[str, dict[str, str | None]]]:
    """For each namespace (not terminating, watched: the caller's choice), the labels to set
    (value) or remove (None): `wanted` is (label, value, the namespaces that should carry
    it)."""
    rules = list(wanted)
    patches = []
    for name, info in namespaces:
        changes: dict[str, str | None] = {}
        for label, value, carrying in rules:
            if (name in carrying) != (info.labels.get(label) == value):
                changes[label] = value if name in carrying else None
        if changes:
            patches.append((name, changes))
    return patches


__all__ = [
    "NamespacePlan",
    "label_changes",
    "plan_namespace",
    "policy_status",
    "tally_policy",
    "warnings",
]
