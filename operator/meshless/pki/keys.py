"""Private key generation, (de)serialisation and key/certificate matching."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class KeyAlgorithm(StrEnum):
    """Key algorithms a WorkloadIdentity may ask for (values equal the names in the CRD)."""

    ECDSAP256 = "ECDSAP256"
    ECDSAP384 = "ECDSAP384"
    Ed25519 = "Ed25519"
    RSA2048 = "RSA2048"
    RSA3072 = "RSA3072"
    RSA4096 = "RSA4096"


_RSA_SIZES = {
    KeyAlgorithm.RSA2048: 2048,
    KeyAlgorithm.RSA3072: 3072,
    KeyAlgorithm.RSA4096: 4096,
}


def is_rsa(algorithm: KeyAlgorithm) -> bool:
    return algorithm in _RSA_SIZES


def generate_private_key(alg: KeyAlgorithm) -> PrivateKey:
    """Generate a fresh private key of the given algorithm."""
    if alg is KeyAlgorithm.ECDSAP256:
        return ec.generate_private_key(ec.SECP256R1())
    if alg is KeyAlgorithm.ECDSAP384:
        return ec.generate_private_key(ec.SECP384R1())
    if alg is KeyAlgorithm.Ed25519:
        return ed25519.Ed25519PrivateKey.generate()
    if alg in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_SIZES[alg])
    raise ValueError(f"unsupported key algorithm: {alg!r}")


def algorithm_of_public_key(pub: PublicKeyTypes) -> KeyAlgorithm | None:
    """The KeyAlgorithm a public key belongs to, or None if it is none of ours."""
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if isinstance(pub.curve, ec.SECP256R1):
            return KeyAlgorithm.ECDSAP256
        if isinstance(pub.curve, ec.SECP384R1):
            return KeyAlgorithm.ECDSAP384
        return None
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return KeyAlgorithm.Ed25519
    if isinstance(pub, rsa.RSAPublicKey):
        for alg, size in _RSA_SIZES.items():
            if pub.key_size == size:
                return alg
    return None


def signature_hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The digest to sign with when `key` is the signer (None for Ed25519, which has its own)."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    """Load an unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1).

    Raises ValueError whose message never contains any of the input.
    """
    try:
        # OpenSSL's own RSA check (primality tests: 0.26 s for RSA4096, holding the GIL, so
        # not even a thread keeps it off the event loop) is replaced by the arithmetic checks
        # below, which take well under a millisecond.
        key = serialization.load_pem_private_key(
            pem, password=None, unsafe_skip_rsa_key_validation=True
        )
    except TypeError:
        raise ValueError("private key is encrypted; an unencrypted key is required") from None
    except (ValueError, UnsupportedAlgorithm):
        # The original error is dropped on purpose: never echo key material.
        raise ValueError("not a valid PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if not rsa_key_is_consistent(key):
            raise ValueError("not a valid RSA private key: its parameters do not agree")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise ValueError(f"unsupported private key type: {type(key).__name__}")


def rsa_key_is_consistent(key: rsa.RSAPrivateKey) -> bool:
    """The parameters of an RSA private key agree with each other and with its public key:
    n = pq, ed = 1 mod lcm(p-1, q-1), and the CRT values (which TLS stacks use to sign) derive
    from p, q and d. What this leaves out of OpenSSL's check is testing p and q for
    primality; a key that passes signs correctly wherever it is used."""
    numbers = key.private_numbers()
    n, e = numbers.public_numbers.n, numbers.public_numbers.e
    p, q, d = numbers.p, numbers.q, numbers.d
    if p < 2 or q < 2 or p * q != n:
        return False
    lam = (p - 1) * (q - 1) // math.gcd(p - 1, q - 1)
    return (
        (e * d) % lam == 1
        and numbers.dmp1 == d % (p - 1)
        and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1
    )


def _spki_der(pub: PublicKeyTypes) -> bytes:
    return pub.public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )


def key_matches_certificate(key: PrivateKey, cert: x509.Certificate) -> bool:
    """True if `key` is the private half of `cert`'s public key (SubjectPublicKeyInfo DER)."""
    try:
        cert_pub = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return False
    return _spki_der(key.public_key()) == _spki_der(cert_pub)
