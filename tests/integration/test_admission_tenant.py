"""Identities no tenant can forge, tried at admission as a tenant would: a ServiceAccount token
holding `admin` in its own namespace only, against the real API server and a running
operator.

- WorkloadIdentities with names outside the tenant's namespace are refused at apply time,
  each with the name and the rule; nothing is ever stored or issued for them; the setting
  --allowed-dns-names widens what the webhook admits.
- Pods use only their own ServiceAccount's identity Secret, however referenced; never
  optional, never with items. Fails closed under a policy, open elsewhere.
- `pods/status` cannot add or change the identity label.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client

from meshless.identity.spec import default_secret_name, provisioned_name

from .conftest import OperatorFactory
from .kubehelpers import GROUP, PLURAL, VERSION, is_ready, wait_identity, wait_secret, watch_until
from .policyhelpers import create_policy, wait_admission_label
from .tenants import Principal, principal, tenant

TIMEOUT = 60.0


# --- helpers ------------------------------------------------------------------------------
def identity_manifest(namespace: str, name: str, account: str, dns_names: list[str]) -> str:
    spec: dict[str, Any] = {"serviceAccountName": account}
    if dns_names:
        spec["dnsNames"] = dns_names
    return json.dumps(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkloadIdentity",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def apply_identity(
    who: Principal, namespace: str, name: str, dns_names: list[str], *, dry_run: bool = False
) -> Any:
    args = ["apply", "-n", namespace, "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    return who.kubectl(
        *args, input=identity_manifest(namespace, name, "api", dns_names), check=False
    )


def until(
    produce: Callable[[], Any], accept: Callable[[Any], bool], what: str, timeout: float = TIMEOUT
) -> Any:
    """The API server takes up changed webhook configurations on its own schedule, which no
    watch reports: ask (a dry run where possible) until the answer is the expected one,
    bounded. Returns that answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = produce()
        if accept(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}; last answer: {answer}")
        time.sleep(0.2)


def refused_by(out: Any, webhook: str) -> bool:
    return bool(
        out.returncode != 0 and f'admission webhook "{webhook}" denied the request' in out.stderr
    )


def pod_manifest(name: str, account: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "busybox"}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": account, "containers": [container], **spec},
    }


def create_pod(
    who: Principal, namespace: str, manifest: dict[str, Any], dry_run: bool = False
) -> Any:
    args = ["create", "-n", namespace, "-f", "-", "-o", "json"]
    if dry_run:
        args.append("--dry-run=server")
    return who.kubectl(*args, input=json.dumps(manifest), check=False)


def wait_identities_label(api: client.ApiClient, namespace: str, present: bool = True) -> None:
    watch_until(
        client.CoreV1Api(api).list_namespace,
        field_selector=f"metadata.name={namespace}",
        predicate=lambda ns: (
            ((ns.metadata.labels or {}).get("meshless.dev/identities") == "true") == present
        ),
        timeout=TIMEOUT,
        what=f"the identities label {'on' if present else 'off'} namespace {namespace}",
        resource_version=lambda listed: listed.metadata.resource_version,
        items=lambda listed: listed.items,
    )


def sans(secret: client.V1Secret) -> list[str]:
    import base64

    leaf = x509.load_pem_x509_certificates(base64.b64decode(secret.data["tls.crt"]))[0]
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(names.get_values_for_type(x509.DNSName))


@pytest.fixture
def other_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    custom = client.CustomObjectsApi(api_client)
    for plural in ("mtlspolicies", "workloadidentities"):
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, name, plural)
    core.delete_namespace(name)


