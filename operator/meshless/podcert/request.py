"""A PodCertificateRequest as the signer reads it (pure): the names it claims and the public
key it asks a certificate for, whichever fields the served API version carries.

- certificates.k8s.io/v1beta1 in 1.35: `pkixPublicKey` (DER SubjectPublicKeyInfo) and
  `proofOfPossession` (the key's signature over the ASCII pod UID).
- 1.36 and v1: `stubPKCS10Request` (a DER PKCS#10 request signed by the key; the kubelet's
  is empty, another requester may put DNS names in it). 1.36 deprecated the first pair; v1
  drops it.

The API server verifies both proofs when the request is created; the signer checks them again
(it signs only for a key somebody proved to hold, whatever let the object in).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

SIGNER_NAME = "meshless.dev/spiffe"
GROUP = "certificates.k8s.io"
PLURAL = "podcertificaterequests"
# Condition types the API server knows: at most one of them, status True, ends the request.
ISSUED, DENIED, FAILED = "Issued", "Denied", "Failed"
TERMINAL = (ISSUED, DENIED, FAILED)


# Public keys that can sign (a proof of possession); the kubelet makes only EC, Ed25519 and
# RSA keys. DSA is left out: no kubelet makes one, and cryptography 51 warns on every use of
# its classes (a warning on stderr at import, which the CLI's one-line errors would carry).
_SIGNING_KEYS = (
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    rsa.RSAPublicKey,
)


class RequestError(ValueError):
    """The request cannot be read; the message names the field."""


@dataclass(frozen=True)
class PodCertificateRequest:
    namespace: str
    name: str
    uid: str
    signer_name: str
    pod_name: str
    pod_uid: str
    service_account: str
    service_account_uid: str
    node_name: str
    max_expiration_seconds: int
    # None: unreadable (see key_error)
    public_key: CertificatePublicKeyTypes | None = field(repr=False)
    key_error: str = ""  # why the key could not be read or its proof failed
    requested_dns_names: tuple[str, ...] = ()  # from the stub PKCS#10 request only
    user_annotations: Mapping[str, str] = field(default_factory=dict)
    terminal: str = ""  # Issued | Denied | Failed once answered, else ""

    @property
    def ours(self) -> bool:
        return self.signer_name == SIGNER_NAME


DEFAULT_MAX_EXPIRATION_SECONDS = 86400  # what the API server fills in when omitted


def is_ours(body: Mapping[str, Any]) -> bool:
    """Whether a PodCertificateRequest names our signer: every other one is never touched."""
    return bool((body.get("spec") or {}).get("signerName") == SIGNER_NAME)


def terminal_condition(body: Mapping[str, Any]) -> str:
    """Issued, Denied or Failed once the request was answered, else ""."""
    for cond in (body.get("status") or {}).get("conditions") or ():
        if cond.get("type") in TERMINAL and cond.get("status") == "True":
            return str(cond["type"])
    return ""


def parse_request(body: Mapping[str, Any]) -> PodCertificateRequest:
    """The request as the signer reads it. RequestError for an object that is not one (a
    field missing); a key that cannot be read or whose proof fails is recorded in
    `key_error`, for the decision to deny."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}

    def text(name: str) -> str:
        value = spec.get(name)
        if not isinstance(value, str) or not value:
            raise RequestError(f"spec.{name} is missing")
        return value

    max_seconds = spec.get("maxExpirationSeconds", DEFAULT_MAX_EXPIRATION_SECONDS)
    if not isinstance(max_seconds, int) or isinstance(max_seconds, bool):
        raise RequestError("spec.maxExpirationSeconds is not an integer")
    pod_uid = text("podUID")
    key, key_error, dns_names = _public_key(spec, pod_uid)
    annotations = spec.get("unverifiedUserAnnotations") or {}
    return PodCertificateRequest(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        signer_name=text("signerName"),
        pod_name=text("podName"),
        pod_uid=pod_uid,
        service_account=text("serviceAccountName"),
        service_account_uid=str(spec.get("serviceAccountUID") or ""),
        node_name=str(spec.get("nodeName") or ""),
        max_expiration_seconds=max_seconds,
        public_key=key,
        key_error=key_error,
        requested_dns_names=dns_names,
        user_annotations={str(k): str(v) for k, v in annotations.items()},
        terminal=terminal_condition(body),
    )


def _decode(spec: Mapping[str, Any], name: str) -> bytes | None:
    value = spec.get(name)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise RequestError(f"spec.{name} is not base64") from None


def _public_key(
    spec: Mapping[str, Any], pod_uid: str
) -> tuple[CertificatePublicKeyTypes | None, str, tuple[str, ...]]:
    """(key, why it is not usable or "", DNS names requested)."""
    stub = _decode(spec, "stubPKCS10Request")
    if stub is not None:
        try:
            csr = x509.load_der_x509_csr(stub)
            key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            return None, f"spec.stubPKCS10Request is not a PKCS#10 request ({exc})", ()
        if not csr.is_signature_valid:
            return None, "spec.stubPKCS10Request: its signature does not verify", ()
        return key, "", _csr_dns_names(csr)
    pkix = _decode(spec, "pkixPublicKey")
    if pkix is None:
        raise RequestError("neither spec.stubPKCS10Request nor spec.pkixPublicKey is set")
    try:
        loaded = serialization.load_der_public_key(pkix)
    except (ValueError, UnsupportedAlgorithm):
        return None, "spec.pkixPublicKey is not a PKIX public key", ()
    if not isinstance(loaded, _SIGNING_KEYS):
        return None, "spec.pkixPublicKey is not a signing key", ()
    key = loaded
    proof = _decode(spec, "proofOfPossession") or b""
    if not proof_of_possession_holds(key, pod_uid, proof):
        return key, "spec.proofOfPossession does not verify against spec.pkixPublicKey", ()
    return key, "", ()


def _csr_dns_names(csr: x509.CertificateSigningRequest) -> tuple[str, ...]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(dict.fromkeys(san.get_values_for_type(x509.DNSName)))


def proof_of_possession_holds(key: CertificatePublicKeyTypes, pod_uid: str, proof: bytes) -> bool:
    """The 1.35 proof: the key's signature over the ASCII pod UID, as the kubelet makes it
    (Go's ecdsa.SignASN1 and rsa.SignPSS over its SHA-256, ed25519.Sign over the bytes)."""
    data = pod_uid.encode()
    digest = hashlib.sha256(data).digest()
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(proof, data)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(proof, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        elif isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            key.verify(proof, digest, pss, Prehashed(hashes.SHA256()))
        else:
            return False
    except InvalidSignature:
        return False
    return True
