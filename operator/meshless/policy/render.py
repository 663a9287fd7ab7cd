"""The operator's NetworkPolicies (pure), rendered from the resolver's per-pod answers.

NetworkPolicies add up: a pod is open to the union of every policy that selects it. So they
are never rendered one per MtlsPolicy; each pod gets exactly one meshless NetworkPolicy, and
nothing else of ours selects it:

- Pods of a namespace are grouped by their exact label set; a group's podSelector is its
  labels as matchLabels plus `DoesNotExist` for every other label key any pod of the namespace
  carries, so it selects that group and no other pod that exists.
- A group whose pods have a closed port (STRICT, decided by a policy with
  `enforcement.networkPolicy` on) gets one NetworkPolicy with two ingress rules: A, from
  everywhere on every TCP port but the closed ones, and every UDP and SCTP port; B, from pods
  carrying the identity label in any namespace, on the closed ports. Pods with the same labels
  but different closed ports get the union (see docs/decisions).
- A group that a NetworkPolicy meshless does not own already isolates gets nothing from us:
  rule A would open ports the user closed and rule B would let labelled peers through the
  user's rules. Its STRICT ports are then only as closed as the user's policies make them;
  `foreign_open_ports` reports where they are not.

Everything comes out sorted, so the controller can compare desired with stored and write
nothing when they are equal.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from meshless import api
from meshless.api import Mode
from meshless.netpol import TCP, NetPod, NetworkPolicies, NetworkPolicy, parse_all
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec

NETWORK_POLICY_API_VERSION = "networking.k8s.io/v1"
NAME_PREFIX = "meshless-"
MIN_PORT, MAX_PORT = 1, 65535
LABEL_VALUE_MAX = 63

Labels = tuple[tuple[str, str], ...]


def closed_ports(resolution: PodResolution, policies: Mapping[PolicyRef, PolicySpec]) -> set[int]:
    """The pod's STRICT ports that a NetworkPolicy should close: declared container ports and
    port overrides whose effective mode is STRICT, unless the deciding policy turned
    `enforcement.networkPolicy` off."""
    out: set[int] = set()
    for port, port_mode in resolution.ports.items():
        if port_mode.mode is not Mode.STRICT or port_mode.decided_by is None:
            continue
        decider = policies.get(port_mode.decided_by)
        if decider is None or decider.network_policy:
            out.add(port)
    return out


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted ports as inclusive ranges of consecutive numbers."""
    ranges: list[tuple[int, int]] = []
    for port in sorted(set(ports)):
        if ranges and ranges[-1][1] == port - 1:
            ranges[-1] = (ranges[-1][0], port)
        else:
            ranges.append((port, port))
    return ranges


