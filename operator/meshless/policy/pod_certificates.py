"""Pods waiting for a pod certificate nobody asked for (pure).

Kubelet feature gates are invisible to the API: a kubelet without the PodCertificateRequest
gate never sends a request, and the pod waits in ContainerCreating without a word. So a pod
that mounts a pod certificate, is bound to a node, is not running and has no
PodCertificateRequest after a minute is reported on its policy (Ready=False,
PodCertificateNotRequested), naming the pod and its node.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from meshless.policy.model import PodInfo

REQUEST_GRACE = timedelta(minutes=1)


@dataclass(frozen=True)
class Waits:
    unrequested: tuple[PodInfo, ...]  # past the grace, no request seen
    candidates: tuple[PodInfo, ...]  # past the grace: whose requests must be looked up
    recheck_after: float | None  # seconds until the next pod passes the grace


def _created(pod: PodInfo) -> datetime | None:
    try:
        return datetime.fromisoformat(pod.created.replace("Z", "+00:00"))
    except ValueError:
        return None


def pod_certificate_waits(
    pods: Iterable[PodInfo],
    requested: frozenset[str] | None,
    now: datetime,
    grace: timedelta = REQUEST_GRACE,
) -> Waits:
    """Of `pods`, those with a pod certificate mounted, bound to a node, not running and
    older than `grace`; `requested` holds the pod UIDs that have a PodCertificateRequest
    (None: not looked up yet, every such pod is a candidate only)."""
    candidates: list[PodInfo] = []
    soonest: float | None = None
    for pod in pods:
        if not pod.pod_certificate or not pod.node or pod.running or pod.deleting:
            continue
        created = _created(pod)
        if created is None:
            continue
        left = (created + grace - now).total_seconds()
        if left > 0:
            soonest = left if soonest is None else min(soonest, left)
            continue
        candidates.append(pod)
    unrequested = (
        () if requested is None else tuple(p for p in candidates if p.uid not in requested)
    )
    return Waits(unrequested, tuple(candidates), soonest)


def unrequested_message(pods: Iterable[PodInfo]) -> list[str]:
    """One entry per pod: "pod ns/name on node N"."""
    return [f"pod {p.namespace}/{p.name} on node {p.node}" for p in pods]
