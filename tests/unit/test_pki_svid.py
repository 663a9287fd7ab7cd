"""X.509-SVID issuance: every algorithm, the exact extensions, validity, and chain verification
with both cryptography's verifier and `openssl verify`. Also SPIFFE ID formatting."""

from __future__ import annotations

import dataclasses
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import (
    CAError,
    CertificateAuthority,
    bootstrap_self_signed,
    ca_from_secret_data,
    ca_to_secret_data,
)
from meshless.pki.constraints import name_constraints
from meshless.pki.keys import (
    KeyAlgorithm,
    algorithm_of_public_key,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
)
from meshless.pki.names import DnsNamePolicy
from meshless.pki.rotation import RotationState, rotate_intermediate
from meshless.pki.spiffe import spiffe_id, validate_trust_domain
from meshless.pki.svid import (
    CLOCK_SKEW,
    IssuedSvid,
    SvidRequest,
    issuance_is_slow,
    issue_svid,
    parse_certificate_chain,
    random_serial_number,
)

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
TD = "cluster.local"
SPIFFE = f"spiffe://{TD}/ns/shop/sa/payments"
DNS = ("payments.shop.svc", "payments.shop.svc.cluster.local")
TTL = timedelta(hours=24)


def request(alg: KeyAlgorithm = KeyAlgorithm.ECDSAP256, ttl: timedelta = TTL) -> SvidRequest:
    return SvidRequest(spiffe_id=SPIFFE, dns_names=DNS, ttl=ttl, algorithm=alg)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def ext_value(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType:
    return cert.extensions.get_extension_for_class(cls).value


def openssl_verify(
    tmp_path: Path, roots: bytes, chain_pem: bytes, purpose: str
) -> subprocess.CompletedProcess[str]:
    certs = parse_certificate_chain(chain_pem)
    (tmp_path / "ca.pem").write_bytes(roots)
    (tmp_path / "leaf.pem").write_bytes(pem(certs[0]))
    (tmp_path / "chain.pem").write_bytes(pem(*certs[1:]))
    cmd = ["openssl", "verify", "-x509_strict", "-purpose", purpose]
    cmd += ["-attime", str(int(NOW.timestamp())), "-CAfile", str(tmp_path / "ca.pem")]
    cmd += ["-untrusted", str(tmp_path / "chain.pem"), str(tmp_path / "leaf.pem")]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return bootstrap_self_signed(TD, NOW)[0]


@pytest.fixture(scope="module")
def svids(ca: CertificateAuthority) -> dict[KeyAlgorithm, IssuedSvid]:
    # One SVID per algorithm (test_chain_verifies_with_cryptography makes one more each).
    return {alg: issue_svid(ca, request(alg), NOW) for alg in KeyAlgorithm}


ALGORITHMS = list(KeyAlgorithm)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_public_key_algorithm_matches(
    svids: dict[KeyAlgorithm, IssuedSvid], alg: KeyAlgorithm
) -> None:
    svid = svids[alg]
    assert algorithm_of_public_key(svid.certificate.public_key()) is alg
    key = load_private_key(svid.private_key_pem)
    assert svid.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert key_matches_certificate(key, svid.certificate)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_extensions(
    svids: dict[KeyAlgorithm, IssuedSvid], ca: CertificateAuthority, alg: KeyAlgorithm
) -> None:
    cert = svids[alg].certificate
    assert cert.version is x509.Version.v3
    assert cert.issuer == ca.issuer_cert.subject
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshless"

    san = ext_value(cert, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    assert san.get_values_for_type(x509.DNSName) == list(DNS)
    assert len(list(san)) == 1 + len(DNS)

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is False

    ku_ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    ku = ku_ext.value
    assert ku_ext.critical
    assert ku.digital_signature
    assert ku.key_encipherment is alg.name.startswith("RSA")
    assert not (ku.key_cert_sign or ku.crl_sign or ku.content_commitment or ku.key_agreement)

    eku = ext_value(cert, x509.ExtendedKeyUsage)
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    ski = ext_value(cert, x509.SubjectKeyIdentifier)
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = ext_value(cert, x509.AuthorityKeyIdentifier)
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ca.issuer_key_id
    issuer_ski = ext_value(ca.issuer_cert, x509.SubjectKeyIdentifier)
    assert isinstance(issuer_ski, x509.SubjectKeyIdentifier)
    assert aki.key_identifier == issuer_ski.digest


@pytest.fixture(scope="module")
def dns_only_ca() -> CertificateAuthority:
    """Our CA with an intermediate constrained to DNS and IP names only: what cryptography's
    verifier implements (it refuses a URI name constraint, see the test below)."""
    ca, root_key = bootstrap_self_signed(TD, NOW)
    full = name_constraints(TD, DnsNamePolicy().permitted_dns_subtrees())
    dns_only = x509.NameConstraints(
        permitted_subtrees=[
            n for n in full.permitted_subtrees or () if isinstance(n, x509.DNSName)
        ],
        excluded_subtrees=full.excluded_subtrees,
    )
    data = rotate_intermediate(
        ca_to_secret_data(ca, root_key),
        ca,
        root_key,
        RotationState(),
        request=None,
        now=NOW,
        constraints=dns_only,
    )
    return ca_from_secret_data(data, NOW)


def test_cryptography_refuses_a_uri_name_constraint(
    svids: dict[KeyAlgorithm, IssuedSvid], ca: CertificateAuthority
) -> None:
    """pyca/cryptography's verifier (a Web PKI profile) does not implement URI name
    constraints and refuses every chain through an intermediate that has one: a known limit
    for peers that verify with it (docs/decisions/name-constraints.md). OpenSSL, Go and
    go-spiffe verify these chains (tests/unit/test_name_constraints.py)."""
    chain = parse_certificate_chain(svids[KeyAlgorithm.ECDSAP256].chain_pem)
    verifier = PolicyBuilder().store(Store(list(ca.roots))).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError, match="unsupported name constraint"):
        verifier.verify(chain[0], chain[1:])


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_chain_verifies_with_cryptography(
    dns_only_ca: CertificateAuthority, alg: KeyAlgorithm
) -> None:
    """The leaf profile passes cryptography's verifier, as client and server, under an
    intermediate whose constraints it implements (DNS subtrees, excluded IP ranges)."""
    ca = dns_only_ca
    chain = parse_certificate_chain(issue_svid(ca, request(alg), NOW).chain_pem)
    builder = PolicyBuilder().store(Store(list(ca.roots))).time(NOW)
    client = builder.build_client_verifier().verify(chain[0], chain[1:])
    assert client.subjects is not None
    assert x509.UniformResourceIdentifier(SPIFFE) in client.subjects
    assert client.chain[-1] == ca.roots[0]
    server = builder.build_server_verifier(x509.DNSName(DNS[0]))
    assert server.verify(chain[0], chain[1:])[-1] == ca.roots[0]


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_chain_verifies_with_openssl(
    svids: dict[KeyAlgorithm, IssuedSvid],
    ca: CertificateAuthority,
    alg: KeyAlgorithm,
    purpose: str,
    tmp_path: Path,
) -> None:
    proc = openssl_verify(tmp_path, bundle_pem(ca.roots), svids[alg].chain_pem, purpose)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_chain_does_not_verify_against_another_root(
    svids: dict[KeyAlgorithm, IssuedSvid], tmp_path: Path
) -> None:
    other, _ = bootstrap_self_signed(TD, NOW)
    chain_pem = svids[KeyAlgorithm.ECDSAP256].chain_pem
    assert openssl_verify(tmp_path, bundle_pem(other.roots), chain_pem, "sslclient").returncode != 0
    chain = parse_certificate_chain(chain_pem)
    verifier = PolicyBuilder().store(Store(list(other.roots))).time(NOW).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(chain[0], chain[1:])


def test_chain_is_leaf_then_intermediates_never_root(
    svids: dict[KeyAlgorithm, IssuedSvid], ca: CertificateAuthority
) -> None:
    svid = svids[KeyAlgorithm.ECDSAP256]
    chain = parse_certificate_chain(svid.chain_pem)
    assert chain == [svid.certificate, *ca.intermediates]
    assert ca.roots[0] not in chain


def test_serial_is_positive_and_at_most_128_bits(svids: dict[KeyAlgorithm, IssuedSvid]) -> None:
    serials = [s.certificate.serial_number for s in svids.values()]
    serials += [random_serial_number() for _ in range(500)]
    assert all(s > 0 and s.bit_length() <= 128 for s in serials)
    assert len(set(serials)) == len(serials)
    # 126 random bits: the low bits really vary.
    assert len({s & 0xFFFF for s in serials}) > 400


def test_serial_der_encoding_is_16_bytes(svids: dict[KeyAlgorithm, IssuedSvid]) -> None:
    der = svids[KeyAlgorithm.ECDSAP256].certificate.public_bytes(serialization.Encoding.DER)
    serial = svids[KeyAlgorithm.ECDSAP256].certificate.serial_number
    assert bytes([0x02, 16]) + serial.to_bytes(16, "big") in der


def test_validity_is_backdated_and_ttl_long(svids: dict[KeyAlgorithm, IssuedSvid]) -> None:
    cert = svids[KeyAlgorithm.ECDSAP256].certificate
    assert cert.not_valid_before_utc == NOW - CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + TTL


def test_not_after_is_clipped_to_issuer(ca: CertificateAuthority) -> None:
    svid = issue_svid(ca, request(ttl=timedelta(days=400)), NOW)
    assert svid.certificate.not_valid_after_utc == ca.issuer_cert.not_valid_after_utc
    later = ca.issuer_cert.not_valid_after_utc - timedelta(hours=1)
    svid = issue_svid(ca, request(), later)
    assert svid.certificate.not_valid_after_utc == ca.issuer_cert.not_valid_after_utc
    assert svid.certificate.not_valid_before_utc == later - CLOCK_SKEW


def test_each_issuance_has_a_new_key_and_serial(ca: CertificateAuthority) -> None:
    a = issue_svid(ca, request(), NOW)
    b = issue_svid(ca, request(), NOW)
    assert a.private_key_pem != b.private_key_pem
    assert a.certificate.public_key() != b.certificate.public_key()
    assert a.certificate.serial_number != b.certificate.serial_number


def test_no_dns_names_gives_only_the_uri_san(ca: CertificateAuthority) -> None:
    svid = issue_svid(ca, SvidRequest(SPIFFE, (), TTL, KeyAlgorithm.ECDSAP256), NOW)
    san = ext_value(svid.certificate, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert list(san) == [x509.UniformResourceIdentifier(SPIFFE)]


def test_duplicate_dns_names_are_listed_once(ca: CertificateAuthority) -> None:
    req = SvidRequest(SPIFFE, ("a.svc", "a.svc", "b.svc"), TTL, KeyAlgorithm.ECDSAP256)
    san = ext_value(issue_svid(ca, req, NOW).certificate, x509.SubjectAlternativeName)
    assert isinstance(san, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["a.svc", "b.svc"]


@pytest.mark.parametrize(
    ("ca_alg", "hash_name"),
    [
        (KeyAlgorithm.ECDSAP256, "sha256"),
        (KeyAlgorithm.ECDSAP384, "sha384"),
        (KeyAlgorithm.RSA2048, "sha256"),
        (KeyAlgorithm.Ed25519, None),
    ],
)
def test_signature_digest_follows_issuer_key(
    ca_alg: KeyAlgorithm, hash_name: str | None, tmp_path: Path
) -> None:
    ca, _ = bootstrap_self_signed(TD, NOW, algorithm=ca_alg)
    svid = issue_svid(ca, request(), NOW)
    digest = svid.certificate.signature_hash_algorithm
    assert (digest.name if digest else None) == hash_name
    svid.certificate.verify_directly_issued_by(ca.issuer_cert)
    proc = openssl_verify(tmp_path, bundle_pem(ca.roots), svid.chain_pem, "sslclient")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_repr_and_str_hide_the_key(svids: dict[KeyAlgorithm, IssuedSvid]) -> None:
    for svid in svids.values():
        body = svid.private_key_pem.splitlines()[1].decode()
        for text in (repr(svid), str(svid), f"{svid}", repr([svid])):
            assert "PRIVATE KEY" not in text
            assert body not in text
        assert f"{svid.certificate.serial_number:x}" in repr(svid)


def test_issue_rejects_bad_input(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="timezone"):
        issue_svid(ca, request(), NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="SPIFFE"):
        issue_svid(ca, SvidRequest("https://x", (), TTL, KeyAlgorithm.ECDSAP256), NOW)
    with pytest.raises(ValueError, match="ttl"):
        issue_svid(ca, request(ttl=timedelta(0)), NOW)


def test_issue_with_expired_ca_fails(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError) as info:
        issue_svid(ca, request(), ca.issuer_cert.not_valid_after_utc)
    assert info.value.reason == "CAExpired"


# --- parse_certificate_chain ------------------------------------------------------------------


def test_parse_chain_round_trip(svids: dict[KeyAlgorithm, IssuedSvid]) -> None:
    svid = svids[KeyAlgorithm.Ed25519]
    chain = parse_certificate_chain(svid.chain_pem)
    assert chain[0] == svid.certificate
    assert chain[0].fingerprint(hashes.SHA256()) == svid.certificate.fingerprint(hashes.SHA256())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN CERTIFICATE-----\nTUlJ\n-----END CERTIFICATE-----\n",
    ],
    ids=["empty", "garbage", "bad-base64", "bad-der"],
)
def test_parse_chain_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_certificate_chain(data)


# --- SPIFFE IDs -------------------------------------------------------------------------------


def test_spiffe_id_format() -> None:
    assert spiffe_id("cluster.local", "shop", "payments") == SPIFFE
    assert spiffe_id("prod_1.example-org", "a", "b") == "spiffe://prod_1.example-org/ns/a/sa/b"


@pytest.mark.parametrize("td", ["cluster.local", "example.org", "a", "td-1_x.y", "123"])
def test_valid_trust_domains(td: str) -> None:
    validate_trust_domain(td)


@pytest.mark.parametrize(
    ("td", "fragment"),
    [
        ("", "empty"),
        ("spiffe://cluster.local", "scheme"),
        ("cluster.local:8443", "port"),
        ("cluster.local/ns", "path"),
        ("Cluster.Local", "lowercase"),
        ("clu ster", "lowercase"),
        ("a" * 256, "255"),
    ],
)
def test_invalid_trust_domains(td: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        validate_trust_domain(td)


@pytest.mark.parametrize(
    ("ns", "sa"), [("", "sa"), ("ns", ""), ("ns/x", "sa"), ("..", "sa"), ("ns", "s a")]
)
def test_spiffe_id_rejects_bad_segments(ns: str, sa: str) -> None:
    with pytest.raises(ValueError):
        spiffe_id(TD, ns, sa)


def test_only_rsa_keys_or_an_rsa_ca_make_an_issuance_slow(ca: CertificateAuthority) -> None:
    """What the identity controller sends to a thread: RSA key generation or an RSA signature.
    EC and Ed25519 leaves signed by an EC CA are issued on the loop."""
    fast = {KeyAlgorithm.ECDSAP256, KeyAlgorithm.ECDSAP384, KeyAlgorithm.Ed25519}
    assert {alg for alg in KeyAlgorithm if not issuance_is_slow(ca, request(alg))} == fast
    rsa_ca = dataclasses.replace(ca, issuer_key=generate_private_key(KeyAlgorithm.RSA2048))
    assert all(issuance_is_slow(rsa_ca, request(alg)) for alg in KeyAlgorithm)
