"""The policy core's data (pure): parsed policies, slim pods, and what the resolver decides.

Everything here is immutable and hashable where it can be, so results can be compared
between reconciles to skip writes that would change nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from meshless.api import AdmissionAction, Mode
from meshless.selectors import Selector


class Scope(StrEnum):
    """How wide a policy reaches; the narrowest that matches a pod wins."""

    WORKLOAD = "Workload"  # a non-empty selector: matching pods in its namespace
    NAMESPACE = "Namespace"  # no selector, not in the root namespace: its namespace
    ROOT = "Root"  # no selector, in the root namespace: the whole cluster


@dataclass(frozen=True, order=True)
class PolicyRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IdentityDefaults:
    """spec.identity: defaults for the WorkloadIdentities a policy provisions."""

    ttl: str | None = None
    algorithm: str | None = None
    delivery: str | None = None  # Secret | PodCertificate; None: the operator's default


@dataclass(frozen=True)
class PolicySpec:
    namespace: str
    name: str
    uid: str
    creation_timestamp: str  # RFC 3339 as the API gives it; sorts chronologically as text
    selector: Selector | None  # None: no selector or an empty one
    mode: Mode = Mode.UNSET
    port_modes: Mapping[int, Mode] = field(default_factory=dict)
    identity: IdentityDefaults = IdentityDefaults()
    admission: AdmissionAction = AdmissionAction.ENFORCE
    network_policy: bool = True
    generation: int = 0

    @property
    def ref(self) -> PolicyRef:
        return PolicyRef(self.namespace, self.name)

    @property
    def age_key(self) -> tuple[str, str]:
        """Older first: creationTimestamp, then name (Istio's tie-break)."""
        return (self.creation_timestamp, self.name)


@dataclass(frozen=True)
class PodInfo:
    """The slim copy of a pod the operator holds (thousands of them)."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    service_account: str  # "default" when the pod names none
    ports: frozenset[int] = frozenset()  # TCP container ports, init containers included
    identity_mounted: bool = False  # the meshless identity volume is mounted
    uid: str = ""
    ip: str = ""
    running: bool = False  # phase Running and condition Ready True
    deleting: bool = False  # deletionTimestamp set
    # The identity volume is a podCertificate projection (signer meshless.dev/spiffe), not a
    # Secret: the pod needs no WorkloadIdentity.
    pod_certificate: bool = False
    node: str = ""  # spec.nodeName
    created: str = ""  # metadata.creationTimestamp (RFC 3339)


@dataclass(frozen=True)
class PortMode:
    """The effective mode of one port and the policy that decided it."""

    mode: Mode  # never UNSET
    decided_by: PolicyRef | None  # None: nothing wider, the PERMISSIVE default


@dataclass(frozen=True)
class PodResolution:
    """The effective mTLS of one pod. `mode` is the pod-level mode (never UNSET);
    `ports` has every declared container port plus every port a winning portLevelMtls names.
    """

    mode: Mode
    decided_by: PolicyRef | None  # the policy whose mode (after inheritance) is `mode`
    ports: Mapping[int, PortMode]
    # The winning policy at each scope that applied to the pod (narrowest first); the first
    # is the one the pod counts under in status (`selectedPods`).
    applied: tuple[PolicyRef, ...]
    # Policies that matched the pod but lost, each with the policy that beat it.
    ignored: Mapping[PolicyRef, PolicyRef] = field(default_factory=dict)

    @property
    def governing(self) -> PolicyRef:
        return self.applied[0]

    def strict_ports(self) -> frozenset[int]:
        return frozenset(p for p, pm in self.ports.items() if pm.mode is Mode.STRICT)

    def needs_identity(self) -> bool:
        """STRICT or PERMISSIVE on the pod or on any port."""
        modes = {self.mode, *(pm.mode for pm in self.ports.values())}
        return bool(modes & {Mode.STRICT, Mode.PERMISSIVE})
