"""Admission decisions: the unforgeable identity label, and Enforce / Warn / Audit under
STRICT, each message naming the policy."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from meshless.admission import pods
from meshless.admission.inject import injection_patch
from meshless.admission.validate import (
    AdmissionRecord,
    judge_identity_label,
    judge_strict,
)
from meshless.api import AdmissionAction, Mode
from meshless.identity.spec import provisioned_identity_ref
from meshless.policy.model import PolicyRef
from meshless.policy.resolve import PolicySet
from tests.unit.admission_helpers import apply_patch, pod, policy, policy_set

IDENTITY = provisioned_identity_ref("cluster.local", "shop", "payments")


def injected(body: dict[str, Any], policies: PolicySet | None = None) -> dict[str, Any]:
    policies = policies or policy_set(policy("shop", "strict"))
    resolution = policies.resolve(pods.pod_info(body, "shop"))
    return apply_patch(body, injection_patch(body, resolution, IDENTITY))


# --- the identity label ---------------------------------------------------------------------
def test_an_injected_pod_may_carry_the_label() -> None:
    decision = judge_identity_label("CREATE", injected(pod()), None, "shop", IDENTITY)
    assert decision.allowed


def test_a_pod_without_the_label_is_not_this_judges_business() -> None:
    assert judge_identity_label("CREATE", pod(), None, "shop", IDENTITY).allowed


def test_label_without_the_mount_is_denied() -> None:
    decision = judge_identity_label(
        "CREATE", pod(labels={"meshless.dev/identity": "payments"}), None, "shop", IDENTITY
    )
    assert not decision.allowed
    assert decision.code == 403
    assert "pod shop/web carries meshless.dev/identity='payments' without its identity" in (
        decision.message
    )
    assert "only the injector sets this label" in decision.message


def test_label_naming_another_service_account_is_denied() -> None:
    body = injected(pod())
    body["metadata"]["labels"]["meshless.dev/identity"] = "admin"
    decision = judge_identity_label("CREATE", body, None, "shop", IDENTITY)
    assert not decision.allowed
    assert "'admin'" in decision.message
    assert "ServiceAccount 'payments'" in decision.message


def test_label_with_another_accounts_secret_mounted_is_denied() -> None:
    body = injected(pod())
    body["spec"]["volumes"][0]["secret"]["secretName"] = "meshless-admin-mtls"
    decision = judge_identity_label("CREATE", body, None, "shop", IDENTITY)
    assert not decision.allowed
    assert "meshless-payments-mtls" in decision.message


def test_label_with_the_mount_missing_from_one_container_is_denied() -> None:
    body = injected(pod())
    body["spec"]["initContainers"][0]["volumeMounts"] = []
    assert not judge_identity_label("CREATE", body, None, "shop", IDENTITY).allowed


def test_an_update_may_not_add_the_label() -> None:
    old = pod()
    new = copy.deepcopy(old)
    new["metadata"]["labels"] = {"meshless.dev/identity": "payments"}
    decision = judge_identity_label("UPDATE", new, old, "shop", IDENTITY)
    assert not decision.allowed
    assert "may not add the label meshless.dev/identity" in decision.message


def test_an_update_may_not_change_the_label() -> None:
    old = injected(pod())
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["meshless.dev/identity"] = "admin"
    decision = judge_identity_label("UPDATE", new, old, "shop", IDENTITY)
    assert not decision.allowed
    assert "from 'payments' to 'admin'" in decision.message


def test_an_update_that_keeps_or_removes_the_label_is_allowed() -> None:
    old = injected(pod())
    kept = copy.deepcopy(old)
    kept["metadata"]["labels"]["app"] = "web"
    removed = copy.deepcopy(old)
    del removed["metadata"]["labels"]["meshless.dev/identity"]
    assert judge_identity_label("UPDATE", kept, old, "shop", IDENTITY).allowed
    assert judge_identity_label("UPDATE", removed, old, "shop", IDENTITY).allowed


def test_generate_name_pods_are_named_by_their_prefix() -> None:
    body = pod(labels={"meshless.dev/identity": "payments"})
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "web-"
    assert "pod shop/web-* carries" in judge_identity_label("CREATE", body, None, "shop").message


# --- STRICT without the identity ------------------------------------------------------------
def strict_policies(action: AdmissionAction) -> PolicySet:
    return policy_set(policy("shop", "payments-strict", Mode.STRICT, admission=action))


def test_enforce_denies_and_names_the_policy_and_ports() -> None:
    decision = judge_strict("CREATE", pod(), None, "shop", strict_policies(AdmissionAction.ENFORCE))
    assert not decision.allowed
    assert decision.code == 403
    assert decision.message == (
        "pod shop/web is under STRICT mTLS on port 8443 by MtlsPolicy shop/payments-strict but "
        "does not mount its identity at /var/run/secrets/meshless/"
    )
    assert decision.records == ()


def test_warn_admits_with_a_warning_and_a_record() -> None:
    decision = judge_strict("CREATE", pod(), None, "shop", strict_policies(AdmissionAction.WARN))
    assert decision.allowed
    assert len(decision.warnings) == 1
    assert "MtlsPolicy shop/payments-strict" in decision.warnings[0]
    assert "Warn" in decision.warnings[0]
    assert decision.records == (
        AdmissionRecord(
            PolicyRef("shop", "payments-strict"),
            "shop/web",
            AdmissionAction.WARN,
            decision.records[0].message,
        ),
    )


def test_audit_admits_silently_with_a_record() -> None:
    decision = judge_strict("CREATE", pod(), None, "shop", strict_policies(AdmissionAction.AUDIT))
    assert decision.allowed
    assert decision.warnings == ()
    [record] = decision.records
    assert record.policy == PolicyRef("shop", "payments-strict")
    assert record.action is AdmissionAction.AUDIT
    assert "MtlsPolicy shop/payments-strict" in record.message


def test_an_injected_pod_passes() -> None:
    policies = strict_policies(AdmissionAction.ENFORCE)
    assert judge_strict("CREATE", injected(pod(), policies), None, "shop", policies).allowed


def test_opting_out_of_injection_does_not_opt_out_of_strict() -> None:
    body = pod(annotations={"meshless.dev/inject": "false"})
    decision = judge_strict("CREATE", body, None, "shop", strict_policies(AdmissionAction.ENFORCE))
    assert not decision.allowed
    assert 'meshless.dev/inject: "false"' in decision.message
    assert "does not lift STRICT" in decision.message


@pytest.mark.parametrize("mode", [Mode.PERMISSIVE, Mode.DISABLE])
def test_no_strict_no_judgement(mode: Mode) -> None:
    policies = policy_set(policy("shop", "p", mode))
    assert judge_strict("CREATE", pod(), None, "shop", policies).allowed
    assert judge_strict("CREATE", pod(), None, "shop", policy_set()).allowed


def test_a_strict_port_override_is_decided_by_the_workload_policy() -> None:
    policies = policy_set(
        policy("shop", "ns-permissive", Mode.PERMISSIVE),
        policy(
            "shop",
            "web-port",
            Mode.UNSET,
            selector={"app": "web"},
            ports={9443: Mode.STRICT},
        ),
    )
    body = pod(labels={"app": "web"}, ports=(8080, 9443))
    decision = judge_strict("CREATE", body, None, "shop", policies)
    assert not decision.allowed
    assert "on port 9443 by MtlsPolicy shop/web-port" in decision.message


def test_strict_inherited_from_the_root_namespace_names_the_root_policy() -> None:
    policies = policy_set(policy("meshless-system", "mesh-strict"))
    decision = judge_strict("CREATE", pod(ports=()), None, "shop", policies)
    assert not decision.allowed
    assert "pod shop/web is under STRICT mTLS by MtlsPolicy meshless-system/mesh-strict" in (
        decision.message
    )


def test_enforce_wins_over_warn_when_two_policies_make_ports_strict() -> None:
    policies = policy_set(
        policy("shop", "ns-strict", Mode.STRICT, admission=AdmissionAction.WARN),
        policy(
            "shop",
            "w",
            Mode.UNSET,
            selector={"app": "web"},
            ports={9443: Mode.STRICT},
            admission=AdmissionAction.ENFORCE,
        ),
    )
    body = pod(labels={"app": "web"}, ports=(8080, 9443))
    decision = judge_strict("CREATE", body, None, "shop", policies)
    assert not decision.allowed
    assert "MtlsPolicy shop/w" in decision.message


def test_an_update_that_brings_a_pod_under_strict_is_judged() -> None:
    policies = policy_set(policy("shop", "web-strict", Mode.STRICT, selector={"app": "web"}))
    old = pod(labels={"app": "other"})
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["app"] = "web"
    decision = judge_strict("UPDATE", new, old, "shop", policies)
    assert not decision.allowed
    assert "shop/web-strict" in decision.message


def test_an_update_of_a_pod_already_under_strict_is_not_blocked() -> None:
    """A pod created before its policy must still take finalizer and owner updates."""
    policies = strict_policies(AdmissionAction.ENFORCE)
    old = pod()
    new = copy.deepcopy(old)
    new["metadata"]["finalizers"] = []
    assert judge_strict("UPDATE", new, old, "shop", policies).allowed


def test_a_deleting_pod_is_not_judged() -> None:
    body = pod()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    policies = strict_policies(AdmissionAction.ENFORCE)
    assert judge_strict("UPDATE", body, pod(), "shop", policies).allowed


def test_mirror_pods_are_not_judged_for_strict_but_their_labels_are() -> None:
    mirror = {"kubernetes.io/config.mirror": "abc"}
    policies = strict_policies(AdmissionAction.ENFORCE)
    assert judge_strict("CREATE", pod(annotations=mirror), None, "shop", policies).allowed
    forged = pod(annotations=mirror, labels={"meshless.dev/identity": "payments"})
    assert not judge_identity_label("CREATE", forged, None, "shop", IDENTITY).allowed
