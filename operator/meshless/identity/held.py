"""What the identity store holds of each WorkloadIdentity between reconciles (pure)."""

from __future__ import annotations

import json
import zlib
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
    observedGeneration) and spec and status packed (`pack`), unpacked when a reconcile runs.

    Held as parsed JSON, an identity's status (two conditions, serial, times, messages) was
    about 2 KB of dicts and strings; as compact JSON bytes 0.67 KB; packed about 0.18 KB
    (docs/decisions/scale.md)."""

    uid: str
    generation: int | None
    resource_version: str | None
    spec: bytes  # packed
    status: bytes  # packed
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
            spec=pack(body.get("spec")),
            status=pack(status),
            ready=(condition or {}).get("status") == "True",
        )

    def secret_name(self, name: str) -> str:
        """The name of the identity's own Secret (spec.secretName or the default)."""
        secret_name = unpack(self.spec).get("secretName")
        return secret_name if isinstance(secret_name, str) else default_secret_name(name)

    def body(self, namespace: str, name: str) -> Json:
        meta: Json = {"name": name, "namespace": namespace, "uid": self.uid}
        if self.generation is not None:
            meta["generation"] = self.generation
        if self.resource_version is not None:
            meta["resourceVersion"] = self.resource_version
        return {"metadata": meta, "spec": unpack(self.spec), "status": unpack(self.status)}


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
        {"metadata": {"namespace": ns, "name": name}, "spec": unpack(store[ns, name].spec)}
        for ns, name in gone
    ]


# Spec and status are held deflated against a preset dictionary of what they usually say
# (keys, condition reasons and messages, the shape of times and names): a status's 0.67 KB of
# JSON becomes some 0.15 KB (0.18 KB as a bytes object), about 25 MB less at 50,000
# identities, for about 5 microseconds to pack (once per event) and 2.5 to unpack (once per
# reconcile). Anything else packs too,
# only less tightly. Raw deflate with a 2 KB window: the preset and a status fit in it.
_PRESET = json.dumps(
    [
        {"privateKey": {"algorithm": "ECDSAP256"}, "serviceAccountName": "", "dnsNames": []},
        {
            "conditions": [
                {
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "message": "Certificate is valid until 2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                    "reason": "Ready",
                    "status": "True",
                    "type": "Ready",
                },
                {
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "message": "Renews at 2026-01-01T00:00:00Z",
                    "observedGeneration": 1,
                    "reason": "UpToDate",
                    "status": "False",
                    "type": "Issuing",
                },
            ],
            "notAfter": "2026-01-01T00:00:00Z",
            "notBefore": "2026-01-01T00:00:00Z",
            "observedGeneration": 1,
            "renewalTime": "2026-01-01T00:00:00Z",
            "secretName": "-mtls",
            "serialNumber": "",
            "spiffeID": "spiffe://cluster.local/ns//sa/",
        },
    ],
    separators=(",", ":"),
).encode()
_WBITS = -11  # raw deflate (no header), 2 KB window


def pack(value: Mapping[str, Any] | None) -> bytes:
    """`value` (a spec or status; None is {}) as compact JSON, deflated against the preset."""
    packer = zlib.compressobj(1, zlib.DEFLATED, _WBITS, 2, zlib.Z_DEFAULT_STRATEGY, _PRESET)
    return packer.compress(json.dumps(dict(value or {}), separators=(",", ":")).encode()) + (
        packer.flush()
    )


def unpack(packed: bytes) -> Json:
    """What `pack` packed."""
    unpacker = zlib.decompressobj(_WBITS, _PRESET)
    decoded: Json = json.loads(unpacker.decompress(packed) + unpacker.flush())
    return decoded


__all__ = ["HeldIdentity", "Key", "pack", "unpack", "vanished"]