# --- (a) names at apply time ----------------------------------------------------------------
def test_a_tenant_cannot_apply_names_outside_its_namespace_and_the_setting_widens_them(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    op = operator_factory()
    user = tenant(kubeconfig, api_client, namespace, tmp_path)
    until(
        lambda: apply_identity(user, namespace, "probe", ["example.com"], dry_run=True),
        lambda out: refused_by(out, "dns-names.meshless.dev"),
        "the dns-names webhook in effect",
    )
    forbidden = [
        "*.shop.svc",
        "payments.shop.svc",
        "kubernetes.default.svc",
        f"meshless-webhook.{op.namespace}.svc",
        "example.com",
        f"*.{namespace}.svc",
    ]
    for index, name in enumerate(forbidden):
        out = apply_identity(user, namespace, f"forged-{index}", [f"api.{namespace}.svc", name])
        assert refused_by(out, "dns-names.meshless.dev"), out.stderr
        assert f"DNS name {name!r}" in out.stderr
        assert "(rule: " in out.stderr
        assert f"WorkloadIdentity {namespace}/forged-{index}" in out.stderr

    allowed = [f"api.{namespace}.svc", f"api.{namespace}.svc.cluster.local"]
    assert apply_identity(user, namespace, "api", allowed).returncode == 0
    wait_identity(api_client, namespace, "api", is_ready, timeout=TIMEOUT)
    issued = wait_secret(api_client, namespace, "api-mtls", lambda s: bool(s.data), TIMEOUT)
    assert sans(issued) == sorted(allowed)
    # Nothing was stored for a refused identity, so nothing was ever issued for one.
    custom = client.CustomObjectsApi(api_client)
    stored = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert [i["metadata"]["name"] for i in stored] == ["api"]
    secrets = client.CoreV1Api(api_client).list_namespaced_secret(namespace).items
    assert not [s.metadata.name for s in secrets if s.metadata.name.startswith("forged-")]

    # The webhook follows the operator's setting: restarted with a pattern, it admits its
    # names (for the identity's own namespace only).
    wide = f"api.{namespace}.example.com"
    refused = apply_identity(user, namespace, "wide", [wide])
    assert refused_by(refused, "dns-names.meshless.dev")
    op.stop()
    operator_factory(namespace=op.namespace, allowed_dns_names="*.{namespace}.example.com")
    until(  # the new operator's webhook answers (the old one's endpoint is gone)
        lambda: apply_identity(user, namespace, "probe", ["example.com"], dry_run=True),
        lambda out: refused_by(out, "dns-names.meshless.dev"),
        "the restarted operator's dns-names webhook in effect",
    )
    admitted = apply_identity(user, namespace, "wide", [wide])
    assert admitted.returncode == 0, admitted.stderr
    elsewhere = apply_identity(user, namespace, "elsewhere", ["api.shop.example.com"])
    assert refused_by(elsewhere, "dns-names.meshless.dev")
    wait_identity(api_client, namespace, "wide", is_ready, timeout=TIMEOUT)
    assert sans(wait_secret(api_client, namespace, "wide-mtls", lambda s: bool(s.data))) == [wide]


# --- (b) pods bound to their own identity ---------------------------------------------------
SECRET_OF_OTHER = "backend-mtls"  # the identity of ServiceAccount backend


def cross_account_pods(secret: str = SECRET_OF_OTHER) -> dict[str, dict[str, Any]]:
    """Pods of ServiceAccount frontend that reach for backend's identity Secret `secret`, each
    another way."""
    return {
        "secret volume": pod_manifest(
            "by-volume",
            "frontend",
            volumes=[{"name": "id", "secret": {"secretName": secret}}],
        ),
        "projected source": pod_manifest(
            "by-projected",
            "frontend",
            volumes=[{"name": "id", "projected": {"sources": [{"secret": {"name": secret}}]}}],
        ),
        "env": pod_manifest(
            "by-env",
            "frontend",
            container={
                "env": [
                    {
                        "name": "KEY",
                        "valueFrom": {"secretKeyRef": {"name": secret, "key": "tls.key"}},
                    }
                ]
            },
        ),
        "envFrom": pod_manifest(
            "by-env-from",
            "frontend",
            container={"envFrom": [{"secretRef": {"name": secret}}]},
        ),
    }


def own_identity_misused() -> dict[str, dict[str, Any]]:
    own = "frontend-mtls"
    return {
        "optional": pod_manifest(
            "optional",
            "frontend",
            volumes=[{"name": "id", "secret": {"secretName": own, "optional": True}}],
        ),
        "items": pod_manifest(
            "items",
            "frontend",
            volumes=[
                {
                    "name": "id",
                    "secret": {"secretName": own, "items": [{"key": "tls.crt", "path": "c"}]},
                }
            ],
        ),
    }


def own_identity_pod(name: str = "own") -> dict[str, Any]:
    return pod_manifest(
        name,
        "frontend",
        volumes=[{"name": "id", "secret": {"secretName": "frontend-mtls"}}],
        container={"volumeMounts": [{"name": "id", "mountPath": "/id", "readOnly": True}]},
    )


def make_identities(user: Principal, namespace: str) -> None:
    for account in ("frontend", "backend"):
        user.kubectl(
            "apply",
            "-n",
            namespace,
            "-f",
            "-",
            input=identity_manifest(namespace, account, account, []),
        )


def test_pods_use_only_their_own_identity_however_referenced(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    operator_factory()
    user = tenant(kubeconfig, api_client, namespace, tmp_path)
    make_identities(user, namespace)
    # No policy here: the namespace is labelled for holding identities (binding webhook).
    wait_identities_label(api_client, namespace)
    until(
        lambda: create_pod(user, namespace, cross_account_pods()["secret volume"], dry_run=True),
        lambda out: refused_by(out, "binding.meshless.dev"),
        "the binding webhook in effect",
    )
    for how, manifest in cross_account_pods().items():
        out = create_pod(user, namespace, manifest)
        assert refused_by(out, "binding.meshless.dev"), (how, out.stderr)
        assert "runs as ServiceAccount 'frontend'" in out.stderr, how
        assert f"Secret {SECRET_OF_OTHER!r}" in out.stderr, how
        assert "ServiceAccount 'backend'" in out.stderr, how
        assert "(rule: a pod may use only its own ServiceAccount's identity)" in out.stderr, how
    for how, manifest in own_identity_misused().items():
        out = create_pod(user, namespace, manifest)
        assert refused_by(out, "binding.meshless.dev"), (how, out.stderr)
        assert "identity Secret 'frontend-mtls'" in out.stderr, how
        assert "(rule: an identity Secret is " in out.stderr, how
    created = create_pod(user, namespace, own_identity_pod())
    assert created.returncode == 0, created.stderr
    # A Secret that is no identity is none of meshless's business.
    plain = pod_manifest(
        "plain-secret",
        "frontend",
        volumes=[{"name": "s", "secret": {"secretName": "db", "optional": True}}],
    )
    assert create_pod(user, namespace, plain).returncode == 0

    # An ephemeral container (pods/ephemeralcontainers) cannot reach for it either. `admin`
    # does not grant that subresource; administrators who allow `kubectl debug` add it.
    rbac = client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "debug"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods/ephemeralcontainers"],
                    "verbs": ["patch", "update"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "tenant-debug"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debug"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
        },
    )
    tenant_api = client.CoreV1Api(user.api())
    debug = {
        "spec": {
            "ephemeralContainers": [
                {
                    "name": "debug",
                    "image": "busybox",
                    "envFrom": [{"secretRef": {"name": SECRET_OF_OTHER}}],
                }
            ]
        }
    }
    with pytest.raises(client.ApiException) as refused:
        tenant_api.patch_namespaced_pod_ephemeralcontainers(
            "own", namespace, debug, _content_type="application/strategic-merge-patch+json"
        )
    assert refused.value.status == 403
    assert "binding.meshless.dev" in str(refused.value.body)
    assert "ephemeral container 'debug'" in str(refused.value.body)

    # The label goes with the namespace's last identity.
    for account in ("frontend", "backend"):
        user.kubectl("delete", "-n", namespace, "workloadidentity", account)
    wait_identities_label(api_client, namespace, present=False)


def test_the_binding_fails_closed_under_a_policy_and_open_elsewhere(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    other_namespace: str,
    tmp_path: Path,
) -> None:
    op = operator_factory()
    plain_ns, strict_ns = namespace, other_namespace
    users = {ns: tenant(kubeconfig, api_client, ns, tmp_path) for ns in (plain_ns, strict_ns)}
    for ns, user in users.items():
        make_identities(user, ns)
    create_policy(api_client, strict_ns, "strict", "STRICT")
    wait_admission_label(api_client, strict_ns, timeout=TIMEOUT)
    wait_identities_label(api_client, plain_ns)
    volume = cross_account_pods()["secret volume"]
    # Under the policy the STRICT webhook judges the binding as well.
    out = until(
        lambda: create_pod(users[strict_ns], strict_ns, volume, dry_run=True),
        lambda out: refused_by(out, "strict.meshless.dev"),
        "the STRICT webhook refusing a cross-account pod",
    )
    assert f"Secret {SECRET_OF_OTHER!r}" in out.stderr
    until(
        lambda: create_pod(users[plain_ns], plain_ns, volume, dry_run=True),
        lambda out: refused_by(out, "binding.meshless.dev"),
        "the binding webhook in effect",
    )
    # With every webhook replica down: refused under the policy, admitted elsewhere.
    op.stop()
    down = create_pod(users[strict_ns], strict_ns, volume)
    assert down.returncode != 0 and "failed calling webhook" in down.stderr, down.stderr
    admitted = create_pod(users[plain_ns], plain_ns, volume)
    assert admitted.returncode == 0, admitted.stderr


def review(webhook_port: int, ca_bundle: bytes, path: str, request: dict[str, Any]) -> Any:
    """POST an AdmissionReview to one replica, as the API server does through the Service."""
    body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    post = urllib.request.Request(
        f"https://127.0.0.1:{webhook_port}/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    context = ssl.create_default_context(cadata=ca_bundle.decode())
    with urllib.request.urlopen(post, context=context, timeout=10) as answer:
        return json.loads(answer.read())["response"]


def test_a_standby_replica_answers_from_its_own_watch(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    """Every replica serves the webhooks: a standby knows the policies (read once at its
    start), whose identity a Secret holds (its own watch of WorkloadIdentities) and the name
    policy, without leading."""
    leader = operator_factory()
    leader.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    create_policy(api_client, namespace, "strict", "STRICT")  # before the standby starts
    standby = operator_factory(namespace=leader.namespace)
    assert "reconciling as leader" not in standby.log()
    user = tenant(kubeconfig, api_client, namespace, tmp_path)
    make_identities(user, namespace)  # after the standby started: its watch brings them
    hooks = client.AdmissionregistrationV1Api(api_client).read_validating_webhook_configuration(
        "meshless"
    )
    ca_bundle = base64.b64decode(hooks.webhooks[0].client_config.ca_bundle)

    def pod_review(manifest: dict[str, Any]) -> dict[str, Any]:
        return {
            "uid": uuid.uuid4().hex,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": user.user},
            "object": manifest,
        }

    cross = cross_account_pods()["envFrom"]

    def cross_review() -> dict[str, Any]:
        try:
            return dict(
                review(standby.webhook_port, ca_bundle, "meshless-binding", pod_review(cross))
            )
        except (OSError, ssl.SSLError) as exc:  # not listening yet (URLError is an OSError)
            return {"allowed": None, "error": repr(exc)}

    answer = until(
        cross_review,
        lambda answer: answer["allowed"] is False,
        "the standby refusing a cross-account pod",
    )
    assert f"Secret {SECRET_OF_OTHER!r}" in answer["status"]["message"]
    assert "ServiceAccount 'backend'" in answer["status"]["message"]
    own = review(
        standby.webhook_port, ca_bundle, "meshless-binding", pod_review(own_identity_pod())
    )
    assert own["allowed"] is True
    identity = json.loads(identity_manifest(namespace, "forged", "api", ["example.com"]))
    names = review(
        standby.webhook_port,
        ca_bundle,
        "meshless-dns-names",
        {
            "uid": uuid.uuid4().hex,
            "kind": {"group": GROUP, "version": VERSION, "kind": "WorkloadIdentity"},
            "resource": {"group": GROUP, "version": VERSION, "resource": PLURAL},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": user.user},
            "object": identity,
        },
    )
    assert names["allowed"] is False
    assert "DNS name 'example.com'" in names["status"]["message"]
    # STRICT is judged by the standby too (not refused as "starting", 503).
    strict = until(
        lambda: review(
            standby.webhook_port, ca_bundle, "meshless-strict", pod_review(pod_manifest("p", "a"))
        ),
        lambda answer: answer["status"]["code"] != 503,
        "the standby judging STRICT",
        timeout=15,
    )
    assert strict["allowed"] is False and strict["status"]["code"] == 403
    assert f"under STRICT mTLS by MtlsPolicy {namespace}/strict" in strict["status"]["message"]


# --- (c) the identity label through pods/status ---------------------------------------------
def status_writer(
    kubeconfig: str, api: client.ApiClient, namespace: str, directory: Path
) -> Principal:
    """What some controllers hold: get, patch and update on pods/status, nothing else."""
    client.RbacAuthorizationV1Api(api).create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "pod-status-writer"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods/status"],
                    "verbs": ["get", "patch", "update"],
                }
            ],
        },
    )
    return principal(
        kubeconfig,
        api,
        namespace,
        "status-writer",
        [{"kind": "Role", "name": "pod-status-writer"}],
        directory,
    )


