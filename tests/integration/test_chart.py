"""The Helm chart against the local control plane: `helm install` creates every object, and the
operator, run with nothing but the chart's ServiceAccount token, passes every flow (identities,
policies, admission, probes, an intermediate and a whole root rotation) with no 403, and is
refused what it does not need; the chart's ValidatingAdmissionPolicy holds its namespace writes
to the labels meshless.dev/*.

No kubelet runs here, so the Deployment's pods never start (the image is a placeholder); the
operator runs as a local process (`meshless run`) with a kubeconfig holding a token from a
TokenRequest for the chart's ServiceAccount, which is exactly what the pods would run with.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from meshless.admission.configuration_writes import apply_configurations
from meshless.admission.configurations import Endpoint
from meshless.api import IDENTITY_LABEL, WEBHOOK_CONFIGURATION
from meshless.kube import Kube, load_configuration
from meshless.leader import LEASE_NAME
from meshless.pki.bundle import parse_pem_certificates
from tests.conftest import ROOT
from tests.helmtool import CHART, helm
from tests.tools import kubectl_path

from .conftest import OperatorProcess, remove_webhook_configurations
from .kubehelpers import (
    create_identity,
    get_identity,
    is_ready,
    wait_event,
    wait_identity,
    wait_secret,
)
from .policyhelpers import (
    create_pod,
    create_policy,
    list_network_policies,
    patch_policy,
    status_is,
    wait_admission_label,
    wait_collection,
    wait_policy,
)
from .rotationpeers import fingerprints, leaf_root, secret_data
from .test_ca_rotation import CA_SECRET, CAWatcher, meshless_cli
from .test_probes import SwitchableServer
from .test_probes import _running_on_loopback as running_on_loopback
from .test_probes import _strict_counts as strict_counts

TIMEOUT = 60
PROBE_INTERVAL_S = 3
Json = dict[str, Any]


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    fullname: str
    kubeconfig: str  # admin
    notes: str  # what `helm install` printed

    @property
    def service_account(self) -> str:
        return self.fullname


@pytest.fixture(scope="module")
def release(kubeconfig: str, api_client: client.ApiClient) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    name, namespace = f"ml-{suffix}", f"meshless-chart-{suffix}"
    # The chart creates the configurations named meshless: an operator of an earlier module
    # (admin credentials) may have left its own, which Helm would refuse to adopt.
    remove_webhook_configurations(api_client)
    installed = helm(
        "install", name, str(CHART), "--kubeconfig", kubeconfig,
        "--namespace", namespace, "--create-namespace",
        # No node runs here: the image is never pulled.
        "--set", "image.repository=registry.invalid/meshless",
        "--set", "metrics.serviceMonitor.enabled=false",
    )  # fmt: skip
    rel = Release(name, namespace, f"{name}-meshless", kubeconfig, installed.stdout)
    try:
        yield rel
    finally:
        # The last test uninstalls already; this is for a run that failed before it.
        helm(
            "uninstall", rel.name, "--kubeconfig", kubeconfig, "--namespace", rel.namespace,
            check=False,
        )  # fmt: skip
        remove_webhook_configurations(api_client)
        # The prober's identity: without a garbage collector it would outlive the namespace,
        # and every later test's operator (another CA) would reissue it.
        client.CustomObjectsApi(api_client).delete_collection_namespaced_custom_object(
            "meshless.dev", "v1alpha1", rel.namespace, "workloadidentities"
        )
        client.CoreV1Api(api_client).delete_namespace(rel.namespace)


def test_helm_install_creates_every_object(release: Release, api_client: client.ApiClient) -> None:
    ns, name = release.namespace, release.fullname
    manifest = helm(
        "get", "manifest", release.name, "--kubeconfig", release.kubeconfig, "-n", ns
    ).stdout
    objects = [o for o in yaml.safe_load_all(manifest) if o]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ClusterRole", "ClusterRoleBinding", "Deployment", "MutatingWebhookConfiguration",
            "PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "ServiceAccount",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
            "ValidatingWebhookConfiguration",
        ]
    )  # fmt: skip
    # Every object of the release, read back from the API server.
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    rbac, policy = client.RbacAuthorizationV1Api(api_client), client.PolicyV1Api(api_client)
    sa = core.read_namespaced_service_account(name, ns)
    assert sa.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
    cluster_role = rbac.read_cluster_role(name)
    assert not any("kopf.dev" in (r.api_groups or []) for r in cluster_role.rules)
    binding = rbac.read_cluster_role_binding(name)
    assert (binding.subjects[0].name, binding.subjects[0].namespace) == (name, ns)
    role = rbac.read_namespaced_role(f"{name}-leader-election", ns)
    assert {r.resources[0] for r in role.rules} == {"leases"}
    rbac.read_namespaced_role_binding(f"{name}-leader-election", ns)

    deployment = apps.read_namespaced_deployment(name, ns)
    spec = deployment.spec
    assert spec.replicas == 2
    assert spec.strategy.type == "RollingUpdate"
    assert spec.strategy.rolling_update.max_unavailable == 0
    pod = spec.template.spec
    assert pod.service_account_name == name
    assert pod.security_context.run_as_non_root and pod.security_context.run_as_user == 65532
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    (container,) = pod.containers
    sc = container.security_context
    assert sc.read_only_root_filesystem and sc.allow_privilege_escalation is False
    assert sc.capabilities.drop == ["ALL"]
    assert container.liveness_probe.http_get.path == "/healthz"
    assert container.readiness_probe.http_get.path == "/readyz"
    anti = pod.affinity.pod_anti_affinity.preferred_during_scheduling_ignored_during_execution
    assert anti[0].pod_affinity_term.topology_key == "kubernetes.io/hostname"
    env = {e.name: e for e in container.env}
    assert env["POD_NAME"].value_from.field_ref.field_path == "metadata.name"
    assert env["MESHLESS_NAMESPACE"].value_from.field_ref.field_path == "metadata.namespace"

    webhook_service = core.read_namespaced_service(f"{name}-webhook", ns)
    assert env["MESHLESS_WEBHOOK_SERVICE"].value == webhook_service.metadata.name
    (port,) = webhook_service.spec.ports
    assert (port.port, port.target_port) == (443, "webhook")
    webhook_port = next(p for p in container.ports if p.name == "webhook").container_port
    assert str(webhook_port) == env["MESHLESS_WEBHOOK_PORT"].value
    metrics_service = core.read_namespaced_service(f"{name}-metrics", ns)
    assert metrics_service.spec.ports[0].target_port == "metrics"
    pdb = policy.read_namespaced_pod_disruption_budget(name, ns)
    assert pdb.spec.max_unavailable == 1
    assert pdb.spec.selector.match_labels == spec.selector.match_labels

    # The webhook configurations, under the name the operator fills in, with no webhooks yet:
    # their content is defined once, in the operator (admission/configurations.py).
    registration = client.AdmissionregistrationV1Api(api_client)
    for configuration in (
        registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION),
        registration.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION),
    ):
        assert configuration.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
        assert not configuration.webhooks
    for suffix in ("namespace-labels", "await-policy"):
        policy_objects = {
            o["kind"]: o
            for o in objects
            if "AdmissionPolicy" in o["kind"] and o["metadata"]["name"] == f"{name}-{suffix}"
        }
        binding_spec = policy_objects["ValidatingAdmissionPolicyBinding"]["spec"]
        assert (
            binding_spec["policyName"]
            == policy_objects["ValidatingAdmissionPolicy"]["metadata"]["name"]
        )
        assert binding_spec["validationActions"] == ["Deny"]

    # The CRDs: already applied by the session (Helm skips CRDs that exist), so check that what
    # the chart ships is what the API server serves.
    ext = client.ApiextensionsV1Api(api_client)
    for path in sorted((CHART / "crds").glob("*.yaml")):
        shipped = yaml.safe_load(path.read_text())
        assert path.read_bytes() == (ROOT / "crds" / path.name).read_bytes()
        served = ext.read_custom_resource_definition(shipped["metadata"]["name"])
        established = {c.type: c.status for c in served.status.conditions}["Established"]
        assert established == "True"


def test_the_operator_pod_meets_the_restricted_pod_security_standard(
    release: Release, api_client: client.ApiClient, namespace: str
) -> None:
    """The API server's own Pod Security admission judges the chart's pod template."""
    core = client.CoreV1Api(api_client)
    core.patch_namespace(
        namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(
        release.fullname, release.namespace
    )
    template: Json = api_client.sanitize_for_serialization(deployment.spec.template)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator"}}
    pod["spec"] = template["spec"]
    core.create_namespaced_pod(namespace, pod, dry_run="All")
    # The control: the same pod with one restriction lifted is refused.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status == 403
    assert "allowPrivilegeEscalation" in str(refused.value.body)


def test_the_notes_say_what_to_apply_next(release: Release) -> None:
    notes = release.notes.split("NOTES:", 1)[1]
    assert f"rollout status deployment/{release.fullname}" in notes
    assert "kind: MtlsPolicy" in notes and "kind: WorkloadIdentity" in notes
    assert "kubectl get wid,mtlspol -A" in notes
    assert "`helm uninstall` removes them with the operator" in notes


# --------------------------------------------------------------------------------------------
# The chart's ServiceAccount token.


@pytest.fixture(scope="module")
def operator_kubeconfig(
    release: Release, api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A kubeconfig with the admin's server and CA but the chart ServiceAccount's token."""
    token = (
        client.CoreV1Api(api_client)
        .create_namespaced_service_account_token(
            release.service_account, release.namespace, {"spec": {"expirationSeconds": 3600}}
        )
        .status.token
    )
    admin = json.loads(
        subprocess.run(
            [kubectl_path(), f"--kubeconfig={release.kubeconfig}", "config", "view", "--raw",
             "--minify", "-o", "json"],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "meshless", "user": {"token": token}}],
        "contexts": [{"name": "meshless", "context": {"cluster": "local", "user": "meshless"}}],
        "current-context": "meshless",
    }
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return str(path)


