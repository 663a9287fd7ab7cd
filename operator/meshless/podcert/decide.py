"""What the signer answers a PodCertificateRequest (pure): Issue, Deny or Fail.

The API server has already checked, for a request a node made, that the node runs the pod
and that the pod's UID and ServiceAccount are the ones named (NodeRestriction); it does not
for a request made by anyone else allowed to create them, and a pod can be deleted between
the request and its answer. So the signer checks again, against the pod as it is now, in
this order (each rule is a Deny with its reason):

1. `InvalidKey`: the public key cannot be read, or its proof (the stub PKCS#10 request's
   signature, or 1.35's proofOfPossession) does not verify.
2. `UnsupportedUserAnnotations`: the request carries unverifiedUserAnnotations; this signer
   recognises none (upstream asks signers to deny keys they do not know).
3. `PodNotFound`: no pod of that name.
4. `PodUIDMismatch`: the pod of that name is another one (deleted and re-created).
5. `ServiceAccountMismatch`: the pod runs as another ServiceAccount.
6. `NodeMismatch`: the pod is bound to another node (when the pod's node is known).
7. `UnsupportedKeyType`: not one of ECDSAP256, ECDSAP384, ED25519, RSA3072, RSA4096 (the
   kubelet also makes ECDSAP521; the message names the types that work).

`Fail` is for what the requester cannot fix: the issuing CA expires within the API's one-hour
minimum (`IssuerExpiring`).

An issued certificate: the SPIFFE ID `spiffe://<trust domain>/ns/<namespace>/sa/<sa>` as its
only URI SAN; DNS names only from the stub PKCS#10 request and only those the name policy
allows (pki/names.py; the others are dropped, never signed); a lifetime of the request's
maxExpirationSeconds capped by the operator's `--pod-certificate-max-ttl`, never under the
API's one hour; `beginRefreshAt` at 2/3 of the lifetime minus jitter, as for Secrets (or
`--pod-certificate-refresh-after` after notBefore, a setting for tests), never later than
`refresh_by` (a root rotation in progress), and always inside the API's bounds (10 minutes
after notBefore, 10 minutes before notAfter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from meshless.pki.keys import KeyAlgorithm
from meshless.pki.names import DnsNamePolicy
from meshless.pki.renewal import renewal_time
from meshless.pki.spiffe import spiffe_id
from meshless.pki.svid import CLOCK_SKEW
from meshless.podcert.request import PodCertificateRequest

MIN_LIFETIME = timedelta(hours=1)  # the API server refuses shorter certificates
REFRESH_MARGIN = timedelta(minutes=10)  # beginRefreshAt within [notBefore+10m, notAfter-10m]

# MtlsPolicy privateKey.algorithm -> the kubelet's podCertificate keyType. RSA2048 has none:
# the kubelet does not make RSA2048 keys.
KUBELET_KEY_TYPES: dict[KeyAlgorithm, str] = {
    KeyAlgorithm.ECDSAP256: "ECDSAP256",
    KeyAlgorithm.ECDSAP384: "ECDSAP384",
    KeyAlgorithm.Ed25519: "ED25519",
    KeyAlgorithm.RSA3072: "RSA3072",
    KeyAlgorithm.RSA4096: "RSA4096",
}
SUPPORTED_KEY_TYPES = tuple(KUBELET_KEY_TYPES.values())


def kubelet_key_type(algorithm: KeyAlgorithm) -> str | None:
    """The podCertificate keyType for a policy's key algorithm; None for RSA2048."""
    return KUBELET_KEY_TYPES.get(algorithm)


