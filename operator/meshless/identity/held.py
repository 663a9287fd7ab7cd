"""What the identity store holds of each WorkloadIdentity between reconciles (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshless.api import ConditionType
from meshless.conditions import find_condition
from meshless.identity.spec import default_secret_name
from meshless.runtime.store import Store

Json = dict[str, Any]
Key = tuple[str, str]  # namespace, name


@dataclass(slots=True, frozen=True)
class HeldIdentity:
    """What the controller holds of each identity between reconciles: the metadata a write
    needs (uid for owner references, resourceVersion for echo detection, generation for
    observedGeneration) and spec and status as compact JSON, decoded when a reconcile runs.

    Held as parsed JSON, an identity's status (two conditions, serial, times, messages) was
    about 2 KB of dicts and strings; as bytes it is about 0.7 KB, and decoding it costs some
    10 microseconds per reconcile (docs/decisions/scale.md)."""

    uid: str
    generation: int | None
    resource_version: str | None
    spec: bytes
    status: bytes
    ready: bool  # status says Ready=True (a new term checks the others first)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> HeldIdentity:
        meta = body["metadata"]
        status = body.get("status") or {}
        condition = find_condition(status.get("conditions") or [], ConditionType.READY.value)
        return cls(
            uid=meta.get("uid", ""),
            generation=meta.get("generation"),
            resource_version=meta.get("resourceVersion"),
            spec=_compact(body.get("spec")),
            status=_compact(status),
            ready=(condition or {}).get("status") == "True",
        )

    def secret_name(self, name: str) -> str:
        """The name of the identity's own Secret (spec.secretName or the default)."""
        secret_name = json.loads(self.spec).get("secretName")
        return secret_name if isinstance(secret_name, str) else default_secret_name(name)

    def body(self, namespace: str, name: str) -> Json:
        meta: Json = {"name": name, "namespace": namespace, "uid": self.uid}
        if self.generation is not None:
            meta["generation"] = self.generation
        if self.resource_version is not None:
            meta["resourceVersion"] = self.resource_version
        return {"metadata": meta, "spec": json.loads(self.spec), "status": json.loads(self.status)}


def vanished(
    store: Store[Key, HeldIdentity], namespace: str | None, listed: set[Key]
) -> list[Json]:
    """After a (re-)list of identities in `namespace` (None: all): the held identities it
    did not return, as the DELETED events a watch would have brought had it been running
    when they went (with what forgetting them needs: their Secret's name, in the spec)."""
    gone = [
        key for key in store if key not in listed and (namespace is None or key[0] == namespace)
    ]
    return [
        {"metadata": {"namespace": ns, "name": name}, "spec": json.loads(store[ns, name].spec)}
        for ns, name in gone
    ]


def _compact(value: Any) -> bytes:
    return json.dumps(dict(value or {}), separators=(",", ":")).encode()


__all__ = ["HeldIdentity", "Key", "vanished"]
