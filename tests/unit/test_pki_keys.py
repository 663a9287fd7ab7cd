"""Keys: generation per algorithm, PEM round trips, matching, and errors that leak nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from meshless.pki.ca import bootstrap_self_signed
from meshless.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    algorithm_of_public_key,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
    signature_hash_for,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys() -> dict[KeyAlgorithm, PrivateKey]:
    # The only RSA-4096 key this module generates.
    return {alg: generate_private_key(alg) for alg in KeyAlgorithm}


def test_algorithm_values_equal_names() -> None:
    assert [a.value for a in KeyAlgorithm] == [a.name for a in KeyAlgorithm]
    assert {a.value for a in KeyAlgorithm} == {
        "ECDSAP256",
        "ECDSAP384",
        "Ed25519",
        "RSA2048",
        "RSA3072",
        "RSA4096",
    }


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_generated_key_has_requested_algorithm(
    keys: dict[KeyAlgorithm, PrivateKey], alg: KeyAlgorithm
) -> None:
    assert algorithm_of_public_key(keys[alg].public_key()) is alg


def test_generated_key_shapes(keys: dict[KeyAlgorithm, PrivateKey]) -> None:
    p256 = keys[KeyAlgorithm.ECDSAP256]
    assert isinstance(p256, ec.EllipticCurvePrivateKey)
    assert p256.curve.name == "secp256r1"
    assert isinstance(keys[KeyAlgorithm.Ed25519], ed25519.Ed25519PrivateKey)
    rsa3072 = keys[KeyAlgorithm.RSA3072]
    assert isinstance(rsa3072, rsa.RSAPrivateKey)
    assert rsa3072.key_size == 3072
    assert rsa3072.private_numbers().public_numbers.e == 65537


@pytest.mark.parametrize("alg", list(KeyAlgorithm))
def test_pem_round_trip_is_pkcs8(keys: dict[KeyAlgorithm, PrivateKey], alg: KeyAlgorithm) -> None:
    pem = private_key_to_pem(keys[alg])
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = load_private_key(pem)
    assert private_key_to_pem(loaded) == pem
    assert algorithm_of_public_key(loaded.public_key()) is alg


def test_generate_twice_gives_different_keys() -> None:
    a = generate_private_key(KeyAlgorithm.ECDSAP256)
    b = generate_private_key(KeyAlgorithm.ECDSAP256)
    assert private_key_to_pem(a) != private_key_to_pem(b)


def test_load_accepts_sec1_ec_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sec1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert b"BEGIN EC PRIVATE KEY" in sec1
    assert private_key_to_pem(load_private_key(sec1)) == private_key_to_pem(key)


def test_unknown_public_keys_have_no_algorithm() -> None:
    assert algorithm_of_public_key(ec.generate_private_key(ec.SECP521R1()).public_key()) is None
    assert algorithm_of_public_key(ed448.Ed448PrivateKey.generate().public_key()) is None
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    assert algorithm_of_public_key(small.public_key()) is None


def _body(pem: bytes) -> bytes:
    """A recognisable run of base64 from inside a PEM key, to look for in messages."""
    return pem.splitlines()[2][:24]


@pytest.mark.parametrize(
    "pem",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a key at all", id="garbage"),
        pytest.param(
            b"-----BEGIN PRIVATE KEY-----\nTUlJQ2VBSUJBREFO\n-----END PRIVATE KEY-----\n",
            id="truncated-pkcs8",
        ),
    ],
)
def test_load_garbage_raises_value_error_without_input(pem: bytes) -> None:
    with pytest.raises(ValueError) as info:
        load_private_key(pem)
    message = str(info.value)
    assert "PRIVATE KEY" not in message
    assert "TUlJQ2VBSUJBREFO" not in message


def test_load_encrypted_key_is_rejected_without_leaking() -> None:
    key = generate_private_key(KeyAlgorithm.ECDSAP256)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret-password"),
    )
    with pytest.raises(ValueError, match="encrypted") as info:
        load_private_key(pem)
    assert _body(pem).decode() not in str(info.value)
    assert "secret-password" not in str(info.value)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(ed448.Ed448PrivateKey.generate(), id="ed448"),
        pytest.param(dsa.generate_private_key(key_size=2048), id="dsa"),
    ],
)
def test_load_unsupported_key_type(key: ed448.Ed448PrivateKey | dsa.DSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="unsupported private key type") as info:
        load_private_key(pem)
    assert "PRIVATE KEY" not in str(info.value)


def test_key_matches_certificate() -> None:
    ca, root_key = bootstrap_self_signed("cluster.local", NOW)
    assert key_matches_certificate(ca.issuer_key, ca.issuer_cert)
    assert key_matches_certificate(root_key, ca.roots[0])
    assert not key_matches_certificate(root_key, ca.issuer_cert)
    assert not key_matches_certificate(ca.issuer_key, ca.roots[0])
    # Same algorithm, same curve, different key.
    other = generate_private_key(KeyAlgorithm.ECDSAP256)
    assert not key_matches_certificate(other, ca.issuer_cert)


def test_key_of_another_algorithm_does_not_match(keys: dict[KeyAlgorithm, PrivateKey]) -> None:
    ca, _ = bootstrap_self_signed("cluster.local", NOW)
    for key in keys.values():
        assert not key_matches_certificate(key, ca.issuer_cert)


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        (KeyAlgorithm.ECDSAP256, hashes.SHA256),
        (KeyAlgorithm.ECDSAP384, hashes.SHA384),
        (KeyAlgorithm.RSA2048, hashes.SHA256),
        (KeyAlgorithm.Ed25519, None),
    ],
)
def test_signature_hash_for(
    keys: dict[KeyAlgorithm, PrivateKey], alg: KeyAlgorithm, expected: type | None
) -> None:
    digest = signature_hash_for(keys[alg])
    if expected is None:
        assert digest is None
    else:
        assert isinstance(digest, expected)


@pytest.fixture(scope="module")
def rsa_numbers() -> rsa.RSAPrivateNumbers:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()


def _rsa_pem(numbers: rsa.RSAPrivateNumbers, **changes: int) -> bytes:
    """The key in PKCS#8 PEM with some private numbers replaced (what a corrupted or
    hand-edited Secret could hold)."""
    values = {
        "p": numbers.p,
        "q": numbers.q,
        "d": numbers.d,
        "dmp1": numbers.dmp1,
        "dmq1": numbers.dmq1,
        "iqmp": numbers.iqmp,
        **changes,
    }
    key = rsa.RSAPrivateNumbers(public_numbers=numbers.public_numbers, **values).private_key(
        unsafe_skip_rsa_key_validation=True
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_a_consistent_rsa_key_loads(rsa_numbers: rsa.RSAPrivateNumbers) -> None:
    key = load_private_key(_rsa_pem(rsa_numbers))
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.private_numbers() == rsa_numbers


@pytest.mark.parametrize("field", ["d", "dmp1", "dmq1", "iqmp"])
def test_an_rsa_key_whose_parameters_disagree_is_rejected(
    rsa_numbers: rsa.RSAPrivateNumbers, field: str
) -> None:
    broken = _rsa_pem(rsa_numbers, **{field: getattr(rsa_numbers, field) + 2})
    with pytest.raises(ValueError, match="parameters do not agree") as failed:
        load_private_key(broken)
    assert "BEGIN" not in str(failed.value)
    assert str(getattr(rsa_numbers, field)) not in str(failed.value)
