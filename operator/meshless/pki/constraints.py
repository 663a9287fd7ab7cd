"""The issuing intermediate's NameConstraints (pure): what they are, whether a CA carries them.

Defence in depth against a stolen issuing key. The name policy (meshless.pki.names) decides
which names an identity in a namespace may carry; these constraints bound what any certificate
under the intermediate can name, whoever signs it, so that verifiers (OpenSSL, Go's
crypto/x509, Node.js, go-spiffe) refuse the rest:

- permitted URI subtree: the trust domain (RFC 5280 4.2.1.10: for a URI the constraint is the
  host, and `spiffe://<td>/...` has host `<td>`; no leading '.', so only that host);
- permitted DNS subtrees: what the policy's patterns can produce
  (`DnsNamePolicy.permitted_dns_subtrees()`: `svc` and `svc.<cluster domain>` by default);
- excluded IP ranges 0.0.0.0/0 and ::/0: meshless never signs an IP address into a SAN.

The extension is critical. Leaves carry no subject CN (pki/svid.py), so OpenSSL's check of a
hostname-like CN against the DNS subtrees never applies to them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from meshless.pki.x509 import subject_alt_names

EXCLUDED_IP_RANGES = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def name_constraints(trust_domain: str, dns_subtrees: Iterable[str]) -> x509.NameConstraints:
    """The NameConstraints of an intermediate issuing for `trust_domain` under a policy whose
    names fall under `dns_subtrees`."""
    permitted: list[x509.GeneralName] = [x509.UniformResourceIdentifier(trust_domain)]
    permitted += [x509.DNSName(subtree) for subtree in sorted(set(dns_subtrees))]
    excluded: list[x509.GeneralName] = [x509.IPAddress(net) for net in EXCLUDED_IP_RANGES]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def constraints_of(cert: x509.Certificate) -> x509.Extension[x509.NameConstraints] | None:
    """The certificate's NameConstraints extension, or None."""
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return None


def _names(subtrees: Iterable[x509.GeneralName] | None) -> frozenset[tuple[str, str]]:
    return frozenset((type(name).__name__, str(name.value)) for name in subtrees or ())


def same_constraints(a: x509.NameConstraints, b: x509.NameConstraints) -> bool:
    """Equal as sets of subtrees (the order in the certificate does not matter)."""
    return _names(a.permitted_subtrees) == _names(b.permitted_subtrees) and _names(
        a.excluded_subtrees
    ) == _names(b.excluded_subtrees)


def intermediate_constraints_stale(issuer: x509.Certificate, desired: x509.NameConstraints) -> bool:
    """Whether the issuing intermediate must be replaced to carry `desired`: it has no
    NameConstraints, not critical ones, or other subtrees (a pattern or the trust domain
    changed)."""
    current = constraints_of(issuer)
    return current is None or not current.critical or not same_constraints(current.value, desired)


def _dns_within(name: str, base: str) -> bool:
    """RFC 5280 4.2.1.10 for DNS names (as OpenSSL and Go match them): `base` itself or any
    name below it; a base with a leading '.' only names below it."""
    name, base = name.lower().rstrip("."), base.lower()
    if not base:
        return True
    if base.startswith("."):
        return name.endswith(base)
    return name == base or name.endswith("." + base)


def _uri_host(uri: str) -> str:
    rest = uri.partition("://")[2]
    return rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].rsplit("@", 1)[-1]


def _within(name: x509.GeneralName, base: x509.GeneralName) -> bool | None:
    """Whether `name` is inside the subtree `base`; None when the two are of other kinds."""
    if isinstance(name, x509.DNSName) and isinstance(base, x509.DNSName):
        return _dns_within(name.value, base.value)
    if isinstance(name, x509.UniformResourceIdentifier) and isinstance(
        base, x509.UniformResourceIdentifier
    ):
        host = _uri_host(name.value).split(":", 1)[0]
        return (
            _dns_within(host, base.value)
            if base.value.startswith(".")
            else (host.lower() == base.value.lower())
        )
    if isinstance(name, x509.IPAddress) and isinstance(base, x509.IPAddress):
        address, network = name.value, base.value
        if isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network) and isinstance(
            address, ipaddress.IPv4Address | ipaddress.IPv6Address
        ):
            return address.version == network.version and address in network
        return False
    return None


