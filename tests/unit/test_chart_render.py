"""The chart as `helm template` renders it (the helm `make helm` builds): the schema refuses
what it should, optional objects appear only when asked for, and the alerts name metrics the
operator exports."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import meshless.metrics  # noqa: F401  (registers the operator's metrics)
from meshless.api import (
    ADMISSION_NAMESPACE_LABEL,
    ADMISSION_NAMESPACE_VALUE,
    WEBHOOK_CONFIGURATION,
)
from tests.helmtool import CHART, ROOT, find, helm, render

# Alerts on metrics another part of the operator is adding (the probe's enforcement results).
PENDING_METRICS = {"meshless_enforcement_ports"}


CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects if o["kind"] != "CustomResourceDefinition")


def test_defaults_render_the_expected_objects() -> None:
    objects = render()
    assert kinds(objects) == sorted(
        [
            "ClusterRole", "ClusterRoleBinding", "Deployment", "MutatingWebhookConfiguration",
            "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "ValidatingWebhookConfiguration",
        ]
    )  # fmt: skip
    crds = [o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert sorted(crds) == ["mtlspolicies.meshless.dev", "workloadidentities.meshless.dev"]
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "meshless-system", obj["kind"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "colour=blue"], "additional properties 'colour' not allowed"),
        (["--set", "settings.trustdomain=x"], "additional properties 'trustdomain' not allowed"),
        (["--set", "settings.defaultTtl=1.5h"], "/settings/defaultTtl"),
        (["--set", "settings.logFormat=xml"], "/settings/logFormat"),
        (["--set", "settings.webhookPort=70000"], "/settings/webhookPort"),
        (["--set-string", "replicaCount=two"], "/replicaCount"),
        (["--set", "settings.renewalFraction=1"], "/settings/renewalFraction"),
        (["--set", "metrics.prometheusRule.notReadyFor=soon"], "notReadyFor"),
        (["--set", "extraEnv[0].name=MESHLESS_WORKERS,extraEnv[0].value=4"], "/extraEnv/0"),
        (["--set", "webhook.service.port=8443"], "additional properties 'port' not allowed"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_the_schema_refuses(values: list[str], message: str) -> None:
    proc = helm("template", "meshless", str(CHART), *values, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_monitoring_objects_only_when_enabled() -> None:
    objects = render(
        "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.prometheusRule.enabled=true",
        "--set", "metrics.prometheusRule.notReadyFor=15m",
    )  # fmt: skip
    monitor = find(objects, "ServiceMonitor")
    metrics_service = find(objects, "Service", "meshless-metrics")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= metrics_service["metadata"]["labels"].items()
    webhook_service = find(objects, "Service", "meshless-webhook")
    assert not wanted.items() <= webhook_service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"

    rules = find(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert set(by_name) == {
        "MeshlessCertificateRenewalOverdue",
        "MeshlessCertificateExpiring",
        "MeshlessIdentityNotReady",
        "MeshlessEnforcementFailing",
        "MeshlessCAExpiring",
        "MeshlessWriteBudgetSaturated",
        "MeshlessOperatorAbsent",
    }
    assert by_name["MeshlessOperatorAbsent"]["expr"] == 'absent(up{job="meshless-metrics"} == 1)'
    # The docs name the shipped alerts and no others.
    for doc in ("docs/operations.md", "docs/troubleshooting.md", "charts/meshless/README.md"):
        named = set(re.findall(r"\bMeshless[A-Z][A-Za-z]+\b", (ROOT / doc).read_text()))
        assert named <= set(by_name), (doc, named - set(by_name))
    assert set(by_name) <= set(
        re.findall(r"\bMeshless[A-Z][A-Za-z]+\b", (ROOT / "docs/operations.md").read_text())
    )
    assert by_name["MeshlessIdentityNotReady"]["for"] == "15m"
    assert "meshless_certificate_ready_status) == 0" in by_name["MeshlessIdentityNotReady"]["expr"]
    failing = by_name["MeshlessEnforcementFailing"]["expr"]
    assert 'mode="STRICT"' in failing and 'state="failing"' in failing
    # Alert templates reach Prometheus unexpanded by Helm.
    assert (
        "{{ $labels.namespace }}" in by_name["MeshlessIdentityNotReady"]["annotations"]["summary"]
    )

    exported = {m.name for m in REGISTRY.collect()} | {
        s.name for m in REGISTRY.collect() for s in m.samples
    }
    used = {name for r in rules for name in re.findall(r"\bmeshless_[a-z_]+", r["expr"])}
    assert used - PENDING_METRICS <= exported, used - exported


def test_no_monitoring_objects_by_default() -> None:
    assert "ServiceMonitor" not in kinds(render())
    assert "PrometheusRule" not in kinds(render())


def test_without_rbac_and_with_an_existing_service_account() -> None:
    objects = render(
        "--set", "rbac.create=false,serviceAccount.create=false,serviceAccount.name=existing",
        "--set", "podDisruptionBudget.enabled=false",
    )  # fmt: skip
    # The webhook configurations and the namespace policy stay: the operator creates neither,
    # and the policy binds the ServiceAccount given.
    assert kinds(objects) == [
        "Deployment", "MutatingWebhookConfiguration", "Service", "Service",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
    ]  # fmt: skip
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing"
    namespace_policy = find(objects, "ValidatingAdmissionPolicy", "meshless-namespace-labels")
    (condition,) = namespace_policy["spec"]["matchConditions"]
    assert condition["expression"].endswith(":meshless-system:existing'")
    proc = helm("template", "m", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert "serviceAccount.name is required" in proc.stderr


def test_ports_and_affinity_follow_values() -> None:
    objects = render(
        "--set", "settings.webhookPort=10443,settings.healthPort=10081",
        "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].key=pool",
        "--set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
        ".nodeSelectorTerms[0].matchExpressions[0].operator=Exists",
    )  # fmt: skip
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["webhook"] == 10443 and ports["health"] == 10081
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    webhook_service = find(objects, "Service", "meshless-webhook")
    assert webhook_service["spec"]["ports"][0] == {
        "name": "webhook",
        "port": 443,
        "targetPort": "webhook",
        "protocol": "TCP",
    }
    assert set(pod["affinity"]) == {"nodeAffinity"}  # replaces the default anti-affinity


def test_rbac_has_no_wildcards_and_names_what_it_can() -> None:
    objects = render()
    rules = find(objects, "ClusterRole")["rules"] + find(objects, "Role")["rules"]
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    named = {
        (resource, verb): tuple(rule.get("resourceNames", ()))
        for rule in rules
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for resource in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        assert named[(resource, "get")] == (WEBHOOK_CONFIGURATION,)
        assert named[(resource, "patch")] == (WEBHOOK_CONFIGURATION,)
        # The chart creates them: RBAC cannot name what create makes, so it is not granted.
        assert (resource, "create") not in named
        assert (resource, "delete") not in named
    assert named[("leases", "update")] == ("meshless-operator-leader",)
    assert ("secrets", "delete") not in named and ("secrets", "patch") not in named


def test_the_chart_creates_the_webhook_configurations_empty_under_the_operators_name() -> None:
    """Their content is the operator's (admission/configurations.py), written once there."""
    objects = render()
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        configuration = find(objects, kind)
        assert configuration["metadata"]["name"] == WEBHOOK_CONFIGURATION
        assert "webhooks" not in configuration  # Helm's upgrades then never touch them


