"""Builders for policy-core tests: PolicySpec and PodInfo with readable defaults."""

from __future__ import annotations

from collections.abc import Mapping

from meshless.api import AdmissionAction, Mode
from meshless.policy.model import IdentityDefaults, PodInfo, PolicySpec
from meshless.selectors import Selector

ROOT_NS = "meshless-system"


def policy(
    namespace: str,
    name: str,
    mode: Mode = Mode.UNSET,
    *,
    labels: Mapping[str, str] | None = None,
    ports: Mapping[int, Mode] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    ttl: str | None = None,
    algorithm: str | None = None,
    admission: AdmissionAction = AdmissionAction.ENFORCE,
    network_policy: bool = True,
) -> PolicySpec:
    selector = Selector(match_labels=tuple(sorted(labels.items()))) if labels else None
    return PolicySpec(
        namespace=namespace,
        name=name,
        uid=f"uid-{namespace}-{name}",
        creation_timestamp=created,
        selector=selector,
        mode=mode,
        port_modes=dict(ports or {}),
        identity=IdentityDefaults(ttl=ttl, algorithm=algorithm),
        admission=admission,
        network_policy=network_policy,
    )


def pod(
    namespace: str,
    name: str,
    labels: Mapping[str, str] | None = None,
    ports: tuple[int, ...] = (8443,),
    service_account: str = "default",
    mounted: bool = False,
    running: bool = True,
) -> PodInfo:
    return PodInfo(
        namespace=namespace,
        name=name,
        labels=dict(labels or {}),
        service_account=service_account,
        ports=frozenset(ports),
        identity_mounted=mounted,
        running=running,
    )