def key_type_of(key: CertificatePublicKeyTypes) -> str:
    """The kubelet's name for a public key's type (ECDSAP521 and others included), or a
    description of what it is."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSAP{key.curve.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "ED25519"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA{key.key_size}"
    return type(key).__name__


@dataclass(frozen=True)
class PodView:
    """What the signer checks of the pod now."""

    namespace: str
    name: str
    uid: str
    service_account: str
    node_name: str = ""  # "" when the view does not know it


@dataclass(frozen=True)
class SignerSettings:
    trust_domain: str = "cluster.local"
    max_ttl: timedelta = timedelta(hours=24)
    jitter: float = 0.1  # beginRefreshAt up to this fraction of the lifetime earlier
    refresh_after: timedelta | None = None  # tests: refresh this long after notBefore
    names: DnsNamePolicy = field(default_factory=DnsNamePolicy)


@dataclass(frozen=True)
class Issue:
    spiffe_id: str
    dns_names: tuple[str, ...]
    public_key: CertificatePublicKeyTypes = field(repr=False)
    not_before: datetime
    not_after: datetime
    begin_refresh_at: datetime
    dropped_dns_names: tuple[str, ...] = ()  # requested, not allowed by the name policy


@dataclass(frozen=True)
class Deny:
    reason: str
    message: str


@dataclass(frozen=True)
class Fail:
    reason: str
    message: str


Decision = Issue | Deny | Fail


def decide(
    request: PodCertificateRequest,
    pod: PodView | None,
    settings: SignerSettings,
    *,
    issuer_validity: tuple[datetime, datetime],
    now: datetime,
    jitter: float,
    refresh_by: datetime | None = None,
) -> Decision:
    """The answer to `request` given the pod of its name as it is now (None: no such pod).
    `jitter` in [0, 1) spreads refreshes; `refresh_by` caps beginRefreshAt."""
    if not request.ours:
        raise ValueError(f"{request.signer_name!r} is not our signer: never answer it")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    where = f"pod {request.namespace}/{request.pod_name}"
    if request.public_key is None or request.key_error:
        return Deny("InvalidKey", f"{request.key_error}; the kubelet makes a new request")
    if request.user_annotations:
        keys = ", ".join(sorted(request.user_annotations))
        return Deny(
            "UnsupportedUserAnnotations",
            f"meshless.dev/spiffe recognises no unverifiedUserAnnotations; remove {keys} "
            "from the podCertificate volume's userAnnotations",
        )
    if pod is None:
        return Deny("PodNotFound", f"{where} does not exist (deleted before it was signed)")
    if pod.uid != request.pod_uid:
        return Deny(
            "PodUIDMismatch",
            f"{where} has UID {pod.uid}, not {request.pod_uid}: the request is for a pod "
            "that is gone",
        )
    if pod.service_account != request.service_account:
        return Deny(
            "ServiceAccountMismatch",
            f"{where} runs as ServiceAccount {pod.service_account!r}, not "
            f"{request.service_account!r}",
        )
    if pod.node_name and request.node_name and pod.node_name != request.node_name:
        return Deny(
            "NodeMismatch", f"{where} is bound to node {pod.node_name}, not {request.node_name}"
        )
    key_type = key_type_of(request.public_key)
    if key_type not in SUPPORTED_KEY_TYPES:
        return Deny(
            "UnsupportedKeyType",
            f"meshless.dev/spiffe does not sign {key_type} keys; use one of "
            f"{', '.join(SUPPORTED_KEY_TYPES)} (ECDSAP256 recommended) as the podCertificate "
            "keyType",
        )
    identity = spiffe_id(settings.trust_domain, request.namespace, request.service_account)
    allowed = tuple(
        name
        for name in request.requested_dns_names
        if settings.names.violation(request.namespace, name) is None
    )
    dropped = tuple(n for n in request.requested_dns_names if n not in allowed)

    issuer_not_before, issuer_not_after = issuer_validity
    not_before = max(now - CLOCK_SKEW, issuer_not_before).replace(microsecond=0)
    lifetime = min(timedelta(seconds=request.max_expiration_seconds), settings.max_ttl)
    lifetime = max(lifetime, MIN_LIFETIME)
    not_after = min(not_before + lifetime, issuer_not_after.replace(microsecond=0))
    if not_after - not_before < MIN_LIFETIME:
        return Fail(
            "IssuerExpiring",
            f"the issuing CA expires at {issuer_not_after.isoformat()}, sooner than the one "
            "hour a pod certificate must live; rotate the CA (meshless ca rotate)",
        )
    if settings.refresh_after is not None:
        refresh = not_before + settings.refresh_after
    else:
        refresh = renewal_time(
            not_before, not_after, renew_before=None, jitter_fraction=settings.jitter, jitter=jitter
        )
    if refresh_by is not None:
        refresh = min(refresh, refresh_by.replace(microsecond=0))
    refresh = min(max(refresh, not_before + REFRESH_MARGIN), not_after - REFRESH_MARGIN)
    return Issue(
        spiffe_id=identity,
        dns_names=allowed,
        public_key=request.public_key,
        not_before=not_before,
        not_after=not_after,
        begin_refresh_at=refresh,
        dropped_dns_names=dropped,
    )