def can_i(kubeconfig: str, *args: str) -> bool:
    proc = subprocess.run(
        [kubectl_path(), f"--kubeconfig={kubeconfig}", "auth", "can-i", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
    return proc.stdout.strip() == "yes"


def test_the_token_is_the_charts_service_account(
    release: Release, operator_kubeconfig: str
) -> None:
    proc = subprocess.run(
        [kubectl_path(), f"--kubeconfig={operator_kubeconfig}", "auth", "whoami", "-o", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    username = json.loads(proc.stdout)["status"]["userInfo"]["username"]
    assert username == f"system:serviceaccount:{release.namespace}:{release.service_account}"


@pytest.mark.parametrize(
    "args",
    [
        ("create", "secrets", "-n", "shop"),
        ("update", "secrets", "-n", "shop"),
        ("list", "pods", "--all-namespaces"),
        ("patch", "namespaces"),
        ("patch", "mutatingwebhookconfigurations/meshless"),
        ("patch", "validatingwebhookconfigurations/meshless"),
        ("get", "validatingwebhookconfigurations/meshless"),
        ("list", "configmaps/meshless-trust-bundle", "--all-namespaces"),
        ("watch", "configmaps/meshless-trust-bundle", "--all-namespaces"),
        ("delete", "networkpolicies", "-n", "shop"),
        ("patch", "workloadidentities.meshless.dev/status", "-n", "shop"),
        ("create", "events", "-n", "shop"),
    ],
    ids=lambda a: " ".join(a),
)
def test_the_token_may_do_what_the_operator_does(
    operator_kubeconfig: str, args: tuple[str, ...]
) -> None:
    assert can_i(operator_kubeconfig, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("create", "clusterrolebindings"),
        ("create", "rolebindings", "-n", "shop"),
        ("escalate", "clusterroles"),
        ("delete", "namespaces"),
        ("delete", "secrets", "-n", "shop"),
        ("patch", "secrets", "-n", "shop"),
        ("list", "configmaps", "--all-namespaces"),
        ("patch", "configmaps/someone-elses", "-n", "shop"),
        ("create", "pods", "-n", "shop"),
        ("delete", "pods", "-n", "shop"),
        ("create", "serviceaccounts/token", "-n", "shop"),
        ("patch", "mutatingwebhookconfigurations/someone-elses"),
        ("delete", "validatingwebhookconfigurations/meshless"),
        ("create", "mutatingwebhookconfigurations"),
        ("create", "validatingwebhookconfigurations"),
        ("list", "mutatingwebhookconfigurations"),
        ("create", "validatingadmissionpolicies"),
        ("delete", "validatingadmissionpolicybindings"),
        ("patch", "namespaces", "--subresource=status"),
        ("update", "mtlspolicies.meshless.dev", "-n", "shop"),
        ("create", "leases.coordination.k8s.io", "-n", "shop"),
        ("create", "clusterkopfpeerings.kopf.dev"),
    ],
    ids=lambda a: " ".join(a),
)
def test_the_token_is_refused_what_the_operator_does_not_need(
    operator_kubeconfig: str, args: tuple[str, ...]
) -> None:
    assert not can_i(operator_kubeconfig, *args)


def test_leases_are_limited_to_the_leader_lease_in_the_release_namespace(
    release: Release, operator_kubeconfig: str
) -> None:
    ns = release.namespace
    assert can_i(operator_kubeconfig, "update", f"leases/{LEASE_NAME}", "-n", ns)
    assert can_i(operator_kubeconfig, "create", "leases", "-n", ns)
    assert not can_i(operator_kubeconfig, "update", "leases/someone-elses", "-n", ns)
    assert not can_i(operator_kubeconfig, "get", f"leases/{LEASE_NAME}", "-n", "kube-system")


def test_the_api_server_refuses_the_token_a_binding_and_a_namespace_deletion(
    operator_kubeconfig: str, api_client: client.ApiClient, namespace: str
) -> None:
    from kubernetes import config as kube_config

    as_operator = kube_config.new_client_from_config(config_file=operator_kubeconfig)
    binding = {
        "metadata": {"name": f"escalate-{uuid.uuid4().hex[:6]}"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "cluster-admin",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}],
    }
    with pytest.raises(client.ApiException) as refused:
        client.RbacAuthorizationV1Api(as_operator).create_cluster_role_binding(binding)
    assert refused.value.status == 403
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(as_operator).delete_namespace(namespace)
    assert refused.value.status == 403
    assert client.CoreV1Api(api_client).read_namespace(namespace).status.phase == "Active"


# --------------------------------------------------------------------------------------------
# The operator with only the chart's RBAC.


@pytest.fixture(scope="module")
def chart_operator(
    release: Release,
    operator_kubeconfig: str,
    api_client: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    env = {
        "MESHLESS_NAMESPACE": release.namespace,
        "MESHLESS_TTL_FLOOR": "1m",
        "MESHLESS_CA_POLL_INTERVAL": "1s",
        # As in the chart's Deployment, but named here: nothing of the admin's may leak in.
        "MESHLESS_WEBHOOK_SERVICE": f"{release.fullname}-webhook",
        "MESHLESS_SERVICE_ACCOUNT": release.service_account,
        "POD_NAME": f"{release.fullname}-0",
        # Shortened for the probe and rotation flows below (as in test_probes and
        # test_ca_rotation).
        "MESHLESS_PROBE_INTERVAL": f"{PROBE_INTERVAL_S}s",
        "MESHLESS_PROBE_TIMEOUT": "2s",
        "MESHLESS_CA_SETTLE_TIME": "3s",
        "MESHLESS_CA_ROTATION_WINDOW": "4s",
        # Webhooks wiped or configurations deleted by hand are seen at a resync.
        "MESHLESS_RESYNC_INTERVAL": "3s",
    }
    # Outside a cluster the API server cannot reach the Service: OperatorProcess sets
    # MESHLESS_WEBHOOK_URL (loopback), and the operator points the configurations at it.
    op = OperatorProcess(operator_kubeconfig, env, tmp_path_factory.mktemp("op") / "op.log")
    op.start()
    try:
        yield op
    finally:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
        remove_webhook_configurations(api_client)


# A refusal is the status code as a word ("403 Forbidden: ..."), not three digits inside a
# certificate's hex serial number (a serial once contained "403" and failed this test) nor
# the milliseconds of a log line's timestamp ("09:25:13,403").
REFUSAL = re.compile(r"(?<![,.])\b403\b|forbidden|not enough permissions", re.IGNORECASE)


def refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if REFUSAL.search(line)]


def test_a_refusal_is_found_in_a_log_line_and_a_timestamp_is_not() -> None:
    assert refusals("12:00:01,403 INFO kopf: Initial authentication has finished.") == []
    assert refusals("12:00:01,000 ERROR APIForbiddenError: 'configmaps is forbidden'")
    assert refusals("12:00:01,000 ERROR ApiError: 403 Forbidden: cannot list configmaps")


def assert_never_refused(op: OperatorProcess) -> None:
    """No request of the operator's was refused. Every refusal reaches its log: Kopf logs its
    own, and the operator's client raises `ApiError("403 Forbidden: ...")`, which is logged
    wherever it is caught. (Not the API response metric: it also counts the 403s for writes
    into namespaces being terminated, which this control plane, without a namespace
    controller, keeps forever after a test, and which the operator skips on purpose.)"""
    assert refusals(op.log()) == []


def test_identity_flow_with_the_charts_rbac(
    chart_operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    create_identity(api_client, namespace, "payments", ttl="1h")
    ready = wait_identity(api_client, namespace, "payments", is_ready, timeout=TIMEOUT)
    secret_name = ready["status"]["secretName"]
    assert secret_name == "payments-mtls"
    secret = wait_secret(
        api_client, namespace, secret_name, lambda s: bool(s.data and "tls.crt" in s.data)
    )
    assert secret.metadata.labels.get(IDENTITY_LABEL)
    assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret.data)
    bundle = client.CoreV1Api(api_client).read_namespaced_config_map(
        "meshless-trust-bundle", namespace
    )
    assert "BEGIN CERTIFICATE" in next(iter(bundle.data.values()))
    assert_never_refused(chart_operator)


def test_policy_flow_with_the_charts_rbac(
    chart_operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    create_pod(api_client, namespace, "web-1", {"app": "web"})
    create_policy(api_client, namespace, "strict", "STRICT")
    done = wait_policy(
        api_client,
        namespace,
        "strict",
        status_is(selectedPods=1, networkPolicies=1),
        timeout=TIMEOUT,
    )
    assert done["status"]["conditions"]
    (network_policy,) = list_network_policies(api_client, namespace)
    owners = network_policy["metadata"]["ownerReferences"]
    assert owners[0]["kind"] == "MtlsPolicy" and owners[0]["name"] == "strict"
    labels = client.CoreV1Api(api_client).read_namespace(namespace).metadata.labels
    assert "meshless.dev/mtls" in labels
    # The identity provisioned for the pod's ServiceAccount becomes Ready too.
    provisioned = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
        "meshless.dev", "v1alpha1", namespace, "workloadidentities"
    )["items"]
    assert [i["spec"]["serviceAccountName"] for i in provisioned] == ["default"]
    name = provisioned[0]["metadata"]["name"]
    wait_identity(api_client, namespace, name, is_ready, timeout=TIMEOUT)
    assert get_identity(api_client, namespace, name)["status"]
    # The leader wrote the webhook configurations with the name RBAC allows it.
    registration = client.AdmissionregistrationV1Api(api_client)
    mutating = registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    assert mutating.webhooks[0].client_config.ca_bundle
    # Relaxing the policy removes what it made: the NetworkPolicy and the provisioned identity
    # are deleted, the namespace label goes (delete and patch with the chart's RBAC).
    patch_policy(api_client, namespace, "strict", {"mode": "DISABLE"})
    wait_policy(api_client, namespace, "strict", status_is(networkPolicies=0), timeout=TIMEOUT)
    wait_collection(
        client.CustomObjectsApi(api_client).list_namespaced_custom_object,
        "meshless.dev",
        "v1alpha1",
        namespace,
        "workloadidentities",
        predicate=lambda items: items == [],
        timeout=TIMEOUT,
        what="provisioned identity deleted",
    )
    assert list_network_policies(api_client, namespace) == []
    assert_never_refused(chart_operator)


def test_admission_with_the_charts_rbac(
    chart_operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    """The webhook configurations the chart created, filled in by the operator (by name, no
    create) and pointed at its --webhook-url: a pod in a STRICT namespace is injected, a pod
    opted out of its identity is refused."""
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    create_policy(api_client, namespace, "strict", "STRICT")
    wait_admission_label(api_client, namespace, timeout=TIMEOUT)
    registration = client.AdmissionregistrationV1Api(api_client)
    url = f"https://127.0.0.1:{chart_operator.webhook_port}/"
    for configuration in (
        registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION),
        registration.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION),
    ):
        assert configuration.webhooks, configuration.kind
        for webhook in configuration.webhooks:
            assert webhook.client_config.url.startswith(url), webhook.client_config
            assert webhook.client_config.service is None
            assert webhook.client_config.ca_bundle
        # The metadata stays Helm's: the operator applies only the webhooks.
        assert configuration.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
        managers = {(f.manager, f.operation) for f in configuration.metadata.managed_fields}
        assert ("meshless", "Apply") in managers

    pod = create_pod(api_client, namespace, "web-1", {"app": "web"})
    assert IDENTITY_LABEL in pod["metadata"]["labels"]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or ()}
    mounted = volumes["meshless-identity"]["secret"]["secretName"]
    # The identity the operator provisions for the pod's ServiceAccount owns that Secret.
    provisioned = wait_collection(
        client.CustomObjectsApi(api_client).list_namespaced_custom_object,
        "meshless.dev",
        "v1alpha1",
        namespace,
        "workloadidentities",
        predicate=lambda items: len(items) == 1,
        timeout=TIMEOUT,
        what="the identity provisioned for the default ServiceAccount",
    )
    name = provisioned[0]["metadata"]["name"]
    ready = wait_identity(api_client, namespace, name, is_ready, timeout=TIMEOUT)
    assert ready["status"]["secretName"] == mounted

    opted_out = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "no-identity", "annotations": {"meshless.dev/inject": "false"}},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
    }
    with pytest.raises(client.ApiException) as refused:
        client.CoreV1Api(api_client).create_namespaced_pod(namespace, opted_out)
    assert "does not mount its identity" in str(refused.value.body)
    assert_never_refused(chart_operator)


