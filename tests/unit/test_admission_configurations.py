"""The webhook configurations: scope, failure policy and endpoints as the availability design
needs them, and which namespaces get the admission label."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from meshless.admission.configurations import (
    Endpoint,
    ServiceRef,
    admission_namespaces,
    identity_namespaces,
    mutating_configuration,
    validating_configuration,
)
from meshless.api import Mode
from tests.unit.admission_helpers import ROOT_NS, policy, policy_set

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
LOOPBACK = Endpoint(url="https://127.0.0.1:9443/")
EXCLUDED = {"key": "kubernetes.io/metadata.name", "operator": "NotIn"}


def webhooks(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["name"]: w for w in config["webhooks"]}


def test_mutating_webhook_selects_labelled_namespaces_fails_closed_and_is_reinvoked() -> None:
    config = mutating_configuration(LOOPBACK, CA, ROOT_NS)
    assert config["kind"] == "MutatingWebhookConfiguration"
    assert config["metadata"] == {
        "name": "meshless",
        "labels": {"app.kubernetes.io/managed-by": "meshless"},
    }
    [hook] = config["webhooks"]
    assert hook["name"] == "inject.meshless.dev"
    assert hook["clientConfig"] == {
        "url": "https://127.0.0.1:9443/meshless-inject",
        "caBundle": base64.b64encode(CA).decode(),
    }
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "operations": ["CREATE"],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {
        "matchLabels": {"meshless.dev/mtls": "enabled"},
        "matchExpressions": [
            {**EXCLUDED, "values": ["kube-node-lease", "kube-public", "kube-system", ROOT_NS]}
        ],
    }
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["timeoutSeconds"] <= 10
    assert "meshless.dev/inject" in hook["matchConditions"][0]["expression"]


def test_validating_webhooks_strict_in_labelled_namespaces_identity_label_elsewhere() -> None:
    hooks = webhooks(validating_configuration(LOOPBACK, CA, "ops"))
    strict, label = hooks["strict.meshless.dev"], hooks["identity-label.meshless.dev"]
    for hook in (strict, label):
        assert hook["failurePolicy"] == "Fail"
        assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
        assert hook["admissionReviewVersions"] == ["v1"]
        # Labels can be changed through pods/status: the identity label is guarded there.
        assert {"resources": ["pods/status"], "operations": ["UPDATE"]}.items() <= (
            hook["rules"][1].items()
        )
    assert strict["clientConfig"]["url"] == "https://127.0.0.1:9443/meshless-strict"
    assert strict["namespaceSelector"]["matchLabels"] == {"meshless.dev/mtls": "enabled"}
    assert strict["sideEffects"] == "NoneOnDryRun"  # Warn/Audit are counted, never on dry runs
    assert "objectSelector" not in strict
    assert label["clientConfig"]["url"] == "https://127.0.0.1:9443/meshless-identity-label"
    # Labelled namespaces: the strict webhook judges the identity label too (one call).
    assert "meshless.dev/identity" in strict["matchConditions"][0]["expression"]
    assert label["namespaceSelector"] == {
        "matchExpressions": [
            {**EXCLUDED, "values": ["kube-node-lease", "kube-public", "kube-system", "ops"]},
            {"key": "meshless.dev/mtls", "operator": "NotIn", "values": ["enabled"]},
        ]
    }
    assert label["objectSelector"] == {
        "matchExpressions": [{"key": "meshless.dev/identity", "operator": "Exists"}]
    }
    assert label["sideEffects"] == "None"


def test_in_cluster_configurations_name_the_service() -> None:
    endpoint = Endpoint(service=ServiceRef("meshless-system", "meshless-webhook", 443))
    hook = validating_configuration(endpoint, CA, ROOT_NS)["webhooks"][1]
    assert hook["clientConfig"] == {
        "caBundle": base64.b64encode(CA).decode(),
        "service": {
            "namespace": "meshless-system",
            "name": "meshless-webhook",
            "port": 443,
            "path": "/meshless-identity-label",
        },
    }


def test_an_endpoint_is_a_url_or_a_service() -> None:
    with pytest.raises(ValueError):
        Endpoint()
    with pytest.raises(ValueError):
        Endpoint(url="https://x", service=ServiceRef("a", "b"))


NAMESPACES = ["shop", "bank", "kube-system", ROOT_NS, "default"]


def test_a_cluster_wide_policy_labels_every_namespace_but_the_excluded() -> None:
    policies = policy_set(policy(ROOT_NS, "mesh", Mode.PERMISSIVE))
    assert admission_namespaces(policies, NAMESPACES, ROOT_NS) == {"shop", "bank", "default"}


def test_namespace_and_workload_policies_label_their_namespaces() -> None:
    policies = policy_set(
        policy("shop", "ns", Mode.STRICT),
        policy("bank", "w", Mode.UNSET, selector={"app": "x"}),
        policy("gone", "w", Mode.STRICT),  # a namespace that no longer exists
    )
    assert admission_namespaces(policies, NAMESPACES, ROOT_NS) == {"shop", "bank"}


def test_disable_only_policies_label_nothing() -> None:
    policies = policy_set(
        policy(ROOT_NS, "mesh-off", Mode.DISABLE),
        policy("shop", "off", Mode.DISABLE, selector={"a": "b"}, ports={80: Mode.DISABLE}),
    )
    assert admission_namespaces(policies, NAMESPACES, ROOT_NS) == frozenset()
    strict_port = policy_set(
        policy("shop", "w", Mode.DISABLE, selector={"a": "b"}, ports={80: Mode.STRICT})
    )
    assert admission_namespaces(strict_port, NAMESPACES, ROOT_NS) == {"shop"}


def test_kube_system_is_never_labelled_even_with_a_policy_of_its_own() -> None:
    policies = policy_set(policy("kube-system", "strict"))
    assert admission_namespaces(policies, NAMESPACES, ROOT_NS) == frozenset()


def pod_rules(hook: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (r, op) for rule in hook["rules"] for r in rule["resources"] for op in rule["operations"]
    }


def test_the_strict_webhook_also_binds_pods_to_their_identity_and_sees_ephemeral_containers() -> (
    None
):
    strict = webhooks(validating_configuration(LOOPBACK, CA, "ops"))["strict.meshless.dev"]
    assert pod_rules(strict) == {
        ("pods", "CREATE"),
        ("pods", "UPDATE"),
        ("pods/status", "UPDATE"),
        ("pods/ephemeralcontainers", "UPDATE"),
    }
    [condition] = strict["matchConditions"]
    for needle in ("secretKeyRef", "secretRef", "v.secret", "s.secret", "ephemeralContainers"):
        assert needle in condition["expression"]


def test_the_binding_webhook_selects_namespaces_holding_identities_and_fails_open() -> None:
    hook = webhooks(validating_configuration(LOOPBACK, CA, "ops"))["binding.meshless.dev"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/meshless-binding"
    assert pod_rules(hook) == {("pods", "CREATE"), ("pods/ephemeralcontainers", "UPDATE")}
    # Namespaces labelled for policies are served by the STRICT webhook (fail closed).
    assert hook["namespaceSelector"] == {
        "matchLabels": {"meshless.dev/identities": "true"},
        "matchExpressions": [
            {**EXCLUDED, "values": ["kube-node-lease", "kube-public", "kube-system", "ops"]},
            {"key": "meshless.dev/mtls", "operator": "NotIn", "values": ["enabled"]},
        ],
    }
    [condition] = hook["matchConditions"]
    assert "request.operation == 'CREATE'" in condition["expression"]
    assert "secretKeyRef" in condition["expression"]
    assert hook["sideEffects"] == "None"


def test_the_reserved_binding_webhook_covers_the_namespaces_the_others_do_not() -> None:
    """Neither a policy's namespace nor one holding identities: there only pods referencing a
    Secret named as the operator provisions them are sent, to the same binding handler."""
    hook = webhooks(validating_configuration(LOOPBACK, CA, "ops"))["binding-reserved.meshless.dev"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/meshless-binding"
    assert pod_rules(hook) == {("pods", "CREATE"), ("pods/ephemeralcontainers", "UPDATE")}
    assert hook["namespaceSelector"] == {
        "matchExpressions": [
            {**EXCLUDED, "values": ["kube-node-lease", "kube-public", "kube-system", "ops"]},
            {"key": "meshless.dev/mtls", "operator": "NotIn", "values": ["enabled"]},
            {"key": "meshless.dev/identities", "operator": "NotIn", "values": ["true"]},
        ],
    }
    [condition] = hook["matchConditions"]
    for field in ("v.secret.secretName", "s.secret.name", "e.valueFrom.secretKeyRef.name"):
        assert (
            f"{field}.startsWith('meshless-') && {field}.endsWith('-mtls')"
            in (condition["expression"])
        )


def test_the_dns_names_webhook_reviews_workload_identities_and_fails_open() -> None:
    hook = webhooks(validating_configuration(LOOPBACK, CA, "ops"))["dns-names.meshless.dev"]
    assert hook["failurePolicy"] == "Ignore"  # the operator checks again before it signs
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/meshless-dns-names"
    assert hook["rules"] == [
        {
            "apiGroups": ["meshless.dev"],
            "apiVersions": ["v1alpha1"],
            "resources": ["workloadidentities"],
            "operations": ["CREATE", "UPDATE"],
            "scope": "Namespaced",
        }
    ]
    assert "namespaceSelector" not in hook  # every namespace
    [condition] = hook["matchConditions"]
    # Identities without dnsNames (the operator's provisioned ones) are never sent.
    assert "size(object.spec.dnsNames) > 0" in condition["expression"]


def test_namespaces_holding_identities_are_labelled_but_never_the_excluded() -> None:
    holding = {"shop", "kube-system", ROOT_NS, "gone"}
    assert identity_namespaces(holding, NAMESPACES, ROOT_NS) == {"shop"}
