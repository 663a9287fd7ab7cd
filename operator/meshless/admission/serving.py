"""The webhook server's serving certificate (pure), issued by the operator's CA.

The API server verifies it against the configurations' caBundle (the trusted roots) and checks
the host it dialled: a DNS SAN for the Service (`<svc>.<ns>.svc`) in a cluster, an IP SAN
(127.0.0.1) when registered by URL on loopback. Renewed at 2/3 of its lifetime like any
identity; a new key every time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshless.pki.ca import CertificateAuthority
from meshless.pki.keys import (
    KeyAlgorithm,
    generate_private_key,
    private_key_to_pem,
    signature_hash_for,
)
from meshless.pki.svid import CLOCK_SKEW, leaf_key_usage, random_serial_number
from meshless.pki.x509 import certificates_pem

DEFAULT_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class ServingCertificate:
    chain_pem: bytes  # leaf, then the CA's intermediates
    private_key_pem: bytes = field(repr=False)
    not_before: datetime
    not_after: datetime

    def renewal_time(self) -> datetime:
        """At 2/3 of the lifetime."""
        return self.not_before + (self.not_after - self.not_before) * 2 / 3


def service_dns_names(service: str, namespace: str) -> tuple[str, ...]:
    return (service, f"{service}.{namespace}", f"{service}.{namespace}.svc")


def issue_serving_certificate(
    ca: CertificateAuthority,
    hosts: Iterable[str],
    now: datetime,
    ttl: timedelta = DEFAULT_TTL,
) -> ServingCertificate:
    """A TLS server certificate for `hosts` (DNS names and IP addresses, told apart by
    parsing), clipped to the issuer's validity."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    names: list[x509.GeneralName] = []
    dns: list[str] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
            dns.append(host)
    if not names:
        raise ValueError("a serving certificate needs at least one host")
    key = generate_private_key(KeyAlgorithm.ECDSAP256)
    issuer_not_before, issuer_not_after = ca.validity
    not_before = max(now - CLOCK_SKEW, issuer_not_before)
    not_after = min(now + ttl, issuer_not_after)
    common_name = dns[0] if dns else str(names[0].value)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshless"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
                ]
            )
        )
        .issuer_name(ca.issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(leaf_key_usage(key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(ca.authority_key_identifier, critical=False)
        .sign(ca.issuer_key, signature_hash_for(ca.issuer_key))
    )
    return ServingCertificate(
        chain_pem=certificates_pem([cert]) + ca.intermediates_pem,
        private_key_pem=private_key_to_pem(key),
        not_before=not_before,
        not_after=not_after,
    )
