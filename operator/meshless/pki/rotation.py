"""CA rotation (pure): the phases recorded in the CA Secret and the decisions that move them.

A root rotates in phases, Idle -> Prepare -> Switch -> Finish -> Idle:

- Prepare: a new root and an intermediate under it are made (kept as `next.crt`, `next.key`,
  `next-root.key`); the CA Secret's `ca.crt`, which is the trust bundle, becomes old + new
  roots. The old intermediate keeps issuing. Ends when every bundle (ConfigMaps and identity
  Secrets) carries the new root and the settle time has passed since they all first did.
- Switch: the new intermediate issues (`tls.crt`/`tls.key`/`root.key` are the new ones); leaves
  under the old root are reissued, each at a deadline spread over the rotation window. Ends
  when no valid leaf under the old root remains, plus the settle time (mounted files lag).
- Finish: `ca.crt` is the new root only; bundles drop the old root. Ends when none carries it.

An intermediate rotates under the same root in one step (no bundle change); its leaves move at
their own renewal, or spread over the window before the old intermediate expires. It rotates
when due, when requested, and when its NameConstraints are not the ones the name policy and
trust domain ask for (a pattern added or removed: reason NameConstraintsChanged). Every new
intermediate, rotated or made with a new root, carries the constraints asked for then.

Everything here takes `now` and the Secret data and returns decisions or new Secret data; the
shell (meshless.ca_rotation) reads, writes, counts and reports.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from meshless.pki.bundle import bundle_pem, fingerprint, parse_pem_certificates
from meshless.pki.ca import (
    CA_BACKDATE,
    CA_CRT,
    DEFAULT_DNS_SUBTREES,
    ROOT_KEY,
    TLS_CRT,
    TLS_KEY,
    CertificateAuthority,
    authority_key_id_for,
    bootstrap_self_signed,
    subject_key_id,
)
from meshless.pki.constraints import names_outside_constraints
from meshless.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    algorithm_of_public_key,
    generate_private_key,
    load_private_key,
    private_key_to_pem,
    signature_hash_for,
)

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


# --- progress: counted from what the bundles and leaves in the cluster say -----------------
@dataclass(frozen=True)
class Progress:
    bundles_total: int = 0  # trust-bundle ConfigMaps + identity Secrets' ca.crt
    bundles_with_new_root: int = 0
    bundles_with_old_root: int = 0
    leaves_total: int = 0
    leaves_on_old_root: int = 0  # still valid and chaining to a root that leaves

    def __add__(self, other: Progress) -> Progress:
        """Counts over two parts (pages of Secrets) add up to the counts over both."""
        return Progress(
            self.bundles_total + other.bundles_total,
            self.bundles_with_new_root + other.bundles_with_new_root,
            self.bundles_with_old_root + other.bundles_with_old_root,
            self.leaves_total + other.leaves_total,
            self.leaves_on_old_root + other.leaves_on_old_root,
        )

    @property
    def leaves_reissued(self) -> int:
        return self.leaves_total - self.leaves_on_old_root

    def as_dict(self) -> dict[str, int]:
        return {
            "bundlesTotal": self.bundles_total,
            "bundlesWithNewRoot": self.bundles_with_new_root,
            "bundlesWithOldRoot": self.bundles_with_old_root,
            "leavesTotal": self.leaves_total,
            "leavesOnOldRoot": self.leaves_on_old_root,
            "leavesReissued": self.leaves_reissued,
        }


def _fingerprints(pem: bytes | None) -> set[str]:
    if not pem:
        return set()
    try:
        return {fingerprint(c).hex() for c in parse_pem_certificates(pem)}
    except ValueError:
        return set()


def directly_issued(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def anchor_of(
    chain: Sequence[x509.Certificate], roots: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The root in `roots` that the chain (leaf, intermediates...) ends at, or None. Each
    certificate must be signed by the next; the last one by the root."""
    if not chain:
        return None
    for child, parent in itertools.pairwise(chain):
        if not directly_issued(child, parent):
            return None
    top = chain[-1]
    top_aki = _aki(top)
    for root in roots:
        if top_aki is not None and top_aki != subject_key_id(root):
            continue
        if directly_issued(top, root):
            return root
    return None


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def count_progress(
    bundles: Iterable[bytes | None],
    leaf_chains: Iterable[bytes | None],
    state: RotationState,
    old_roots: Sequence[x509.Certificate],
    now: datetime,
) -> Progress:
    """How far the rotation in `state` has come, from every bundle (ConfigMaps' and Secrets'
    ca.crt) and every identity Secret's tls.crt."""
    old = set(state.old_roots)
    bundles_total = with_new = with_old = 0
    for pem in bundles:
        prints = _fingerprints(pem)
        bundles_total += 1
        with_new += state.new_root in prints
        with_old += bool(prints & old)
    leaves_total = on_old = 0
    for chain_pem in leaf_chains:
        leaves_total += 1
        if not chain_pem:
            continue
        try:
            chain = parse_pem_certificates(chain_pem)
        except ValueError:
            continue
        if now >= chain[0].not_valid_after_utc:
            continue
        if anchor_of(chain, old_roots) is not None:
            on_old += 1
    return Progress(bundles_total, with_new, with_old, leaves_total, on_old)


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


