"""The webhooks' own CA against the real local API server, with the operator as users run it.

kube-apiserver verifies the webhook server against the configurations' caBundle only. These
tests show that the bundle is the webhook CA's and nothing else, that a workload certificate
(signed here with the workload CA's issuing key, as by an attacker who got one for the name
the API server dials) is refused by the API server itself, and that the webhook CA rotates
with pods being created throughout.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from kubernetes import client, watch

from meshless.admission.serving import ServingCertificate, issue_serving_certificate
from meshless.api import WEBHOOK_CONFIGURATION
from meshless.identity.render import decode_secret_data
from meshless.kube import Kube, load_configuration
from meshless.pki.bundle import fingerprint, parse_pem_certificates
from meshless.pki.ca import CertificateAuthority, ca_from_secret_data
from meshless.pki.webhook_ca import (
    WEBHOOK_CA_SECRET_NAME,
    bundle_fingerprints,
    record_from_json,
    webhook_ca_from_secret_data,
)
from meshless.settings import CA_SECRET_NAME
from meshless.webhook_ca_store import WebhookCAStore

from .conftest import OperatorFactory, OperatorProcess
from .kubehelpers import wait_event, wait_secret
from .policyhelpers import create_policy, wait_admission_label

TIMEOUT = 60.0
SETTLE = "3s"
SETTLE_DELTA = timedelta(seconds=3)
ROTATE = ("rotate", "--webhook")
Roots = frozenset[bytes]


def secret_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, bytes]:
    secret = core.read_namespaced_secret(name, namespace)
    return decode_secret_data(secret.data)


def roots_in(pem: bytes) -> Roots:
    return frozenset(fingerprint(c) for c in parse_pem_certificates(pem))


def configured_roots(api: client.ApiClient) -> dict[str, Roots]:
    """The roots each webhook of both configurations carries in its caBundle."""
    admission = client.AdmissionregistrationV1Api(api)
    found: dict[str, Roots] = {}
    for configuration in (
        admission.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION),
        admission.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION),
    ):
        for webhook in configuration.webhooks:
            found[webhook.name] = bundle_fingerprints(
                base64.b64decode(webhook.client_config.ca_bundle)
            )
    return found


def served_certificate(port: int) -> x509.Certificate:
    """The certificate the server on 127.0.0.1:`port` presents (not verified here)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "ports": [{"containerPort": 8443}]}]
        },
    }


def create_injected_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    """Create a pod and check the injector really saw it (its identity label)."""
    created = client.CoreV1Api(api).create_namespaced_pod(namespace, pod(name))
    labels = created.metadata.labels or {}
    assert labels.get("meshless.dev/identity") == "default", labels


@dataclass
class Admitted:
    operator: OperatorProcess
    namespace: str


