"""Which WorkloadIdentities the policies need (pure).

Every ServiceAccount with a pod whose effective mode is STRICT or PERMISSIVE on any port gets
an identity. A user-made WorkloadIdentity for that ServiceAccount is used as it is; otherwise
the operator provisions `meshless-<serviceAccount>` (labelled as provisioned) with the
governing policy's `identity` defaults, and deletes it when no policy needs it any more.
Pods with PodCertificate delivery get their certificate from the kubelet and need none.

A user-made identity that cannot be used is never chosen for a pod: one whose spec the
operator refuses (InvalidSpec, DNSNameNotAllowed: decided from the spec with the operator's
settings, so a pod created in the same second as the identity is not given a Secret that
will never exist), or whose Secret name another object holds (SecretConflict, as its status
reports). For the pods of its ServiceAccount the operator provisions an identity as if the
user-made one did not exist, and the policies' status names the unusable one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshless.api import API_VERSION, MANAGED_BY, PROVISIONED_LABEL, ConditionType, Kind, Reason
from meshless.conditions import find_condition
from meshless.delivery import Delivery
from meshless.identity.spec import (
    IdentityRef,
    SpecError,
    default_secret_name,
    parse_identity,
    provisioned_identity_ref,
    provisioned_name,
)
from meshless.pki.spiffe import spiffe_id
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec
from meshless.settings import Settings


@dataclass(frozen=True, slots=True)
class IdentityRecord:
    """The slim view of a WorkloadIdentity this module needs."""

    namespace: str
    name: str
    service_account: str
    secret_name: str
    provisioned: bool
    creation_timestamp: str = ""
    unusable: str = ""  # why no pod is given it (a condition reason), "" when usable

    @property
    def usable(self) -> bool:
        return not self.unusable


# Ready=False reasons that make a user-made identity unusable: no certificate will come
# until a person acts (the others, CAUnavailable or IssuingFailed, pass by themselves).
UNUSABLE_REASONS = (Reason.SECRET_CONFLICT, Reason.INVALID_SPEC, Reason.DNS_NAME_NOT_ALLOWED)
_REASONS = {str(r): r for r in UNUSABLE_REASONS}  # one string object per reason, not per record


def identity_record(body: Mapping[str, Any], settings: Settings | None = None) -> IdentityRecord:
    """The record of one identity. With the operator's `settings`, a user-made identity's
    spec is judged as the identity controller judges it (its status may not say so yet, or
    may still say what an earlier setting decided) and only SecretConflict is taken from the
    status; without them (the CLI, which does not know the operator's settings) the status
    alone decides."""
    meta = body["metadata"]
    spec = body.get("spec") or {}
    provisioned = (meta.get("labels") or {}).get(PROVISIONED_LABEL) == "true"
    return IdentityRecord(
        namespace=meta["namespace"],
        name=meta["name"],
        service_account=str(spec.get("serviceAccountName") or ""),
        secret_name=str(spec.get("secretName") or default_secret_name(meta["name"])),
        provisioned=provisioned,
        creation_timestamp=str(meta.get("creationTimestamp") or ""),
        unusable="" if provisioned else unusable_reason(body, settings),
    )


def unusable_reason(body: Mapping[str, Any], settings: Settings | None) -> str:
    """Why a user-made identity cannot serve pods, as a condition reason, or ""."""
    meta = body["metadata"]
    if settings is not None:
        try:
            parse_identity(meta["namespace"], meta["name"], body.get("spec") or {}, settings)
        except SpecError as exc:
            return _REASONS.get(exc.reason, Reason.INVALID_SPEC)
    status = body.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return ""  # about an earlier spec
    ready = find_condition(status.get("conditions") or [], ConditionType.READY) or {}
    reason = _REASONS.get(str(ready.get("reason")))
    if ready.get("status") != "False" or reason is None:
        return ""
    if settings is not None and reason is not Reason.SECRET_CONFLICT:
        return ""  # the spec passes under the settings in force: the status is behind
    return reason


def identity_for(
    namespace: str,
    service_account: str,
    identities: Iterable[IdentityRecord],
    trust_domain: str,
) -> IdentityRef:
    """The user's usable identity for the ServiceAccount (the oldest, then by name) if there
    is one, else the one the operator provisions (which may not exist yet: kubelet waits for
    the Secret before it starts the pod). An unusable user-made identity is passed over."""
    sid = spiffe_id(trust_domain, namespace, service_account)
    users = sorted(
        (
            i
            for i in identities
            if i.namespace == namespace
            and i.service_account == service_account
            and not i.provisioned
            and i.usable
        ),
        key=lambda i: (i.creation_timestamp, i.name),
    )
    if users:
        return IdentityRef(namespace, users[0].name, users[0].secret_name, sid, False)
    return provisioned_identity_ref(trust_domain, namespace, service_account)


def unusable_identities(
    namespace: str, service_account: str, identities: Iterable[IdentityRecord]
) -> list[IdentityRecord]:
    """The user-made identities of a ServiceAccount that are passed over, by name."""
    return sorted(
        (
            i
            for i in identities
            if i.namespace == namespace
            and i.service_account == service_account
            and not i.provisioned
            and not i.usable
        ),
        key=lambda i: i.name,
    )


DeliveryOf = Callable[[PolicyRef], Delivery]


def secret_delivery(_: PolicyRef) -> Delivery:
    """Every policy delivers by Secret (the default where delivery does not matter)."""
    return Delivery.SECRET


@dataclass(frozen=True)
class IdentityPlan:
    create_or_update: tuple[dict[str, Any], ...]  # manifests to apply
    delete: tuple[str, ...]  # names of provisioned identities no policy needs


def uses_pod_certificate(
    pod: PodInfo, resolution: PodResolution, delivery_of: DeliveryOf = secret_delivery
) -> bool:
    """The pod gets (or would get when re-created) its identity as a pod certificate: it
    mounts one, or it mounts no identity and its policy's delivery is PodCertificate. A pod
    that mounts its Secret keeps using it until it is re-created."""
    if not resolution.needs_identity():
        return False
    if pod.pod_certificate:
        return True
    return not pod.identity_mounted and (
        delivery_of(resolution.governing) is Delivery.POD_CERTIFICATE
    )


def plan_identities(
    namespace: str,
    resolved: Iterable[tuple[PodInfo, PodResolution]],
    policies: Mapping[PolicyRef, PolicySpec],
    identities: Iterable[IdentityRecord],
    delivery_of: DeliveryOf = secret_delivery,
) -> IdentityPlan:
    """The provisioned identities `namespace` should hold. Deleting pods count until gone.
    Pods with pod certificates need none (`uses_pod_certificate`); a provisioned identity
    stays while any pod still mounts its Secret."""
    records = [i for i in identities if i.namespace == namespace]
    user_accounts = {i.service_account for i in records if not i.provisioned and i.usable}
    # For each ServiceAccount in need, the governing policy of its oldest-named pod decides
    # the identity defaults (deterministic whatever the event order).
    needed: dict[str, PolicyRef] = {}
    for pod, resolution in sorted(resolved, key=lambda pr: pr[0].name):
        if pod.namespace != namespace or not resolution.needs_identity():
            continue
        if uses_pod_certificate(pod, resolution, delivery_of):
            continue
        needed.setdefault(pod.service_account, resolution.governing)
    manifests = []
    for account, ref in sorted(needed.items()):
        if account in user_accounts:
            continue
        policy = policies.get(ref)
        manifests.append(provisioned_identity(namespace, account, policy))
    wanted = {m["metadata"]["name"] for m in manifests}
    stale = sorted(i.name for i in records if i.provisioned and i.name not in wanted)
    return IdentityPlan(tuple(manifests), tuple(stale))


# What the WorkloadIdentity CRD defaults in a spec that leaves it out.
IDENTITY_SPEC_DEFAULTS: dict[str, Any] = {"privateKey": {"algorithm": "ECDSAP256"}}
PROVISIONED_SPEC_FIELDS = ("serviceAccountName", "ttl", "privateKey")


def spec_is_current(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether a stored provisioned identity's spec already is `wanted`, counting the CRD's
    defaults (a stored spec carries them, the manifest we apply does not)."""
    full = {**IDENTITY_SPEC_DEFAULTS, **wanted}
    return all(stored.get(k) == full.get(k) for k in PROVISIONED_SPEC_FIELDS)


def provisioned_identity(
    namespace: str, service_account: str, policy: PolicySpec | None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": service_account}
    if policy is not None:
        if policy.identity.ttl:
            spec["ttl"] = policy.identity.ttl
        if policy.identity.algorithm:
            spec["privateKey"] = {"algorithm": policy.identity.algorithm}
    return {
        "apiVersion": API_VERSION,
        "kind": Kind.WORKLOAD_IDENTITY.value,
        "metadata": {
            "name": provisioned_name(service_account),
            "namespace": namespace,
            "labels": {**MANAGED_BY, PROVISIONED_LABEL: "true"},
        },
        "spec": spec,
    }
