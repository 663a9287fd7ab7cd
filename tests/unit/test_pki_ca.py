"""The issuing CA: bootstrap, Secret round trip, user-provided intermediates, and errors."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import (
    CAError,
    CertificateAuthority,
    bootstrap_self_signed,
    ca_from_secret_data,
    ca_to_secret_data,
    root_key_from_secret_data,
)
from meshless.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    algorithm_of_public_key,
    generate_private_key,
    private_key_to_pem,
    signature_hash_for,
)
from meshless.pki.svid import SvidRequest, issue_svid, parse_certificate_chain

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TD = "cluster.local"
SPIFFE = f"spiffe://{TD}/ns/shop/sa/payments"


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def ext(
    cert: x509.Certificate, cls: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture(scope="module")
def bootstrapped() -> tuple[CertificateAuthority, PrivateKey]:
    return bootstrap_self_signed(TD, NOW)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_root(bootstrapped: tuple[CertificateAuthority, PrivateKey]) -> None:
    ca, root_key = bootstrapped
    (root,) = ca.roots
    assert root.subject == root.issuer
    root.verify_directly_issued_by(root)
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshless"
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "meshless root CA"
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical
    assert bc.value == x509.BasicConstraints(
        ca=True, path_length=1
    )  # one CA (the intermediate) below it
    ku = ext(root, x509.KeyUsage)
    assert ku.critical
    assert isinstance(ku.value, x509.KeyUsage)
    assert ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ext(root, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    )
    san = ext(root, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    assert root.not_valid_after_utc == NOW + timedelta(days=3650)
    assert root.not_valid_before_utc <= NOW


def test_bootstrap_intermediate(bootstrapped: tuple[CertificateAuthority, PrivateKey]) -> None:
    ca, _ = bootstrapped
    issuer, root = ca.issuer_cert, ca.roots[0]
    assert ca.intermediates == (issuer,)
    issuer.verify_directly_issued_by(root)
    assert issuer.subject != root.subject
    cn = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "meshless intermediate CA"
    assert ext(issuer, x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    aki = ext(issuer, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    root_ski = ext(root, x509.SubjectKeyIdentifier).value
    assert isinstance(root_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == root_ski.digest
    ski = ext(issuer, x509.SubjectKeyIdentifier).value
    assert isinstance(ski, x509.SubjectKeyIdentifier)
    assert ca.issuer_key_id == ski.digest
    san = ext(issuer, x509.SubjectAlternativeName).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    assert issuer.not_valid_after_utc == NOW + timedelta(days=365)
    assert issuer.serial_number != root.serial_number


def test_bootstrap_repr_shows_no_key(bootstrapped: tuple[CertificateAuthority, PrivateKey]) -> None:
    ca, _ = bootstrapped
    assert "issuer_key" not in repr(ca)


def test_intermediate_never_outlives_root() -> None:
    ca, _ = bootstrap_self_signed(
        TD, NOW, root_ttl=timedelta(days=30), intermediate_ttl=timedelta(days=365)
    )
    assert ca.issuer_cert.not_valid_after_utc == ca.roots[0].not_valid_after_utc


@pytest.mark.parametrize("alg", [KeyAlgorithm.ECDSAP384, KeyAlgorithm.Ed25519])
def test_bootstrap_algorithm(alg: KeyAlgorithm) -> None:
    ca, root_key = bootstrap_self_signed(TD, NOW, algorithm=alg)
    assert algorithm_of_public_key(root_key.public_key()) is alg
    assert algorithm_of_public_key(ca.issuer_key.public_key()) is alg
    data = ca_to_secret_data(ca, root_key)
    loaded = ca_from_secret_data(data, NOW)
    assert loaded.issuer_cert == ca.issuer_cert
    digest = signature_hash_for(root_key)
    algo = ca.issuer_cert.signature_hash_algorithm
    assert (algo is None) if digest is None else (algo is not None and algo.name == digest.name)


@pytest.mark.parametrize("td", ["", "spiffe://cluster.local", "Cluster.local", "td:443", "a/b"])
def test_bootstrap_rejects_bad_trust_domain(td: str) -> None:
    with pytest.raises(ValueError):
        bootstrap_self_signed(td, NOW)


def test_bootstrap_rejects_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        bootstrap_self_signed(TD, NOW.replace(tzinfo=None))


# --- Secret round trip ------------------------------------------------------------------------


def test_secret_round_trip(bootstrapped: tuple[CertificateAuthority, PrivateKey]) -> None:
    ca, root_key = bootstrapped
    data = ca_to_secret_data(ca, root_key)
    assert set(data) == {"tls.crt", "tls.key", "ca.crt", "root.key"}
    assert parse_certificate_chain(data["tls.crt"]) == [ca.issuer_cert]
    assert data["ca.crt"] == bundle_pem(ca.roots)
    assert data["tls.key"].startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = ca_from_secret_data(data, NOW)
    assert loaded.issuer_cert == ca.issuer_cert
    assert loaded.intermediates == ca.intermediates
    assert loaded.roots == ca.roots
    assert private_key_to_pem(loaded.issuer_key) == private_key_to_pem(ca.issuer_key)
    assert loaded.issuer_key_id == ca.issuer_key_id
    loaded_root_key = root_key_from_secret_data(data)
    assert loaded_root_key is not None
    assert private_key_to_pem(loaded_root_key) == private_key_to_pem(root_key)


def test_secret_without_root_key(bootstrapped: tuple[CertificateAuthority, PrivateKey]) -> None:
    ca, _ = bootstrapped
    data = ca_to_secret_data(ca, None)
    assert "root.key" not in data
    assert root_key_from_secret_data(data) is None


def test_invalid_root_key(bootstrapped: tuple[CertificateAuthority, PrivateKey]) -> None:
    ca, _ = bootstrapped
    data = {**ca_to_secret_data(ca, None), "root.key": b"garbage"}
    with pytest.raises(CAError) as info:
        root_key_from_secret_data(data)
    assert info.value.reason == "CAInvalidPEM"


# --- user-provided intermediates ------------------------------------------------------------


def make_ca_cert(
    cn: str,
    key: PrivateKey,
    *,
    signer: tuple[x509.Certificate, PrivateKey] | None,
    path_length: int | None,
    not_after: datetime = NOW + timedelta(days=100),
    ca: bool = True,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signing_key = (signer[0].subject, signer[1]) if signer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if signer:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer[1].public_key()),
            critical=False,
        )
    return builder.sign(signing_key, signature_hash_for(signing_key))


@dataclass(frozen=True)
class UserPki:
    root: x509.Certificate
    root_key: PrivateKey
    mid: x509.Certificate
    mid_key: PrivateKey
    issuer: x509.Certificate
    issuer_key: PrivateKey


@pytest.fixture(scope="module")
def user_pki() -> UserPki:
    """root -> mid (pathlen 1) -> issuer (pathlen 0), like a corporate PKI."""
    root_key, mid_key, issuer_key = (generate_private_key(KeyAlgorithm.ECDSAP256) for _ in "abc")
    root = make_ca_cert("corp root", root_key, signer=None, path_length=None)
    mid = make_ca_cert("corp mid", mid_key, signer=(root, root_key), path_length=1)
    issuer = make_ca_cert("corp issuer", issuer_key, signer=(mid, mid_key), path_length=0)
    return UserPki(root, root_key, mid, mid_key, issuer, issuer_key)


def openssl_verify(
    tmp_path: Path, roots: bytes, chain: bytes, *, partial: bool = False
) -> subprocess.CompletedProcess[str]:
    certs = parse_certificate_chain(chain)
    (tmp_path / "ca.pem").write_bytes(roots)
    (tmp_path / "leaf.pem").write_bytes(pem(certs[0]))
    (tmp_path / "untrusted.pem").write_bytes(pem(*certs[1:]))
    cmd = ["openssl", "verify", "-x509_strict", "-purpose", "sslclient"]
    cmd += ["-attime", str(int(NOW.timestamp())), "-CAfile", str(tmp_path / "ca.pem")]
    if len(certs) > 1:
        cmd += ["-untrusted", str(tmp_path / "untrusted.pem")]
    if partial:
        cmd.append("-partial_chain")
    return subprocess.run([*cmd, str(tmp_path / "leaf.pem")], capture_output=True, text=True)


def assert_issues_verifiable_svids(ca: CertificateAuthority, tmp_path: Path, partial: bool) -> None:
    request = SvidRequest(SPIFFE, (), timedelta(hours=1), KeyAlgorithm.ECDSAP256)
    svid = issue_svid(ca, request, NOW)
    chain = parse_certificate_chain(svid.chain_pem)
    assert chain == [svid.certificate, *ca.intermediates]
    for root in ca.roots:
        assert root not in chain[1:]
    verifier = PolicyBuilder().store(Store(list(ca.roots))).time(NOW).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier(SPIFFE) in verified.subjects
    proc = openssl_verify(tmp_path, bundle_pem(ca.roots), svid.chain_pem, partial=partial)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_user_chain_with_ca_crt(user_pki: UserPki, tmp_path: Path) -> None:
    data = {
        "tls.crt": pem(user_pki.issuer, user_pki.mid),
        "tls.key": private_key_to_pem(user_pki.issuer_key),
        "ca.crt": pem(user_pki.root),
    }
    ca = ca_from_secret_data(data, NOW)
    assert ca.issuer_cert == user_pki.issuer
    assert ca.intermediates == (user_pki.issuer, user_pki.mid)
    assert ca.roots == (user_pki.root,)
    assert root_key_from_secret_data(data) is None
    assert_issues_verifiable_svids(ca, tmp_path, partial=False)
    # Writing it back keeps the whole chain.
    assert ca_to_secret_data(ca, None)["tls.crt"] == data["tls.crt"]


def test_user_chain_including_root_without_ca_crt(user_pki: UserPki, tmp_path: Path) -> None:
    data = {
        "tls.crt": pem(user_pki.issuer, user_pki.mid, user_pki.root),
        "tls.key": private_key_to_pem(user_pki.issuer_key),
    }
    ca = ca_from_secret_data(data, NOW)
    assert ca.intermediates == (user_pki.issuer, user_pki.mid)
    assert ca.roots == (user_pki.root,)
    assert_issues_verifiable_svids(ca, tmp_path, partial=False)


def test_user_chain_without_root_uses_top_as_anchor(user_pki: UserPki, tmp_path: Path) -> None:
    data = {
        "tls.crt": pem(user_pki.issuer, user_pki.mid),
        "tls.key": private_key_to_pem(user_pki.issuer_key),
    }
    ca = ca_from_secret_data(data, NOW)
    assert ca.intermediates == (user_pki.issuer,)
    assert ca.roots == (user_pki.mid,)
    assert_issues_verifiable_svids(ca, tmp_path, partial=True)


def test_user_issuer_alone_is_its_own_anchor(user_pki: UserPki, tmp_path: Path) -> None:
    data = {"tls.crt": pem(user_pki.issuer), "tls.key": private_key_to_pem(user_pki.issuer_key)}
    ca = ca_from_secret_data(data, NOW)
    assert ca.intermediates == ()
    assert ca.roots == (user_pki.issuer,)
    assert_issues_verifiable_svids(ca, tmp_path, partial=True)


def test_user_root_used_directly(user_pki: UserPki, tmp_path: Path) -> None:
    data = {"tls.crt": pem(user_pki.root), "tls.key": private_key_to_pem(user_pki.root_key)}
    ca = ca_from_secret_data(data, NOW)
    assert ca.issuer_cert == user_pki.root
    assert ca.intermediates == ()
    assert ca.roots == (user_pki.root,)
    assert ca_to_secret_data(ca, None)["tls.crt"] == pem(user_pki.root)
    assert_issues_verifiable_svids(ca, tmp_path, partial=False)


def test_ca_crt_with_several_roots(user_pki: UserPki) -> None:
    other, _ = bootstrap_self_signed(TD, NOW)
    data = {
        "tls.crt": pem(user_pki.issuer, user_pki.mid),
        "tls.key": private_key_to_pem(user_pki.issuer_key),
        "ca.crt": pem(other.roots[0], user_pki.root),
    }
    ca = ca_from_secret_data(data, NOW)
    assert set(ca.roots) == {other.roots[0], user_pki.root}
    assert ca.intermediates == (user_pki.issuer, user_pki.mid)


# --- errors -----------------------------------------------------------------------------------

BrokenData = Callable[[UserPki], tuple[dict[str, bytes], datetime]]


def _good(u: UserPki) -> dict[str, bytes]:
    return {
        "tls.crt": pem(u.issuer, u.mid),
        "tls.key": private_key_to_pem(u.issuer_key),
        "ca.crt": pem(u.root),
    }


def _without(key: str) -> BrokenData:
    return lambda u: ({k: v for k, v in _good(u).items() if k != key}, NOW)


def _with(key: str, value: bytes) -> BrokenData:
    return lambda u: ({**_good(u), key: value}, NOW)


FAKE_KEY = b"-----BEGIN PRIVATE KEY-----\nTUlJQ2VBSUJBREFO\n-----END PRIVATE KEY-----\n"


def _leaf_as_ca(u: UserPki) -> tuple[dict[str, bytes], datetime]:
    key = generate_private_key(KeyAlgorithm.ECDSAP256)
    leaf = make_ca_cert("leaf", key, signer=(u.issuer, u.issuer_key), path_length=None, ca=False)
    return {"tls.crt": pem(leaf, u.issuer), "tls.key": private_key_to_pem(key)}, NOW


def _expired(u: UserPki) -> tuple[dict[str, bytes], datetime]:
    return _good(u), u.issuer.not_valid_after_utc


def _not_yet_valid(u: UserPki) -> tuple[dict[str, bytes], datetime]:
    return _good(u), u.issuer.not_valid_before_utc - timedelta(seconds=1)


def _foreign_bundle(u: UserPki) -> tuple[dict[str, bytes], datetime]:
    other, _ = bootstrap_self_signed(TD, NOW)
    return {**_good(u), "ca.crt": pem(other.roots[0])}, NOW


def _broken_link(u: UserPki) -> tuple[dict[str, bytes], datetime]:
    # The issuer followed by a cert that did not sign it.
    return {**_good(u), "tls.crt": pem(u.issuer, u.root)}, NOW


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        pytest.param(_without("tls.key"), "CASecretIncomplete", id="no-tls.key"),
        pytest.param(_without("tls.crt"), "CASecretIncomplete", id="no-tls.crt"),
        pytest.param(_with("tls.crt", b""), "CASecretIncomplete", id="empty-tls.crt"),
        pytest.param(_with("tls.crt", b"garbage"), "CAInvalidPEM", id="garbage-tls.crt"),
        pytest.param(_with("tls.crt", FAKE_KEY), "CAInvalidPEM", id="key-in-tls.crt"),
        pytest.param(_with("tls.key", b"garbage"), "CAInvalidPEM", id="garbage-tls.key"),
        pytest.param(_with("tls.key", FAKE_KEY), "CAInvalidPEM", id="broken-tls.key"),
        pytest.param(_with("ca.crt", b"garbage"), "CAInvalidPEM", id="garbage-ca.crt"),
        pytest.param(_leaf_as_ca, "CANotACA", id="leaf-not-ca"),
        pytest.param(
            lambda u: ({**_good(u), "tls.key": private_key_to_pem(u.mid_key)}, NOW),
            "CAKeyMismatch",
            id="key-mismatch",
        ),
        pytest.param(_expired, "CAExpired", id="expired"),
        pytest.param(_not_yet_valid, "CANotYetValid", id="not-yet-valid"),
        pytest.param(_foreign_bundle, "CAChainInvalid", id="foreign-ca.crt"),
        pytest.param(_broken_link, "CAChainInvalid", id="broken-link"),
    ],
)
def test_user_ca_errors(user_pki: UserPki, broken: BrokenData, reason: str) -> None:
    data, now = broken(user_pki)
    with pytest.raises(CAError) as info:
        ca_from_secret_data(data, now)
    error = info.value
    assert error.reason == reason
    assert error.message
    for text in (str(error), repr(error)):
        assert "PRIVATE KEY" not in text
        assert "TUlJQ2VBSUJBREFO" not in text
        assert private_key_to_pem(user_pki.issuer_key)[28:60].decode() not in text
