"""Builders shared by the admission unit tests: policies, pods, and an independent JSON-patch
applier (RFC 6902 add/remove/replace), so a patch is checked by what it does to a pod."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshless.api import AdmissionAction, Mode
from meshless.policy.model import PolicySpec
from meshless.policy.provision import IdentityRecord
from meshless.policy.resolve import PolicySet
from meshless.selectors import parse_selector

ROOT_NS = "meshless-system"


def policy(
    namespace: str,
    name: str,
    mode: Mode = Mode.STRICT,
    *,
    selector: dict[str, str] | None = None,
    ports: dict[int, Mode] | None = None,
    admission: AdmissionAction = AdmissionAction.ENFORCE,
    created: str = "2026-01-01T00:00:00Z",
) -> PolicySpec:
    return PolicySpec(
        namespace=namespace,
        name=name,
        uid=f"uid-{name}",
        creation_timestamp=created,
        selector=parse_selector({"matchLabels": selector}) if selector else None,
        mode=mode,
        port_modes=dict(ports or {}),
        admission=admission,
    )


def policy_set(*policies: PolicySpec) -> PolicySet:
    return PolicySet.build(policies, ROOT_NS)


def pod(
    name: str = "web",
    namespace: str = "shop",
    *,
    sa: str | None = "payments",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ports: tuple[int, ...] = (8443,),
    init: bool = True,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "ports": [{"containerPort": p} for p in ports],
                }
            ]
        },
    }
    if sa:
        body["spec"]["serviceAccountName"] = sa
    if labels is not None:
        body["metadata"]["labels"] = dict(labels)
    if annotations is not None:
        body["metadata"]["annotations"] = dict(annotations)
    if init:
        body["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]
    return body


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def apply_patch(document: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 add / replace / remove on a copy; KeyError/IndexError when a path is missing,
    as a real API server would refuse it."""
    doc = copy.deepcopy(document)
    for op in ops:
        parts = [_unescape(p) for p in op["path"].split("/")[1:]]
        target: Any = doc
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if op["op"] == "add":
            if isinstance(target, list):
                index = len(target) if last == "-" else int(last)
                if index > len(target):
                    raise IndexError(op["path"])
                target.insert(index, copy.deepcopy(op["value"]))
            else:
                target[last] = copy.deepcopy(op["value"])
        elif op["op"] == "replace":
            if isinstance(target, list):
                target[int(last)] = copy.deepcopy(op["value"])
            else:
                if last not in target:
                    raise KeyError(op["path"])
                target[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            if isinstance(target, list):
                del target[int(last)]
            else:
                del target[last]
        else:
            raise AssertionError(f"unexpected op {op['op']}")
    return doc


@dataclass(frozen=True)
class IdentityTable:
    """admit.Identities over a fixed list of records."""

    records: tuple[IdentityRecord, ...] = ()

    def of_account(self, namespace: str, service_account: str) -> Iterable[IdentityRecord]:
        return [
            r
            for r in self.records
            if r.namespace == namespace and r.service_account == service_account
        ]

    def naming_secret(self, namespace: str, secret: str) -> Iterable[IdentityRecord]:
        return [r for r in self.records if r.namespace == namespace and r.secret_name == secret]
