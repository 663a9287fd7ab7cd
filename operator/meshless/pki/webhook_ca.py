"""The admission webhooks' own CA (pure): its Secret data, and the steps of its rotation.

kube-apiserver trusts a webhook server that presents a certificate chaining to the webhook
configurations' `caBundle`. That bundle holds this CA's roots and nothing else, and no
workload trust bundle ever holds them: a workload certificate, whatever DNS name it carries,
is not a webhook serving certificate, and the webhook CA issues nothing but those.

The CA is a self-signed root (ECDSA P-256, no intermediate: it signs the serving certificates
directly) kept in the Secret `meshless-webhook-ca` in the operator's namespace:

- `tls.crt`, `tls.key`: the root that signs (its key never leaves the Secret);
- `ca.crt`: every root the configurations' `caBundle` must carry (one, two while rotating);
- `next.crt`, `next.key`: the root waiting to sign (Prepare only);
- `rotation.json`: the phase, since when, the last request acted on (no key material).

A rotation keeps both roots in `caBundle` while the serving certificates change over:
Idle -> Prepare (a new root joins `ca.crt`; the old one still signs) -> Switch (the new root
signs; every replica reissues its serving certificate) -> Idle (the old root leaves `ca.crt`).
Each step waits until the configurations carry `ca.crt` and the settle time has passed.
`next_step` decides with an ordered chain of small checks (as pki.reissue does);
`apply_step` returns the Secret's new data. The shell (meshless.webhook_ca_store) reads,
writes and observes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509

from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import (
    CA_CRT,
    TLS_CRT,
    TLS_KEY,
    CAError,
    CertificateAuthority,
    ca_from_secret_data,
    is_ca,
    self_signed_root,
)
from meshless.pki.keys import (
    PrivateKey,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
)
from meshless.pki.x509 import (
    certificates_in,
    certificates_pem,
    fingerprint,
    is_self_signed,
    issued_by,
    parse_pem_certificates,
)

WEBHOOK_CA_SECRET_NAME = "meshless-webhook-ca"
ROOT_COMMON_NAME = "meshless webhook CA"
ROOT_TTL = timedelta(days=365)
# A root is replaced at 2/3 of its life (about four months before it expires): time enough
# for an operator that was down to notice.
ROOT_RENEWAL_FRACTION = 2 / 3
STATE_KEY = "rotation.json"
NEXT_CRT = "next.crt"
NEXT_KEY = "next.key"


class Phase(StrEnum):
    IDLE = "Idle"
    PREPARE = "Prepare"  # ca.crt = old + new; the old root signs
    SWITCH = "Switch"  # ca.crt = old + new; the new root signs


@dataclass(frozen=True)
class RotationRecord:
    """`rotation.json`: no key material."""

    phase: Phase = Phase.IDLE
    since: datetime | None = None
    handled_request: str = ""
    last_rotation: datetime | None = None

    def to_json(self) -> bytes:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return json.dumps(
            {
                "phase": self.phase.value,
                "since": iso(self.since),
                "handledRequest": self.handled_request,
                "lastRotation": iso(self.last_rotation),
            },
            sort_keys=True,
        ).encode()


def _time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def record_from_json(raw: bytes | None) -> RotationRecord:
    """The record in `rotation.json`; a missing or unreadable one is Idle (the Secret's
    certificates say what is trusted; a lost record only restarts a rotation's wait)."""
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    try:
        phase = Phase(doc.get("phase", Phase.IDLE.value))
    except ValueError:
        phase = Phase.IDLE
    handled = doc.get("handledRequest")
    return RotationRecord(
        phase=phase,
        since=_time(doc.get("since")),
        handled_request=handled if isinstance(handled, str) else "",
        last_rotation=_time(doc.get("lastRotation")),
    )


@dataclass(frozen=True)
class WebhookCA:
    """The loaded webhook CA. `authority` signs serving certificates (issuer = the signing root,
    no intermediates) and its `roots` are what `caBundle` carries."""

    authority: CertificateAuthority
    record: RotationRecord
    next_root: x509.Certificate | None = None
    next_key: PrivateKey | None = field(default=None, repr=False)

    @property
    def root(self) -> x509.Certificate:
        return self.authority.issuer_cert

    @property
    def bundle(self) -> bytes:
        """The configurations' caBundle: the trusted roots, PEM."""
        return bundle_pem(self.authority.roots)

    def renewal_time(self) -> datetime:
        not_before, not_after = self.authority.validity
        return not_before + (not_after - not_before) * ROOT_RENEWAL_FRACTION


def new_webhook_ca_data(
    now: datetime, ttl: timedelta = ROOT_TTL, record: RotationRecord | None = None
) -> dict[str, bytes]:
    """The Secret data of a new webhook CA: one root that signs and is the whole bundle."""
    root, key = self_signed_root(ROOT_COMMON_NAME, now, ttl)
    return {
        TLS_CRT: certificates_pem([root]),
        TLS_KEY: private_key_to_pem(key),
        CA_CRT: certificates_pem([root]),
        STATE_KEY: (record or RotationRecord(since=now)).to_json(),
    }


def _next_root(data: Mapping[str, bytes]) -> tuple[x509.Certificate | None, PrivateKey | None]:
    crt, key = data.get(NEXT_CRT) or None, data.get(NEXT_KEY) or None
    if crt is None and key is None:
        return None, None
    if crt is None or key is None:
        raise CAError(
            "CASecretIncomplete",
            f"the webhook CA Secret holds only one of {NEXT_CRT} and {NEXT_KEY}",
        )
    try:
        cert = parse_pem_certificates(crt, NEXT_CRT)[0]
        private = load_private_key(key)
    except ValueError as exc:
        raise CAError("CAInvalidPEM", str(exc)) from None
    if not key_matches_certificate(private, cert):
        raise CAError("CAKeyMismatch", f"{NEXT_KEY} does not belong to {NEXT_CRT}")
    return cert, private


def webhook_ca_from_secret_data(data: Mapping[str, bytes], now: datetime) -> WebhookCA:
    """Load the webhook CA (pki.ca's checks, plus: the signer is a self-signed root that
    `ca.crt` carries, with no intermediate). Raises CAError; `CAExpired` when the signing
    root has expired."""
    authority = ca_from_secret_data(data, now)
    subject = authority.issuer_cert.subject.rfc4514_string()
    if authority.intermediates or not is_self_signed(authority.issuer_cert):
        raise CAError("CAChainInvalid", f"the webhook CA {subject!r} is not a self-signed root")
    if not all(is_ca(root) and is_self_signed(root) for root in authority.roots):
        raise CAError("CAChainInvalid", f"{CA_CRT} of the webhook CA holds a non-root certificate")
    next_root, next_key = _next_root(data)
    return WebhookCA(
        authority=authority,
        record=record_from_json(data.get(STATE_KEY)),
        next_root=next_root,
        next_key=next_key,
    )


def bundle_fingerprints(pem: bytes) -> frozenset[bytes]:
    """The SHA-256 fingerprints of the certificates in a caBundle (empty if it holds none)."""
    try:
        return frozenset(fingerprint(c) for c in parse_pem_certificates(pem, "caBundle"))
    except ValueError:
        return frozenset()


def common_fingerprints(bundles: Iterable[bytes]) -> frozenset[bytes] | None:
    """The roots every webhook's caBundle carries, when they all carry the same ones (else or
    with no bundle at all, None)."""
    found = {bundle_fingerprints(pem) for pem in bundles}
    return next(iter(found)) if len(found) == 1 else None


def chain_pem_issued_by(chain_pem: bytes, root: x509.Certificate) -> bool:
    """Whether the first certificate of `chain_pem` is signed by `root`."""
    chain = certificates_in(chain_pem)
    return bool(chain) and issued_by(chain[0], root)


def status_summary(data: Mapping[str, bytes], now: datetime) -> dict[str, object]:
    """What `meshless ca status` says about the webhook CA (no key material)."""
    try:
        ca = webhook_ca_from_secret_data(data, now)
    except CAError as exc:
        return {"error": f"{exc.reason}: {exc}"}
    signing = fingerprint(ca.root).hex()
    return {
        "phase": ca.record.phase.value,
        "phaseSince": ca.record.since.isoformat() if ca.record.since else None,
        "rotatesAt": ca.renewal_time().isoformat(),
        "lastRotation": ca.record.last_rotation.isoformat() if ca.record.last_rotation else None,
        "roots": [
            {
                "sha256": fingerprint(root).hex(),
                "notAfter": root.not_valid_after_utc.isoformat(),
                "signs": fingerprint(root).hex() == signing,
            }
            for root in ca.authority.roots
        ],
    }


# --- rotation: the decision -------------------------------------------------------------
class Action(StrEnum):
    REPLACE = "Replace"  # unusable or expired: a new root alone, at once
    PREPARE = "Prepare"  # a new root joins ca.crt; the old one still signs
    SWITCH = "Switch"  # the new root signs
    FINISH = "Finish"  # the old root leaves ca.crt
    WAIT = "Wait"


@dataclass(frozen=True)
class Step:
    action: Action
    message: str  # for logs and Events; never key material


@dataclass(frozen=True)
class Observed:
    """What the leader sees: the CA (or why it does not load), the rotate annotation, the
    roots the configurations carry, its own serving certificate, the time."""

    ca: WebhookCA | None
    error: CAError | None
    request: str | None
    configured: frozenset[bytes] | None  # root fingerprints in every webhook's caBundle
    configured_since: datetime | None  # since when `configured` has been what it is
    serving_chain: bytes | None  # this replica's serving certificate (leaf first)
    now: datetime
    settle: timedelta

    def pending_request(self) -> str | None:
        ca = self.ca
        if self.request and ca is not None and self.request != ca.record.handled_request:
            return self.request
        return None

    def configured_as_trusted(self) -> bool:
        ca = self.ca
        return (
            ca is not None
            and self.configured is not None
            and self.configured == frozenset(fingerprint(r) for r in ca.authority.roots)
        )

    def settled_at(self) -> datetime | None:
        """When the phase has settled: settle time after both the phase began and the
        configurations were seen carrying ca.crt (None: not yet seen)."""
        ca = self.ca
        if ca is None or self.configured_since is None:
            return None
        began = max(ca.record.since or self.now, self.configured_since)
        return began + self.settle


Check = Callable[[Observed], Step | None]


def unusable(o: Observed) -> Step | None:
    if o.ca is None and o.error is not None and o.error.reason != "CAExpired":
        return Step(Action.REPLACE, f"the webhook CA does not load ({o.error.reason}: {o.error})")
    return None


def expired(o: Observed) -> Step | None:
    if o.ca is None and o.error is not None and o.error.reason == "CAExpired":
        return Step(Action.REPLACE, f"the webhook CA root expired ({o.error})")
    return None


def _idle(o: Observed) -> WebhookCA | None:
    return o.ca if o.ca is not None and o.ca.record.phase is Phase.IDLE else None


def requested(o: Observed) -> Step | None:
    if _idle(o) is not None and o.pending_request() is not None:
        return Step(Action.PREPARE, f"rotation requested ({o.request})")
    return None


def due(o: Observed) -> Step | None:
    ca = _idle(o)
    if ca is not None and o.now >= ca.renewal_time():
        return Step(
            Action.PREPARE,
            f"the webhook root reached {ROOT_RENEWAL_FRACTION:.0%} of its life "
            f"(expires {ca.authority.validity[1].isoformat()})",
        )
    return None


def prepare_waits_for_configurations(o: Observed) -> Step | None:
    if o.ca is not None and o.ca.record.phase is Phase.PREPARE and not o.configured_as_trusted():
        return Step(Action.WAIT, "the webhook configurations do not carry both roots yet")
    return None


def prepare_settles(o: Observed) -> Step | None:
    if o.ca is None or o.ca.record.phase is not Phase.PREPARE:
        return None
    settled = o.settled_at()
    if settled is None or o.now < settled:
        return Step(Action.WAIT, f"both roots in caBundle; settling until {settled}")
    if o.ca.next_root is None:  # lost its next root: start again
        return Step(Action.REPLACE, "Prepare without a next root in the Secret")
    return Step(Action.SWITCH, "both roots in caBundle everywhere; the new root signs")


def switch_waits_for_serving(o: Observed) -> Step | None:
    if o.ca is None or o.ca.record.phase is not Phase.SWITCH:
        return None
    if o.serving_chain is None or not chain_pem_issued_by(o.serving_chain, o.ca.root):
        return Step(Action.WAIT, "the serving certificate is not from the new root yet")
    return None


def switch_settles(o: Observed) -> Step | None:
    if o.ca is None or o.ca.record.phase is not Phase.SWITCH:
        return None
    settled = (o.ca.record.since or o.now) + o.settle
    if o.now < settled:
        return Step(Action.WAIT, f"replicas change over to the new root until {settled}")
    return Step(Action.FINISH, "every replica serves from the new root; the old root leaves")


# The order is the contract (pinned by a unit test): the first check with an answer decides.
CHECKS: tuple[Check, ...] = (
    unusable,
    expired,
    requested,
    due,
    prepare_waits_for_configurations,
    prepare_settles,
    switch_waits_for_serving,
    switch_settles,
)


def next_step(observed: Observed) -> Step | None:
    """The first answer of CHECKS; None when there is nothing to do."""
    for check in CHECKS:
        step = check(observed)
        if step is not None:
            return step
    return None


# --- rotation: the new Secret data ------------------------------------------------------
def _data(
    authority: CertificateAuthority,
    roots: Iterable[x509.Certificate],
    record: RotationRecord,
    next_root: tuple[x509.Certificate, PrivateKey] | None = None,
) -> dict[str, bytes]:
    data = {
        TLS_CRT: certificates_pem([authority.issuer_cert]),
        TLS_KEY: private_key_to_pem(authority.issuer_key),
        CA_CRT: bundle_pem(roots),
        STATE_KEY: record.to_json(),
    }
    if next_root is not None:
        data[NEXT_CRT] = certificates_pem([next_root[0]])
        data[NEXT_KEY] = private_key_to_pem(next_root[1])
    return data


def apply_step(
    step: Step, observed: Observed, root_ttl: timedelta = ROOT_TTL
) -> dict[str, bytes] | None:
    """The Secret's data after `step` (None for WAIT). A request made during a rotation is
    satisfied by it: Finish records it as handled."""
    now, ca = observed.now, observed.ca
    handled = ca.record.handled_request if ca is not None else ""
    if step.action is Action.REPLACE:
        record = RotationRecord(
            since=now, handled_request=observed.request or handled, last_rotation=now
        )
        return new_webhook_ca_data(now, root_ttl, record)
    if step.action is Action.WAIT or ca is None:
        return None
    if step.action is Action.PREPARE:
        root, key = self_signed_root(ROOT_COMMON_NAME, now, root_ttl)
        record = replace(
            ca.record, phase=Phase.PREPARE, since=now, handled_request=observed.request or handled
        )
        return _data(ca.authority, (*ca.authority.roots, root), record, (root, key))
    if step.action is Action.SWITCH:
        assert ca.next_root is not None and ca.next_key is not None
        signer = CertificateAuthority(
            issuer_cert=ca.next_root, issuer_key=ca.next_key, intermediates=(), roots=()
        )
        record = replace(ca.record, phase=Phase.SWITCH, since=now)
        return _data(signer, ca.authority.roots, record)
    # FINISH
    record = RotationRecord(
        since=now, handled_request=observed.request or handled, last_rotation=now
    )
    return _data(ca.authority, (ca.root,), record)
