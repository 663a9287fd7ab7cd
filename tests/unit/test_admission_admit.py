"""admit(request, state) -> response: every admission decision, one table row per rule (the
row's id names the rule, numbered as in admission/admit.py's docstring).

The judgements themselves have their own tests (test_admission_inject.py,
test_admission_validate.py, test_admission_binding.py, test_admission_dns_names.py); these
rows show which webhook applies which of them, in which order, from which state.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from meshless.admission import pods
from meshless.admission.admit import (
    SERVED,
    AdmissionRequest,
    AdmissionResponse,
    AdmissionState,
    admit,
)
from meshless.admission.inject import injection_patch
from meshless.admission.review import BadReview, parse_review, review_answer
from meshless.api import AdmissionAction, Mode
from meshless.delivery import Delivery, ServedApis
from meshless.identity.spec import IdentityRef
from meshless.pki.names import DnsNamePolicy
from meshless.policy.provision import IdentityRecord
from tests.unit.admission_helpers import IdentityTable, apply_patch, pod, policy, policy_set

NS = "shop"
TD = "cluster.local"
POD = ("", "v1", "pods", "")
STATUS = ("", "v1", "pods", "status")
EPHEMERAL = ("", "v1", "pods", "ephemeralcontainers")
IDENTITIES = ("meshless.dev", "v1alpha1", "workloadidentities", "")
MOUNT = {"name": "meshless-identity", "mountPath": "/var/run/secrets/meshless/", "readOnly": True}

STRICT = policy_set(policy(NS, "strict"))
WARN = policy_set(policy(NS, "warn", admission=AdmissionAction.WARN))
AUDIT = policy_set(policy(NS, "audit", admission=AdmissionAction.AUDIT))
DISABLE = policy_set(policy(NS, "off", Mode.DISABLE))
# A user-made WorkloadIdentity for ServiceAccount payments, and one of admin.
PAYMENTS_ID = IdentityRecord(NS, "payments-id", "payments", "payments-tls", provisioned=False)
ADMIN_ID = IdentityRecord(NS, "admin-id", "admin", "admin-tls", provisioned=False)
READY = AdmissionState(
    trust_domain=TD,
    policies=STRICT,
    identities=IdentityTable((PAYMENTS_ID, ADMIN_ID)),
    identities_listed=True,
)
STARTING = replace(READY, policies=None, identities=IdentityTable(), identities_listed=False)


def injected(secret: str = "payments-tls") -> dict[str, Any]:
    """The pod as the injector leaves it (what a later webhook sees)."""
    body = pod()
    resolution = STRICT.resolve(pods.pod_info(body, NS))
    sid = f"spiffe://{TD}/ns/{NS}/sa/payments"
    return apply_patch(
        body, injection_patch(body, resolution, IdentityRef(NS, "payments", secret, sid, False))
    )


def opted_out() -> dict[str, Any]:
    return pod(annotations={"meshless.dev/inject": "false"})


def with_volume(body: dict[str, Any], secret: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["spec"].setdefault("volumes", []).append(
        {"name": "certs", "secret": {"secretName": secret}}
    )
    return body


def identity(*names: str) -> dict[str, Any]:
    return {
        "apiVersion": "meshless.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "metadata": {"name": "api", "namespace": NS},
        "spec": {"serviceAccountName": "api", "dnsNames": list(names)},
    }


def request(
    webhook: str,
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    resource: tuple[str, str, str, str] = POD,
    old: dict[str, Any] | None = None,
    namespace: str = NS,
    dry_run: bool = False,
) -> AdmissionRequest:
    return AdmissionRequest(
        webhook=webhook,
        uid="u-1",
        operation=operation,
        resource=resource,
        namespace=namespace,
        obj=obj,
        old=old,
        dry_run=dry_run,
    )


@dataclass(frozen=True)
class Expect:
    allowed: bool
    code: int = 200
    message: tuple[str, ...] = ()  # fragments of the refusal
    warnings: tuple[str, ...] = ()  # fragments, one per warning, in order
    records: tuple[tuple[str, AdmissionAction], ...] = ()  # (policy, action)
    patched: bool = False
    note: str = ""
    check: Callable[[AdmissionResponse], None] | None = field(default=None, compare=False)


def row(rule: str, req: AdmissionRequest, state: AdmissionState, expect: Expect) -> Any:
    return pytest.param(req, state, expect, id=rule)


def _injects_payments_own_identity(response: AdmissionResponse) -> None:
    stored = apply_patch(pod(), list(response.patch))
    assert stored["metadata"]["labels"]["meshless.dev/identity"] == "payments"
    assert stored["spec"]["volumes"] == [
        {"name": "meshless-identity", "secret": {"secretName": "payments-tls"}}
    ]
    for container in (*stored["spec"]["initContainers"], *stored["spec"]["containers"]):
        assert MOUNT in container["volumeMounts"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MESHLESS_SPIFFE_ID"] == f"spiffe://{TD}/ns/{NS}/sa/payments"
        assert env["MESHLESS_MTLS_MODE"] == "STRICT"


def _injects_the_provisioned_identity(response: AdmissionResponse) -> None:
    stored = apply_patch(pod(sa="web"), list(response.patch))
    [volume] = stored["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "meshless-web-mtls"


RULES = [
    # 1. paths and resources
    row(
        "1-a-path-we-do-not-serve-is-refused-404",
        request("nowhere", pod()),
        READY,
        Expect(False, 404, ("meshless serves no webhook at /nowhere",)),
    ),
    row(
        "1-a-resource-the-webhook-does-not-review-is-refused-naming-what-it-reviews",
        request(
            "meshless-strict", {"metadata": {"name": "c"}}, resource=("", "v1", "configmaps", "")
        ),
        READY,
        Expect(
            False,
            400,
            (
                "meshless admission at /meshless-strict reviews v1 pods, "
                "v1 pods/ephemeralcontainers, v1 pods/status only, not v1 configmaps",
            ),
        ),
    ),
    row(
        "1-the-injector-reviews-no-subresource",
        request("meshless-inject", pod(), operation="UPDATE", resource=STATUS),
        READY,
        Expect(False, 400, ("reviews v1 pods only, not v1 pods/status",)),
    ),
    # 2. operations
    row(
        "2-delete-is-allowed-unjudged",
        request("meshless-strict", None, operation="DELETE", old=opted_out()),
        READY,
        Expect(True),
    ),
    row(
        "2-the-injector-patches-only-a-created-pod",
        request("meshless-inject", pod(), operation="UPDATE", old=pod()),
        READY,
        Expect(True),
    ),
    # 3. namespace
    row(
        "3-an-object-without-a-namespace-is-refused",
        request("meshless-strict", pod(), namespace=""),
        READY,
        Expect(False, 400, ("the Pod has no namespace",)),
    ),
    # 4. policies not read yet
    row(
        "4-the-injector-refuses-until-the-policies-are-read",
        request("meshless-inject", pod()),
        STARTING,
        Expect(False, 503, ("has not read the MtlsPolicies yet; pod shop/web is refused",)),
    ),
    row(
        "4-the-strict-webhook-refuses-until-the-policies-are-read",
        request("meshless-strict", injected()),
        STARTING,
        Expect(False, 503, ("has not read the MtlsPolicies yet",)),
    ),
    row(
        "4-an-opted-out-pod-is-not-injected-even-before-the-policies-are-read",
        request("meshless-inject", opted_out()),
        STARTING,
        Expect(True),
    ),
    row(
        "4-the-identity-label-webhook-needs-no-policies",
        request("meshless-identity-label", pod(labels={"meshless.dev/identity": "payments"})),
        STARTING,
        Expect(False, 403, ("only the injector sets this label",)),
    ),
    # 5. identities not listed yet
    row(
        "5-the-strict-webhook-refuses-a-pod-using-secrets-until-identities-are-listed",
        request("meshless-strict", injected()),
        replace(READY, identities_listed=False),
        Expect(False, 503, ("has not read the WorkloadIdentities yet; pod shop/web uses Secrets",)),
    ),
    row(
        "5-the-binding-webhook-admits-unchecked-until-identities-are-listed",
        request("meshless-binding", with_volume(pod(), "admin-tls")),
        replace(READY, identities_listed=False),
        Expect(True, note="pod shop/web admitted unchecked"),
    ),
    row(
        "5-a-pod-without-secrets-needs-no-identities",
        request("meshless-strict", opted_out()),
        replace(READY, identities_listed=False, policies=DISABLE),
        Expect(True),
    ),
    # 6. the judgements, by webhook
    row(
        "6-inject-the-service-accounts-own-workload-identity",
        request("meshless-inject", pod()),
        READY,
        Expect(True, patched=True, check=_injects_payments_own_identity),
    ),
    row(
        "6-inject-the-provisioned-identity-of-an-account-without-one",
        request("meshless-inject", pod(sa="web")),
        READY,
        Expect(True, patched=True, check=_injects_the_provisioned_identity),
    ),
    row(
        "6-no-injection-under-disable",
        request("meshless-inject", pod()),
        replace(READY, policies=DISABLE),
        Expect(True),
    ),
    row(
        "6-no-injection-when-opted-out",
        request("meshless-inject", opted_out()),
        READY,
        Expect(True),
    ),
    row(
        "6-an-injected-pod-is-not-patched-again",
        request("meshless-inject", injected()),
        READY,
        Expect(True, patched=False),
    ),
    row(
        "6-an-injection-conflict-is-refused-naming-it",
        request("meshless-inject", pod(labels={"meshless.dev/identity": "admin"})),
        READY,
        Expect(
            False,
            400,
            (
                "meshless cannot inject its identity into pod shop/web",
                "label meshless.dev/identity='admin' is already set",
            ),
        ),
    ),
    row(
        "6-strict-enforce-denies-a-pod-without-its-identity",
        request("meshless-strict", opted_out()),
        READY,
        Expect(False, 403, ("under STRICT mTLS on port 8443 by MtlsPolicy shop/strict",)),
    ),
    row(
        "6-strict-admits-an-injected-pod",
        request("meshless-strict", injected()),
        READY,
        Expect(True),
    ),
    row(
        "6-strict-warn-admits-with-a-warning-and-a-record",
        request("meshless-strict", opted_out()),
        replace(READY, policies=WARN),
        Expect(
            True,
            warnings=("admitted because the policy's admission is Warn",),
            records=(("shop/warn", AdmissionAction.WARN),),
        ),
    ),
    row(
        "6-strict-audit-admits-with-a-record-only",
        request("meshless-strict", opted_out()),
        replace(READY, policies=AUDIT),
        Expect(True, records=(("shop/audit", AdmissionAction.AUDIT),)),
    ),
    row(
        "6-strict-judges-the-binding-first",
        request("meshless-strict", with_volume(injected(), "admin-tls")),
        READY,
        Expect(False, 403, ("uses Secret 'admin-tls', which holds the identity",)),
    ),
    row(
        "6-strict-judges-the-identity-label-too",
        request("meshless-strict", injected(secret="meshless-payments-mtls")),
        READY,
        Expect(False, 403, ("without its identity (Secret 'payments-tls') mounted",)),
    ),
    row(
        "6-the-identity-label-webhook-admits-an-injected-pod",
        request("meshless-identity-label", injected()),
        READY,
        Expect(True),
    ),
    row(
        "6-the-identity-label-may-not-be-added-by-an-update",
        request(
            "meshless-identity-label",
            pod(labels={"meshless.dev/identity": "payments"}),
            operation="UPDATE",
            resource=STATUS,
            old=pod(labels={}),
        ),
        READY,
        Expect(False, 403, ("an update may not add the label meshless.dev/identity",)),
    ),
    row(
        "6-binding-refuses-another-accounts-identity",
        request("meshless-binding", with_volume(pod(), "admin-tls")),
        READY,
        Expect(False, 403, ("ServiceAccount 'admin' (WorkloadIdentity 'admin-id')",)),
    ),
    row(
        "6-binding-refuses-a-reserved-secret-of-another-account",
        request("meshless-binding", with_volume(pod(), "meshless-admin-mtls")),
        replace(READY, identities=IdentityTable()),
        Expect(False, 403, ("meshless-admin-mtls",)),
    ),
    row(
        "6-binding-ignores-an-identity-whose-secret-is-not-its-own",
        request("meshless-binding", with_volume(pod(), "admin-tls")),
        replace(READY, identities=IdentityTable((replace(ADMIN_ID, unusable="SecretConflict"),))),
        Expect(True),
    ),
    row(
        "6-binding-admits-the-pods-own-identity",
        request("meshless-binding", with_volume(pod(), "payments-tls")),
        READY,
        Expect(True),
    ),
    row(
        "6-binding-judges-only-what-an-update-adds",
        request(
            "meshless-binding",
            with_volume(pod(), "admin-tls"),
            operation="UPDATE",
            resource=EPHEMERAL,
            old=with_volume(pod(), "admin-tls"),
        ),
        READY,
        Expect(True),
    ),
    row(
        "6-dns-names-refuses-a-name-the-policy-refuses",
        request("meshless-dns-names", identity("payments.other.svc"), resource=IDENTITIES),
        READY,
        Expect(False, 403, ("WorkloadIdentity shop/api", "'payments.other.svc'")),
    ),
    row(
        "6-dns-names-follow-the-operators-allowed-names",
        request("meshless-dns-names", identity("api.example.com"), resource=IDENTITIES),
        replace(READY, dns_names=DnsNamePolicy(allowed=("api.example.com",))),
        Expect(True),
    ),
    # 7. records
    row(
        "7-a-dry-run-is-judged-but-not-recorded",
        request("meshless-strict", opted_out(), dry_run=True),
        replace(READY, policies=WARN),
        Expect(True, warnings=("admitted because the policy's admission is Warn",)),
    ),
    row(
        "7-a-dry-run-is-refused-like-any-request",
        request("meshless-strict", opted_out(), dry_run=True),
        READY,
        Expect(False, 403, ("by MtlsPolicy shop/strict",)),
    ),
]


@pytest.mark.parametrize(("req", "state", "expect"), RULES)
def test_admit(req: AdmissionRequest, state: AdmissionState, expect: Expect) -> None:
    frozen = copy.deepcopy((req.obj, req.old))
    response = admit(req, state)
    assert response.allowed is expect.allowed, response.message
    assert response.code == expect.code
    for fragment in expect.message:
        assert fragment in response.message
    assert not expect.allowed or not response.message
    assert len(response.warnings) == len(expect.warnings)
    for warning, fragment in zip(response.warnings, expect.warnings, strict=True):
        assert fragment in warning
    assert [(str(r.policy), r.action) for r in response.records] == list(expect.records)
    assert bool(response.patch) is expect.patched
    assert (expect.note in response.note) and bool(response.note) is bool(expect.note)
    if expect.check is not None:
        expect.check(response)
    assert (req.obj, req.old) == frozen  # the bodies are read, never changed


def test_every_webhook_of_the_configurations_is_served() -> None:
    from meshless.admission import configurations

    handlers = {
        configurations.INJECT_HANDLER,
        configurations.STRICT_HANDLER,
        configurations.IDENTITY_LABEL_HANDLER,
        configurations.BINDING_HANDLER,
        configurations.DNS_NAMES_HANDLER,
    }
    assert set(SERVED) == handlers


# --- the review around it ---------------------------------------------------------------------
def review(**payload: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-7",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "namespace": NS,
            "object": pod(),
            **payload,
        },
    }


def test_a_review_becomes_a_request_and_the_namespace_comes_from_the_request() -> None:
    body = review(subResource="status", dryRun=True, operation="UPDATE", oldObject=pod())
    body["request"]["object"]["metadata"].pop("namespace")
    parsed = parse_review(body, "meshless-strict")
    assert parsed == AdmissionRequest(
        webhook="meshless-strict",
        uid="u-7",
        operation="UPDATE",
        resource=STATUS,
        namespace=NS,
        obj=body["request"]["object"],
        old=body["request"]["oldObject"],
        dry_run=True,
    )
    assert parsed.obj is body["request"]["object"]  # read where it lies, not copied
    unnamed = review(namespace=None)
    assert parse_review(unnamed, "meshless-inject").namespace == NS  # the object's


def test_a_bad_review_is_named() -> None:
    with pytest.raises(BadReview, match="has no uid"):
        parse_review(review(uid=""), "meshless-strict")


def test_the_answer_carries_the_patch_as_base64_json_patch() -> None:
    import base64
    import json

    response = admit(parse_review(review(), "meshless-inject"), READY)
    answer = review_answer("u-7", response)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    payload = answer["response"]
    assert payload["uid"] == "u-7" and payload["allowed"] is True
    assert payload["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(payload["patch"]))
    _injects_payments_own_identity(AdmissionResponse(allowed=True, patch=tuple(ops)))
    refused = review_answer("u-8", AdmissionResponse(False, 403, "no", warnings=("w",)))
    assert refused["response"] == {
        "uid": "u-8",
        "allowed": False,
        "status": {"code": 403, "message": "no"},
        "warnings": ["w"],
    }


# --- delivery (meshless.delivery): which volume the injector adds -------------------------------
APIS_SERVED = ServedApis(
    pod_certificate_requests="certificates.k8s.io/v1beta1",
    cluster_trust_bundles="certificates.k8s.io/v1beta1",
)


def _identity_volume(response: AdmissionResponse) -> dict[str, Any]:
    stored = apply_patch(pod(), list(response.patch))
    (volume,) = [v for v in stored["spec"]["volumes"] if v["name"] == "meshless-identity"]
    return dict(volume)


def test_pod_certificate_delivery_injects_the_kubelets_pod_certificate() -> None:
    state = replace(READY, delivery=Delivery.POD_CERTIFICATE, apis=APIS_SERVED)
    response = admit(request("meshless-inject", pod()), state)
    assert response.allowed and response.patch
    sources = _identity_volume(response)["projected"]["sources"]
    assert sources[0]["podCertificate"]["signerName"] == "meshless.dev/spiffe"
    assert sources[0]["podCertificate"]["keyPath"] == "tls.key"
    assert sources[0]["podCertificate"]["certificateChainPath"] == "tls.crt"
    assert sources[1]["clusterTrustBundle"]["signerName"] == "meshless.dev/spiffe"


def test_secret_delivery_injects_the_identity_secret() -> None:
    response = admit(request("meshless-inject", pod()), replace(READY, apis=APIS_SERVED))
    assert _identity_volume(response)["secret"]["secretName"] == "payments-tls"


def test_pod_certificate_delivery_without_the_api_refuses_the_pod_naming_it() -> None:
    state = replace(READY, delivery=Delivery.POD_CERTIFICATE, apis=ServedApis())
    response = admit(request("meshless-inject", pod()), state)
    assert not response.allowed
    assert "podcertificaterequests.certificates.k8s.io" in response.message
    assert not response.patch
