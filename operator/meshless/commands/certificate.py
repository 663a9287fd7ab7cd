"""What `meshless inspect` reports about a WorkloadIdentity's certificate (pure).

Everything comes from the Secret's own bytes (tls.crt, ca.crt), cross-checked against what the
identity's status says, so a status that lags behind the Secret shows up.
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from meshless.api import ConditionType
from meshless.commands.output import (
    condition,
    human_duration,
    parse_time,
)
from meshless.identity.spec import default_secret_name
from meshless.pki.bundle import parse_bundle
from meshless.pki.ca import CA_CRT, TLS_CRT, TLS_KEY
from meshless.pki.keys import algorithm_of_public_key
from meshless.pki.svid import parse_certificate_chain
from meshless.pki.x509 import dns_sans, issued_by, uri_sans
from meshless.timestamps import rfc3339


@dataclass(frozen=True)
class ChainVerdict:
    ok: bool
    detail: str

    @property
    def word(self) -> str:
        return "VALID" if self.ok else "INVALID"


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def chain_verdict(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], now: datetime
) -> ChainVerdict:
    """Does tls.crt (leaf, then intermediates) chain to a root in ca.crt, every certificate
    valid at `now`? Signatures are checked link by link, as a TLS peer would."""
    if not chain:
        return ChainVerdict(False, f"{TLS_CRT} holds no certificate")
    for index, cert in enumerate(chain):
        what = "leaf" if index == 0 else f"intermediate {_name(cert)}"
        if now < cert.not_valid_before_utc:
            return ChainVerdict(False, f"{what} is not valid before {cert.not_valid_before_utc}")
        if now >= cert.not_valid_after_utc:
            return ChainVerdict(False, f"{what} expired at {rfc3339(cert.not_valid_after_utc)}")
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            return ChainVerdict(
                False, f"{_name(child)} is not signed by the next certificate {_name(parent)}"
            )
    top = chain[-1]
    for root in roots:
        if root.subject == top.issuer and issued_by(top, root):
            if not root.not_valid_before_utc <= now < root.not_valid_after_utc:
                return ChainVerdict(False, f"root {_name(root)} in {CA_CRT} is not valid now")
            return ChainVerdict(True, f"chains to root {_name(root)} in {CA_CRT}")
        if top == root:  # the chain ends in a root that the bundle holds
            return ChainVerdict(True, f"ends in root {_name(root)} held in {CA_CRT}")
    return ChainVerdict(
        False, f"no root in {CA_CRT} signed {_name(top)} (issuer {top.issuer.rfc4514_string()})"
    )


def secret_name_of(identity: Mapping[str, Any]) -> str:
    status = identity.get("status") or {}
    spec = identity.get("spec") or {}
    return str(
        status.get("secretName")
        or spec.get("secretName")
        or default_secret_name(identity["metadata"]["name"])
    )


def decode(secret: Mapping[str, Any]) -> dict[str, bytes]:
    return {str(k): base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def inspect_identity(
    identity: Mapping[str, Any], secret: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The report: JSON-ready, camelCase like Kubernetes status fields."""
    meta = identity["metadata"]
    status = identity.get("status") or {}
    ready = condition(identity, ConditionType.READY) or {}
    report: dict[str, Any] = {
        "identity": f"{meta['namespace']}/{meta['name']}",
        "serviceAccount": (identity.get("spec") or {}).get("serviceAccountName"),
        "secret": secret_name_of(identity),
        "ready": {
            "status": ready.get("status", "Unknown"),
            "reason": ready.get("reason"),
            "message": ready.get("message"),
        },
        "renewalTime": status.get("renewalTime"),
    }
    if secret is None:
        report["certificate"] = None
        report["problem"] = f"Secret {meta['namespace']}/{report['secret']} does not exist"
        return report
    data = decode(secret)
    missing = [k for k in (TLS_CRT, TLS_KEY, CA_CRT) if not data.get(k)]
    if not data.get(TLS_CRT):
        report["certificate"] = None
        report["problem"] = f"the Secret lacks {', '.join(missing)}"
        return report
    try:
        chain = parse_certificate_chain(data[TLS_CRT])
    except ValueError as exc:
        report["certificate"] = None
        report["problem"] = str(exc)
        return report
    leaf = chain[0]
    uris, dns = uri_sans(leaf), dns_sans(leaf)
    try:
        roots = parse_bundle(data.get(CA_CRT) or b"")
    except ValueError:
        roots = []
    verdict = chain_verdict(chain, roots, now)
    try:
        algorithm = algorithm_of_public_key(leaf.public_key())
    except (ValueError, UnsupportedAlgorithm):
        algorithm = None
    serial = format(leaf.serial_number, "x")
    left = leaf.not_valid_after_utc - now
    renewal = parse_time(status.get("renewalTime"))
    report["certificate"] = {
        "spiffeID": next((u for u in uris if u.startswith("spiffe://")), None),
        "uriSANs": uris,
        "dnsNames": dns,
        "serialNumber": serial,
        "keyAlgorithm": str(algorithm) if algorithm else None,
        "notBefore": rfc3339(leaf.not_valid_before_utc),
        "notAfter": rfc3339(leaf.not_valid_after_utc),
        "timeLeft": human_duration(left),
        "timeLeftSeconds": int(left.total_seconds()),
        "issuer": leaf.issuer.rfc4514_string(),
        "chainLength": len(chain),
        "chain": {"verdict": verdict.word, "detail": verdict.detail},
        "trustedRoots": [_name(r) for r in roots],
    }
    report["renewsIn"] = human_duration(renewal - now) if renewal else None
    report["statusMatchesSecret"] = status.get("serialNumber") == serial
    if missing:
        report["problem"] = f"the Secret lacks {', '.join(missing)}"
    return report


def inspect_lines(report: Mapping[str, Any]) -> list[tuple[str, object]]:
    """(label, value) pairs for the table output."""
    ready = report["ready"]
    ready_text = ready["status"] + (
        f" ({ready['reason']}: {ready['message']})" if ready["status"] != "True" else ""
    )
    pairs: list[tuple[str, object]] = [
        ("Identity", report["identity"]),
        ("ServiceAccount", report["serviceAccount"]),
        ("Secret", report["secret"]),
        ("Ready", ready_text),
    ]
    cert = report.get("certificate")
    if cert:
        pairs += [
            ("SPIFFE ID", cert["spiffeID"]),
            ("URI SANs", ", ".join(cert["uriSANs"])),
            ("DNS SANs", ", ".join(cert["dnsNames"])),
            ("Serial", cert["serialNumber"]),
            ("Key", cert["keyAlgorithm"]),
            ("Not before", cert["notBefore"]),
            ("Not after", cert["notAfter"]),
            ("Time left", cert["timeLeft"]),
            ("Issuer", cert["issuer"]),
            ("Chain", f"{cert['chain']['verdict']}: {cert['chain']['detail']}"),
        ]
    renewal = report.get("renewalTime")
    pairs.append(
        ("Renews at", f"{renewal} (in {report['renewsIn']})" if renewal else None),
    )
    if cert and not report.get("statusMatchesSecret"):
        pairs.append(("Note", "status.serialNumber differs from the Secret (a renewal in flight)"))
    if report.get("problem"):
        pairs.append(("Problem", report["problem"]))
    return pairs
