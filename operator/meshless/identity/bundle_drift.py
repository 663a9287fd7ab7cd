"""How a trust-bundle ConfigMap differs from what the CA trusts now (pure).

The desired set is the CA state's trusted roots at this moment (`CAStore.bundle`: during a
root rotation the old and the new root), never what the ConfigMap held before. What the
repair's Event reports of a removed root is its SHA-256 fingerprint and subject: roots are
public, and no key material is ever in a bundle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from meshless.api import MANAGED_BY, TRUST_BUNDLE_KEY
from meshless.pki.x509 import certificates_in, fingerprint

MAX_LISTED = 5  # roots named in one Event message; the rest are counted
MAX_SUBJECT = 80  # a root's subject is whatever its maker wrote: shortened in messages
MAX_MESSAGE = 1000


@dataclass(frozen=True)
class Root:
    fingerprint: str  # "sha256:" + lowercase hex
    subject: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> Root:
        return cls("sha256:" + fingerprint(cert).hex(), cert.subject.rfc4514_string())

    def __str__(self) -> str:
        subject = self.subject or "empty subject"
        if len(subject) > MAX_SUBJECT:
            subject = subject[: MAX_SUBJECT - 3] + "..."
        return f"{self.fingerprint} ({subject})"


@dataclass(frozen=True)
class BundleDrift:
    """What differs between the ConfigMap and the bundle it should hold."""

    extra: tuple[Root, ...] = ()  # roots it holds that the CA does not trust
    missing: tuple[Root, ...] = ()  # trusted roots it lacks
    unparseable: bool = False  # its bundle key holds something other than certificates
    extra_keys: tuple[str, ...] = ()  # data/binaryData keys other than the bundle's
    labels_missing: bool = False
    deleted: bool = False  # the ConfigMap does not exist

    @property
    def content_changed(self) -> bool:
        """Something a consumer reads differs (labels alone do not count)."""
        return bool(
            self.extra or self.missing or self.unparseable or self.extra_keys or self.deleted
        )

    def describe(self) -> str:
        """The repair, for the Warning Event: fingerprints and subjects, counts, key names."""
        parts: list[str] = []
        if self.deleted:
            parts.append("the ConfigMap had been deleted; recreated")
        if self.extra:
            listed = ", ".join(str(r) for r in self.extra[:MAX_LISTED])
            more = len(self.extra) - MAX_LISTED
            parts.append(
                f"removed {len(self.extra)} root(s) the CA does not trust: {listed}"
                + (f" and {more} more" if more > 0 else "")
            )
        if self.unparseable:
            parts.append(f"removed content of {TRUST_BUNDLE_KEY} that is not a certificate")
        if self.extra_keys:
            parts.append("removed keys " + ", ".join(self.extra_keys[:MAX_LISTED]))
        if self.missing:
            parts.append(f"missing roots restored ({len(self.missing)})")
        message = "; ".join(parts) or "labels restored"
        return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def bundle_drift(configmap: Mapping[str, Any] | None, desired_pem: bytes) -> BundleDrift | None:
    """None when `configmap` holds exactly `desired_pem` under the bundle key, nothing else,
    and our labels."""
    if configmap is None:
        return BundleDrift(deleted=True)
    data = configmap.get("data") or {}
    binary = configmap.get("binaryData") or {}
    current = data.get(TRUST_BUNDLE_KEY)
    extra_keys = tuple(sorted({*data, *binary} - {TRUST_BUNDLE_KEY}))
    labels = (configmap.get("metadata") or {}).get("labels") or {}
    labels_missing = any(labels.get(k) != v for k, v in MANAGED_BY.items())
    if current == desired_pem.decode() and not extra_keys and not labels_missing:
        return None
    desired = {Root.of(c) for c in certificates_in(desired_pem)}
    held, unparseable = _parse(current or "")
    return BundleDrift(
        extra=tuple(sorted(held - desired, key=lambda r: r.fingerprint)),
        missing=tuple(sorted(desired - held, key=lambda r: r.fingerprint)),
        unparseable=unparseable,
        extra_keys=extra_keys,
        labels_missing=labels_missing,
    )


def _parse(text: str) -> tuple[set[Root], bool]:
    """The roots a bundle text holds, and whether anything else is in it (a garbled block,
    text between certificates)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    roots: set[Root] = set()
    rest = text
    unparseable = False
    while True:
        start = rest.find(begin)
        if start < 0:
            unparseable = unparseable or bool(rest.strip())
            break
        unparseable = unparseable or bool(rest[:start].strip())
        stop = rest.find(end, start)
        if stop < 0:
            unparseable = True
            break
        block = rest[start : stop + len(end)]
        try:
            roots.add(Root.of(x509.load_pem_x509_certificate(block.encode())))
        except ValueError:
            unparseable = True
        rest = rest[stop + len(end) :]
    return roots, unparseable


__all__ = ["BundleDrift", "Root", "bundle_drift"]