# --- new Secret data for each step ---------------------------------------------------------
def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _lifetime(cert: x509.Certificate) -> timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def _algorithm(cert: x509.Certificate) -> KeyAlgorithm:
    """The key algorithm of a CA certificate (ECDSA P-256 when it is none we issue with)."""
    try:
        return algorithm_of_public_key(cert.public_key()) or KeyAlgorithm.ECDSAP256
    except (ValueError, UnsupportedAlgorithm):
        return KeyAlgorithm.ECDSAP256


def _with_state(data: Mapping[str, bytes], state: RotationState) -> dict[str, bytes]:
    return {**data, ROTATION_KEY: state.to_json()}


def new_self_signed_like(
    ca: CertificateAuthority,
    trust_domain: str,
    now: datetime,
    dns_subtrees: Sequence[str] = DEFAULT_DNS_SUBTREES,
) -> tuple[CertificateAuthority, PrivateKey]:
    """A new root and intermediate with the lifetimes and key algorithm of the current ones;
    the intermediate constrained to the trust domain and `dns_subtrees`."""
    return bootstrap_self_signed(
        trust_domain,
        now,
        root_ttl=_lifetime(next(iter(ca.roots))) - CA_BACKDATE,
        intermediate_ttl=_lifetime(ca.issuer_cert) - CA_BACKDATE,
        algorithm=_algorithm(ca.issuer_cert),
        dns_subtrees=dns_subtrees,
    )


def incoming_root(new_ca: CertificateAuthority) -> x509.Certificate:
    """The root the new CA's chain ends at (a user's ca.crt may list more than one)."""
    chain = [new_ca.issuer_cert, *new_ca.intermediates[1:]]
    return anchor_of(chain, new_ca.roots) or new_ca.roots[0]


def start_root_rotation(
    data: Mapping[str, bytes],
    ca: CertificateAuthority,
    state: RotationState,
    *,
    new_ca: CertificateAuthority,
    new_root_key: PrivateKey | None,
    reason: str,
    request: RotationRequest | None,
    now: datetime,
) -> dict[str, bytes]:
    """Prepare: the bundle (ca.crt) becomes old + new roots; the new CA waits in next.*; the
    old one keeps issuing. `new_root_key` is None for a user-provided CA."""
    new_root = incoming_root(new_ca)
    started = replace(
        state,
        reason=reason,
        old_roots=tuple(fingerprint(r).hex() for r in ca.roots),
        new_root=fingerprint(new_root).hex(),
        started_at=now,
        bundles_complete_at=None,
        switched_at=None,
        leaves_done_at=None,
        handled_request=request.value if request is not None else state.handled_request,
        history=(),
    ).entering(Phase.PREPARE, now)
    out = _with_state(data, started)
    out[CA_CRT] = bundle_pem(published_roots(Phase.PREPARE, ca.roots, new_ca.roots))
    out[NEXT_CRT] = _pem(new_ca.issuer_cert, *new_ca.intermediates[1:])
    out[NEXT_KEY] = private_key_to_pem(new_ca.issuer_key)
    if new_root_key is not None:
        out[NEXT_ROOT_KEY] = private_key_to_pem(new_root_key)
    return out


