"""The issuing certificate authority: bootstrap, (de)serialisation to Secret data, validation."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property

from cryptography import x509
from cryptography.x509.oid import NameOID

from meshless.pki.bundle import bundle_pem
from meshless.pki.constraints import name_constraints
from meshless.pki.keys import (
    KeyAlgorithm,
    PrivateKey,
    generate_private_key,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
    signature_hash_for,
)
from meshless.pki.names import DnsNamePolicy
from meshless.pki.spiffe import trust_domain_id
from meshless.pki.x509 import (
    authority_key_id_for,
    certificates_pem,
    fingerprint,
    is_self_signed,
    issued_by,
    parse_pem_certificates,
    subject_key_id,
)

TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_CRT = "ca.crt"
ROOT_KEY = "root.key"

ORGANIZATION = "meshless"
ROOT_CN = "meshless root CA"
INTERMEDIATE_CN = "meshless intermediate CA"
# CA certificates are back-dated like leaves so that a leaf's notBefore is never before its
# issuer's.
CA_BACKDATE = timedelta(minutes=1)
# A root signs one CA below it, the issuing intermediate, which signs only leaves: a chain
# with a second intermediate is refused by verifiers even if a CA key is misused.
ROOT_PATH_LENGTH = 1
INTERMEDIATE_PATH_LENGTH = 0
# The DNS subtrees of the default name policy (Service names of the cluster domain).
DEFAULT_DNS_SUBTREES = DnsNamePolicy().permitted_dns_subtrees()


class CAError(Exception):
    """The CA Secret cannot be used. `reason` is CamelCase (for conditions and events); the
    message is for humans and never contains key material."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"CAError(reason={self.reason!r}, message={self.message!r})"


@dataclass(frozen=True)
class CertificateAuthority:
    """The active issuer.

    `intermediates` are the certificates that follow a leaf in its tls.crt: the issuer first,
    then any further intermediates, never a root (empty when the issuer is itself the trust
    anchor). `roots` is every root currently trusted.
    """

    issuer_cert: x509.Certificate
    issuer_key: PrivateKey = field(repr=False)
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    # Derived once per CA, not once per issued certificate (issue_svid is the hot path).
    @cached_property
    def issuer_key_id(self) -> bytes:
        """The issuer's SubjectKeyIdentifier (computed from its key if the extension is absent)."""
        return subject_key_id(self.issuer_cert)

    @cached_property
    def authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        """The AKI extension of every certificate this CA issues."""
        return authority_key_id_for(self.issuer_cert)

    @cached_property
    def intermediates_pem(self) -> bytes:
        return certificates_pem(self.intermediates)

    @cached_property
    def validity(self) -> tuple[datetime, datetime]:
        """The issuer's (notBefore, notAfter), timezone-aware."""
        return self.issuer_cert.not_valid_before_utc, self.issuer_cert.not_valid_after_utc


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: PrivateKey,
    td_uri: str | None,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if td_uri is None:  # a CA outside the trust domain (the webhook CA)
        return builder
    return builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(td_uri)]), critical=False
    )


