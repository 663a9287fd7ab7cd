"""Should this identity's Secret be reissued? An ordered chain of small pure checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from meshless.api import Reason
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CA_CRT, TLS_CRT, TLS_KEY, CertificateAuthority
from meshless.pki.keys import (
    PrivateKey,
    algorithm_of_public_key,
    key_matches_certificate,
    load_private_key,
)
from meshless.pki.renewal import jitter_unit, renewal_time
from meshless.pki.svid import CLOCK_SKEW, SvidRequest, parse_certificate_chain
from meshless.pki.x509 import authority_key_id, dns_sans, issued_by, uri_sans

TTL_TOLERANCE = timedelta(minutes=1)
REQUIRED_KEYS = (TLS_CRT, TLS_KEY, CA_CRT)


@dataclass(frozen=True)
class ReissueCause:
    """Why a certificate is (re)issued: a reason (meshless.api.Reason) and its detail."""

    code: Reason  # the condition's reason, the metric's label
    message: str  # for humans; never key material


@dataclass(frozen=True)
class DesiredIdentity:
    request: SvidRequest
    renew_before: timedelta | None
    jitter_fraction: float


@dataclass(frozen=True)
class ObservedSecret:
    data: Mapping[str, bytes] | None  # None: the Secret does not exist; values are decoded


@dataclass(frozen=True)
class CheckInput:
    """What every check sees; parsed values are computed once and shared."""

    observed: ObservedSecret
    desired: DesiredIdentity
    ca: CertificateAuthority
    now: datetime

    def value(self, key: str) -> bytes | None:
        data = self.observed.data
        return (data.get(key) or None) if data is not None else None

    @cached_property
    def chain(self) -> list[x509.Certificate] | None:
        pem = self.value(TLS_CRT)
        if pem is None:
            return None
        try:
            return parse_certificate_chain(pem)
        except ValueError:
            return None

    @property
    def leaf(self) -> x509.Certificate | None:
        return self.chain[0] if self.chain else None

    @cached_property
    def key(self) -> PrivateKey | None:
        pem = self.value(TLS_KEY)
        if pem is None:
            return None
        try:
            return load_private_key(pem)
        except ValueError:
            return None


Check = Callable[[CheckInput], ReissueCause | None]


def secret_missing(c: CheckInput) -> ReissueCause | None:
    if c.observed.data is None:
        return ReissueCause(Reason.SECRET_MISSING, "the Secret does not exist")
    return None


def data_missing(c: CheckInput) -> ReissueCause | None:
    missing = [k for k in REQUIRED_KEYS if c.value(k) is None]
    if c.observed.data is not None and missing:
        return ReissueCause(Reason.MISSING_DATA, f"the Secret lacks {', '.join(missing)}")
    return None


def unparseable(c: CheckInput) -> ReissueCause | None:
    if c.value(TLS_CRT) is not None and c.chain is None:
        return ReissueCause(Reason.INVALID_CERTIFICATE, f"{TLS_CRT} holds no parseable certificate")
    if c.value(TLS_KEY) is not None and c.key is None:
        return ReissueCause(
            Reason.INVALID_KEY, f"{TLS_KEY} is not a usable unencrypted PEM private key"
        )
    return None


def key_mismatch(c: CheckInput) -> ReissueCause | None:
    if c.leaf is not None and c.key is not None and not key_matches_certificate(c.key, c.leaf):
        return ReissueCause(Reason.KEY_MISMATCH, f"{TLS_KEY} does not belong to the certificate")
    return None


def _spec_differences(c: CheckInput, leaf: x509.Certificate) -> list[str]:
    request = c.desired.request
    uris, dns = uri_sans(leaf), dns_sans(leaf)
    diffs: list[str] = []
    if uris != [request.spiffe_id]:
        diffs.append(f"URI SANs {uris} != [{request.spiffe_id!r}]")
    if set(dns) != set(request.dns_names):
        diffs.append(f"DNS SANs {sorted(set(dns))} != {sorted(set(request.dns_names))}")
    try:
        algorithm = algorithm_of_public_key(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        algorithm = None
    if algorithm != request.algorithm:
        diffs.append(f"key algorithm {algorithm} != {request.algorithm}")
    issued = leaf.not_valid_after_utc - leaf.not_valid_before_utc - CLOCK_SKEW
    clipped = leaf.not_valid_after_utc >= c.ca.issuer_cert.not_valid_after_utc
    too_long = issued > request.ttl + TTL_TOLERANCE
    too_short = issued < request.ttl - TTL_TOLERANCE and not clipped
    if too_long or too_short:
        diffs.append(f"issued lifetime {issued} != ttl {request.ttl}")
    return diffs


def spec_mismatch(c: CheckInput) -> ReissueCause | None:
    if c.leaf is None:
        return None
    diffs = _spec_differences(c, c.leaf)
    if diffs:
        return ReissueCause(
            Reason.SPEC_CHANGED, "certificate does not match the spec: " + "; ".join(diffs)
        )
    return None


def issuer_retired(c: CheckInput) -> ReissueCause | None:
    if c.leaf is None or c.chain is None:
        return None
    if authority_key_id(c.leaf) != c.ca.issuer_key_id:
        return ReissueCause(
            Reason.ISSUER_RETIRED, "certificate was issued by a CA that is no longer active"
        )
    if not issued_by(c.leaf, c.ca.issuer_cert):
        return ReissueCause(
            Reason.ISSUER_RETIRED, "certificate signature does not verify with the active CA"
        )
    if tuple(c.chain[1:]) != c.ca.intermediates:
        return ReissueCause(
            Reason.ISSUER_RETIRED, f"the chain in {TLS_CRT} differs from the active CA's"
        )
    return None


def bundle_stale(c: CheckInput) -> ReissueCause | None:
    if c.observed.data is not None and c.value(CA_CRT) != bundle_pem(c.ca.roots):
        return ReissueCause(Reason.BUNDLE_STALE, f"{CA_CRT} differs from the current trust bundle")
    return None


def expired(c: CheckInput) -> ReissueCause | None:
    if c.leaf is not None and c.now >= c.leaf.not_valid_after_utc:
        return ReissueCause(Reason.EXPIRED, f"certificate expired at {c.leaf.not_valid_after_utc}")
    return None


def renewal_time_for(cert: x509.Certificate, desired: DesiredIdentity) -> datetime:
    """When `cert` is due for renewal under `desired` (deterministic per serial)."""
    return renewal_time(
        cert.not_valid_before_utc,
        cert.not_valid_after_utc,
        renew_before=desired.renew_before,
        jitter_fraction=desired.jitter_fraction,
        jitter=jitter_unit(cert.serial_number),
    )


def renewal_due(c: CheckInput) -> ReissueCause | None:
    if c.leaf is None:
        return None
    due = renewal_time_for(c.leaf, c.desired)
    if c.now >= due:
        return ReissueCause(Reason.RENEWAL_DUE, f"renewal time {due} reached")
    return None


CHECKS: tuple[Check, ...] = (
    secret_missing,
    data_missing,
    unparseable,
    key_mismatch,
    spec_mismatch,
    issuer_retired,
    bundle_stale,
    expired,
    renewal_due,
)


def reissue_reason(
    observed: ObservedSecret,
    desired: DesiredIdentity,
    ca: CertificateAuthority,
    now: datetime,
) -> ReissueCause | None:
    """The first reason to reissue, or None when the Secret is good as it is."""
    checked = CheckInput(observed=observed, desired=desired, ca=ca, now=now)
    for check in CHECKS:
        reason = check(checked)
        if reason is not None:
            return reason
    return None


@dataclass(frozen=True)
class CertificateSummary:
    spiffe_id: str
    serial_number: str  # lowercase hex, no colons
    not_before: datetime
    not_after: datetime
    renewal_time: datetime
    dns_names: tuple[str, ...]


def summarize(cert: x509.Certificate, desired: DesiredIdentity) -> CertificateSummary:
    """What status reports about the certificate in the Secret."""
    uris, dns = uri_sans(cert), dns_sans(cert)
    spiffe = next((u for u in uris if u.startswith("spiffe://")), desired.request.spiffe_id)
    return CertificateSummary(
        spiffe_id=spiffe,
        serial_number=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        renewal_time=renewal_time_for(cert, desired),
        dns_names=tuple(dns),
    )