def test_probes_with_the_charts_rbac(
    chart_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    """As test_probes (loopback servers stand in for pods, no node needed): one STRICT port
    proven, one plaintext port failing with a Warning Event on its pod."""
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    create_identity(api_client, namespace, "app", serviceAccountName="default")
    secret = wait_secret(api_client, namespace, "app-mtls", lambda s: bool(s.data))
    identity = tmp_path / "identity"
    identity.mkdir()
    for key, value in secret.data.items():
        (identity / key).write_bytes(base64.b64decode(value))
    servers = {
        "good": SwitchableServer(identity, "STRICT"),
        "plain": SwitchableServer(identity, "PLAINTEXT"),
    }
    try:
        create_policy(api_client, namespace, "strict", "STRICT")
        for name, server in servers.items():
            create_pod(api_client, namespace, name, {"app": name}, ports=(server.port,))
            running_on_loopback(api_client, namespace, name)
        wait_policy(
            api_client,
            namespace,
            "strict",
            lambda o: strict_counts(o) == {"proven": 1, "failing": 1, "unreachable": 0},
            timeout=TIMEOUT,
            what="one STRICT port proven and one failing",
        )
        event = wait_event(api_client, namespace, "plain", "StrictNotEnforced", timeout=30)
        assert event.type == "Warning"
    finally:
        for server in servers.values():
            server.close()
    assert_never_refused(chart_operator)


def test_an_intermediate_rotation_with_the_charts_rbac(
    chart_operator: OperatorProcess,
    release: Release,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    core = client.CoreV1Api(api_client)
    create_identity(api_client, namespace, "before")
    wait_identity(api_client, namespace, "before", is_ready, timeout=TIMEOUT)
    ca = CAWatcher(core, release.namespace)
    old = ca.data()
    # `meshless ca rotate` is the administrator's command (their credentials); the operator
    # does the rotation with the chart's.
    rotate = meshless_cli(kubeconfig, "--namespace", release.namespace, "rotate", "--intermediate")
    assert rotate.returncode == 0, rotate.stderr
    ca.wait(lambda s: s.last_intermediate_rotation is not None, TIMEOUT, "intermediate rotation")
    new = ca.data()
    assert new["tls.crt"] != old["tls.crt"] and new["ca.crt"] == old["ca.crt"]
    wait_event(api_client, release.namespace, CA_SECRET, "CAIntermediateRotated")
    create_identity(api_client, namespace, "after")
    wait_identity(api_client, namespace, "after", is_ready, timeout=TIMEOUT)
    after = secret_data(core, namespace, "after-mtls")
    assert after is not None
    issuer = parse_pem_certificates(new["tls.crt"])[0]
    assert parse_pem_certificates(after["tls.crt"])[1] == issuer
    assert_never_refused(chart_operator)


def test_a_root_rotation_with_the_charts_rbac(
    chart_operator: OperatorProcess,
    release: Release,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    """The issue's bug: with only the chart's RBAC, Prepare never ended (every poll was
    refused listing the trust-bundle ConfigMaps). Now the whole rotation runs: Prepare,
    Switch, Finish, and the old root is gone from every bundle."""
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    core = client.CoreV1Api(api_client)
    names = ("alpha", "bravo")
    for name in names:
        create_identity(api_client, namespace, name)
    for name in names:
        wait_identity(api_client, namespace, name, is_ready, timeout=TIMEOUT)
    ca = CAWatcher(core, release.namespace)
    (old_root,) = fingerprints(ca.data()["ca.crt"])

    rotate = meshless_cli(kubeconfig, "--namespace", release.namespace, "rotate")
    assert rotate.returncode == 0, rotate.stderr
    ca.wait(lambda s: s.phase.value == "Switch", TIMEOUT, "Switch (the end of Prepare)")
    ca.wait(lambda s: s.last_root_rotation is not None, 2 * TIMEOUT, "the end of the rotation")
    history = [h.split("@")[0] for h in ca.state().history]
    assert history[-4:] == ["Prepare", "Switch", "Finish", "Idle"], history
    (new_root,) = fingerprints(ca.data()["ca.crt"])
    assert new_root != old_root
    bundle = core.read_namespaced_config_map("meshless-trust-bundle", namespace)
    assert fingerprints((bundle.data or {})["ca.crt"].encode()) == {new_root}
    for name in names:
        data = secret_data(core, namespace, f"{name}-mtls")
        assert data is not None
        assert fingerprints(data["ca.crt"]) == {new_root}, name
        assert leaf_root(data["tls.crt"], ca.roots()) == new_root, name
    wait_event(api_client, release.namespace, CA_SECRET, "CARotationComplete")
    assert_never_refused(chart_operator)


# --------------------------------------------------------------------------------------------
# Namespace writes: the chart's ValidatingAdmissionPolicy.


def test_the_operator_may_change_only_meshless_labels_on_a_namespace(
    release: Release, operator_kubeconfig: str, api_client: client.ApiClient, namespace: str
) -> None:
    from kubernetes import config as kube_config

    core = client.CoreV1Api(api_client)
    as_operator = client.CoreV1Api(
        kube_config.new_client_from_config(config_file=operator_kubeconfig)
    )
    core.patch_namespace(namespace, {"metadata": {"labels": {"team": "shop"}}})

    # The labels the operator owns: added, changed, removed.
    for value in ("enabled", "other", None):
        as_operator.patch_namespace(
            namespace, {"metadata": {"labels": {"meshless.dev/identities": value}}}
        )
        labels = core.read_namespace(namespace).metadata.labels
        assert labels.get("meshless.dev/identities") == value

    policy = f"{release.fullname}-namespace-labels"
    refused = [
        ({"metadata": {"labels": {"team": "payments"}}}, "not team"),
        ({"metadata": {"labels": {"team": None}}}, "not team"),
        (
            {"metadata": {"labels": {"meshless.dev/mtls": "enabled", "owner": "mallory"}}},
            "not owner",
        ),
        (
            {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
            "not pod-security.kubernetes.io/enforce",
        ),
        ({"metadata": {"annotations": {"owner": "mallory"}}}, "not its annotations"),
        ({"metadata": {"finalizers": ["example.com/hold"]}}, "not its annotations, finalizers"),
    ]
    for patch, words in refused:
        with pytest.raises(client.ApiException) as denied:
            as_operator.patch_namespace(namespace, patch)
        assert denied.value.status == 403, patch  # Forbidden, the policy's reason
        body = str(denied.value.body)
        assert f"ValidatingAdmissionPolicy '{policy}'" in body, body
        assert words in body, body
    after = core.read_namespace(namespace)
    assert after.metadata.labels.get("team") == "shop"
    assert "owner" not in after.metadata.labels and not after.metadata.annotations
    assert after.spec.finalizers == ["kubernetes"]
    # The policy binds the operator only: an administrator makes the same change.
    core.patch_namespace(namespace, {"metadata": {"labels": {"team": "payments"}}})
    assert core.read_namespace(namespace).metadata.labels["team"] == "payments"


def test_leader_lease_is_held_by_the_pod_name(
    chart_operator: OperatorProcess, release: Release, api_client: client.ApiClient
) -> None:
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    lease = client.CoordinationV1Api(api_client).read_namespaced_lease(
        LEASE_NAME, release.namespace
    )
    assert lease.spec.holder_identity == f"{release.fullname}-0"


def webhooks_of(api_client: client.ApiClient) -> dict[str, Any]:
    registration = client.AdmissionregistrationV1Api(api_client)
    return {
        kind: api_client.sanitize_for_serialization(read(WEBHOOK_CONFIGURATION).webhooks)
        for kind, read in (
            ("mutating", registration.read_mutating_webhook_configuration),
            ("validating", registration.read_validating_webhook_configuration),
        )
    }


def wait_for_log_after(op: OperatorProcess, offset: int, needle: str, timeout: float) -> str:
    """The operator's log from `offset` on, once it holds `needle`."""
    deadline = time.monotonic() + timeout
    while needle not in (tail := op.log()[offset:]):
        assert time.monotonic() < deadline, f"no {needle!r} in the operator log:\n{tail}"
        time.sleep(0.1)
    return tail


def test_helm_upgrade_keeps_the_operators_webhooks(
    chart_operator: OperatorProcess, release: Release, api_client: client.ApiClient
) -> None:
    """Helm's three-way merge leaves alone the `webhooks` its manifest never names."""
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    before = webhooks_of(api_client)
    assert before["mutating"] and before["validating"]
    helm(
        "upgrade", release.name, str(CHART), "--kubeconfig", release.kubeconfig,
        "--namespace", release.namespace, "--reuse-values", "--set", "replicaCount=3",
    )  # fmt: skip
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(
        release.fullname, release.namespace
    )
    assert deployment.spec.replicas == 3  # the upgrade did apply the new manifest
    assert webhooks_of(api_client) == before
    assert_never_refused(chart_operator)


# The API server audits ServiceAccounts' requests (hack/localcluster.py, metadata only).
AUDIT_LOG = ROOT / ".cache" / "cluster" / "logs" / "audit.log"
# The tests' own requests with the operator's token (can-i, the refusal checks).
TEST_TOOLS = ("kubectl/", "OpenAPI-Generator/")
# Objects created through server-side apply: the request is a patch, authorized as create too.
CREATED_BY_APPLY = {
    ("configmaps", "create"),
    ("networkpolicies", "create"),
    ("workloadidentities", "create"),
}


# Used only where the API serves Pod Certificates, which this control plane does not
# (tests/integration/test_pod_certificates_chart.py checks them on one that does); `sign` and
# `attest` are never requests, the API server asks for them itself.
POD_CERTIFICATES_ONLY = {
    ("pods", "get"),
    ("podcertificaterequests", "list"),
    ("podcertificaterequests", "watch"),
    ("podcertificaterequests/status", "update"),
    ("signers", "sign"),
    ("signers", "attest"),
    ("clustertrustbundles", "create"),
    ("clustertrustbundles", "patch"),
}


def operator_requests(username: str, audit_log: Path = AUDIT_LOG) -> list[Json]:
    events = []
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        if (
            event["user"]["username"] == username
            and not event.get("userAgent", "").startswith(TEST_TOOLS)
            and event.get("objectRef")
        ):
            events.append(event)
    return events


def test_the_operator_used_every_permission_the_chart_grants_and_no_other(
    chart_operator: OperatorProcess, release: Release, api_client: client.ApiClient
) -> None:
    """After every flow above, from the API server's audit log: each (resource, verb) the
    ClusterRole and Role grant was used by the operator (nothing unused), and RBAC refused it
    nothing (nothing missing)."""
    username = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    requests = operator_requests(username)
    assert requests, f"no audited request by {username} in {AUDIT_LOG}"
    decisions = {
        (e["verb"], e["requestURI"]): (e.get("annotations") or {}).get(
            "authorization.k8s.io/decision"
        )
        for e in requests
    }
    assert [r for r, d in decisions.items() if d != "allow"] == []
    used = set()
    for event in requests:
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((resource, event["verb"]))
        if "webhookconfigurations" in resource:
            assert ref.get("name") == WEBHOOK_CONFIGURATION, event["requestURI"]
        if resource == "leases" and event["verb"] != "create":
            assert ref.get("name") == LEASE_NAME, event["requestURI"]
    rbac = client.RbacAuthorizationV1Api(api_client)
    rules = rbac.read_cluster_role(release.fullname).rules + (
        rbac.read_namespaced_role(f"{release.fullname}-leader-election", release.namespace).rules
    )
    granted = {(r, v) for rule in rules for r in rule.resources for v in rule.verbs}
    assert used - granted == set()
    assert granted - used == CREATED_BY_APPLY | POD_CERTIFICATES_ONLY
    for resource, _ in CREATED_BY_APPLY:
        assert (resource, "patch") in used


def test_wiped_webhooks_come_back_at_a_resync(
    chart_operator: OperatorProcess, api_client: client.ApiClient
) -> None:
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    before = webhooks_of(api_client)
    registration = client.AdmissionregistrationV1Api(api_client)
    configuration = registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    configuration.webhooks = None  # what `helm upgrade --force` or a hand edit leaves
    registration.replace_mutating_webhook_configuration(WEBHOOK_CONFIGURATION, configuration)
    assert not registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION).webhooks
    deadline = time.monotonic() + TIMEOUT
    while webhooks_of(api_client) != before:
        assert time.monotonic() < deadline, "the webhooks did not come back"
        time.sleep(0.2)
    assert_never_refused(chart_operator)


def test_a_deleted_configuration_is_reported_once_and_helm_upgrade_puts_it_back(
    chart_operator: OperatorProcess, release: Release, api_client: client.ApiClient
) -> None:
    """Without create, the operator cannot make a missing configuration: one log line says
    which and that the chart creates it; `helm upgrade` does, and the operator fills it in."""
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    registration = client.AdmissionregistrationV1Api(api_client)
    offset = len(chart_operator.log())
    registration.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION)
    # Seen at the leader's next resync (so at a new term or a CA change).
    missing = f"ValidatingWebhookConfiguration/{WEBHOOK_CONFIGURATION} does not exist"
    wait_for_log_after(chart_operator, offset, missing, TIMEOUT)
    with pytest.raises(client.ApiException) as gone:
        registration.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION)
    assert gone.value.status == 404  # refused the create, made nothing

    helm(
        "upgrade", release.name, str(CHART), "--kubeconfig", release.kubeconfig,
        "--namespace", release.namespace, "--reuse-values",
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while not registration.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION).webhooks:
        assert time.monotonic() < deadline, "the operator did not fill in the configuration"
        time.sleep(0.2)
    tail = chart_operator.log()[offset:]
    lines = [line for line in tail.splitlines() if missing in line]
    assert len(lines) == 1, lines  # one line, not one per CA poll
    assert "the Helm chart creates it" in lines[0]


def test_uninstall_removes_the_charts_objects_and_the_webhook_configurations(
    chart_operator: OperatorProcess, release: Release, api_client: client.ApiClient
) -> None:
    """Last in this module. The webhook configurations are the chart's: they go with it (what
    stays is listed in the chart README)."""
    chart_operator.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    chart_operator.stop()
    helm("uninstall", release.name, "--kubeconfig", release.kubeconfig, "-n", release.namespace)
    rbac = client.RbacAuthorizationV1Api(api_client)
    registration = client.AdmissionregistrationV1Api(api_client)
    for read in (
        lambda: rbac.read_cluster_role(release.fullname),
        lambda: rbac.read_cluster_role_binding(release.fullname),
        lambda: client.AppsV1Api(api_client).read_namespaced_deployment(
            release.fullname, release.namespace
        ),
        lambda: registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION),
        lambda: registration.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION),
        lambda: registration.read_validating_admission_policy(
            f"{release.fullname}-namespace-labels"
        ),
        lambda: registration.read_validating_admission_policy_binding(
            f"{release.fullname}-namespace-labels"
        ),
    ):
        with pytest.raises(client.ApiException) as gone:
            read()
        assert gone.value.status == 404


