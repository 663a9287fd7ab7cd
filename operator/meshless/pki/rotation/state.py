"""CA rotation (pure): the rotation record kept in the CA Secret, its phases, and the request
`meshless ca rotate` writes.

A root rotates in phases, Idle -> Prepare -> Switch -> Finish -> Idle (meshless.pki.rotation
says what each does); the record says where a rotation is and since when.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

ROTATION_KEY = "rotation.json"
NEXT_CRT = "next.crt"
NEXT_KEY = "next.key"
NEXT_ROOT_KEY = "next-root.key"
NEXT_KEYS = (NEXT_CRT, NEXT_KEY, NEXT_ROOT_KEY)


class Phase(StrEnum):
    IDLE = "Idle"
    PREPARE = "Prepare"
    SWITCH = "Switch"
    FINISH = "Finish"


# The order is the contract: a rotation only ever moves one step along it (and Finish -> Idle).
PHASE_ORDER: tuple[Phase, ...] = (Phase.IDLE, Phase.PREPARE, Phase.SWITCH, Phase.FINISH)


def next_phase(phase: Phase) -> Phase:
    index = PHASE_ORDER.index(phase)
    return PHASE_ORDER[(index + 1) % len(PHASE_ORDER)]


class RequestKind(StrEnum):
    ROOT = "root"
    INTERMEDIATE = "intermediate"


@dataclass(frozen=True)
class RotationRequest:
    """What `meshless ca rotate` wrote into the rotate annotation: `<kind>:<id>`."""

    kind: RequestKind
    id: str

    @property
    def value(self) -> str:
        return f"{self.kind.value}:{self.id}"


def parse_request(value: str | None) -> RotationRequest | None:
    """The request in an annotation value, or None (absent or not understood)."""
    if not value:
        return None
    kind, _, request_id = value.partition(":")
    try:
        return RotationRequest(RequestKind(kind.strip()), request_id.strip())
    except ValueError:
        return None


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class RotationState:
    """The rotation record kept in the CA Secret under `rotation.json` (no key material)."""

    phase: Phase = Phase.IDLE
    reason: str = ""  # why the current rotation started: Requested, RootDue, ...
    old_roots: tuple[str, ...] = ()  # hex SHA-256 of the roots that leave
    new_root: str = ""  # hex SHA-256 of the root that comes in
    started_at: datetime | None = None
    phase_since: datetime | None = None
    bundles_complete_at: datetime | None = None  # Prepare: every bundle carried the new root
    switched_at: datetime | None = None  # Switch began: the reissue window starts here
    leaves_done_at: datetime | None = None  # Switch: no valid leaf under an old root was left
    handled_request: str = ""  # the last rotate annotation value acted on (or refused)
    last_root_rotation: datetime | None = None
    last_intermediate_rotation: datetime | None = None
    history: tuple[str, ...] = field(default=())  # "<phase>@<time>" of the current rotation

    def to_json(self) -> bytes:
        doc = {
            "phase": self.phase.value,
            "reason": self.reason,
            "oldRoots": list(self.old_roots),
            "newRoot": self.new_root,
            "startedAt": _iso(self.started_at),
            "phaseSince": _iso(self.phase_since),
            "bundlesCompleteAt": _iso(self.bundles_complete_at),
            "switchedAt": _iso(self.switched_at),
            "leavesDoneAt": _iso(self.leaves_done_at),
            "handledRequest": self.handled_request,
            "lastRootRotation": _iso(self.last_root_rotation),
            "lastIntermediateRotation": _iso(self.last_intermediate_rotation),
            "history": list(self.history),
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | None) -> RotationState:
        """The recorded state; an absent or unreadable record is Idle (never a crash)."""
        if not raw:
            return cls()
        try:
            doc = json.loads(raw)
            return cls(
                phase=Phase(doc.get("phase", Phase.IDLE.value)),
                reason=str(doc.get("reason") or ""),
                old_roots=tuple(str(r) for r in doc.get("oldRoots") or ()),
                new_root=str(doc.get("newRoot") or ""),
                started_at=_time(doc.get("startedAt")),
                phase_since=_time(doc.get("phaseSince")),
                bundles_complete_at=_time(doc.get("bundlesCompleteAt")),
                switched_at=_time(doc.get("switchedAt")),
                leaves_done_at=_time(doc.get("leavesDoneAt")),
                handled_request=str(doc.get("handledRequest") or ""),
                last_root_rotation=_time(doc.get("lastRootRotation")),
                last_intermediate_rotation=_time(doc.get("lastIntermediateRotation")),
                history=tuple(str(h) for h in doc.get("history") or ()),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def entering(self, phase: Phase, now: datetime) -> RotationState:
        return replace(
            self,
            phase=phase,
            phase_since=now,
            history=(*self.history, f"{phase.value}@{_iso(now)}"),
        )


def state_from_secret_data(data: Mapping[str, bytes]) -> RotationState:
    return RotationState.from_json(data.get(ROTATION_KEY))