def mark_bundles_complete(
    data: Mapping[str, bytes], state: RotationState, now: datetime
) -> dict[str, bytes]:
    return _with_state(data, replace(state, bundles_complete_at=now))


def mark_leaves_done(
    data: Mapping[str, bytes], state: RotationState, now: datetime
) -> dict[str, bytes]:
    return _with_state(data, replace(state, leaves_done_at=now))


def switch(data: Mapping[str, bytes], state: RotationState, now: datetime) -> dict[str, bytes]:
    """Switch: the new intermediate (and its root's key) become the active issuer."""
    missing = [k for k in (NEXT_CRT, NEXT_KEY) if not data.get(k)]
    if missing:
        raise ValueError(f"the CA Secret lacks {', '.join(missing)} to switch to")
    out = _with_state(data, replace(state, switched_at=now).entering(Phase.SWITCH, now))
    out[TLS_CRT] = data[NEXT_CRT]
    out[TLS_KEY] = data[NEXT_KEY]
    out.pop(ROOT_KEY, None)
    if data.get(NEXT_ROOT_KEY):
        out[ROOT_KEY] = data[NEXT_ROOT_KEY]
    for key in NEXT_KEYS:
        out.pop(key, None)
    return out


def finish(data: Mapping[str, bytes], state: RotationState, now: datetime) -> dict[str, bytes]:
    """Finish: the old roots leave ca.crt."""
    roots = parse_pem_certificates(data[CA_CRT], CA_CRT)
    kept = [r for r in roots if fingerprint(r).hex() not in set(state.old_roots)]
    if not kept:
        raise ValueError("finishing would leave the trust bundle empty")
    out = _with_state(data, state.entering(Phase.FINISH, now))
    out[CA_CRT] = bundle_pem(kept)
    return out


def complete(data: Mapping[str, bytes], state: RotationState, now: datetime) -> dict[str, bytes]:
    done = replace(
        state.entering(Phase.IDLE, now),
        old_roots=(),
        new_root="",
        bundles_complete_at=None,
        switched_at=None,
        leaves_done_at=None,
        last_root_rotation=now,
    )
    return _with_state(data, done)


def refuse_request(
    data: Mapping[str, bytes], state: RotationState, request: RotationRequest
) -> dict[str, bytes]:
    """A request that cannot be acted on is recorded as handled so it is reported once."""
    return _with_state(data, replace(state, handled_request=request.value))


def rotate_intermediate(
    data: Mapping[str, bytes],
    ca: CertificateAuthority,
    root_key: PrivateKey,
    state: RotationState,
    *,
    request: RotationRequest | None,
    now: datetime,
    constraints: x509.NameConstraints | None = None,
) -> dict[str, bytes]:
    """A new intermediate under the same root, same lifetime and algorithm (clipped to the
    root's notAfter), carrying `constraints` (critical) in place of the old one's (None: the
    old one's extensions as they are). ca.crt is untouched."""
    root = next(r for r in ca.roots if directly_issued(ca.intermediates[-1], r))
    key = generate_private_key(_algorithm(ca.issuer_cert))
    issuer = _reissue_intermediate(ca.issuer_cert, key, root, root_key, now, constraints)
    updated = replace(
        state,
        last_intermediate_rotation=now,
        handled_request=request.value if request is not None else state.handled_request,
    )
    out = _with_state(data, updated)
    out[TLS_CRT] = _pem(issuer)
    out[TLS_KEY] = private_key_to_pem(key)
    return out


def adopt_intermediate(
    data: Mapping[str, bytes], candidate: CertificateAuthority
) -> dict[str, bytes]:
    """A user's new intermediate under a root the bundle already has: it issues from now on;
    ca.crt keeps the current roots plus any the user added."""
    out = dict(data)
    current = parse_pem_certificates(data[CA_CRT], CA_CRT)
    out[TLS_CRT] = _pem(candidate.issuer_cert, *candidate.intermediates[1:])
    out[TLS_KEY] = private_key_to_pem(candidate.issuer_key)
    out[CA_CRT] = bundle_pem([*current, *candidate.roots])
    return out


