"""One reconcile's plan for an identity (identity/plan.py): from the Secret as read, the spec,
the CA and the clock, keep the certificate, issue one and why, or stop at a Secret that is not
ours; checked on real certificates and the Secret's actual bytes."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest

from meshless.identity.plan import (
    FIRST_ISSUE,
    CAView,
    Conflict,
    Issue,
    Keep,
    bundle_only_secret,
    mark_for,
    never_issued,
    next_check,
    plan_secret,
    ready_status,
    vouched_summary,
)
from meshless.identity.render import decode_secret_data, identity_secret
from meshless.identity.spec import IdentitySpec
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.reissue import summarize
from meshless.pki.rotation import RotationState
from meshless.pki.svid import issue_svid
from tests.unit.identity_helpers import NOW, UID, spec


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return bootstrap_self_signed("cluster.local", NOW)[0]


def view_of(ca: CertificateAuthority, bundle: bytes | None = None) -> CAView:
    return CAView(ca, bundle or bundle_pem(ca.roots), RotationState(), timedelta(hours=1))


def secret_for(ca: CertificateAuthority, the_spec: IdentitySpec, bundle: bytes) -> dict[str, Any]:
    svid = issue_svid(ca, the_spec.desired.request, NOW)
    manifest = identity_secret(
        the_spec,
        UID,
        chain_pem=svid.chain_pem,
        private_key_pem=svid.private_key_pem,
        bundle_pem=bundle,
        resource_version=None,
        checked=None,
    )
    manifest["metadata"]["resourceVersion"] = "42"
    return manifest


def test_no_secret_is_a_first_issue(ca: CertificateAuthority) -> None:
    planned = plan_secret(spec(), UID, None, view_of(ca), NOW)
    assert isinstance(planned, Issue) and planned.reason.code == FIRST_ISSUE.code


def test_a_good_secret_is_kept_without_a_write(ca: CertificateAuthority) -> None:
    view = view_of(ca)
    secret = secret_for(ca, spec(), view.bundle)
    planned = plan_secret(spec(), UID, secret, view, NOW + timedelta(minutes=1))
    assert isinstance(planned, Keep)
    assert not planned.rewrite and not planned.bundle_behind
    assert planned.chain_pem == decode_secret_data(secret["data"])["tls.crt"]
    assert planned.checked == mark_for(spec(), view, planned.summary)
    # Looked at again at the renewal time, the resync interval at the latest.
    seconds = next_check(planned.summary, NOW, timedelta(days=30), None)
    assert seconds == (planned.summary.renewal_time - NOW).total_seconds()
    assert next_check(planned.summary, NOW, timedelta(seconds=30), None) == 30


def test_only_a_stale_bundle_rewrites_the_same_certificate(ca: CertificateAuthority) -> None:
    other = bootstrap_self_signed("cluster.local", NOW)[0]
    secret = secret_for(ca, spec(), bundle_pem(ca.roots))
    view = view_of(ca, bundle_pem([*ca.roots, *other.roots]))
    planned = plan_secret(spec(), UID, secret, view, NOW + timedelta(minutes=1))
    assert isinstance(planned, Keep) and planned.rewrite and planned.bundle_behind
    assert planned.key_pem == decode_secret_data(secret["data"])["tls.key"]


def test_a_changed_spec_issues_again_with_the_reason(ca: CertificateAuthority) -> None:
    view = view_of(ca)
    secret = secret_for(ca, spec(), view.bundle)
    changed = spec(dnsNames=["payments.shop.svc"])
    planned = plan_secret(changed, UID, secret, view, NOW + timedelta(minutes=1))
    assert isinstance(planned, Issue) and planned.reason.code == "SpecChanged"


def test_a_secret_owned_by_another_is_a_conflict(ca: CertificateAuthority) -> None:
    view = view_of(ca)
    secret = secret_for(ca, spec(), view.bundle)
    secret["metadata"]["ownerReferences"][0]["name"] = "someone-else"
    planned = plan_secret(spec(), UID, secret, view, NOW)
    assert isinstance(planned, Conflict)
    assert "shop/payments-mtls exists and is not owned by WorkloadIdentity payments" in (
        planned.message
    )


def test_a_vouched_status_stands_for_the_secret_until_renewal(ca: CertificateAuthority) -> None:
    view = view_of(ca)
    svid = issue_svid(ca, spec().desired.request, NOW)
    summary = summarize(svid.certificate, spec().desired)
    body = {"metadata": {"name": "payments", "namespace": "shop", "generation": 1}}
    status = ready_status(body, spec(), summary, NOW)
    mark = mark_for(spec(), view, summary)
    assert vouched_summary(status, spec(), mark, view, NOW) == summary
    assert vouched_summary(status, spec(), "another mark", view, NOW) is None
    assert vouched_summary(status, spec(), mark, view, summary.renewal_time) is None
    not_ready = {**status, "conditions": [{**status["conditions"][0], "status": "False"}]}
    assert vouched_summary(not_ready, spec(), mark, view, NOW) is None


def test_never_issued_until_a_serial_or_a_secret_is_known() -> None:
    assert never_issued({}, secret_known=False)
    assert not never_issued({}, secret_known=True)
    assert not never_issued({"serialNumber": "7f"}, secret_known=False)
    conflict = {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretConflict"}]}
    assert not never_issued(conflict, secret_known=False)


def test_a_refused_identitys_secret_gets_only_the_new_bundle(ca: CertificateAuthority) -> None:
    bundle = bundle_pem(ca.roots)
    secret = secret_for(ca, spec(), bundle)
    assert bundle_only_secret(secret, bundle) is None
    newer = bundle_pem([*ca.roots, *bootstrap_self_signed("cluster.local", NOW)[0].roots])
    manifest = bundle_only_secret(secret, newer)
    assert manifest is not None
    assert base64.b64decode(manifest["data"]["ca.crt"]) == newer
    for field in ("tls.crt", "tls.key"):
        assert manifest["data"][field] == secret["data"][field]
    assert manifest["metadata"]["resourceVersion"] == "42"
    assert manifest["metadata"]["ownerReferences"] == secret["metadata"]["ownerReferences"]
