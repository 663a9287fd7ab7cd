"""SPIFFE IDs for Kubernetes service accounts."""

from __future__ import annotations

import re

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_TRUST_DOMAIN_LEN = 255


def validate_trust_domain(td: str) -> None:
    """Raise ValueError unless `td` is a bare SPIFFE trust domain name (e.g. "cluster.local")."""
    if not td:
        raise ValueError("trust domain must not be empty")
    if "://" in td:
        raise ValueError(f"trust domain {td!r} must not contain a scheme (drop 'spiffe://')")
    if ":" in td:
        raise ValueError(f"trust domain {td!r} must not contain a port")
    if "/" in td:
        raise ValueError(f"trust domain {td!r} must not contain a path")
    if len(td) > _MAX_TRUST_DOMAIN_LEN:
        raise ValueError(f"trust domain must be at most {_MAX_TRUST_DOMAIN_LEN} characters")
    if not _TRUST_DOMAIN.fullmatch(td):
        raise ValueError(
            f"trust domain {td!r} may contain only lowercase letters, digits, '.', '-' and '_'"
        )


def _validate_segment(what: str, value: str) -> None:
    if not value or value in (".", "..") or not _PATH_SEGMENT.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a valid SPIFFE ID path segment")


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>"""
    validate_trust_domain(trust_domain)
    _validate_segment("namespace", namespace)
    _validate_segment("service account", service_account)
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def trust_domain_id(trust_domain: str) -> str:
    """spiffe://<trust_domain>, the URI SAN that SPIFFE CA certificates carry."""
    validate_trust_domain(trust_domain)
    return f"spiffe://{trust_domain}"