def names_outside_constraints(chain: Sequence[x509.Certificate]) -> tuple[str, ...]:
    """The leaf's (chain[0]) SANs that a CA certificate in chain[1:] does not permit: a
    certificate no verifier accepts (a policy changed after it was issued, or the issuing key
    was misused). Empty when every name is permitted."""
    if not chain:
        return ()
    names = subject_alt_names(chain[0])
    bad: dict[str, None] = {}
    for ca in chain[1:]:
        ext = constraints_of(ca)
        if ext is None:
            continue
        permitted = list(ext.value.permitted_subtrees or ())
        excluded = list(ext.value.excluded_subtrees or ())
        for name in names:
            label = describe_subtrees([name])[0]
            kinds = [_within(name, base) for base in permitted]
            if any(k is not None for k in kinds) and not any(kinds):
                bad[label] = None
            if any(_within(name, base) for base in excluded):
                bad[label] = None
    return tuple(bad)


class ConstraintsState(StrEnum):
    """How the issuing intermediate's constraints relate to the policy (for status)."""

    MATCHES = "NameConstrained"  # exactly the constraints the policy asks for
    DIFFERENT = "NameConstraintsDiffer"  # constrained, but not as the policy asks
    NONE = "NotNameConstrained"  # no (critical) NameConstraints at all


@dataclass(frozen=True)
class ConstraintsReport:
    """What `meshless ca status` and the operator's Event say about the issuer's constraints."""

    state: ConstraintsState
    permitted: tuple[str, ...]  # "URI:cluster.local", "DNS:svc", ...
    excluded: tuple[str, ...]
    message: str

    @property
    def constrained(self) -> bool:
        return self.state is not ConstraintsState.NONE

    def as_dict(self) -> dict[str, object]:
        return {
            "constrained": self.constrained,
            "reason": self.state.value,
            "permitted": list(self.permitted),
            "excluded": list(self.excluded),
            "message": self.message,
        }


def describe_subtrees(subtrees: Iterable[x509.GeneralName] | None) -> tuple[str, ...]:
    kinds = {
        x509.UniformResourceIdentifier: "URI",
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.DirectoryName: "DirName",
    }
    out = []
    for name in subtrees or ():
        value = name.value.rfc4514_string() if isinstance(name, x509.DirectoryName) else name.value
        out.append(f"{kinds.get(type(name), type(name).__name__)}:{value}")
    return tuple(out)


def report(issuer: x509.Certificate, desired: x509.NameConstraints | None) -> ConstraintsReport:
    """The issuer's constraints, compared with `desired` when it is known (None: only say
    whether there are any)."""
    subject = issuer.subject.rfc4514_string()
    ext = constraints_of(issuer)
    if ext is None or not ext.critical:
        what = "carries no NameConstraints" if ext is None else "has non-critical NameConstraints"
        return ConstraintsReport(
            ConstraintsState.NONE,
            describe_subtrees(ext.value.permitted_subtrees) if ext else (),
            describe_subtrees(ext.value.excluded_subtrees) if ext else (),
            f"the issuing intermediate {subject!r} {what}: a certificate signed with its key "
            "may name anything its verifiers accept (it keeps issuing; the name policy still "
            "applies to what the operator signs)",
        )
    permitted = describe_subtrees(ext.value.permitted_subtrees)
    excluded = describe_subtrees(ext.value.excluded_subtrees)
    if desired is None or same_constraints(ext.value, desired):
        return ConstraintsReport(
            ConstraintsState.MATCHES,
            permitted,
            excluded,
            f"the issuing intermediate {subject!r} is name-constrained",
        )
    want = describe_subtrees(desired.permitted_subtrees)
    missing = sorted(set(want) - set(permitted))
    extra = sorted(set(permitted) - set(want))
    parts = []
    if missing:
        parts.append(
            f"does not permit {', '.join(missing)} (names the policy allows there fail "
            "verification)"
        )
    if extra:
        parts.append(f"also permits {', '.join(extra)}")
    if set(excluded) != set(describe_subtrees(desired.excluded_subtrees)):
        parts.append(f"excludes {', '.join(excluded) or 'nothing'}")
    return ConstraintsReport(
        ConstraintsState.DIFFERENT,
        permitted,
        excluded,
        f"the issuing intermediate {subject!r} is name-constrained other than the policy asks: "
        + "; ".join(parts or ["other subtrees"]),
    )
