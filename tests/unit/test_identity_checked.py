"""What the sweep trusts of an identity Secret's metadata: the checkmark, the writer, the
owner (identity.checked)."""

from __future__ import annotations

from typing import Any

import pytest

from meshless.identity.checked import (
    checkmark,
    data_written_only_by,
    is_own_secret,
    summary_from_status,
)
from meshless.identity.render import certificate_status
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.reissue import summarize
from meshless.pki.svid import issue_svid
from tests.unit.identity_helpers import NOW, UID, spec


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return bootstrap_self_signed("cluster.local", NOW)[0]


@pytest.fixture(scope="module")
def status(ca: CertificateAuthority) -> dict[str, str]:
    svid = issue_svid(ca, spec().desired.request, NOW)
    return certificate_status(summarize(svid.certificate, spec().desired), "payments-mtls")


def test_checkmark_is_stable_for_the_same_inputs(
    ca: CertificateAuthority, status: dict[str, str]
) -> None:
    bundle = bundle_pem(ca.roots)
    assert checkmark(spec().desired, ca, bundle, status) == checkmark(
        spec().desired, ca, bundle, dict(status)
    )


def test_checkmark_changes_with_every_input(
    ca: CertificateAuthority, status: dict[str, str]
) -> None:
    bundle = bundle_pem(ca.roots)
    base = checkmark(spec().desired, ca, bundle, status)
    other_ca = bootstrap_self_signed("cluster.local", NOW)[0]
    variants = {
        "another issuer": checkmark(spec().desired, other_ca, bundle, status),
        "another bundle": checkmark(
            spec().desired, ca, bundle_pem([*ca.roots, *other_ca.roots]), status
        ),
        "another DNS name": checkmark(spec(dnsNames=["api.shop.svc"]).desired, ca, bundle, status),
        "another ttl": checkmark(spec(ttl="2h").desired, ca, bundle, status),
        "another serial": checkmark(spec().desired, ca, bundle, {**status, "serialNumber": "1234"}),
        "another renewal time": checkmark(
            spec().desired, ca, bundle, {**status, "renewalTime": "2030-01-01T00:00:00Z"}
        ),
        "no status": checkmark(spec().desired, ca, bundle, {}),
    }
    assert all(mark != base for mark in variants.values()), variants
    assert len(set(variants.values())) == len(variants)


def entry(manager: str, fields: dict[str, Any], **extra: str) -> dict[str, Any]:
    return {"manager": manager, "operation": "Update", "fieldsV1": fields, **extra}


DATA = {"f:data": {"f:tls.crt": {}, "f:tls.key": {}, "f:ca.crt": {}}}
LABELS = {"f:metadata": {"f:labels": {"f:team": {}}}}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([entry("meshless", DATA)], True),
        ([entry("meshless", DATA), entry("kubectl-label", LABELS)], True),  # metadata only
        ([entry("meshless", DATA), entry("kubectl-edit", {"f:data": {"f:tls.crt": {}}})], False),
        ([entry("kubectl-create", DATA)], False),
        ([entry("meshless", {"f:stringData": {}}), entry("meshless", DATA)], True),
        ([entry("meshless", DATA), entry("x", {"f:binaryData": {"f:a": {}}})], False),
        ([entry("meshless", DATA, subresource="status")], False),
        ([], False),  # managedFields stripped: nothing says who wrote the data
        ([entry("kubectl-label", LABELS)], False),
    ],
)
def test_data_written_only_by(entries: list[dict[str, Any]], expected: bool) -> None:
    assert data_written_only_by({"managedFields": entries}, "meshless") is expected


def owner(**overrides: Any) -> dict[str, Any]:
    ref = {
        "apiVersion": "meshless.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "name": "payments",
        "uid": UID,
        "controller": True,
    }
    return {**ref, **overrides}


@pytest.mark.parametrize(
    ("name", "refs", "expected"),
    [
        ("payments-mtls", [owner()], True),
        ("payments-blob", [owner()], False),  # labelled, owned, not the secretName
        ("payments-mtls", [], False),  # a tenant's Secret with the identity's label
        ("payments-mtls", [owner(uid="another")], False),  # a previous identity's
        ("payments-mtls", [owner(controller=False)], False),
        ("payments-mtls", [owner(kind="Deployment")], False),
        ("payments-mtls", [owner(apiVersion="evil.dev/v1")], False),
        ("payments-mtls", [owner(name="other")], False),
    ],
)
def test_is_own_secret(name: str, refs: list[dict[str, Any]], expected: bool) -> None:
    meta = {"name": name, "ownerReferences": refs}
    assert is_own_secret(meta, "payments", UID, "payments-mtls") is expected


def test_summary_from_status_round_trips(status: dict[str, str]) -> None:
    summary = summary_from_status(status, spec().desired)
    assert summary is not None
    assert certificate_status(summary, "payments-mtls") == status
    assert summary.renewal_time > NOW


@pytest.mark.parametrize(
    "broken",
    [{"notAfter": None}, {"renewalTime": "tomorrow"}, {"notBefore": "2026-03-01T12:00:00"}],
)
def test_summary_from_a_garbled_status_is_none(
    status: dict[str, str], broken: dict[str, Any]
) -> None:
    assert summary_from_status({**status, **broken}, spec().desired) is None
    assert summary_from_status({}, spec().desired) is None


def test_checkmark_ignores_nothing_the_status_reports(
    ca: CertificateAuthority, status: dict[str, str]
) -> None:
    """Unrelated status fields (conditions) do not change it; every reported field does."""
    bundle = bundle_pem(ca.roots)
    base = checkmark(spec().desired, ca, bundle, status)
    assert checkmark(spec().desired, ca, bundle, {**status, "conditions": [1]}) == base
    for key in status:
        assert checkmark(spec().desired, ca, bundle, {**status, key: "x"}) != base, key
