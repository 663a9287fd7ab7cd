"""Rendering: the identity Secret, ownership, drift, the trust bundle, status fields."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from meshless.api import IDENTITY_LABEL, SPIFFE_ID_ANNOTATION, TRUST_BUNDLE_KEY, TRUST_BUNDLE_NAME
from meshless.identity.render import (
    certificate_status,
    decode_secret_data,
    identity_secret,
    is_owned_by,
    metadata_drift,
    trust_bundle_configmap,
)
from meshless.identity.rotation_marks import BUNDLE_ROOTS_ANNOTATION, rotation_annotations
from meshless.identity.spec import IdentitySpec, parse_identity
from meshless.pki.reissue import CertificateSummary
from meshless.settings import Settings

UID = "4f3c2a10-0000-4000-8000-000000000001"
CHAIN = b"-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nkey\n-----END PRIVATE KEY-----\n"
BUNDLE = b"-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n"
SPIFFE = "spiffe://cluster.local/ns/shop/sa/payments"


def make_spec(**template: dict[str, str]) -> IdentitySpec:
    spec: dict[str, Any] = {"serviceAccountName": "payments"}
    if template:
        spec["secretTemplate"] = template
    return parse_identity("shop", "payments", spec, Settings())


def render(spec: IdentitySpec | None = None, **kwargs: Any) -> dict[str, Any]:
    return identity_secret(
        spec or make_spec(),
        UID,
        chain_pem=CHAIN,
        private_key_pem=KEY,
        bundle_pem=BUNDLE,
        **kwargs,
    )


def owner(**overrides: Any) -> dict[str, Any]:
    ref = {
        "apiVersion": "meshless.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "name": "payments",
        "uid": UID,
        "controller": True,
    }
    ref.update(overrides)
    return ref


def test_identity_secret_shape() -> None:
    secret = render()
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/tls"
    meta = secret["metadata"]
    assert meta["name"] == "payments-mtls"
    assert meta["namespace"] == "shop"
    assert meta["labels"][IDENTITY_LABEL] == "payments"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "meshless"
    # With what a root rotation's count needs of the chain and bundle written.
    assert meta["annotations"] == {
        SPIFFE_ID_ANNOTATION: SPIFFE,
        **rotation_annotations(CHAIN, BUNDLE),
    }
    assert "resourceVersion" not in meta


def test_identity_secret_data_is_base64_of_exactly_three_keys() -> None:
    data = render()["data"]
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    assert base64.b64decode(data["tls.crt"], validate=True) == CHAIN
    assert base64.b64decode(data["tls.key"], validate=True) == KEY
    assert base64.b64decode(data["ca.crt"], validate=True) == BUNDLE
    assert all(isinstance(v, str) for v in data.values())


def test_identity_secret_owner_reference() -> None:
    refs = render()["metadata"]["ownerReferences"]
    assert refs == [owner()]
    assert refs[0]["controller"] is True


def test_identity_secret_resource_version_only_when_given() -> None:
    assert "resourceVersion" not in render(resource_version=None)["metadata"]
    assert render(resource_version="12345")["metadata"]["resourceVersion"] == "12345"


def test_template_labels_and_annotations_are_merged_but_ours_win() -> None:
    spec = make_spec(
        labels={"team": "payments", IDENTITY_LABEL: "someone-else"},
        annotations={
            "note": "hi",
            SPIFFE_ID_ANNOTATION: "spiffe://evil/ns/x/sa/y",
            BUNDLE_ROOTS_ANNOTATION: "a" * 64,
        },
    )
    meta = render(spec)["metadata"]
    assert meta["labels"] == {
        "team": "payments",
        IDENTITY_LABEL: "payments",
        "app.kubernetes.io/managed-by": "meshless",
    }
    assert meta["annotations"] == {
        "note": "hi",
        SPIFFE_ID_ANNOTATION: SPIFFE,
        **rotation_annotations(CHAIN, BUNDLE),
    }


@pytest.mark.parametrize(
    ("meta", "owned"),
    [
        ({"ownerReferences": [owner()]}, True),
        ({"ownerReferences": [owner(uid="stale-uid-from-a-deleted-identity")]}, True),
        ({"ownerReferences": [owner(apiVersion="meshless.dev/v1beta1")]}, True),
        ({"ownerReferences": [{"kind": "Deployment", "apiVersion": "apps/v1"}, owner()]}, True),
        ({"ownerReferences": [owner(kind="MtlsPolicy")]}, False),
        ({"ownerReferences": [owner(apiVersion="cert-manager.io/v1")]}, False),
        ({"ownerReferences": [owner(apiVersion="v1")]}, False),
        ({"ownerReferences": [owner(name="billing")]}, False),
        ({"ownerReferences": []}, False),
        ({"ownerReferences": None}, False),
        ({}, False),
    ],
)
def test_is_owned_by(meta: dict[str, Any], owned: bool) -> None:
    assert is_owned_by(meta, "payments") is owned


def test_rendered_secret_is_owned_by_its_identity_only() -> None:
    meta = render()["metadata"]
    assert is_owned_by(meta, "payments")
    assert not is_owned_by(meta, "other")


def test_no_metadata_drift_on_what_we_rendered() -> None:
    spec = make_spec(labels={"team": "x"}, annotations={"note": "y"})
    meta = render(spec)["metadata"]
    assert metadata_drift(spec, meta, UID) is False


def test_extra_labels_and_annotations_are_not_drift() -> None:
    spec = make_spec()
    meta = render(spec)["metadata"]
    meta["labels"]["added-by-someone"] = "x"
    meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    assert metadata_drift(spec, meta, UID) is False


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m["labels"].pop(IDENTITY_LABEL),
        lambda m: m["labels"].__setitem__(IDENTITY_LABEL, "other"),
        lambda m: m["labels"].pop("app.kubernetes.io/managed-by"),
        lambda m: m["labels"].pop("team"),
        lambda m: m["annotations"].pop(SPIFFE_ID_ANNOTATION),
        lambda m: m["annotations"].__setitem__("note", "changed"),
        lambda m: m.pop("labels"),
        lambda m: m.__setitem__("annotations", None),
    ],
)
def test_metadata_drift_when_ours_are_missing_or_changed(
    mutate: Callable[[dict[str, Any]], object],
) -> None:
    spec = make_spec(labels={"team": "x"}, annotations={"note": "y"})
    meta = render(spec)["metadata"]
    mutate(meta)
    assert metadata_drift(spec, meta, UID) is True


def test_an_owner_reference_to_a_previous_identity_is_drift() -> None:
    spec = make_spec()
    meta = render(spec)["metadata"]
    assert metadata_drift(spec, meta, "uid-of-the-identity-made-again") is True


def test_trust_bundle_configmap() -> None:
    cm = trust_bundle_configmap("shop", BUNDLE)
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": TRUST_BUNDLE_NAME,
            "namespace": "shop",
            "labels": {"app.kubernetes.io/managed-by": "meshless"},
        },
        "data": {TRUST_BUNDLE_KEY: BUNDLE.decode()},
    }
    assert TRUST_BUNDLE_NAME == "meshless-trust-bundle"
    assert TRUST_BUNDLE_KEY == "ca.crt"


def test_certificate_status_uses_rfc3339_z_times() -> None:
    summary = CertificateSummary(
        spiffe_id=SPIFFE,
        serial_number="1a2b3c",
        not_before=datetime(2026, 1, 15, 11, 59, 30, tzinfo=UTC),
        not_after=datetime(2026, 1, 16, 12, 0, 0, 999999, tzinfo=UTC),
        renewal_time=datetime(2026, 1, 16, 2, 24, 5, tzinfo=UTC),
        dns_names=("payments.shop.svc",),
    )
    assert certificate_status(summary, "payments-mtls") == {
        "spiffeID": SPIFFE,
        "serialNumber": "1a2b3c",
        "notBefore": "2026-01-15T11:59:30Z",
        "notAfter": "2026-01-16T12:00:00Z",
        "renewalTime": "2026-01-16T02:24:05Z",
        "secretName": "payments-mtls",
    }


def test_decode_secret_data_round_trips_what_we_render() -> None:
    assert decode_secret_data(render()["data"]) == {
        "tls.crt": CHAIN,
        "tls.key": KEY,
        "ca.crt": BUNDLE,
    }


def test_decode_secret_data_tolerates_bad_base64() -> None:
    good = base64.b64encode(b"fine").decode()
    out = decode_secret_data({"ok": good, "bad": "not base64!!", "short": "abc", "empty": ""})
    assert out == {"ok": b"fine", "bad": b"", "short": b"", "empty": b""}


@pytest.mark.parametrize("data", [None, {}])
def test_decode_secret_data_of_nothing(data: dict[str, str] | None) -> None:
    assert decode_secret_data(data) == {}