@pytest.fixture
def admitted(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> Admitted:
    """An operator (settle time 3 s) and a namespace whose pods go through its webhooks (a
    PERMISSIVE policy: pods are injected)."""
    op = operator_factory(ca_settle_time=SETTLE)
    create_policy(api_client, namespace, "permissive", "PERMISSIVE")
    wait_admission_label(api_client, namespace)
    deadline = time.monotonic() + TIMEOUT
    while True:  # the webhooks answer once the policies are read
        try:
            create_injected_pod(api_client, namespace, f"ready-{uuid.uuid4().hex[:6]}")
            break
        except (client.ApiException, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return Admitted(op, namespace)


# --- (b) the caBundle is the webhook CA's, and only there ----------------------------------------
def test_the_configurations_carry_exactly_the_webhook_root_and_no_workload_root(
    admitted: Admitted, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    ns = admitted.operator.namespace
    webhook = webhook_ca_from_secret_data(
        secret_data(core, ns, WEBHOOK_CA_SECRET_NAME), datetime.now(UTC)
    )
    webhook_roots = frozenset(fingerprint(r) for r in webhook.authority.roots)
    workload_roots = roots_in(secret_data(core, ns, CA_SECRET_NAME)["ca.crt"])
    assert len(webhook_roots) == 1 and not webhook_roots & workload_roots
    configured = configured_roots(api_client)
    assert set(configured) == {
        "inject.meshless.dev",
        "strict.meshless.dev",
        "identity-label.meshless.dev",
        "binding.meshless.dev",
        "binding-reserved.meshless.dev",
        "dns-names.meshless.dev",
    }
    for name, roots in configured.items():
        assert roots == webhook_roots, name
    # No workload trust bundle holds the webhook root: the namespace's ConfigMap and the
    # identity Secret that the injected pods mount.
    identity = wait_secret(
        api_client,
        admitted.namespace,
        "meshless-default-mtls",
        lambda s: "ca.crt" in (s.data or {}),
    )
    assert roots_in(base64.b64decode(identity.data["ca.crt"])) == workload_roots
    trust_bundle = core.read_namespaced_config_map("meshless-trust-bundle", admitted.namespace)
    assert roots_in(trust_bundle.data["ca.crt"].encode()) == workload_roots
    # The operator serves a certificate from the webhook root, naming what the API server dials.
    served = served_certificate(admitted.operator.webhook_port)
    served.verify_directly_issued_by(webhook.root)
    san = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # The CA's private key is not in the operator's log.
    key_pem = secret_data(core, ns, WEBHOOK_CA_SECRET_NAME)["tls.key"].decode()
    body = "".join(key_pem.strip().splitlines()[1:-1])
    assert body[:40] not in admitted.operator.log()
    assert "PRIVATE KEY" not in admitted.operator.log()


# --- (a) a workload certificate is not a webhook certificate ------------------------------------
@dataclass
class Impostor:
    """An HTTPS server on loopback that allows every AdmissionReview it gets."""

    port: int
    certificate: ServingCertificate
    tmp_path: Path
    reviews: list[str] = field(default_factory=list)
    failed_handshakes: list[str] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        chain, key = self.tmp_path / "chain.pem", self.tmp_path / "key.pem"
        chain.write_bytes(self.certificate.chain_pem)
        key.write_bytes(self.certificate.private_key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        reviews, failed = self.reviews, self.failed_handshakes

        class Allow(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reviews.append(self.path)
                answer = json.dumps(
                    {
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": review["request"]["uid"], "allowed": True},
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, Any]:
                raw, address = self.socket.accept()
                try:
                    return context.wrap_socket(raw, server_side=True), address
                except (ssl.SSLError, OSError) as exc:
                    failed.append(str(exc))
                    raw.close()
                    raise

        self._server = Server(("127.0.0.1", self.port), Allow)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def impostors(tmp_path: Path) -> Iterator[Callable[[int, ServingCertificate], Impostor]]:
    started: list[Impostor] = []

    def start(port: int, certificate: ServingCertificate) -> Impostor:
        directory = tmp_path / f"impostor{len(started)}"
        directory.mkdir()
        impostor = Impostor(port, certificate, directory)
        impostor.start()
        started.append(impostor)
        return impostor

    yield start
    for impostor in started:
        impostor.stop()


def test_the_api_server_refuses_a_webhook_server_with_a_workload_certificate_for_its_name(
    admitted: Admitted,
    api_client: client.ApiClient,
    impostors: Callable[[int, ServingCertificate], Impostor],
) -> None:
    core = client.CoreV1Api(api_client)
    op = admitted.operator
    now = datetime.now(UTC)
    # The attacker holds the workload CA's issuing key and signs a leaf for every name the
    # API server could dial for the webhooks: the URL's host and the Service's DNS names.
    workload_data = secret_data(core, op.namespace, CA_SECRET_NAME)
    workload: CertificateAuthority = ca_from_secret_data(workload_data, now)
    hosts = ("127.0.0.1", f"meshless-webhook.{op.namespace}.svc", "meshless-webhook")
    forged = issue_serving_certificate(workload, hosts, now)
    # A workload certificate: signed by the workload issuing CA, its chain the workload chain
    # (whether workloads would accept it for these names is the name constraints' business).
    leaf, *chain = parse_pem_certificates(forged.chain_pem)
    leaf.verify_directly_issued_by(workload.issuer_cert)
    assert chain == list(workload.intermediates)

    # The genuine server answered the fixture's pod; now the attacker takes its address.
    op.stop()
    impostor = impostors(op.webhook_port, forged)
    with pytest.raises(client.ApiException) as refused:
        create_injected_pod(api_client, admitted.namespace, "through-the-impostor")
    message = json.loads(refused.value.body)["message"]
    assert "inject.meshless.dev" in message
    assert "x509: certificate signed by unknown authority" in message, message
    assert impostor.reviews == []  # no review ever reached it
    # The API server broke off the handshake (its alert reaches the server thread a moment
    # after the API server has answered).
    wait_until(lambda: bool(impostor.failed_handshakes), timeout=10)
    assert any("bad certificate" in failure for failure in impostor.failed_handshakes), (
        impostor.failed_handshakes
    )
    impostor.stop()

    # Control: the same server with a certificate from the webhook CA is trusted, so the refusal
    # above came from the caBundle and nothing else.
    webhook = webhook_ca_from_secret_data(
        secret_data(core, op.namespace, WEBHOOK_CA_SECRET_NAME), now
    )
    genuine = impostors(
        op.webhook_port, issue_serving_certificate(webhook.authority, ("127.0.0.1",), now)
    )
    created = core.create_namespaced_pod(admitted.namespace, pod("through-a-webhook-ca-cert"))
    assert created.metadata.name == "through-a-webhook-ca-cert"
    assert any(path.startswith("/meshless-inject") for path in genuine.reviews), genuine.reviews


# --- (c) rotation with pods created throughout -------------------------------------------------
class BundleRecorder:
    """Watches one configuration and records each distinct set of roots its webhooks carry."""

    def __init__(self, list_fn: Callable[..., Any]) -> None:
        self._list = list_fn
        self.states: list[Roots] = []
        self.disagreements: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _note(self, configuration: Any) -> None:
        sets = {
            bundle_fingerprints(base64.b64decode(w.client_config.ca_bundle))
            for w in configuration.webhooks
        }
        if len(sets) != 1:
            self.disagreements.append(configuration.metadata.resource_version)
            return
        [roots] = sets
        if not self.states or self.states[-1] != roots:
            self.states.append(roots)

    def _run(self) -> None:
        selector = f"metadata.name={WEBHOOK_CONFIGURATION}"
        listed = self._list(field_selector=selector)
        for item in listed.items:
            self._note(item)
        version = listed.metadata.resource_version
        while not self._stop.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                self._list, field_selector=selector, resource_version=version, timeout_seconds=1
            ):
                self._note(event["object"])
                version = event["object"].metadata.resource_version
                if self._stop.is_set():
                    stream.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class PodStorm:
    """Creates pods one after the other in a thread until stopped; every failure is kept."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._api, self._namespace = api, namespace
        self.created = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                create_injected_pod(self._api, self._namespace, f"storm-{self.created}")
                self.created += 1
            except (client.ApiException, AssertionError) as exc:
                self.failures.append(getattr(exc, "body", None) or str(exc))
                self.created += 1  # a new name next time

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_the_webhook_ca_rotates_with_overlap_and_no_pod_is_refused(
    admitted: Admitted, api_client: client.ApiClient, kubeconfig: str
) -> None:
    core = client.CoreV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    op = admitted.operator
    ns = op.namespace
    old = webhook_ca_from_secret_data(
        secret_data(core, ns, WEBHOOK_CA_SECRET_NAME), datetime.now(UTC)
    )
    old_root = fingerprint(old.root)
    recorders = [
        BundleRecorder(admission.list_mutating_webhook_configuration),
        BundleRecorder(admission.list_validating_webhook_configuration),
    ]
    for recorder in recorders:
        recorder.start()
    storm = PodStorm(api_client, admitted.namespace)
    storm.start()
    started = time.monotonic()
    # As an administrator would: `meshless ca rotate --webhook` annotates the Secret.
    asked = subprocess.run(
        [sys.executable, "-m", "meshless", "ca", "-n", ns, "--kubeconfig", kubeconfig, *ROTATE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert asked.returncode == 0, asked.stderr
    assert "requested a webhook CA rotation" in asked.stdout
    secret = core.read_namespaced_secret(WEBHOOK_CA_SECRET_NAME, ns)
    request = secret.metadata.annotations["meshless.dev/rotate"]
    deadline = time.monotonic() + TIMEOUT
    while True:  # until the rotation is recorded as done (the Secret is read, not watched)
        data = secret_data(core, ns, WEBHOOK_CA_SECRET_NAME)
        record = record_from_json(data["rotation.json"])
        if record.handled_request == request and record.phase.value == "Idle":
            break
        assert time.monotonic() < deadline, f"rotation not done: {record}"
        time.sleep(0.2)
    new = webhook_ca_from_secret_data(data, datetime.now(UTC))
    new_root = fingerprint(new.root)
    assert new_root != old_root
    assert [fingerprint(r) for r in new.authority.roots] == [new_root]
    # The configurations drop the old root only after the write above; keep creating pods
    # until both recorders have seen it, and a little after.
    wait_until(lambda: all(r.states and r.states[-1] == {new_root} for r in recorders))
    after = storm.created  # and pods keep being admitted with only the new root in caBundle
    wait_until(lambda: storm.created >= after + 5)
    storm.stop()
    for recorder in recorders:
        recorder.stop()
    duration = time.monotonic() - started
    assert storm.failures == [], storm.failures[:3]
    assert storm.created >= 20, (storm.created, duration)
    for recorder in recorders:
        assert recorder.states == [
            frozenset({old_root}),
            frozenset({old_root, new_root}),
            frozenset({new_root}),
        ], recorder.states
        assert recorder.disagreements == []
    served = served_certificate(op.webhook_port)
    served.verify_directly_issued_by(new.root)
    for reason in (
        "WebhookCARotationPrepare",
        "WebhookCARotationSwitch",
        "WebhookCARotationFinish",
    ):
        wait_event(api_client, ns, WEBHOOK_CA_SECRET_NAME, reason)
    print(f"webhook CA rotation: {duration:.1f}s, {storm.created} pods admitted, none refused")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# --- replicas racing to create the CA ---------------------------------------------------------
def test_replicas_racing_to_create_the_webhook_ca_end_with_one_root(
    kubeconfig: str, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    ns = f"meshless-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

    async def race() -> list[bytes]:
        kubes = [Kube(load_configuration(kubeconfig)) for _ in range(4)]
        try:
            stores = [
                WebhookCAStore(kube, ns, lambda: datetime.now(UTC), SETTLE_DELTA, "x")
                for kube in kubes
            ]
            await asyncio.gather(*(store.load() for store in stores))
            return [fingerprint(store.current.root) for store in stores if store.current]
        finally:
            await asyncio.gather(*(kube.close() for kube in kubes))

    try:
        roots = asyncio.run(race())
        stored = webhook_ca_from_secret_data(
            secret_data(core, ns, WEBHOOK_CA_SECRET_NAME), datetime.now(UTC)
        )
        assert roots == [fingerprint(stored.root)] * 4
    finally:
        core.delete_namespace(ns)


def test_a_secret_of_that_name_meshless_does_not_manage_is_left_alone(
    kubeconfig: str, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    ns = f"meshless-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_namespaced_secret(
        ns, {"metadata": {"name": WEBHOOK_CA_SECRET_NAME}, "stringData": {"note": "mine"}}
    )

    async def load_and_step() -> WebhookCAStore:
        kube = Kube(load_configuration(kubeconfig))
        try:
            store = WebhookCAStore(kube, ns, lambda: datetime.now(UTC), SETTLE_DELTA, "x")
            assert await store.load() is False
            assert await store.step(None) is False
            return store
        finally:
            await kube.close()

    try:
        store = asyncio.run(load_and_step())
        assert store.current is None
        assert store.error is not None and store.error.reason == "WebhookCASecretConflict"
        assert secret_data(core, ns, WEBHOOK_CA_SECRET_NAME) == {"note": b"mine"}
    finally:
        core.delete_namespace(ns)


def test_a_standby_replica_serves_from_the_same_root_and_changes_over_before_finish(
    operator_factory: OperatorFactory, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    leader = operator_factory(ca_settle_time=SETTLE)
    leader.wait_for_log("reconciling as leader", timeout=30)
    standby = operator_factory(namespace=leader.namespace, ca_settle_time=SETTLE)
    ns = leader.namespace
    old = webhook_ca_from_secret_data(
        secret_data(core, ns, WEBHOOK_CA_SECRET_NAME), datetime.now(UTC)
    )
    for replica in (leader, standby):  # one root for every replica, the standby's from start
        wait_until(partial(listening, replica.webhook_port))
        served_certificate(replica.webhook_port).verify_directly_issued_by(old.root)
    assert "reconciling as leader" not in standby.log()
    core.patch_namespaced_secret(
        WEBHOOK_CA_SECRET_NAME, ns, {"metadata": {"annotations": {"meshless.dev/rotate": "now"}}}
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        data = secret_data(core, ns, WEBHOOK_CA_SECRET_NAME)
        record = record_from_json(data["rotation.json"])
        if record.handled_request == "now" and record.phase.value == "Idle":
            break
        assert time.monotonic() < deadline, f"rotation not done: {record}"
        time.sleep(0.1)
    new = webhook_ca_from_secret_data(data, datetime.now(UTC))
    assert fingerprint(new.root) != fingerprint(old.root)
    # By the time the old root left caBundle, the standby served from the new one too.
    served_certificate(standby.webhook_port).verify_directly_issued_by(new.root)