def patch_status_labels(who: Principal, namespace: str, pod: str, labels: dict[str, str]) -> Any:
    return who.kubectl(
        "patch",
        "pod",
        "-n",
        namespace,
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"labels": labels}}),
        check=False,
    )


def labels_of(api: client.ApiClient, namespace: str, pod: str) -> dict[str, str]:
    return dict(client.CoreV1Api(api).read_namespaced_pod(pod, namespace).metadata.labels or {})


def test_pods_status_cannot_add_or_change_the_identity_label(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    other_namespace: str,
    tmp_path: Path,
) -> None:
    operator_factory()
    plain_ns, strict_ns = namespace, other_namespace
    create_policy(api_client, strict_ns, "strict", "STRICT")
    wait_admission_label(api_client, strict_ns, timeout=TIMEOUT)
    admin = tenant(kubeconfig, api_client, strict_ns, tmp_path)
    until(
        lambda: create_pod(admin, strict_ns, pod_manifest("web", "payments"), dry_run=True),
        lambda out: out.returncode == 0 and "meshless.dev/identity" in out.stdout,
        "the injector in effect",
    )
    injected = create_pod(admin, strict_ns, pod_manifest("web", "payments"))
    assert json.loads(injected.stdout)["metadata"]["labels"]["meshless.dev/identity"] == "payments"
    client.CoreV1Api(api_client).create_namespaced_pod(plain_ns, pod_manifest("plain", "frontend"))
    writers = {
        ns: status_writer(kubeconfig, api_client, ns, tmp_path) for ns in (plain_ns, strict_ns)
    }

    # pods/status does change labels: the route is real, only the webhook stands in it.
    assert patch_status_labels(writers[plain_ns], plain_ns, "plain", {"note": "x"}).returncode == 0
    assert labels_of(api_client, plain_ns, "plain")["note"] == "x"

    added = patch_status_labels(
        writers[plain_ns], plain_ns, "plain", {"meshless.dev/identity": "frontend"}
    )
    assert refused_by(added, "identity-label.meshless.dev"), added.stderr
    assert "may not add the label meshless.dev/identity" in added.stderr
    assert "meshless.dev/identity" not in labels_of(api_client, plain_ns, "plain")

    changed = patch_status_labels(
        writers[strict_ns], strict_ns, "web", {"meshless.dev/identity": "admin"}
    )
    assert refused_by(changed, "strict.meshless.dev"), changed.stderr
    assert "from 'payments' to 'admin'" in changed.stderr
    assert labels_of(api_client, strict_ns, "web")["meshless.dev/identity"] == "payments"


