"""NetworkPolicy ingress semantics (pure), as the Kubernetes documentation and a CNI define
them, evaluated on plain networking.k8s.io/v1 manifests.

- A pod is isolated for ingress iff some NetworkPolicy in its namespace selects it (podSelector;
  `{}` selects every pod) and lists "Ingress" in policyTypes. Unset or empty policyTypes mean
  ["Ingress"], plus "Egress" when the policy has egress rules.
- A non-isolated pod admits everything. Traffic to an isolated pod is allowed iff some policy
  that selects it has an ingress rule whose `from` admits the peer and whose `ports` admit the
  (port, protocol). Policies add up: there is no deny rule.
- `from` absent or empty: every source. A peer entry with podSelector only: pods in the
  policy's own namespace; namespaceSelector only: every pod in the matching namespaces; both:
  matching pods in matching namespaces; ipBlock: the peer's IP in cidr and in no `except`.
- `ports` absent or empty: every port. protocol defaults to TCP; a numeric port with endPort
  is the inclusive range; an entry without port is every port of its protocol; a named port
  is resolved against the destination pod's container port names (name and protocol).

Not modelled (the docs leave them to the CNI or exempt them): traffic from the pod's own node
(always allowed), loopback inside a pod, hostNetwork pods.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshless.selectors import Selector, parse_selector

INGRESS = "Ingress"
EGRESS = "Egress"
TCP = "TCP"
PROTOCOLS = ("TCP", "UDP", "SCTP")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NetPod:
    """A pod as NetworkPolicies see it: namespace, labels, IP, named container ports.

    `named_ports` maps a container port name to (containerPort, protocol). None means the names
    are not known: a named port in a rule is then taken to match every port of its protocol
    (an over-approximation, right for reporting what a policy might open).
    """

    namespace: str
    labels: Mapping[str, str]
    ip: str = ""
    named_ports: Mapping[str, tuple[int, str]] | None = field(default_factory=dict)


@dataclass(frozen=True)
class ExternalPeer:
    """A source outside the cluster's pods: only ipBlock peers and open rules admit it."""

    ip: str


Peer = NetPod | ExternalPeer


@dataclass(frozen=True)
class PortEntry:
    """One NetworkPolicyPort."""

    protocol: str = TCP
    port: int | str | None = None  # None: every port of the protocol; str: a named port
    end_port: int | None = None

    def admits(self, port: int, protocol: str, destination: NetPod) -> bool:
        if protocol != self.protocol:
            return False
        if self.port is None:
            return True
        if isinstance(self.port, str):
            if destination.named_ports is None:
                return True
            return destination.named_ports.get(self.port) == (port, protocol)
        if self.end_port is not None:
            return self.port <= port <= self.end_port
        return port == self.port

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> PortEntry:
        port = raw.get("port")
        end_port = raw.get("endPort")
        # A string is a port name even when it is all digits (the API refuses such names).
        return cls(
            protocol=str(raw.get("protocol") or TCP),
            port=port if isinstance(port, int | str) else None,
            end_port=int(end_port) if isinstance(port, int) and end_port is not None else None,
        )


def _requires_label(selector: Selector, key: str) -> bool:
    """True when every pod the selector matches carries `key`."""
    if any(k == key for k, _ in selector.match_labels):
        return True
    return any(r.key == key and r.operator in ("In", "Exists") for r in selector.expressions)