def test_the_namespace_policy_binds_the_charts_service_account() -> None:
    objects = render("--set", "serviceAccount.name=op")
    policy = find(objects, "ValidatingAdmissionPolicy", "meshless-namespace-labels")
    (condition,) = policy["spec"]["matchConditions"]
    assert condition["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:meshless-system:op'"
    )
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "meshless-namespace-labels")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


def test_pods_in_a_namespace_awaiting_its_policy_wait_for_the_admission_label() -> None:
    """The await-policy gate: pod CREATE in namespaces labelled meshless.dev/await-policy=true
    is refused until the namespace carries the label that scopes the injecting webhook (the
    API server's behaviour: tests/node/test_helm_on_node.py applies the examples with it)."""
    objects = render()
    policy = find(objects, "ValidatingAdmissionPolicy", "meshless-await-policy")
    spec = policy["spec"]
    assert spec["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"meshless.dev/await-policy": "true"}
    }
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["operations"]) == (["pods"], ["CREATE"])
    (validation,) = spec["validations"]
    assert f"'{ADMISSION_NAMESPACE_LABEL}'" in validation["expression"]
    assert f"== '{ADMISSION_NAMESPACE_VALUE}'" in validation["expression"]
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "meshless-await-policy")
    assert binding["spec"] == {
        "policyName": "meshless-await-policy",
        "validationActions": ["Deny"],
    }
    for example in ("nginx", "python", "nodejs"):
        namespace = yaml.safe_load((ROOT / "examples" / example / "namespace.yaml").read_text())
        assert namespace["metadata"]["labels"]["meshless.dev/await-policy"] == "true"


def _readme_permissions() -> set[tuple[str, str, tuple[str, ...]]]:
    """(resource, verb, resourceNames) for every row of the chart README's Permissions table."""
    text = (CHART / "README.md").read_text()
    table = text.split("## Permissions", 1)[1].split("\n\n", 2)[2]
    rows = set()
    for line in table.splitlines():
        if not line.startswith("|"):
            break
        if not line.startswith("| `"):
            continue  # the header
        resources, verbs = line.split("|")[1:3]
        names = re.search(r"resourceNames `([^`]+)`", resources)
        for resource in re.findall(r"`([a-z/]+)`", resources.split("(")[0]):
            for verb in verbs.split():
                rows.add((resource, verb, (names.group(1),) if names else ()))
    return rows


def test_the_readme_permissions_table_is_the_rbac_the_chart_grants() -> None:
    objects = render()
    granted = {
        (resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in find(objects, "ClusterRole")["rules"] + find(objects, "Role")["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert _readme_permissions() == granted