def test_a_reserved_secret_name_cannot_be_claimed_for_another_service_account(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The Secret meshless provisions for ServiceAccount victim is meshless-victim-mtls. A
    tenant's identity for its own ServiceAccount naming that Secret first is never issued
    (InvalidSpec), and a pod of the tenant's ServiceAccount mounting it is refused: it would
    hold victim's key once the operator provisions victim's identity."""
    operator_factory()
    user = tenant(kubeconfig, api_client, namespace, tmp_path)
    claim = json.loads(identity_manifest(namespace, "mine", "atk", []))
    claim["spec"]["secretName"] = "meshless-victim-mtls"
    user.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim))

    def refused_spec(body: dict[str, Any]) -> bool:
        ready = [
            c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"
        ]
        return bool(ready) and ready[0]["status"] == "False" and ready[0]["reason"] == "InvalidSpec"

    refused = wait_identity(api_client, namespace, "mine", refused_spec, timeout=TIMEOUT)
    [ready] = [c for c in refused["status"]["conditions"] if c["type"] == "Ready"]
    assert "reserved for the identities meshless provisions" in ready["message"]
    secrets = client.CoreV1Api(api_client).list_namespaced_secret(namespace).items
    assert "meshless-victim-mtls" not in {s.metadata.name for s in secrets}

    wait_identities_label(api_client, namespace)
    mount = pod_manifest(
        "grab",
        "atk",
        volumes=[{"name": "id", "secret": {"secretName": "meshless-victim-mtls"}}],
    )
    out = until(
        lambda: create_pod(user, namespace, mount, dry_run=True),
        lambda answer: refused_by(answer, "binding.meshless.dev"),
        "the binding webhook refusing the reserved Secret",
    )
    assert "ServiceAccount 'victim'" in out.stderr, out.stderr


def test_a_reserved_secret_name_is_guarded_where_meshless_has_not_been_yet(
    operator_factory: OperatorFactory,
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    """No policy reaches this namespace and no identity lives there yet, so neither the STRICT
    nor the binding webhook selects it. A tenant's pod of ServiceAccount frontend mounting
    meshless-backend-mtls would wait for that Secret and start with backend's key once a
    policy brings the operator to provision it: refused now, every way it can be referenced.
    Pods mounting other Secrets, or their own reserved one, are not sent."""
    operator_factory()
    user = tenant(kubeconfig, api_client, namespace, tmp_path)
    labels = client.CoreV1Api(api_client).read_namespace(namespace).metadata.labels or {}
    assert "meshless.dev/mtls" not in labels and "meshless.dev/identities" not in labels
    reserved = "meshless-backend-mtls"
    pods = cross_account_pods(reserved)
    until(
        lambda: create_pod(user, namespace, pods["secret volume"], dry_run=True),
        lambda out: refused_by(out, "binding-reserved.meshless.dev"),
        "the reserved-name binding webhook in effect",
    )
    for how, manifest in pods.items():
        out = create_pod(user, namespace, manifest)
        assert refused_by(out, "binding-reserved.meshless.dev"), (how, out.stderr)
        assert "runs as ServiceAccount 'frontend'" in out.stderr, how
        assert f"Secret {reserved!r}" in out.stderr, how
        assert "ServiceAccount 'backend'" in out.stderr, how
    own = pod_manifest(
        "own", "backend", volumes=[{"name": "id", "secret": {"secretName": reserved}}]
    )
    assert create_pod(user, namespace, own).returncode == 0
    plain = pod_manifest(
        "plain", "frontend", volumes=[{"name": "s", "secret": {"secretName": "backend-mtls"}}]
    )
    assert create_pod(user, namespace, plain).returncode == 0

    # A ServiceAccount of 250 characters: its reserved Secret's name is shortened with a
    # digest and cannot be read back, yet it is still not frontend's to mount.
    long_account = "l" * 250
    shortened = default_secret_name(provisioned_name(long_account))
    assert len(shortened) == 253 and long_account not in shortened
    grab = pod_manifest(
        "grab-long", "frontend", volumes=[{"name": "id", "secret": {"secretName": shortened}}]
    )
    out = create_pod(user, namespace, grab)
    assert refused_by(out, "binding-reserved.meshless.dev"), out.stderr
    assert "runs as ServiceAccount 'frontend'" in out.stderr
    assert "another ServiceAccount (one whose name is too long to read" in out.stderr
    mine = pod_manifest(
        "own-long", long_account, volumes=[{"name": "id", "secret": {"secretName": shortened}}]
    )
    assert create_pod(user, namespace, mine).returncode == 0