def _reissue_intermediate(
    template: x509.Certificate,
    key: PrivateKey,
    root: x509.Certificate,
    root_key: PrivateKey,
    now: datetime,
    constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    not_after = min(now + _lifetime(template) - CA_BACKDATE, root.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(not_after)
    )
    replaced: tuple[type[x509.ExtensionType], ...] = (
        x509.SubjectKeyIdentifier,
        x509.AuthorityKeyIdentifier,
    )
    if constraints is not None:
        replaced += (x509.NameConstraints,)
        builder = builder.add_extension(constraints, critical=True)
    for ext in template.extensions:
        if isinstance(ext.value, replaced):
            continue
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    ).add_extension(authority_key_id_for(root), critical=False)
    return builder.sign(root_key, signature_hash_for(root_key))


def next_root_key(data: Mapping[str, bytes]) -> PrivateKey | None:
    pem = data.get(NEXT_ROOT_KEY)
    return load_private_key(pem) if pem else None


# --- when a leaf of a retired issuer is reissued -------------------------------------------
def spread_unit(namespace: str, name: str) -> float:
    """A number in [0, 1) from the identity's name: its place in a reissue window (stable
    across restarts, so nothing is reissued twice or early after one)."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def retired_issuer_deadline(
    chain: Sequence[x509.Certificate],
    *,
    trusted_roots: Sequence[x509.Certificate],
    renewal_at: datetime,
    namespace: str,
    name: str,
    state: RotationState,
    window: timedelta,
    now: datetime,
) -> datetime | None:
    """For a leaf whose issuer is no longer the active one: when to reissue it. None means at
    once: the leaf has expired, no longer chains to a root in the current bundle (a CA that
    was replaced outright), or carries a name its own intermediate's NameConstraints do not
    permit (issued before a policy change reached the intermediate), so waiting would only
    prolong broken handshakes.

    - Under a root that is leaving (Switch): at its place in the window that began with Switch.
    - Under a root that stays (an intermediate rotated): at its own renewal, or, when the old
      intermediate is close to expiry, at its place in the window that ends one window before
      that intermediate's notAfter.
    The earlier of that and its own renewal time wins.
    """
    leaf = chain[0]
    if now >= leaf.not_valid_after_utc:
        return None
    if names_outside_constraints(chain):
        return None  # its own intermediate does not permit its names: it fails every handshake
    root = anchor_of(chain, trusted_roots)
    if root is None:
        return None
    unit = spread_unit(namespace, name)
    if fingerprint(root).hex() in state.old_roots and state.switched_at is not None:
        deadline = state.switched_at + window * unit
    else:
        issuer_end = (
            min(c.not_valid_after_utc for c in chain[1:])
            if len(chain) > 1
            else (leaf.not_valid_after_utc)
        )
        deadline = issuer_end - 2 * window + window * unit
    return min(deadline, renewal_at)


# --- a user-provided CA replaced by another -------------------------------------------------
class Replacement(StrEnum):
    SAME = "Same"  # nothing changed
    INTERMEDIATE = "Intermediate"  # a new issuer under a root the bundle already has
    NEW_ROOT = "NewRoot"  # the new issuer chains to a root the current bundle lacks


def classify_replacement(
    current: CertificateAuthority, candidate: CertificateAuthority
) -> Replacement:
    """How a (valid: ca_from_secret_data accepted it) replacement CA relates to the current
    one. A broken replacement never gets here: loading it fails and the current CA stays."""
    same_issuer = fingerprint(current.issuer_cert) == fingerprint(candidate.issuer_cert)
    current_roots = {fingerprint(r) for r in current.roots}
    candidate_roots = {fingerprint(r) for r in candidate.roots}
    if same_issuer and current_roots == candidate_roots:
        return Replacement.SAME
    chain = [candidate.issuer_cert, *candidate.intermediates[1:]]
    if anchor_of(chain, current.roots) is not None:
        return Replacement.INTERMEDIATE
    if candidate_roots <= current_roots:
        return Replacement.INTERMEDIATE
    return Replacement.NEW_ROOT


def bundle_contains(bundle: bytes | None, root: x509.Certificate) -> bool:
    return fingerprint(root).hex() in _fingerprints(bundle)


def root_expiry(roots: Sequence[x509.Certificate]) -> datetime | None:
    return min((r.not_valid_after_utc for r in roots), default=None)
