"""Issuing X.509-SVIDs (SPIFFE leaf certificates)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshless.pki.bundle import parse_pem_certificates
from meshless.pki.ca import CAError, CertificateAuthority
from meshless.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    generate_private_key,
    is_rsa,
    private_key_to_pem,
    signature_hash_for,
)

CLOCK_SKEW = timedelta(minutes=1)
"""How far notBefore is back-dated, so peers with slightly slow clocks accept a fresh SVID."""

SUBJECT = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshless")])


@dataclass(frozen=True)
class SvidRequest:
    spiffe_id: str
    dns_names: tuple[str, ...]
    ttl: timedelta
    algorithm: KeyAlgorithm


@dataclass(frozen=True)
class IssuedSvid:
    certificate: x509.Certificate
    chain_pem: bytes  # leaf, then ca.intermediates; never a root
    private_key_pem: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"IssuedSvid(serial={self.certificate.serial_number:x}, "
            f"not_after={self.certificate.not_valid_after_utc.isoformat()}, "
            "private_key_pem=<redacted>)"
        )


def random_serial_number() -> int:
    """A random positive serial that fits a 16-byte (128-bit) DER INTEGER.

    Bit 126 is forced to one and bit 127 (the DER sign bit) is zero, so every serial is exactly
    127 bits long, encodes in exactly 16 octets with no padding byte, and carries 126 random
    bits (x509.random_serial_number gives 159 bits, more than the 128 we promise).
    """
    return secrets.randbits(127) | (1 << 126)


def _key_usage(key: PrivateKey | PublicKeyTypes) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _san(spiffe_id: str, dns_names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(name) for name in dict.fromkeys(dns_names)]
    return x509.SubjectAlternativeName(names)


def issuance_is_slow(ca: CertificateAuthority, request: SvidRequest) -> bool:
    """Whether issuing takes long enough to keep off an event loop: an RSA key to generate
    (~0.5 s for RSA4096) or an RSA signature. An EC or Ed25519 key signed by an EC or Ed25519
    CA takes ~0.15 ms, less than handing the work to a thread costs."""
    return is_rsa(request.algorithm) or isinstance(ca.issuer_key, rsa.RSAPrivateKey)


def issue_svid(ca: CertificateAuthority, request: SvidRequest, now: datetime) -> IssuedSvid:
    """Issue a new X.509-SVID with a new private key.

    notBefore = now - CLOCK_SKEW (never before the issuer's notBefore); notAfter = now + ttl,
    clipped to the issuer's notAfter.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not request.spiffe_id.startswith("spiffe://"):
        raise ValueError(f"not a SPIFFE ID: {request.spiffe_id!r}")
    if request.ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    issuer_not_before, issuer_not_after = ca.validity
    if now >= issuer_not_after:
        raise CAError("CAExpired", f"issuing CA expired at {issuer_not_after}")
    not_before = max(now - CLOCK_SKEW, issuer_not_before)
    not_after = min(now + request.ttl, issuer_not_after)

    key = generate_private_key(request.algorithm)
    cert = sign_leaf(
        ca, key.public_key(), request.spiffe_id, request.dns_names, not_before, not_after
    )
    chain_pem = cert.public_bytes(serialization.Encoding.PEM) + ca.intermediates_pem
    return IssuedSvid(
        certificate=cert, chain_pem=chain_pem, private_key_pem=private_key_to_pem(key)
    )


def sign_leaf(
    ca: CertificateAuthority,
    public_key: CertificatePublicKeyTypes,
    spiffe_id: str,
    dns_names: tuple[str, ...],
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """An X.509-SVID for `public_key` (a key made elsewhere, e.g. by a kubelet for a pod
    certificate): the SPIFFE ID as its only URI SAN, then `dns_names`, CA:false,
    digitalSignature, serverAuth and clientAuth, signed by the CA's issuer."""
    return (
        x509.CertificateBuilder()
        .subject_name(SUBJECT)
        .issuer_name(ca.issuer_cert.subject)
        .public_key(public_key)
        .serial_number(random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(public_key), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(spiffe_id, dns_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
        .sign(ca.issuer_key, signature_hash_for(ca.issuer_key))
    )


def parse_certificate_chain(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a tls.crt, leaf first; ValueError on garbage or an empty chain."""
    return parse_pem_certificates(pem, "certificate chain")