@dataclass(frozen=True)
class PeerEntry:
    """One NetworkPolicyPeer."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    cidr: IPNetwork | None = None
    excepts: tuple[IPNetwork, ...] = ()

    def admits(
        self, peer: Peer, policy_namespace: str, namespaces: Mapping[str, Mapping[str, str]]
    ) -> bool:
        if self.cidr is not None:
            return _ip_in_block(peer.ip, self.cidr, self.excepts)
        if isinstance(peer, ExternalPeer):
            return False
        if self.pod_selector is None and self.namespace_selector is None:
            return False  # the API refuses an empty peer; it admits nothing
        if self.namespace_selector is None:
            if peer.namespace != policy_namespace:
                return False
        elif not self.namespace_selector.matches(namespaces.get(peer.namespace, {})):
            return False
        return self.pod_selector is None or self.pod_selector.matches(peer.labels)

    def may_admit_without(self, label_key: str) -> bool:
        """Whether some peer without `label_key` could match this entry (statically: any pod
        that could ever exist, any address outside the cluster)."""
        if self.cidr is not None:
            return True
        if self.pod_selector is not None:
            return not _requires_label(self.pod_selector, label_key)
        return self.namespace_selector is not None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> PeerEntry:
        block = raw.get("ipBlock")
        if block:
            return cls(
                cidr=ipaddress.ip_network(str(block["cidr"]), strict=False),
                excepts=tuple(
                    ipaddress.ip_network(str(e), strict=False) for e in block.get("except") or ()
                ),
            )
        pods = raw.get("podSelector")
        namespaces = raw.get("namespaceSelector")
        return cls(
            pod_selector=None if pods is None else parse_selector(pods, f"{where}.podSelector"),
            namespace_selector=None
            if namespaces is None
            else parse_selector(namespaces, f"{where}.namespaceSelector"),
        )


def _ip_in_block(ip: str, cidr: IPNetwork, excepts: Sequence[IPNetwork]) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if address.version != cidr.version or address not in cidr:
        return False
    return not any(address.version == e.version and address in e for e in excepts)


@dataclass(frozen=True)
class IngressRule:
    """One NetworkPolicyIngressRule. Empty `peers` admits every source, empty `ports` every
    port."""

    peers: tuple[PeerEntry, ...] = ()
    ports: tuple[PortEntry, ...] = ()

    def admits_port(self, port: int, protocol: str, destination: NetPod) -> bool:
        return not self.ports or any(p.admits(port, protocol, destination) for p in self.ports)

    def admits_peer(
        self, peer: Peer, policy_namespace: str, namespaces: Mapping[str, Mapping[str, str]]
    ) -> bool:
        return not self.peers or any(
            p.admits(peer, policy_namespace, namespaces) for p in self.peers
        )

    def may_admit_without(self, label_key: str) -> bool:
        return not self.peers or any(p.may_admit_without(label_key) for p in self.peers)


@dataclass(frozen=True)
class NetworkPolicy:
    """A parsed networking.k8s.io/v1 NetworkPolicy, ingress half."""

    namespace: str
    name: str
    pod_selector: Selector
    isolates_ingress: bool
    ingress: tuple[IngressRule, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, manifest: Mapping[str, Any]) -> NetworkPolicy:
        meta = manifest.get("metadata") or {}
        spec = manifest.get("spec") or {}
        types = list(spec.get("policyTypes") or ())
        if not types:
            types = [INGRESS, EGRESS] if spec.get("egress") else [INGRESS]
        rules = []
        for i, rule in enumerate(spec.get("ingress") or ()):
            rule = rule or {}
            peers = tuple(
                PeerEntry.parse(peer or {}, f"spec.ingress[{i}].from[{j}]")
                for j, peer in enumerate(rule.get("from") or ())
            )
            ports = tuple(PortEntry.parse(port or {}) for port in rule.get("ports") or ())
            rules.append(IngressRule(peers, ports))
        return cls(
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            pod_selector=parse_selector(spec.get("podSelector"), "spec.podSelector"),
            isolates_ingress=INGRESS in types,
            ingress=tuple(rules),
        )

    def selects(self, pod: NetPod) -> bool:
        """Whether this policy isolates `pod` for ingress."""
        return (
            self.isolates_ingress
            and pod.namespace == self.namespace
            and self.pod_selector.matches(pod.labels)
        )

    def admits(
        self,
        peer: Peer,
        pod: NetPod,
        port: int,
        protocol: str,
        namespaces: Mapping[str, Mapping[str, str]],
    ) -> bool:
        """Whether one of this policy's rules admits the traffic (given that it selects pod)."""
        return any(
            rule.admits_port(port, protocol, pod)
            and rule.admits_peer(peer, self.namespace, namespaces)
            for rule in self.ingress
        )

    def may_open_to_peer_without(
        self, label_key: str, pod: NetPod, port: int, protocol: str = TCP
    ) -> bool:
        """Whether a rule admits (port, protocol) on `pod` to some peer without `label_key`."""
        return any(
            rule.admits_port(port, protocol, pod) and rule.may_admit_without(label_key)
            for rule in self.ingress
        )


def parse_all(manifests: Iterable[Mapping[str, Any] | NetworkPolicy]) -> list[NetworkPolicy]:
    return [m if isinstance(m, NetworkPolicy) else NetworkPolicy.parse(m) for m in manifests]


class NetworkPolicies:
    """A set of NetworkPolicies and the namespaces' labels: who may reach whom."""

    def __init__(
        self,
        policies: Iterable[Mapping[str, Any] | NetworkPolicy],
        namespaces: Mapping[str, Mapping[str, str]],
    ) -> None:
        self.namespaces = namespaces
        self._by_namespace: dict[str, list[NetworkPolicy]] = defaultdict(list)
        for policy in parse_all(policies):
            self._by_namespace[policy.namespace].append(policy)

    def selecting(self, pod: NetPod) -> list[NetworkPolicy]:
        """The policies that isolate `pod` for ingress."""
        return [p for p in self._by_namespace.get(pod.namespace, ()) if p.selects(pod)]

    def isolated(self, pod: NetPod) -> bool:
        return bool(self.selecting(pod))

    def allows(self, peer: Peer, pod: NetPod, port: int, protocol: str = TCP) -> bool:
        selecting = self.selecting(pod)
        if not selecting:
            return True
        return any(p.admits(peer, pod, port, protocol, self.namespaces) for p in selecting)

    def openers_without(
        self, label_key: str, pod: NetPod, port: int, protocol: str = TCP
    ) -> list[NetworkPolicy]:
        """The policies selecting `pod` that let some peer without `label_key` reach port."""
        return [
            p
            for p in self.selecting(pod)
            if p.may_open_to_peer_without(label_key, pod, port, protocol)
        ]

    def open_to_peer_without(
        self, label_key: str, pod: NetPod, port: int, protocol: str = TCP
    ) -> bool:
        """Does this set let SOME peer without `label_key` reach (pod, port)? A pod the set
        does not isolate is open to everyone."""
        return not self.isolated(pod) or bool(self.openers_without(label_key, pod, port, protocol))
