"""Who may reach whom, judged from stored NetworkPolicies as a CNI would (meshless.netpol)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshless.netpol import NetPod, NetworkPolicies

PodRef = tuple[str, Mapping[str, str]]  # namespace, labels


def reachable(
    network_policies: list[dict[str, Any]],
    namespace_labels: Mapping[str, Mapping[str, str]],
    peer: PodRef,
    target: PodRef,
    port: int,
) -> bool:
    """Whether a pod `peer` may open a TCP connection to `target` on `port`."""
    judge = NetworkPolicies(network_policies, namespace_labels)
    return judge.allows(NetPod(peer[0], dict(peer[1])), NetPod(target[0], dict(target[1])), port)
