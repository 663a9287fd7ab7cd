"""What the policy controller holds (pure): a store per kind it reads, fed by Kopf's event
handlers (policies, pods, namespaces, NetworkPolicies) and by our identity watch
(WorkloadIdentities), each with the indexes the reconciles and admission ask for; and what
the last reconcile of each namespace decided. Also the work items its queue takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshless.identity.spec import IdentityRef
from meshless.policy.model import IdentityDefaults, PodInfo, PodResolution, PolicyRef, PolicySpec
from meshless.policy.provision import IdentityRecord, identity_for
from meshless.policy.resolve import PolicySet
from meshless.runtime.store import Store, by_namespace

Json = dict[str, Any]
Key = tuple[str, str]  # namespace, name


# --- work items -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NamespaceWork:
    """Resolve every pod of the namespace; write its NetworkPolicies and identities."""

    namespace: str


@dataclass(frozen=True, slots=True)
class PolicyWork:
    """Write the policy's status."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class LabelsWork:
    """The admission labels on every namespace."""


Work = NamespaceWork | PolicyWork | LabelsWork


# --- held values ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HeldPolicy:
    """A policy as last seen (`body`: the slim copy a status write needs) and its parsed
    spec, or why it cannot be parsed."""

    body: Json
    spec: PolicySpec | None
    error: str | None


@dataclass(frozen=True)
class NamespaceInfo:
    labels: Mapping[str, str]
    terminating: bool


def slim_policy(body: Mapping[str, Any]) -> Json:
    meta = body["metadata"]
    fields = ("name", "namespace", "uid", "generation", "resourceVersion", "creationTimestamp")
    return {
        "metadata": {k: meta[k] for k in fields if k in meta},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def slim_network_policy(body: Mapping[str, Any]) -> Json:
    meta = body["metadata"]
    fields = ("name", "namespace", "uid", "labels", "ownerReferences", "resourceVersion")
    return {
        "metadata": {k: meta[k] for k in fields if k in meta},
        "spec": dict(body.get("spec") or {}),
    }


def namespace_info(body: Mapping[str, Any]) -> NamespaceInfo:
    meta = body["metadata"]
    return NamespaceInfo(
        labels=dict(meta.get("labels") or {}),
        terminating=bool(meta.get("deletionTimestamp"))
        or (body.get("status") or {}).get("phase") == "Terminating",
    )


# --- the stores -----------------------------------------------------------------------------
def _pod_account(key: Key, pod: PodInfo) -> tuple[Key]:
    return ((key[0], pod.service_account),)


def _identity_account(key: Key, record: IdentityRecord) -> tuple[Key]:
    return ((key[0], record.service_account),)


def _identity_secret(key: Key, record: IdentityRecord) -> tuple[Key]:
    return ((key[0], record.secret_name),)


def _governing(key: Key, resolution: PodResolution) -> tuple[PolicyRef]:
    return (resolution.governing,)


class PolicyStores:
    """Every store the policy controller reads, and what admission and the reconciles ask
    of them."""

    def __init__(self, root_namespace: str, trust_domain: str) -> None:
        self.root_namespace = root_namespace
        self.trust_domain = trust_domain
        self._policy_set: PolicySet | None = None  # built from the specs when asked
        self.policies: Store[Key, HeldPolicy] = Store({"namespace": by_namespace})
        # Pods by namespace, and how many run as each (namespace, ServiceAccount).
        self.pods: Store[Key, PodInfo] = Store(
            {"namespace": by_namespace}, counts={"account": _pod_account}
        )
        self.namespaces: Store[str, NamespaceInfo] = Store()
        self.network_policies: Store[Key, Json] = Store({"namespace": by_namespace})
        # With tens of thousands of identities, nothing may scan them all per event: by
        # namespace, by ServiceAccount, and by the Secret they name (admission asks whose
        # identity a Secret holds).
        self.identities: Store[Key, IdentityRecord] = Store(
            {
                "namespace": by_namespace,
                "account": _identity_account,
                "secret": _identity_secret,
            }
        )
        self.provisioned: Store[Key, Json] = Store()  # spec of each provisioned identity
        # What the last reconcile of each namespace decided.
        self.resolutions: Store[Key, PodResolution] = Store(
            {"namespace": by_namespace, "governing": _governing}
        )
        # By namespace: the ports NetworkPolicies not ours open, as (policy, status message).
        self.network_open: Store[str, tuple[tuple[PolicyRef, str], ...]] = Store()

    # --- what the reconciles and admission ask -------------------------------------------
    def specs_changed(self) -> None:
        self._policy_set = None

    def policy_set(self) -> PolicySet:
        if self._policy_set is None:
            specs = (h.spec for h in self.policies.values() if h.spec is not None)
            self._policy_set = PolicySet.build(specs, self.root_namespace)
        return self._policy_set

    def policy_specs(self) -> dict[PolicyRef, PolicySpec]:
        return {h.spec.ref: h.spec for h in self.policies.values() if h.spec is not None}

    def identity_defaults(self, ref: PolicyRef) -> IdentityDefaults:
        """The policy's `identity` block (its delivery, key algorithm), defaults if unknown."""
        held = self.policies.get((ref.namespace, ref.name))
        spec = held.spec if held is not None else None
        return spec.identity if spec is not None else IdentityDefaults()

    def identities_with_secret(self, namespace: str, secret: str) -> list[IdentityRecord]:
        """The WorkloadIdentities of `namespace` that name the Secret `secret`."""
        return list(self.identities.indexed("secret", (namespace, secret)).values())

    def identities_of(self, namespace: str, service_account: str) -> list[IdentityRecord]:
        return list(self.identities.indexed("account", (namespace, service_account)).values())

    def identity_ref_for(self, namespace: str, service_account: str) -> IdentityRef:
        records = self.identities_of(namespace, service_account)
        return identity_for(namespace, service_account, records, self.trust_domain)

    def provisioned_in(self, namespace: str) -> dict[str, Json]:
        """The spec of each provisioned identity of the namespace, by name."""
        specs = {}
        for key in self.identities.indexed("namespace", namespace):
            spec = self.provisioned.get(key)
            if spec is not None:
                specs[key[1]] = spec
        return specs

    def governed(self, ref: PolicyRef) -> list[tuple[PodInfo, PodResolution]]:
        """The pods the policy governs, with their resolutions."""
        return [
            (pod, resolution)
            for key, resolution in self.resolutions.indexed("governing", ref).items()
            if (pod := self.pods.get(key)) is not None
        ]

    def resolutions_in(self, namespace: str) -> list[PodResolution]:
        return [
            resolution
            for key, resolution in self.resolutions.indexed("namespace", namespace).items()
            if key in self.pods
        ]

    def known_namespaces(self) -> set[str]:
        """Every namespace with a pod, policy, NetworkPolicy or identity."""
        names: set[str] = set()
        for store in (self.pods, self.policies, self.network_policies, self.identities):
            names.update(str(ns) for ns in store.index_values("namespace"))
        return names


__all__ = [
    "HeldPolicy",
    "LabelsWork",
    "NamespaceInfo",
    "NamespaceWork",
    "PolicyStores",
    "PolicyWork",
    "Work",
    "namespace_info",
    "slim_network_policy",
    "slim_policy",
]
