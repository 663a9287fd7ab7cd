"""CA rotation (pure): the state machine. When a CA certificate is due, when a phase may end,
and the one next step (`decide`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509

from meshless.pki.rotation.progress import Progress
from meshless.pki.rotation.state import Phase, RequestKind, RotationRequest, RotationState


@dataclass(frozen=True)
class RotationPolicy:
    renewal_fraction: float  # a CA certificate is due at this fraction of its lifetime
    settle_time: timedelta  # after every bundle carries the new root, before Switch
    window: timedelta  # reissues of existing leaves are spread over this


# --- when is a CA certificate due ----------------------------------------------------------
def due_time(cert: x509.Certificate, fraction: float) -> datetime:
    """notBefore + fraction * lifetime, truncated to whole seconds."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return (start + (end - start) * fraction).replace(microsecond=0)


def intermediate_due(issuer: x509.Certificate, now: datetime, fraction: float) -> bool:
    return now >= due_time(issuer, fraction)


def root_due(root: x509.Certificate, now: datetime, fraction: float) -> bool:
    """A root is replaced at the same fraction of its life as an intermediate: a 10-year root
    rotates after ~6.7 years, leaving years for the phases (which take minutes to hours)."""
    return now >= due_time(root, fraction)


# --- what each phase publishes -------------------------------------------------------------
def published_roots(
    phase: Phase, old_roots: Sequence[x509.Certificate], new_roots: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, ...]:
    """The trust bundle of a phase: the current roots when Idle; old + new during Prepare and
    Switch; the new roots only from Finish on."""
    if phase is Phase.IDLE:
        return tuple(old_roots)
    if phase in (Phase.PREPARE, Phase.SWITCH):
        return (*old_roots, *new_roots)
    return tuple(new_roots)


# --- phase transitions ---------------------------------------------------------------------
def prepare_complete(progress: Progress) -> bool:
    """Every bundle carries the new root."""
    return progress.bundles_with_new_root == progress.bundles_total


def prepare_may_end(
    state: RotationState, progress: Progress, now: datetime, settle_time: timedelta
) -> bool:
    """Every bundle carries both roots (checked again now) and the settle time for kubelets to
    update mounted files has passed since they all first did."""
    return (
        prepare_complete(progress)
        and state.bundles_complete_at is not None
        and now >= state.bundles_complete_at + settle_time
    )


def switch_complete(progress: Progress) -> bool:
    """No valid leaf under an old root remains in the identity Secrets."""
    return progress.leaves_on_old_root == 0


def switch_may_end(
    state: RotationState, progress: Progress, now: datetime, settle_time: timedelta
) -> bool:
    """No valid leaf under an old root remains (checked again now) and the settle time has
    passed since that was first seen: mounted files lag their Secrets, so a peer may still
    present the old leaf for that long, and the old root must not leave bundles before."""
    return (
        switch_complete(progress)
        and state.leaves_done_at is not None
        and now >= state.leaves_done_at + settle_time
    )


def finish_may_end(progress: Progress) -> bool:
    """No bundle carries an old root any more."""
    return progress.bundles_with_old_root == 0


class Action(StrEnum):
    NONE = "None"
    START_ROOT_ROTATION = "StartRootRotation"
    ROTATE_INTERMEDIATE = "RotateIntermediate"
    REFUSE_REQUEST = "RefuseRequest"
    MARK_BUNDLES_COMPLETE = "MarkBundlesComplete"
    MARK_LEAVES_DONE = "MarkLeavesDone"
    SWITCH = "Switch"
    FINISH = "Finish"
    COMPLETE = "Complete"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""  # CamelCase: why (Requested, RootDue, IntermediateDue, ...)


def decide(
    state: RotationState,
    *,
    issuer: x509.Certificate,
    roots: Sequence[x509.Certificate],
    can_sign_roots: bool,
    request: RotationRequest | None,
    progress: Progress | None,
    now: datetime,
    policy: RotationPolicy,
    constraints_stale: bool = False,
) -> Decision:
    """The one next step. `progress` is needed only outside Idle (None: not counted yet).
    `constraints_stale`: the issuer's NameConstraints are not the ones asked for
    (meshless.pki.constraints.intermediate_constraints_stale); acted on when Idle, before a
    due root (one quick step, and the root rotation starts on the next poll)."""
    new_request = request is not None and request.value != state.handled_request
    if state.phase is Phase.IDLE:
        if not can_sign_roots:
            return (
                Decision(Action.REFUSE_REQUEST, "NoRootKey")
                if new_request
                else Decision(Action.NONE)
            )
        if new_request and request is not None:
            if request.kind is RequestKind.ROOT:
                return Decision(Action.START_ROOT_ROTATION, "Requested")
            return Decision(Action.ROTATE_INTERMEDIATE, "Requested")
        if constraints_stale:
            return Decision(Action.ROTATE_INTERMEDIATE, "NameConstraintsChanged")
        if any(root_due(root, now, policy.renewal_fraction) for root in roots):
            return Decision(Action.START_ROOT_ROTATION, "RootDue")
        if intermediate_due(issuer, now, policy.renewal_fraction):
            return Decision(Action.ROTATE_INTERMEDIATE, "IntermediateDue")
        return Decision(Action.NONE)
    if new_request:
        return Decision(Action.REFUSE_REQUEST, "RotationInProgress")
    if progress is None:
        return Decision(Action.NONE)
    if state.phase is Phase.PREPARE:
        if prepare_may_end(state, progress, now, policy.settle_time):
            return Decision(Action.SWITCH, "BundlesSettled")
        if prepare_complete(progress) and state.bundles_complete_at is None:
            return Decision(Action.MARK_BUNDLES_COMPLETE, "BundlesComplete")
        return Decision(Action.NONE)
    if state.phase is Phase.SWITCH:
        if switch_may_end(state, progress, now, policy.settle_time):
            return Decision(Action.FINISH, "LeavesSettled")
        if switch_complete(progress) and state.leaves_done_at is None:
            return Decision(Action.MARK_LEAVES_DONE, "LeavesReissued")
        return Decision(Action.NONE)
    return (
        Decision(Action.COMPLETE, "OldRootRemoved")
        if finish_may_end(progress)
        else Decision(Action.NONE)
    )