def bootstrap_self_signed(
    trust_domain: str,
    now: datetime,
    *,
    root_ttl: timedelta = timedelta(days=3650),
    intermediate_ttl: timedelta = timedelta(days=365),
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSAP256,
    dns_subtrees: Sequence[str] = DEFAULT_DNS_SUBTREES,
) -> tuple[CertificateAuthority, PrivateKey]:
    """A new self-signed root (pathlen 1) and an intermediate issuing CA under it (pathlen 0)
    that carries critical NameConstraints: URIs of the trust domain, DNS names under
    `dns_subtrees` (the name policy's), no IP address (meshless.pki.constraints).

    Returns the CA (issuer = the intermediate) and the root's private key.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    td_uri = trust_domain_id(trust_domain)
    not_before = now - CA_BACKDATE

    root_key = generate_private_key(algorithm)
    root_name = _ca_name(ROOT_CN)
    root_not_after = now + root_ttl
    root = _ca_builder(
        root_name, root_name, root_key, td_uri, not_before, root_not_after, ROOT_PATH_LENGTH
    ).sign(root_key, signature_hash_for(root_key))

    issuer_key = generate_private_key(algorithm)
    issuer = (
        _ca_builder(
            _ca_name(INTERMEDIATE_CN),
            root_name,
            issuer_key,
            td_uri,
            not_before,
            min(now + intermediate_ttl, root_not_after),
            INTERMEDIATE_PATH_LENGTH,
        )
        .add_extension(authority_key_id_for(root), critical=False)
        .add_extension(name_constraints(trust_domain, dns_subtrees), critical=True)
        .sign(root_key, signature_hash_for(root_key))
    )
    ca = CertificateAuthority(
        issuer_cert=issuer, issuer_key=issuer_key, intermediates=(issuer,), roots=(root,)
    )
    return ca, root_key


def self_signed_root(
    common_name: str,
    now: datetime,
    ttl: timedelta,
    *,
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSAP256,
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root that signs leaves directly (pathlen 0) and names no trust domain:
    for a CA of its own outside the workloads' trust (the admission webhooks')."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    key = generate_private_key(algorithm)
    name = _ca_name(common_name)
    cert = _ca_builder(name, name, key, None, now - CA_BACKDATE, now + ttl, 0).sign(
        key, signature_hash_for(key)
    )
    return cert, key


def ca_to_secret_data(ca: CertificateAuthority, root_key: PrivateKey | None) -> dict[str, bytes]:
    """Secret data: tls.crt (issuer, then further intermediates), tls.key, ca.crt (roots) and,
    when given, root.key."""
    chain = [ca.issuer_cert, *(c for c in ca.intermediates if c != ca.issuer_cert)]
    data = {
        TLS_CRT: certificates_pem(chain),
        TLS_KEY: private_key_to_pem(ca.issuer_key),
        CA_CRT: bundle_pem(ca.roots),
    }
    if root_key is not None:
        data[ROOT_KEY] = private_key_to_pem(root_key)
    return data


def _value(data: Mapping[str, bytes], key: str) -> bytes | None:
    value = data.get(key)
    return value if value else None


def _split_chain(
    chain: list[x509.Certificate], explicit_roots: list[x509.Certificate] | None
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.Certificate, ...]]:
    """(intermediates, roots) from tls.crt and an optional ca.crt."""
    if explicit_roots is not None:
        roots = explicit_roots
    else:
        self_signed = [c for c in chain if is_self_signed(c)]
        # The last self-signed cert is the root; with none, the top of the chain is the anchor.
        roots = [self_signed[-1]] if self_signed else [chain[-1]]
    root_prints = {fingerprint(r) for r in roots}
    intermediates: list[x509.Certificate] = []
    for cert in chain:
        if fingerprint(cert) in root_prints or is_self_signed(cert):
            break
        intermediates.append(cert)
    return tuple(intermediates), tuple(roots)


def _check_chain(
    issuer: x509.Certificate,
    intermediates: tuple[x509.Certificate, ...],
    roots: tuple[x509.Certificate, ...],
) -> None:
    """Each certificate must be signed by the next, and the top one by a root."""
    path = list(intermediates) if intermediates else [issuer]
    if not intermediates and any(fingerprint(r) == fingerprint(issuer) for r in roots):
        return  # the issuer is itself a trusted anchor
    for child, parent in itertools.pairwise(path):
        if not issued_by(child, parent):
            raise CAError(
                "CAChainInvalid",
                f"certificate {child.subject.rfc4514_string()!r} in tls.crt is not signed by "
                f"the certificate that follows it ({parent.subject.rfc4514_string()!r})",
            )
    top = path[-1]
    if not any(issued_by(top, root) for root in roots):
        raise CAError(
            "CAChainInvalid",
            f"issuing chain ends at {top.subject.rfc4514_string()!r}, which is not signed by "
            "any root in the trust bundle",
        )


def ca_from_secret_data(data: Mapping[str, bytes], now: datetime) -> CertificateAuthority:
    """Load and validate the CA from our bootstrap Secret or a user-provided intermediate.

    Raises CAError with reason CASecretIncomplete, CAInvalidPEM, CANotACA, CAKeyMismatch,
    CAExpired, CANotYetValid or CAChainInvalid.
    """
    crt_pem, key_pem = _value(data, TLS_CRT), _value(data, TLS_KEY)
    missing = [k for k, v in ((TLS_CRT, crt_pem), (TLS_KEY, key_pem)) if v is None]
    if crt_pem is None or key_pem is None:
        raise CAError("CASecretIncomplete", f"CA Secret lacks {' and '.join(missing)}")
    try:
        chain = parse_pem_certificates(crt_pem, TLS_CRT)
    except ValueError as exc:
        raise CAError("CAInvalidPEM", str(exc)) from None
    try:
        key = load_private_key(key_pem)
    except ValueError as exc:
        raise CAError("CAInvalidPEM", f"{TLS_KEY}: {exc}") from None
    explicit_roots: list[x509.Certificate] | None = None
    roots_pem = _value(data, CA_CRT)
    if roots_pem is not None:
        try:
            explicit_roots = parse_pem_certificates(roots_pem, CA_CRT)
        except ValueError as exc:
            raise CAError("CAInvalidPEM", str(exc)) from None

    issuer = chain[0]
    subject = issuer.subject.rfc4514_string()
    if not is_ca(issuer):
        raise CAError("CANotACA", f"first certificate in tls.crt ({subject!r}) is not a CA")
    if not key_matches_certificate(key, issuer):
        raise CAError("CAKeyMismatch", f"tls.key does not belong to the CA certificate {subject!r}")
    if now >= issuer.not_valid_after_utc:
        raise CAError(
            "CAExpired", f"CA certificate {subject!r} expired at {issuer.not_valid_after_utc}"
        )
    if now < issuer.not_valid_before_utc:
        raise CAError(
            "CANotYetValid",
            f"CA certificate {subject!r} is not valid before {issuer.not_valid_before_utc}",
        )
    intermediates, roots = _split_chain(chain, explicit_roots)
    _check_chain(issuer, intermediates, roots)
    return CertificateAuthority(
        issuer_cert=issuer, issuer_key=key, intermediates=intermediates, roots=roots
    )


def root_key_from_secret_data(data: Mapping[str, bytes]) -> PrivateKey | None:
    """The root key kept by a bootstrap Secret, or None (user-provided CAs have none)."""
    pem = _value(data, ROOT_KEY)
    if pem is None:
        return None
    try:
        return load_private_key(pem)
    except ValueError as exc:
        raise CAError("CAInvalidPEM", f"{ROOT_KEY}: {exc}") from None