def complement_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Every port in 1..65535 that is not in `ports`, as inclusive ranges."""
    out: list[tuple[int, int]] = []
    start = MIN_PORT
    for low, high in port_ranges(ports):
        if low > start:
            out.append((start, low - 1))
        start = high + 1
    if start <= MAX_PORT:
        out.append((start, MAX_PORT))
    return out


def _port_entries(ranges: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for low, high in ranges:
        entry: dict[str, Any] = {"protocol": TCP, "port": low}
        if high > low:
            entry["endPort"] = high
        entries.append(entry)
    return entries


def _short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def network_policy_name(labels: Labels) -> str:
    """`meshless-<hash of the label set>`: stable across reconciles and replicas."""
    return NAME_PREFIX + _short_hash(json.dumps(sorted(labels), separators=(",", ":")))


def label_value(text: str) -> str:
    """`text` as a label value: itself when it fits in 63 characters, else a prefix and a hash
    (object names may be 253 long). Select with the same function."""
    if len(text) <= LABEL_VALUE_MAX:
        return text
    return f"{text[: LABEL_VALUE_MAX - 11]}-{_short_hash(text)}"


def is_managed(manifest: Mapping[str, Any]) -> bool:
    labels = (manifest.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(api.MANAGED_BY_KEY) == api.MANAGED_BY_VALUE)


@dataclass
class _Group:
    """Pods of one namespace with one exact label set."""

    namespace: str
    labels: Labels
    governing: PolicyRef | None = None
    closed: set[int] = field(default_factory=set)


def _foreign(
    network_policies: Iterable[Mapping[str, Any] | NetworkPolicy],
) -> list[NetworkPolicy]:
    return parse_all(
        np for np in network_policies if isinstance(np, NetworkPolicy) or not is_managed(np)
    )


def render_network_policies(
    pods: Iterable[tuple[PodInfo, PodResolution | None]],
    policies: Mapping[PolicyRef, PolicySpec],
    other_network_policies: Iterable[Mapping[str, Any] | NetworkPolicy] = (),
) -> list[dict[str, Any]]:
    """The NetworkPolicies meshless wants, sorted by (namespace, name).

    `pods`: every pod of the namespaces concerned with its resolution (None where no policy
    reaches it): pods without a resolution still matter, their label keys keep other groups'
    selectors off them. `policies`: the MtlsPolicies by ref (for enforcement.networkPolicy and
    owner uids). `other_network_policies`: the NetworkPolicies meshless does not own (any
    carrying meshless's managed-by label are skipped).
    """
    groups: dict[tuple[str, Labels], _Group] = {}
    keys_by_namespace: dict[str, set[str]] = {}
    for pod, resolution in pods:
        labels: Labels = tuple(sorted(pod.labels.items()))
        keys_by_namespace.setdefault(pod.namespace, set()).update(pod.labels)
        group = groups.setdefault((pod.namespace, labels), _Group(pod.namespace, labels))
        if resolution is not None:
            group.governing = resolution.governing
            group.closed |= closed_ports(resolution, policies)

    foreign = NetworkPolicies(_foreign(other_network_policies), {})
    out: list[dict[str, Any]] = []
    for group in groups.values():
        if not group.closed or group.governing is None:
            continue
        if foreign.isolated(NetPod(group.namespace, dict(group.labels))):
            continue
        others = keys_by_namespace[group.namespace] - {k for k, _ in group.labels}
        out.append(_network_policy(group, sorted(others), policies.get(group.governing)))
    out.sort(key=lambda np: (np["metadata"]["namespace"], np["metadata"]["name"]))
    return out


def _network_policy(
    group: _Group, other_keys: list[str], governing_spec: PolicySpec | None
) -> dict[str, Any]:
    assert group.governing is not None
    governing = group.governing
    pod_selector: dict[str, Any] = {}
    if group.labels:
        pod_selector["matchLabels"] = dict(group.labels)
    if other_keys:
        pod_selector["matchExpressions"] = [
            {"key": key, "operator": "DoesNotExist"} for key in other_keys
        ]
    open_to_all = {
        "ports": [
            *_port_entries(complement_ranges(group.closed)),
            {"protocol": "UDP"},
            {"protocol": "SCTP"},
        ]
    }
    identified_only = {
        "from": [
            {
                "namespaceSelector": {},
                "podSelector": {
                    "matchExpressions": [{"key": api.IDENTITY_LABEL, "operator": "Exists"}]
                },
            }
        ],
        "ports": _port_entries(port_ranges(group.closed)),
    }
    metadata: dict[str, Any] = {
        "name": network_policy_name(group.labels),
        "namespace": group.namespace,
        "labels": {
            **api.MANAGED_BY,
            api.POLICY_LABEL: label_value(governing.name),
            api.POLICY_NAMESPACE_LABEL: governing.namespace,
        },
    }
    # Owner references cannot cross namespaces: a root-namespace policy's NetworkPolicies
    # elsewhere are found and cleaned up by label.
    if governing_spec is not None and governing.namespace == group.namespace:
        metadata["ownerReferences"] = [
            {
                "apiVersion": api.API_VERSION,
                "kind": api.Kind.MTLS_POLICY.value,
                "name": governing.name,
                "uid": governing_spec.uid,
                "controller": True,
            }
        ]
    return {
        "apiVersion": NETWORK_POLICY_API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": pod_selector,
            "policyTypes": ["Ingress"],
            "ingress": [open_to_all, identified_only],
        },
    }


class OpenPort(NamedTuple):
    """A closed (STRICT) port that a NetworkPolicy meshless does not own opens to peers
    without the identity label."""

    network_policy: str  # namespace/name
    pod: str  # namespace/name
    port: int
    policy: PolicyRef  # the MtlsPolicy that made the port STRICT: report NetworkOpen there


def foreign_open_ports(
    other_network_policies: Iterable[Mapping[str, Any] | NetworkPolicy],
    pods: Iterable[tuple[PodInfo, PodResolution | None]],
    policies: Mapping[PolicyRef, PolicySpec],
) -> list[OpenPort]:
    """Every (NetworkPolicy, pod, port) where a NetworkPolicy meshless does not own selects
    the pod and has a rule that admits some peer without the identity label on a closed port:
    `from` empty, an ipBlock, a podSelector that does not require the label, or a
    namespaceSelector alone. Static (any peer that could exist), sorted."""
    foreign = NetworkPolicies(_foreign(other_network_policies), {})
    out: list[OpenPort] = []
    for pod, resolution in pods:
        if resolution is None:
            continue
        closed = closed_ports(resolution, policies)
        if not closed:
            continue
        # PodInfo keeps no port names: a named port in a rule counts as possibly any port.
        target = NetPod(pod.namespace, pod.labels, pod.ip, named_ports=None)
        for port in sorted(closed):
            decided_by = resolution.ports[port].decided_by
            assert decided_by is not None
            for np in foreign.openers_without(api.IDENTITY_LABEL, target, port):
                out.append(OpenPort(np.key, f"{pod.namespace}/{pod.name}", port, decided_by))
    return sorted(out)


def needs_write(desired: Mapping[str, Any], stored: Mapping[str, Any] | None) -> bool:
    """Whether the stored NetworkPolicy differs from the desired one in what meshless sets:
    spec, its own labels, ownerReferences. Labels others add are left alone. The API server
    stores a rendered spec as given (checked against kube-apiserver 1.36), so equality is
    exact."""
    if stored is None:
        return True
    want_meta = desired.get("metadata") or {}
    have_meta = stored.get("metadata") or {}
    have_labels = have_meta.get("labels") or {}
    return (
        stored.get("spec") != desired.get("spec")
        or any(have_labels.get(k) != v for k, v in (want_meta.get("labels") or {}).items())
        or (have_meta.get("ownerReferences") or []) != (want_meta.get("ownerReferences") or [])
    )
