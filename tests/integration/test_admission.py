"""The admission webhooks against the real local API server, which calls them over TLS.

The webhook server is the operator's (admission/server.py, in a thread with its own event
loop) with our serving certificate, on loopback, answering from `admit`; the configurations are
registered by URL with our CA bundle. The policies come from a fixed AdmissionState built from
PolicySpec objects, and the Warn and Audit records are kept in a list.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client

from meshless.admission.admit import AdmissionState
from meshless.admission.configuration_writes import apply_configurations
from meshless.admission.configurations import Endpoint, admission_namespaces
from meshless.admission.handler import AdmissionHandler
from meshless.admission.server import AdmissionServer, ServerThread
from meshless.admission.serving import issue_serving_certificate
from meshless.admission.validate import AdmissionRecord
from meshless.api import WEBHOOK_CONFIGURATION, AdmissionAction, Mode
from meshless.kube import Kube, load_configuration
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority
from meshless.pki.webhook_ca import new_webhook_ca_data, webhook_ca_from_secret_data
from meshless.policy.model import PolicySpec
from meshless.policy.resolve import PolicySet
from meshless.selectors import parse_selector
from tests.conftest import Kubectl
from tests.integration.conftest import free_port

OPERATOR_NS = "meshless-admission-test"
MOUNT_PATH = "/var/run/secrets/meshless/"
READY_TIMEOUT = 60.0


def spec(ns: str, name: str, mode: Mode, **kw: Any) -> PolicySpec:
    selector = kw.pop("selector", None)
    return PolicySpec(
        namespace=ns,
        name=name,
        uid=uuid.uuid4().hex,
        creation_timestamp="2026-01-01T00:00:00Z",
        selector=parse_selector({"matchLabels": selector}) if selector else None,
        mode=mode,
        **kw,
    )


@dataclass
class Webhooks:
    """The webhook server in its thread, as the operator runs it, answering from a fixed
    state."""

    state: AdmissionState
    ca: CertificateAuthority
    records: list[AdmissionRecord] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    server: ServerThread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def bundle(self) -> bytes:
        return bundle_pem(self.ca.roots)

    def start(self) -> None:
        certificate = issue_serving_certificate(self.ca, ["127.0.0.1"], datetime.now(UTC))
        handler = AdmissionHandler(lambda: self.state, self.records.append)
        self.server = ServerThread(
            AdmissionServer(handler, certificate, addr="127.0.0.1", port=self.port)
        )
        asyncio.run(self.server.start())
        self.wait_listening()

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.bundle.decode())

    def wait_listening(self) -> None:
        deadline = datetime.now(UTC).timestamp() + READY_TIMEOUT
        while True:
            try:
                self.post("/meshless-inject", b"{}")
                return
            except (urllib.error.URLError, ConnectionError, ssl.SSLError):
                if datetime.now(UTC).timestamp() > deadline:
                    raise AssertionError("webhook server not listening") from None
                threading.Event().wait(0.1)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=self.context(), timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run(self.server.stop())


@dataclass
class Scene:
    strict: str  # STRICT, Enforce; a DISABLE workload policy for app=legacy
    warn: str  # STRICT, Warn
    audit: str  # STRICT, Audit
    plain: str  # no policy
    webhooks: Webhooks


def _namespace(core: client.CoreV1Api, name: str, labels: dict[str, str]) -> None:
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels or None))
    )


@pytest.fixture(scope="module")
def scene(kubeconfig: str, api_client: client.ApiClient) -> Iterator[Scene]:
    suffix = uuid.uuid4().hex[:6]
    strict, warn, audit, plain = (f"adm-{k}-{suffix}" for k in ("strict", "warn", "audit", "plain"))
    specs = [
        spec(strict, "strict-enforce", Mode.STRICT),
        spec(strict, "legacy-off", Mode.DISABLE, selector={"app": "legacy"}),
        spec(warn, "strict-warn", Mode.STRICT, admission=AdmissionAction.WARN),
        spec(audit, "strict-audit", Mode.STRICT, admission=AdmissionAction.AUDIT),
    ]
    policies = PolicySet.build(specs, OPERATOR_NS)
    state = AdmissionState(trust_domain="cluster.local", policies=policies, identities_listed=True)
    labelled = admission_namespaces(policies, [strict, warn, audit, plain], OPERATOR_NS)
    assert labelled == {strict, warn, audit}
    core = client.CoreV1Api(api_client)
    for ns in (strict, warn, audit, plain):
        _namespace(core, ns, {"meshless.dev/mtls": "enabled"} if ns in labelled else {})
    # The webhooks' own CA, as the operator's: the workload CA is name-constrained and would
    # not sign for 127.0.0.1 (docs/security.md).
    now = datetime.now(UTC)
    ca = webhook_ca_from_secret_data(new_webhook_ca_data(now), now).authority
    webhooks = Webhooks(state, ca)
    webhooks.start()
    kube = Kube(load_configuration(kubeconfig))

    async def register() -> None:
        try:
            await apply_configurations(
                kube, Endpoint(url=webhooks.url), webhooks.bundle, OPERATOR_NS
            )
        finally:
            await kube.close()

    asyncio.run(register())
    admission = client.AdmissionregistrationV1Api(api_client)
    try:
        yield Scene(strict, warn, audit, plain, webhooks)
    finally:
        webhooks.stop()
        admission.delete_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
        admission.delete_validating_webhook_configuration(WEBHOOK_CONFIGURATION)
        for ns in (strict, warn, audit, plain):
            core.delete_namespace(ns)


def pod_manifest(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    sa: str = "payments",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
        "spec": {
            "serviceAccountName": sa,
            "initContainers": [{"name": "setup", "image": "busybox"}],
            "containers": [{"name": "app", "image": "busybox", "ports": [{"containerPort": 8443}]}],
        },
    }


def create(kubectl: Kubectl, ns: str, manifest: dict[str, Any], check: bool = True) -> Any:
    return kubectl(
        "create", "-n", ns, "-f", "-", "-o", "json", input=json.dumps(manifest), check=check
    )


def stored(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl("get", "pod", "-n", ns, name, "-o", "json").stdout)  # type: ignore[no-any-return]


def wait_webhooks_effective(kubectl: Kubectl, ns: str) -> None:
    """The API server picks up new configurations asynchronously: dry-run a pod until our
    injector has seen it."""
    deadline = datetime.now(UTC).timestamp() + READY_TIMEOUT
    manifest = pod_manifest("probe")
    while True:
        out = kubectl(
            "create",
            "-n",
            ns,
            "--dry-run=server",
            "-f",
            "-",
            "-o",
            "json",
            input=json.dumps(manifest),
            check=False,
        )
        if out.returncode == 0 and "meshless.dev/identity" in out.stdout:
            return
        if datetime.now(UTC).timestamp() > deadline:
            raise AssertionError(f"webhooks not in effect: {out.stdout} {out.stderr}")
        threading.Event().wait(0.2)


@pytest.fixture(scope="module")
def live(scene: Scene, kubectl: Kubectl) -> Scene:
    wait_webhooks_effective(kubectl, scene.strict)
    return scene


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_a_strict_pod_is_stored_with_volume_mounts_env_and_label(
    live: Scene, kubectl: Kubectl
) -> None:
    pod = json.loads(create(kubectl, live.strict, pod_manifest("web")).stdout)
    pod = stored(kubectl, live.strict, "web")
    assert pod["metadata"]["labels"]["meshless.dev/identity"] == "payments"
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "meshless-identity"]
    assert volume["secret"]["secretName"] == "meshless-payments-mtls"
    for container in (*pod["spec"]["initContainers"], *pod["spec"]["containers"]):
        assert {
            "name": "meshless-identity",
            "mountPath": MOUNT_PATH,
            "readOnly": True,
        } in container["volumeMounts"], container["name"]
        assert env_of(container) == {
            "MESHLESS_SPIFFE_ID": f"spiffe://cluster.local/ns/{live.strict}/sa/payments",
            "MESHLESS_MTLS_MODE": "STRICT",
            "MESHLESS_MTLS_PORTS": '{"8443":"STRICT"}',
        }


def test_pods_under_disable_and_without_policies_are_stored_unchanged(
    live: Scene, kubectl: Kubectl
) -> None:
    for ns, manifest in (
        (live.strict, pod_manifest("legacy", labels={"app": "legacy"})),
        (live.plain, pod_manifest("plain")),
    ):
        pod = json.loads(create(kubectl, ns, manifest).stdout)
        assert "meshless.dev/identity" not in (pod["metadata"].get("labels") or {})
        assert not pod["spec"].get("volumes")
        for container in (*pod["spec"]["initContainers"], *pod["spec"]["containers"]):
            assert not container.get("env") and not container.get("volumeMounts")


def test_enforce_denies_an_opted_out_pod_and_names_the_policy(
    live: Scene, kubectl: Kubectl
) -> None:
    out = create(
        kubectl,
        live.strict,
        pod_manifest("optout", annotations={"meshless.dev/inject": "false"}),
        check=False,
    )
    assert out.returncode != 0
    assert "strict.meshless.dev" in out.stderr
    assert f"MtlsPolicy {live.strict}/strict-enforce" in out.stderr
    assert "does not mount its identity" in out.stderr


def test_a_conflicting_pod_is_denied_naming_the_conflict(live: Scene, kubectl: Kubectl) -> None:
    manifest = pod_manifest("conflict")
    manifest["spec"]["containers"][0]["env"] = [{"name": "MESHLESS_MTLS_MODE", "value": "DISABLE"}]
    out = create(kubectl, live.strict, manifest, check=False)
    assert out.returncode != 0
    assert "inject.meshless.dev" in out.stderr
    assert "container 'app' sets MESHLESS_MTLS_MODE='DISABLE' itself" in out.stderr


def test_warn_admits_and_the_client_prints_the_warning(live: Scene, kubectl: Kubectl) -> None:
    out = create(
        kubectl, live.warn, pod_manifest("warned", annotations={"meshless.dev/inject": "false"})
    )
    assert "Warning: " in out.stderr
    assert f"MtlsPolicy {live.warn}/strict-warn" in out.stderr
    assert stored(kubectl, live.warn, "warned")["metadata"]["name"] == "warned"


def test_audit_admits_and_records_for_the_policy_status(live: Scene, kubectl: Kubectl) -> None:
    before = len(live.webhooks.records)
    out = create(
        kubectl, live.audit, pod_manifest("audited", annotations={"meshless.dev/inject": "false"})
    )
    assert "Warning" not in out.stderr
    new = live.webhooks.records[before:]
    assert [(str(r.policy), r.pod, r.action) for r in new] == [
        (f"{live.audit}/strict-audit", f"{live.audit}/audited", AdmissionAction.AUDIT)
    ]
    # A dry run is judged but not counted.
    kubectl(
        "create",
        "-n",
        live.audit,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(pod_manifest("dry", annotations={"meshless.dev/inject": "false"})),
    )
    assert len(live.webhooks.records) == before + 1


def test_a_forged_identity_label_is_refused_on_create(live: Scene, kubectl: Kubectl) -> None:
    forged = pod_manifest("forged", labels={"meshless.dev/identity": "payments"})
    out = create(kubectl, live.plain, forged, check=False)
    assert out.returncode != 0
    assert "identity-label.meshless.dev" in out.stderr
    assert "only the injector sets this label" in out.stderr


def test_a_forged_identity_label_is_refused_on_update(live: Scene, kubectl: Kubectl) -> None:
    create(kubectl, live.plain, pod_manifest("later"))
    out = kubectl(
        "label", "pod", "-n", live.plain, "later", "meshless.dev/identity=payments", check=False
    )
    assert out.returncode != 0
    assert "may not add the label meshless.dev/identity" in out.stderr
    create(kubectl, live.strict, pod_manifest("relabel"))
    out = kubectl(
        "label",
        "pod",
        "-n",
        live.strict,
        "relabel",
        "--overwrite",
        "meshless.dev/identity=admin",
        check=False,
    )
    assert out.returncode != 0
    assert "from 'payments' to 'admin'" in out.stderr
    # Updates that leave the label alone are not even sent (matchConditions) and pass.
    kubectl("label", "pod", "-n", live.strict, "relabel", "tier=web")


def test_bad_requests_get_clear_answers_and_the_server_keeps_serving(
    live: Scene, kubectl: Kubectl
) -> None:
    hooks = live.webhooks
    status, body = hooks.post("/meshless-strict", b"{not json")
    assert status == 400
    review = {
        "apiVersion": "admission.k8s.io/v1beta1",
        "kind": "AdmissionReview",
        "request": {"uid": "1"},
    }
    status, body = hooks.post("/meshless-strict", json.dumps(review).encode())
    assert status == 400
    assert b"'admission.k8s.io/v1beta1' is not supported" in body
    request = {
        "uid": "u-2",
        "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
        "resource": {"group": "", "version": "v1", "resource": "configmaps"},
        "operation": "CREATE",
        "userInfo": {"username": "x"},
        "object": {"metadata": {"name": "c"}},
    }
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    status, body = hooks.post("/meshless-strict", json.dumps(review).encode())
    assert status == 200
    answer = json.loads(body)["response"]
    assert answer["uid"] == "u-2" and answer["allowed"] is False
    assert answer["status"]["message"] == (
        "meshless admission at /meshless-strict reviews v1 pods, v1 pods/ephemeralcontainers, "
        "v1 pods/status only, not v1 configmaps"
    )
    status, body = hooks.post("/nowhere", json.dumps(review).encode())
    assert json.loads(body)["response"]["status"]["code"] == 404
    # still serving
    pod = json.loads(create(kubectl, live.strict, pod_manifest("after-bad-input")).stdout)
    assert pod["metadata"]["labels"]["meshless.dev/identity"] == "payments"


def test_a_rotated_certificate_serves_new_handshakes_without_a_restart(
    live: Scene, kubectl: Kubectl
) -> None:
    hooks = live.webhooks
    assert hooks.server is not None
    fresh = issue_serving_certificate(hooks.ca, ["127.0.0.1"], datetime.now(UTC))
    hooks.server.load_certificate(fresh)
    with (
        __import__("socket").create_connection(("127.0.0.1", hooks.port), timeout=5) as raw,
        hooks.context().wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    assert served.serial_number == x509.load_pem_x509_certificate(fresh.chain_pem).serial_number
    pod = json.loads(create(kubectl, live.strict, pod_manifest("after-rotation")).stdout)
    assert pod["metadata"]["labels"]["meshless.dev/identity"] == "payments"


def test_with_the_webhooks_down_plain_namespaces_work_and_strict_ones_refuse(
    live: Scene, kubectl: Kubectl
) -> None:
    """Runs last in this module: it stops the server."""
    live.webhooks.stop()
    create(kubectl, live.plain, pod_manifest("while-down"))
    out = create(kubectl, live.strict, pod_manifest("refused"), check=False)
    assert out.returncode != 0
    assert "failed calling webhook" in out.stderr
    assert "inject.meshless.dev" in out.stderr
    # Updates that change no label are not sent (matchConditions): finalizers, owner
    # references and annotations keep working while meshless is down.
    kubectl("annotate", "pod", "-n", live.strict, "relabel", "note=while-down")
    forged = create(
        kubectl,
        live.plain,
        pod_manifest("forged-down", labels={"meshless.dev/identity": "x"}),
        check=False,
    )
    assert forged.returncode != 0
