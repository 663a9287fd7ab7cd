"""CA rotation (shell): counts what the cluster's bundles and leaves say, asks the pure core
(meshless.pki.rotation) for the next step, writes the CA Secret, posts an Event, sets metrics.

The CA Secret is the only record: a restarted operator reads the phase and resumes it. Every
write carries the resourceVersion that was read, so a second replica (or a user's edit) in
between makes it fail and the next poll decides again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from meshless import metrics
from meshless.api import (
    IDENTITY_LABEL,
    ROTATE_ANNOTATION,
    TRUST_BUNDLE_KEY,
    TRUST_BUNDLE_NAME,
    ConditionType,
)
from meshless.api import Reason as R
from meshless.ca_store import CAStore, desired_constraints
from meshless.conditions import find_condition
from meshless.identity.render import decode_secret_data, is_owned_by
from meshless.identity.rotation_marks import (
    RotationMarks,
    count_marked,
    marks_answer,
    vouched_marks,
)
from meshless.identity.spec import default_secret_name
from meshless.kube import CONFIGMAPS, FIELD_MANAGER, IDENTITIES, SECRETS, ApiError, Json, Kube
from meshless.pki import rotation as core
from meshless.pki.bundle import fingerprint
from meshless.pki.ca import (
    CA_CRT,
    TLS_CRT,
    CAError,
    CertificateAuthority,
    ca_from_secret_data,
    root_key_from_secret_data,
)
from meshless.pki.constraints import (
    ConstraintsReport,
    ConstraintsState,
    describe_subtrees,
    intermediate_constraints_stale,
)
from meshless.pki.rotation import Action, Phase, Progress, RotationPolicy, RotationState
from meshless.settings import CA_SELF_SIGNED, Settings
from meshless.watch import METADATA_ONLY_LIST

log = logging.getLogger(__name__)
READS_AT_ONCE = 8  # own Secrets read by name at once (those the metadata does not vouch for)


def policy_of(settings: Settings) -> RotationPolicy:
    return RotationPolicy(
        renewal_fraction=settings.ca_renewal_fraction,
        settle_time=settings.ca_settle_time,
        window=settings.ca_rotation_window,
    )


def leaving_roots(
    state: RotationState, roots: tuple[x509.Certificate, ...]
) -> list[x509.Certificate]:
    old = set(state.old_roots)
    return [r for r in roots if fingerprint(r).hex() in old]


async def observe_progress(
    kube: Kube,
    state: RotationState,
    roots: tuple[x509.Certificate, ...],
    now: datetime,
    namespaces: tuple[str, ...] = (),
) -> Progress:
    """Counts over every WorkloadIdentity's own Secret and every trust-bundle ConfigMap in the
    namespaces that hold identities (a ConfigMap that does not exist yet counts as a bundle
    without the new root). Used by the operator and `meshless ca status`.

    The labelled Secrets are listed as metadata only: a Secret that is not an identity's own
    (its `secretName`, owned by it) is ignored, whatever it holds. An own Secret is counted
    from its rotation annotations when its metadata vouches for them
    (identity.rotation_marks); any other own Secret is read by name and counted from its
    data."""
    scopes: tuple[str | None, ...] = namespaces or (None,)
    secret_names: dict[tuple[str, str], str] = {}  # identity -> the name of its own Secret
    not_issued: set[tuple[str, str]] = set()  # refused specs: their leaves are never reissued
    configmaps: dict[str, Json] = {}
    for ns in scopes:
        async for page in kube.pages(IDENTITIES, ns):
            for i in page:
                key = (i["metadata"]["namespace"], i["metadata"]["name"])
                secret_names[key] = identity_secret_name(i)
                if refused_spec(i):
                    not_issued.add(key)
        configmaps.update(
            (cm["metadata"]["namespace"], cm)
            for cm in await kube.list(
                CONFIGMAPS, ns, field_selector=f"metadata.name={TRUST_BUNDLE_NAME}"
            )
        )
    leaving = leaving_roots(state, roots)
    # Secrets a page at a time, counted as they come: 50,000 of them are not held at once.
    progress = core.Progress()
    for ns in scopes:
        async for page in kube.pages(
            SECRETS, ns, label_selector=IDENTITY_LABEL, accept=METADATA_ONLY_LIST
        ):
            marked: list[tuple[RotationMarks, bool]] = []
            unmarked: list[tuple[str, str, bool]] = []  # namespace, name, refused
            for secret in page:
                meta = secret["metadata"]
                owner = (meta.get("labels") or {}).get(IDENTITY_LABEL, "")
                key = (meta["namespace"], owner)
                if secret_names.get(key) != meta["name"] or not is_owned_by(meta, owner):
                    continue  # left behind by a deleted identity, or not the identity's own
                # A leaf the operator will not reissue (its identity's spec is refused) does
                # not hold up the Switch: it would wait until that leaf's notAfter.
                refused = key in not_issued
                marks = vouched_marks(meta, FIELD_MANAGER)
                if marks is not None and (refused or marks_answer(marks, leaving)):
                    marked.append((marks, refused))
                else:
                    unmarked.append((meta["namespace"], meta["name"], refused))
            del page
            progress += count_marked(marked, state, leaving, now)
            progress += await _count_read(kube, unmarked, secret_names, state, leaving, now)
    bundles = []
    for ns in sorted({ns for ns, _ in secret_names}):
        text = ((configmaps.get(ns) or {}).get("data") or {}).get(TRUST_BUNDLE_KEY)
        bundles.append(text.encode() if text else None)
    return progress + core.count_progress(bundles, [], state, leaving, now)


async def _count_read(
    kube: Kube,
    secrets: list[tuple[str, str, bool]],
    secret_names: Mapping[tuple[str, str], str],
    state: RotationState,
    leaving: list[x509.Certificate],
    now: datetime,
) -> Progress:
    """Own Secrets whose metadata does not vouch for their annotations (written before them,
    or edited by someone else): each read by name and counted from its data as read (checked
    again to be the identity's own), a few at a time; no more than those few are held."""
    counts: list[Progress] = []
    limit = asyncio.Semaphore(READS_AT_ONCE)

    async def read(namespace: str, name: str, refused: bool) -> None:
        async with limit:
            secret = await kube.get(SECRETS, namespace, name)
            if secret is None:
                return  # deleted since listed
            meta = secret["metadata"]
            owner = (meta.get("labels") or {}).get(IDENTITY_LABEL, "")
            if secret_names.get((namespace, owner)) != name or not is_owned_by(meta, owner):
                return  # changed since listed: no longer the identity's own
            data = decode_secret_data(secret.pop("data", None))
            del secret
            bundle, chain = data.get(CA_CRT), None if refused else data.get(TLS_CRT)
            del data
            counts.append(
                await asyncio.to_thread(core.count_progress, [bundle], [chain], state, leaving, now)
            )

    await asyncio.gather(*(read(*each) for each in secrets))
    return sum(counts, core.Progress())


def identity_secret_name(identity: Mapping[str, Any]) -> str:
    """The name of the identity's own Secret (spec.secretName or the default)."""
    name = (identity.get("spec") or {}).get("secretName")
    if isinstance(name, str) and name:
        return name
    return default_secret_name(identity["metadata"]["name"])


def refused_spec(identity: Mapping[str, Any]) -> bool:
    """Whether the identity reports a spec the operator will not issue (InvalidSpec,
    DNSNameNotAllowed) for its current generation."""
    status = identity.get("status") or {}
    if status.get("observedGeneration") != identity["metadata"].get("generation"):
        return False
    ready = find_condition(status.get("conditions") or [], ConditionType.READY) or {}
    return ready.get("status") == "False" and ready.get("reason") in (
        R.INVALID_SPEC,
        R.DNS_NAME_NOT_ALLOWED,
    )


def set_phase_metric(phase: Phase) -> None:
    for each in Phase:
        metrics.CA_ROTATION_PHASE.labels(each.value).set(1 if each is phase else 0)


def set_progress_metrics(progress: Progress | None) -> None:
    p = progress or Progress()
    metrics.CA_ROTATION_BUNDLES.labels("with_new_root").set(p.bundles_with_new_root)
    metrics.CA_ROTATION_BUNDLES.labels("with_old_root").set(p.bundles_with_old_root)
    metrics.CA_ROTATION_BUNDLES.labels("total").set(p.bundles_total)
    metrics.CA_ROTATION_LEAVES.labels("old_chain").set(p.leaves_on_old_root)
    metrics.CA_ROTATION_LEAVES.labels("reissued").set(p.leaves_reissued)


@dataclass(frozen=True)
class _Step:
    data: dict[str, bytes]
    reason: R
    type: str
    message: str


class CARotation:
    """One `step` per CA poll: at most one write of the CA Secret."""

    def __init__(self, kube: Kube, settings: Settings, ca: CAStore, clock: Callable[[], datetime]):
        self.kube = kube
        self.settings = settings
        self.ca = ca
        self.clock = clock
        self.policy = policy_of(settings)
        self.constraints = desired_constraints(settings)
        self.progress: Progress | None = None
        # What else a root rotation waits for (pod certificates: podcert/wiring.py).
        self.more_progress: Callable[[RotationState, datetime], Progress] | None = None
        self._reported = ""  # the user CA Secret version and error last reported
        set_phase_metric(Phase.IDLE)

    async def step(self) -> bool:
        """Decide and take the next step. True when the CA Secret was written (the caller
        reloads the CA)."""
        ca, secret = self.ca.current, self.ca.secret
        if ca is None or secret is None or self.ca.error is not None:
            return False  # never act on (or write over) a CA Secret that does not load
        state = self.ca.rotation
        set_phase_metric(state.phase)
        if ca.roots:
            metrics.CA_ROOT_EXPIRATION.set(core.root_expiry(ca.roots).timestamp())  # type: ignore[union-attr]
        now = self.clock()
        if self.settings.ca_source != CA_SELF_SIGNED and await self._follow_user_ca(ca, state, now):
            return True
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        request = core.parse_request(annotations.get(ROTATE_ANNOTATION))
        progress = None
        if state.phase is not Phase.IDLE:
            progress = await observe_progress(
                self.kube, state, ca.roots, now, self.settings.watch_namespaces
            )
            if self.more_progress is not None:
                progress += self.more_progress(state, now)
        self.progress = progress
        set_progress_metrics(progress)
        data = self.ca.data
        root_key = root_key_from_secret_data(data)
        stale = root_key is not None and self.constraints_stale(ca)
        decision = core.decide(
            state,
            issuer=ca.issuer_cert,
            roots=ca.roots,
            can_sign_roots=root_key is not None,
            request=request,
            progress=progress,
            now=now,
            policy=self.policy,
            constraints_stale=stale,
        )
        if decision.action is Action.NONE:
            return False
        step = await asyncio.to_thread(
            self._apply, decision, state, data, ca, request, now, progress
        )
        written = await self._write(secret, step.data)
        if not written:
            return False
        self._event(secret, step)
        log.info("CA rotation: %s", step.message)
        return True

    def constraints_stale(self, ca: CertificateAuthority) -> bool:
        """The issuer does not carry the NameConstraints these settings ask for."""
        return intermediate_constraints_stale(ca.issuer_cert, self.constraints)

    async def align_name_constraints(self) -> bool:
        """At the start of a term, before anything is issued: a self-signed intermediate whose
        NameConstraints are stale (a restart with other --allowed-dns-names or trust domain)
        is replaced at once, not at the first CA poll, so that no leaf with a newly allowed
        name is signed under an intermediate that does not permit it. True when the CA Secret
        was written (the caller reloads the CA)."""
        ca = self.ca.current
        if ca is None or self.ca.error is not None or self.settings.ca_source != CA_SELF_SIGNED:
            return False
        if not self.constraints_stale(ca):
            return False
        return await self.step()

    def _apply(
        self,
        decision: core.Decision,
        state: RotationState,
        data: Mapping[str, bytes],
        ca: CertificateAuthority,
        request: core.RotationRequest | None,
        now: datetime,
        progress: Progress | None,
    ) -> _Step:
        action = decision.action
        counts = _counts(progress)
        if action is Action.REFUSE_REQUEST:
            assert request is not None
            why = (
                f"a root rotation is already in progress (phase {state.phase.value} since "
                f"{_t(state.phase_since)}); the request {request.value!r} is refused, not queued"
                if decision.reason == "RotationInProgress"
                else "the CA has no root key here (a user-provided CA is rotated by replacing "
                f"its Secret); the request {request.value!r} is refused"
            )
            return _Step(
                core.refuse_request(data, state, request), R.CA_ROTATION_REFUSED, "Warning", why
            )
        if action is Action.START_ROOT_ROTATION:
            new_ca, new_root_key = core.new_self_signed_like(
                ca,
                self.settings.trust_domain,
                now,
                self.settings.dns_name_policy.permitted_dns_subtrees(),
            )
            new = core.start_root_rotation(
                data,
                ca,
                state,
                new_ca=new_ca,
                new_root_key=new_root_key,
                reason=decision.reason,
                request=request if decision.reason == "Requested" else None,
                now=now,
            )
            return _Step(
                new,
                R.CA_ROTATION_PREPARE,
                "Normal",
                f"root rotation started ({decision.reason}): phase Prepare; every trust bundle "
                "gets the new root, then a settle time of "
                f"{self.settings.ca_settle_time} before the new root issues",
            )
        if action is Action.ROTATE_INTERMEDIATE:
            root_key = root_key_from_secret_data(data)
            assert root_key is not None
            new = core.rotate_intermediate(
                data,
                ca,
                root_key,
                state,
                request=request if decision.reason == "Requested" else None,
                now=now,
                constraints=self.constraints,
            )
            permitted = ", ".join(describe_subtrees(self.constraints.permitted_subtrees))
            return _Step(
                new,
                R.CA_INTERMEDIATE_ROTATED,
                "Normal",
                f"new intermediate under the same root ({decision.reason}), name-constrained to "
                f"{permitted}; the trust bundle is unchanged; certificates move to it at their "
                "own renewal",
            )
        if action is Action.MARK_BUNDLES_COMPLETE:
            return _Step(
                core.mark_bundles_complete(data, state, now),
                R.CA_ROTATION_BUNDLES_COMPLETE,
                "Normal",
                f"every trust bundle carries the new root ({counts}); switching after the "
                f"settle time of {self.settings.ca_settle_time}",
            )
        if action is Action.MARK_LEAVES_DONE:
            return _Step(
                core.mark_leaves_done(data, state, now),
                R.CA_ROTATION_LEAVES_REISSUED,
                "Normal",
                f"no certificate under the old root remains ({counts}); the old root leaves "
                f"the bundles after the settle time of {self.settings.ca_settle_time}",
            )
        if action is Action.SWITCH:
            return _Step(
                core.switch(data, state, now),
                R.CA_ROTATION_SWITCH,
                "Normal",
                "phase Switch: the new root's intermediate issues; existing certificates are "
                f"reissued over {self.settings.ca_rotation_window} ({counts})",
            )
        if action is Action.FINISH:
            return _Step(
                core.finish(data, state, now),
                R.CA_ROTATION_FINISH,
                "Normal",
                f"phase Finish: no valid certificate under the old root remains ({counts}); the "
                "old root leaves every trust bundle",
            )
        assert action is Action.COMPLETE
        return _Step(
            core.complete(data, state, now),
            R.CA_ROTATION_COMPLETE,
            "Normal",
            f"root rotation complete: the old root is gone from every trust bundle ({counts})",
        )

    async def _follow_user_ca(
        self, ca: CertificateAuthority, state: RotationState, now: datetime
    ) -> bool:
        """A user-provided CA: compare the user's Secret with the CA in use. A broken one is
        reported (once per version) and changes nothing; a new intermediate under a root we
        trust issues at once; one under a new root starts the phases. Acted on only when
        Idle. True when the CA Secret was written."""
        ns, source = self.settings.namespace, self.settings.ca_source
        user = await self.kube.get(SECRETS, ns, source)
        if user is None:
            await self._report_user_ca(
                None, "CASecretMissing", f"CA Secret {ns}/{source} does not exist"
            )
            return False
        try:
            candidate = ca_from_secret_data(decode_secret_data(user.get("data")), now)
        except CAError as exc:
            await self._report_user_ca(user, exc.reason, exc.message)
            return False
        if state.phase is not Phase.IDLE:
            return False
        secret = self.ca.secret
        assert secret is not None
        kind = core.classify_replacement(ca, candidate)
        if kind is core.Replacement.SAME:
            return False
        if kind is core.Replacement.INTERMEDIATE:
            step = _Step(
                core.adopt_intermediate(self.ca.data, candidate),
                R.CA_INTERMEDIATE_ROTATED,
                "Normal",
                f"the intermediate in Secret {source} (under a root already trusted) issues from "
                "now on; certificates move to it at their own renewal",
            )
        else:
            step = _Step(
                core.start_root_rotation(
                    self.ca.data,
                    ca,
                    state,
                    new_ca=candidate,
                    new_root_key=None,
                    reason="CASourceReplaced",
                    request=None,
                    now=now,
                ),
                R.CA_ROTATION_PREPARE,
                "Normal",
                f"Secret {source} holds a CA under a new root: root rotation started, phase "
                "Prepare; every trust bundle gets the new root, then a settle time of "
                f"{self.settings.ca_settle_time} before it issues",
            )
        if not await self._write(secret, step.data):
            return False
        self._event(secret, step)
        log.info("CA rotation: %s", step.message)
        return True

    async def _report_user_ca(self, user: Json | None, reason: str, message: str) -> None:
        version = ((user or {}).get("metadata") or {}).get("resourceVersion", "")
        key = f"{version}:{reason}"
        if key == self._reported:
            return
        self._reported = key
        ns, source = self.settings.namespace, self.settings.ca_source
        text = f"{message}; the CA in use keeps issuing and no rotation starts"
        log.error("CA Secret %s/%s unusable: %s", ns, source, text)
        involved = {"apiVersion": "v1", "kind": "Secret", "name": source, "namespace": ns}
        uid = ((user or {}).get("metadata") or {}).get("uid")
        if uid:
            involved["uid"] = uid
        try:
            await self.kube.post_event(involved, type="Warning", reason=reason, message=text)
        except ApiError as exc:
            log.warning("could not post an Event about the CA Secret: %s", exc)

    async def _write(self, secret: Json, data: Mapping[str, bytes]) -> bool:
        if await self.kube.replace_secret_data(secret, data):
            return True
        log.info("CA Secret changed while rotating; deciding again")  # decided again next poll
        return False

    def _event(self, secret: Json, step: _Step) -> None:
        meta = secret["metadata"]
        involved = {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
        }

        async def post() -> None:
            try:
                await self.kube.post_event(
                    involved, type=step.type, reason=step.reason.value, message=step.message
                )
            except ApiError as exc:
                log.warning("could not post an Event about the CA rotation: %s", exc)

        task = asyncio.get_running_loop().create_task(post())
        _pending.add(task)
        task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()


def _t(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "?"


def _counts(progress: Progress | None) -> str:
    if progress is None:
        return "not counted"
    return (
        f"bundles with the new root {progress.bundles_with_new_root}/{progress.bundles_total}, "
        f"with the old root {progress.bundles_with_old_root}; certificates on the old root "
        f"{progress.leaves_on_old_root}, reissued {progress.leaves_reissued}"
    )


def constraints_condition(report: ConstraintsReport) -> dict[str, str]:
    """The CA status condition `NameConstrained`: True when the issuing intermediate carries
    critical NameConstraints (as asked, when what is asked is known)."""
    return {
        "type": "NameConstrained",
        "status": "True" if report.state is ConstraintsState.MATCHES else "False",
        "reason": report.state.value,
        "message": report.message,
    }


def status_document(
    ca: CertificateAuthority,
    state: RotationState,
    progress: Progress | None,
    annotations: Mapping[str, Any],
    constraints: ConstraintsReport | None = None,
) -> dict[str, Any]:
    """What `meshless ca status -o json` prints (no key material)."""
    extra: dict[str, Any] = {}
    if constraints is not None:
        extra["nameConstraints"] = constraints.as_dict()
        extra["conditions"] = [constraints_condition(constraints)]
    return {
        "phase": state.phase.value,
        "reason": state.reason,
        "startedAt": _iso(state.started_at),
        "phaseSince": _iso(state.phase_since),
        "bundlesCompleteAt": _iso(state.bundles_complete_at),
        "switchedAt": _iso(state.switched_at),
        "leavesDoneAt": _iso(state.leaves_done_at),
        "history": list(state.history),
        "lastRootRotation": _iso(state.last_root_rotation),
        "lastIntermediateRotation": _iso(state.last_intermediate_rotation),
        "pendingRequest": annotations.get(ROTATE_ANNOTATION)
        if annotations.get(ROTATE_ANNOTATION) not in (None, state.handled_request)
        else None,
        "issuer": {
            "subject": ca.issuer_cert.subject.rfc4514_string(),
            "notAfter": _iso(ca.issuer_cert.not_valid_after_utc),
            "sha256": fingerprint(ca.issuer_cert).hex(),
        },
        "roots": [
            {
                "subject": r.subject.rfc4514_string(),
                "notAfter": _iso(r.not_valid_after_utc),
                "sha256": fingerprint(r).hex(),
                "role": "leaving"
                if fingerprint(r).hex() in state.old_roots
                else ("incoming" if fingerprint(r).hex() == state.new_root else "current"),
            }
            for r in ca.roots
        ],
        "progress": progress.as_dict() if progress is not None else None,
        **extra,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