def test_outside_the_chart_the_operator_creates_them_and_the_chart_can_adopt_them(
    release: Release, api_client: client.ApiClient
) -> None:
    """After the uninstall above. With an admin's credentials (`make run`) a missing
    configuration is created by the operator's apply, labelled as the operator's. Upgrading
    to a chart that creates them: the README's label-and-annotate step lets Helm adopt them,
    and their webhooks stay in place throughout."""
    endpoint = Endpoint(url="https://127.0.0.1:9443")

    async def apply() -> None:
        kube = Kube(load_configuration(release.kubeconfig))
        try:
            await apply_configurations(kube, endpoint, b"bundle", release.namespace)
        finally:
            await kube.close()

    try:
        asyncio.run(apply())
        made = webhooks_of(api_client)
        registration = client.AdmissionregistrationV1Api(api_client)
        for read in (
            registration.read_mutating_webhook_configuration,
            registration.read_validating_webhook_configuration,
        ):
            configuration = read(WEBHOOK_CONFIGURATION)
            assert configuration.metadata.labels == {"app.kubernetes.io/managed-by": "meshless"}
        assert all(
            w["clientConfig"]["url"].startswith("https://127.0.0.1:9443/")
            for w in made["mutating"] + made["validating"]
        )
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            kubectl = [kubectl_path(), f"--kubeconfig={release.kubeconfig}"]
            subprocess.run(
                [*kubectl, "label", kind, WEBHOOK_CONFIGURATION,
                 "app.kubernetes.io/managed-by=Helm", "--overwrite"],
                check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                [*kubectl, "annotate", kind, WEBHOOK_CONFIGURATION,
                 f"meta.helm.sh/release-name={release.name}",
                 f"meta.helm.sh/release-namespace={release.namespace}", "--overwrite"],
                check=True, capture_output=True,
            )  # fmt: skip
        helm(
            "install", release.name, str(CHART), "--kubeconfig", release.kubeconfig,
            "--namespace", release.namespace,
            "--set", "image.repository=registry.invalid/meshless",
        )  # fmt: skip
        assert webhooks_of(api_client) == made
        # The operator's next apply leaves Helm's labels alone.
        asyncio.run(apply())
        configuration = registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
        assert configuration.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
        assert webhooks_of(api_client) == made
    finally:
        helm(
            "uninstall", release.name, "--kubeconfig", release.kubeconfig,
            "--namespace", release.namespace, check=False,
        )  # fmt: skip
        remove_webhook_configurations(api_client)
