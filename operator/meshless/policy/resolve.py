"""Policy resolution (pure): which MtlsPolicy decides each port of a pod, with Istio's
PeerAuthentication precedence.

- Scope: a non-empty selector is workload-level; no selector is namespace-wide, or
  cluster-wide in the root namespace. The narrowest scope that matches a pod wins.
- Only the oldest namespace-wide policy per namespace and the oldest root-namespace policy
  take effect; among workload policies matching one pod, the oldest wins. Age is
  (creationTimestamp, name).
- UNSET inherits from the next wider scope; with nothing wider it is PERMISSIVE.
- The winning workload policy's portLevelMtls overrides the pod's mode on those ports; an
  UNSET port entry inherits the pod's mode.
- A pod that no policy reaches is left alone (None).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshless.api import Mode
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec, PortMode, Scope


def scope_of(policy: PolicySpec, root_namespace: str) -> Scope:
    if policy.selector is not None and not policy.selector.empty:
        return Scope.WORKLOAD
    return Scope.ROOT if policy.namespace == root_namespace else Scope.NAMESPACE


@dataclass(frozen=True)
class PolicySet:
    """Policies indexed for resolution. Build once per change, resolve many pods."""

    root_namespace: str
    root: tuple[PolicySpec, ...]  # oldest first
    namespace_wide: Mapping[str, tuple[PolicySpec, ...]]  # oldest first, per namespace
    workload: Mapping[str, tuple[PolicySpec, ...]]  # oldest first, per namespace

    @classmethod
    def build(cls, policies: Iterable[PolicySpec], root_namespace: str) -> PolicySet:
        root: list[PolicySpec] = []
        namespace_wide: dict[str, list[PolicySpec]] = defaultdict(list)
        workload: dict[str, list[PolicySpec]] = defaultdict(list)
        for policy in policies:
            scope = scope_of(policy, root_namespace)
            if scope is Scope.ROOT:
                root.append(policy)
            elif scope is Scope.NAMESPACE:
                namespace_wide[policy.namespace].append(policy)
            else:
                workload[policy.namespace].append(policy)

        def oldest_first(items: list[PolicySpec]) -> tuple[PolicySpec, ...]:
            return tuple(sorted(items, key=lambda p: p.age_key))

        return cls(
            root_namespace=root_namespace,
            root=oldest_first(root),
            namespace_wide={ns: oldest_first(v) for ns, v in namespace_wide.items()},
            workload={ns: oldest_first(v) for ns, v in workload.items()},
        )

    def scope(self, policy: PolicySpec) -> Scope:
        return scope_of(policy, self.root_namespace)

    def all(self) -> Iterable[PolicySpec]:
        yield from self.root
        for items in self.namespace_wide.values():
            yield from items
        for items in self.workload.values():
            yield from items

    def get(self, ref: PolicyRef) -> PolicySpec | None:
        """The policy named `ref`, None when it is not in the set."""
        candidates = (
            *self.root,
            *self.namespace_wide.get(ref.namespace, ()),
            *self.workload.get(ref.namespace, ()),
        )
        return next((policy for policy in candidates if policy.ref == ref), None)

    def shadowed(self) -> dict[PolicyRef, PolicyRef]:
        """Root and namespace-wide policies that never take effect, each with the one that
        does: they lose whatever pods exist. Workload conflicts depend on pods (see
        PodResolution.ignored)."""
        out: dict[PolicyRef, PolicyRef] = {}
        for group in (self.root, *self.namespace_wide.values()):
            for loser in group[1:]:
                out[loser.ref] = group[0].ref
        return out

    def resolve(self, pod: PodInfo) -> PodResolution | None:
        return resolve_pod(self, pod)


def resolve_pod(policies: PolicySet, pod: PodInfo) -> PodResolution | None:
    ignored: dict[PolicyRef, PolicyRef] = {}

    root = policies.root[0] if policies.root else None
    if root is not None:
        for loser in policies.root[1:]:
            ignored[loser.ref] = root.ref

    namespace_wide = None
    if pod.namespace != policies.root_namespace:
        candidates = policies.namespace_wide.get(pod.namespace, ())
        if candidates:
            namespace_wide = candidates[0]
            for loser in candidates[1:]:
                ignored[loser.ref] = namespace_wide.ref

    workload = None
    for policy in policies.workload.get(pod.namespace, ()):
        assert policy.selector is not None
        if not policy.selector.matches(pod.labels):
            continue
        if workload is None:
            workload = policy
        else:
            ignored[policy.ref] = workload.ref

    applied = tuple(p for p in (workload, namespace_wide, root) if p is not None)
    if not applied:
        return None

    # Inheritance, widest first: UNSET keeps what the wider scope decided.
    mode, decided_by = Mode.PERMISSIVE, None
    for policy in reversed(applied):
        if policy.mode is not Mode.UNSET:
            mode, decided_by = policy.mode, policy.ref

    ports: dict[int, PortMode] = {p: PortMode(mode, decided_by) for p in pod.ports}
    if workload is not None:
        for port, port_mode in workload.port_modes.items():
            if port_mode is Mode.UNSET:
                ports[port] = PortMode(mode, decided_by)
            else:
                ports[port] = PortMode(port_mode, workload.ref)

    return PodResolution(
        mode=mode,
        decided_by=decided_by,
        ports=ports,
        applied=tuple(p.ref for p in applied),
        ignored=ignored,
    )
