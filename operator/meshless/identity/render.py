"""Rendering (pure): the identity Secret, the trust-bundle ConfigMap, the status fields."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from meshless.api import (
    API_VERSION,
    GROUP,
    IDENTITY_LABEL,
    MANAGED_BY,
    SPIFFE_ID_ANNOTATION,
    TRUST_BUNDLE_KEY,
    TRUST_BUNDLE_NAME,
    Kind,
)
from meshless.identity.checked import CHECKED_ANNOTATION
from meshless.identity.rotation_marks import rotation_annotations
from meshless.identity.spec import IdentitySpec
from meshless.pki.reissue import CertificateSummary
from meshless.timestamps import rfc3339

KIND = Kind.WORKLOAD_IDENTITY.value

Manifest = dict[str, Any]


def owner_reference(identity_name: str, identity_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": identity_name,
        "uid": identity_uid,
        "controller": True,
    }


def is_owned_by(secret_meta: Mapping[str, Any], identity_name: str) -> bool:
    """Ours when a WorkloadIdentity of this name is its owner. A stale uid (the identity was
    deleted and made again before garbage collection ran) still counts as ours."""
    for ref in secret_meta.get("ownerReferences") or ():
        if (
            ref.get("kind") == KIND
            and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")
            and ref.get("name") == identity_name
        ):
            return True
    return False


def secret_labels(spec: IdentitySpec) -> dict[str, str]:
    return {**spec.secret_labels, **MANAGED_BY, IDENTITY_LABEL: spec.name}


def secret_annotations(spec: IdentitySpec) -> dict[str, str]:
    return {**spec.secret_annotations, SPIFFE_ID_ANNOTATION: spec.desired.request.spiffe_id}


def identity_secret(
    spec: IdentitySpec,
    identity_uid: str,
    *,
    chain_pem: bytes,
    private_key_pem: bytes,
    bundle_pem: bytes,
    resource_version: str | None = None,
    checked: str | None = None,
) -> Manifest:
    """`checked`: the checkmark (identity.checked) when the data is verified against the
    current CA and spec; None leaves it out (the next sweep reads the Secret). The rotation
    annotations (identity.rotation_marks) describe the chain and bundle written."""
    annotations = {**secret_annotations(spec), **rotation_annotations(chain_pem, bundle_pem)}
    if checked is not None:
        annotations[CHECKED_ANNOTATION] = checked
    metadata: dict[str, Any] = {
        "name": spec.secret_name,
        "namespace": spec.namespace,
        "labels": secret_labels(spec),
        "annotations": annotations,
        "ownerReferences": [owner_reference(spec.name, identity_uid)],
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": _b64(chain_pem),
            "tls.key": _b64(private_key_pem),
            "ca.crt": _b64(bundle_pem),
        },
    }


def metadata_drift(spec: IdentitySpec, secret_meta: Mapping[str, Any], identity_uid: str) -> bool:
    """True when labels or annotations we set are missing or changed on our Secret, or its
    ownerReference names a previous identity's uid (garbage collection would delete it)."""
    labels = secret_meta.get("labels") or {}
    annotations = secret_meta.get("annotations") or {}
    owners = secret_meta.get("ownerReferences") or ()
    return (
        any(labels.get(k) != v for k, v in secret_labels(spec).items())
        or any(annotations.get(k) != v for k, v in secret_annotations(spec).items())
        or not any(ref.get("uid") == identity_uid for ref in owners)
    )


def trust_bundle_configmap(namespace: str, bundle_pem: bytes) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": TRUST_BUNDLE_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "data": {TRUST_BUNDLE_KEY: bundle_pem.decode()},
    }


def certificate_status(summary: CertificateSummary, secret_name: str) -> dict[str, Any]:
    return {
        "spiffeID": summary.spiffe_id,
        "serialNumber": summary.serial_number,
        "notBefore": rfc3339(summary.not_before),
        "notAfter": rfc3339(summary.not_after),
        "renewalTime": rfc3339(summary.renewal_time),
        "secretName": secret_name,
    }


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for key, value in (data or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True)
        except ValueError:
            out[key] = b""
    return out


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
