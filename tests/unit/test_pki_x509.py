"""The X.509 helpers every module reads certificates with (meshless.pki.x509), on certificates
the CA really issued and on ones built by hand to differ in one thing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.svid import SvidRequest, issue_svid
from meshless.pki.x509 import (
    anchor_of,
    authority_key_id,
    certificates_in,
    certificates_pem,
    dns_sans,
    fingerprint,
    is_self_signed,
    issued_by,
    parse_pem_certificates,
    subject_alt_names,
    subject_key_id,
    uri_sans,
)
from tests.x509peers import unconstrained_ca

NOW = datetime.now(UTC).replace(microsecond=0)
SPIFFE = "spiffe://cluster.local/ns/shop/sa/payments"


def leaf_of(ca: CertificateAuthority, dns: tuple[str, ...] = ()) -> x509.Certificate:
    request = SvidRequest(SPIFFE, dns, timedelta(hours=1), KeyAlgorithm.ECDSAP256)
    return issue_svid(ca, request, NOW).certificate


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return bootstrap_self_signed("cluster.local", NOW)[0]


def test_sans_are_read_in_the_certificate_order(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca, ("b.shop.svc", "a.shop.svc"))
    assert uri_sans(leaf) == [SPIFFE]
    assert dns_sans(leaf) == ["b.shop.svc", "a.shop.svc"]
    assert len(subject_alt_names(leaf)) == 3


def test_a_certificate_without_a_san_extension_has_no_names() -> None:
    root = unconstrained_ca().roots[0]  # built by hand, without the extension
    assert subject_alt_names(root) == [] and uri_sans(root) == [] and dns_sans(root) == []


def test_issued_by_checks_the_signature_not_the_names(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca)
    other = bootstrap_self_signed("cluster.local", NOW)[0]  # same subject names, other keys
    assert other.issuer_cert.subject == ca.issuer_cert.subject
    assert issued_by(leaf, ca.issuer_cert)
    assert not issued_by(leaf, other.issuer_cert)
    assert not issued_by(leaf, ca.roots[0])
    assert is_self_signed(ca.roots[0]) and not is_self_signed(ca.issuer_cert)


def test_key_identifiers_link_a_leaf_to_its_issuer(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca)
    assert authority_key_id(leaf) == subject_key_id(ca.issuer_cert)
    assert authority_key_id(ca.issuer_cert) == subject_key_id(ca.roots[0])


def test_anchor_of_follows_the_chain_to_its_root(ca: CertificateAuthority) -> None:
    leaf = leaf_of(ca)
    other = unconstrained_ca()
    assert anchor_of([leaf, ca.issuer_cert], [*other.roots, *ca.roots]) == ca.roots[0]
    assert anchor_of([leaf, ca.issuer_cert], other.roots) is None
    assert anchor_of([leaf, other.issuer_cert], ca.roots) is None  # a broken link
    assert anchor_of([], ca.roots) is None


def test_pem_round_trip_and_garbage(ca: CertificateAuthority) -> None:
    pem = certificates_pem([ca.issuer_cert, ca.roots[0]])
    assert pem == ca.issuer_cert.public_bytes(serialization.Encoding.PEM) + ca.roots[
        0
    ].public_bytes(serialization.Encoding.PEM)
    assert parse_pem_certificates(pem) == [ca.issuer_cert, ca.roots[0]]
    assert certificates_in(pem) == [ca.issuer_cert, ca.roots[0]]
    for garbage in (b"", None, b"not a certificate"):
        assert certificates_in(garbage) == []
    with pytest.raises(ValueError, match=r"tls\.crt holds no"):
        parse_pem_certificates(b"nothing here", "tls.crt")
    assert fingerprint(ca.roots[0]) == ca.roots[0].fingerprint(hashes.SHA256())
