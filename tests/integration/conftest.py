"""The operator as users run it: `meshless run` in its own process, against the local
control plane. Waits are driven by watch events with explicit timeouts."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from meshless.api import WEBHOOK_CONFIGURATION
from tests.tools import kubectl_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    kubeconfig: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    webhook_port: int = field(default_factory=free_port)

    @property
    def namespace(self) -> str:
        return self.env["MESHLESS_NAMESPACE"]

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "MESHLESS_METRICS_PORT": str(self.metrics_port),
            "MESHLESS_HEALTH_PORT": str(self.health_port),
            # Outside a cluster the webhooks listen on loopback and are registered by URL.
            "MESHLESS_WEBHOOK_PORT": str(self.webhook_port),
            "MESHLESS_WEBHOOK_HOST": "127.0.0.1",
            "MESHLESS_WEBHOOK_URL": f"https://127.0.0.1:{self.webhook_port}",
            **self.env,
        }
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshless", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.wait_for_log("operator started", timeout=60)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("operator did not stop within 30s of SIGTERM") from None
        self._log.close()
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} in the operator log after {timeout}s")
            time.sleep(0.1)

    def wait_for_metrics(
        self, predicate: Callable[[str], bool], timeout: float, interval: float = 0.1
    ) -> str:
        """Scrape /metrics every `interval` s until `predicate` holds; fail after `timeout` s
        (or at once if the operator exits)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics()
            if predicate(text):
                return text
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics not as expected after {timeout}s:\n{text[-2000:]}")
            time.sleep(interval)

    def counter(self, name: str) -> float:
        """The sum of a metric's samples (all label sets) from /metrics."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith((name + "{", name + " ")):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return str(r.read().decode())


OperatorFactory = Callable[..., OperatorProcess]


def operator_env(namespace: str, **settings: str) -> dict[str, str]:
    """The test operators' environment: their CA namespace, short TTL floor and fast CA polls,
    a write budget that does not slow a storm, Secret delivery (the control plane may serve
    PodCertificateRequests: `auto` would pick them; tests of pod certificates say so), and
    `settings` as MESHLESS_* variables."""
    return {
        "MESHLESS_NAMESPACE": namespace,
        "MESHLESS_IDENTITY_DELIVERY": "Secret",
        "MESHLESS_TTL_FLOOR": "1m",
        "MESHLESS_CA_POLL_INTERVAL": "1s",
        "MESHLESS_WRITE_BUDGET_QPS": "200",
        "MESHLESS_WRITE_BUDGET_BURST": "200",
        **{f"MESHLESS_{k.upper()}": v for k, v in settings.items()},
    }


def _start_operator(
    kubeconfig: str, core: client.CoreV1Api, log_dir: Path, **settings: str
) -> OperatorProcess:
    ns = settings.pop("namespace", None) or f"meshless-{uuid.uuid4().hex[:8]}"
    if not any(n.metadata.name == ns for n in core.list_namespace().items):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    op = OperatorProcess(kubeconfig, operator_env(ns, **settings), log_dir / "operator.log")
    op.start()
    return op


def bound_token(core: client.CoreV1Api, namespace: str, account: str, binding: str) -> str:
    """A ServiceAccount token bound to a new Secret `binding`: deleting the Secret revokes it."""
    secret = core.create_namespaced_secret(namespace, {"metadata": {"name": binding}})
    request = {
        "spec": {
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Secret",
                "name": binding,
                "uid": secret.metadata.uid,
            },
        }
    }
    return str(
        core.create_namespaced_service_account_token(account, namespace, request).status.token
    )


@dataclass
class ServiceAccountOperator:
    """An operator running as the ServiceAccount `account` of `namespace` (its CA namespace)
    with a token-file kubeconfig, as in a cluster; not in system:masters, so API Priority and
    Fairness applies to it. The first token came from the Secret `token-1`."""

    op: OperatorProcess
    namespace: str
    account: str
    token_file: Path
    token: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"


@contextlib.contextmanager
def operator_as_service_account(
    kubeconfig: str, api: client.ApiClient, tmp_path: Path, **settings: str
) -> Iterator[ServiceAccountOperator]:
    """Start an operator as a ServiceAccount bound to cluster-admin, reading its token from a
    file; stopped, unbound and its webhook configurations and CA-namespace identities removed
    at the end."""
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    op_ns = f"meshless-sa-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": op_ns}})
    core.create_namespaced_service_account(op_ns, {"metadata": {"name": "operator"}})
    binding = f"{op_ns}-operator"
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": binding},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": op_ns}],
        }
    )
    token = bound_token(core, op_ns, "operator", "token-1")
    token_file = tmp_path / "token"
    token_file.write_text(token)
    cluster = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]
    token_kubeconfig = tmp_path / "token-kubeconfig"
    token_kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": cluster}],
                "users": [{"name": "op", "user": {"tokenFile": str(token_file)}}],
                "contexts": [{"name": "op", "context": {"cluster": "local", "user": "op"}}],
                "current-context": "op",
            }
        )
    )
    log_dir = tmp_path / "sa-operator"
    log_dir.mkdir()
    op = OperatorProcess(
        str(token_kubeconfig), operator_env(op_ns, **settings), log_dir / "operator.log"
    )
    try:
        op.start()
        yield ServiceAccountOperator(op, op_ns, "operator", token_file, token)
    finally:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
        remove_webhook_configurations(api)
        rbac.delete_cluster_role_binding(binding)
        client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
            "meshless.dev", "v1alpha1", op_ns, "workloadidentities"
        )


@pytest.fixture
def operator_factory(
    kubeconfig: str, api_client: client.ApiClient, tmp_path: Path
) -> Iterator[OperatorFactory]:
    """Start operators with their own CA namespace and settings, stopped when the test ends.
    Operators watch the whole cluster, so a test runs at most one at a time."""
    started: list[OperatorProcess] = []
    core = client.CoreV1Api(api_client)

    def start(**settings: str) -> OperatorProcess:
        log_dir = tmp_path / f"operator{len(started)}"
        log_dir.mkdir()
        op = _start_operator(kubeconfig, core, log_dir, **settings)
        started.append(op)
        return op

    yield start
    for op in started:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
    remove_webhook_configurations(api_client)
    for op in started:  # the prober's identity: later operators (other CAs) would reissue it
        client.CustomObjectsApi(api_client).delete_collection_namespaced_custom_object(
            "meshless.dev", "v1alpha1", op.namespace, "workloadidentities"
        )


def remove_webhook_configurations(api: client.ApiClient) -> None:
    """A stopped operator leaves its webhook configurations in place on purpose (fail
    closed); the next test's operator is another one, so they go between tests."""
    registration = client.AdmissionregistrationV1Api(api)
    for delete in (
        registration.delete_mutating_webhook_configuration,
        registration.delete_validating_webhook_configuration,
    ):
        try:
            delete(WEBHOOK_CONFIGURATION)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture(scope="module")
def meshless_operator(
    kubeconfig: str, api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator shared by a module's tests that need only the default settings (ttl floor
    2m), stopped at the module's end."""
    op = _start_operator(
        kubeconfig,
        client.CoreV1Api(api_client),
        tmp_path_factory.mktemp("operator"),
        ttl_floor="2m",
    )
    yield op
    if op.proc is not None and op.proc.poll() is None:
        op.stop()
    remove_webhook_configurations(api_client)


# --------------------------------------------------------------------------------------------
# A second control plane with the Pod Certificates API (hack/localcluster.py --pod-certificates)
# for the podcert tests; the default one stays without it (Secret delivery, as the other tests
# expect). Its state lives in .cache/cluster-podcert; it starts in about 5 s (measured: 4.1 s
# to /readyz), once per session, and only when a podcert test runs.
PODCERT_STATE = Path(__file__).resolve().parents[2] / ".cache" / "cluster-podcert"


@pytest.fixture(scope="session")
def podcert_kubeconfig() -> Iterator[str]:
    named = os.environ.get("MESHLESS_TEST_PODCERT_KUBECONFIG")
    if named:
        yield named
        return
    env = {**os.environ, "MESHLESS_CLUSTER_STATE": str(PODCERT_STATE)}
    launcher = [sys.executable, str(PODCERT_STATE.parents[1] / "hack" / "localcluster.py")]
    running = subprocess.run([*launcher, "status"], env=env, capture_output=True).returncode == 0
    subprocess.run([*launcher, "up", "--pod-certificates"], env=env, check=True)
    kubeconfig = str(PODCERT_STATE / "kubeconfig")
    crds = str(PODCERT_STATE.parents[1] / "crds")
    for args in (
        ["apply", "--server-side", "--force-conflicts", "-f", crds],
        ["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"],
    ):
        subprocess.run(
            [kubectl_path(), f"--kubeconfig={kubeconfig}", *args], check=True, timeout=120
        )
    try:
        yield kubeconfig
    finally:
        if not running:
            subprocess.run([*launcher, "down"], env=env, check=False)


@pytest.fixture(scope="module")
def pc_api(podcert_kubeconfig: str) -> client.ApiClient:
    """A client of the control plane that serves the Pod Certificates API."""
    from kubernetes import config

    return config.new_client_from_config(config_file=podcert_kubeconfig)


@contextlib.contextmanager
def podcert_operator(
    kubeconfig: str, api: client.ApiClient, log_dir: Path, **settings: str
) -> Iterator[OperatorProcess]:
    """An operator on the Pod Certificates control plane, leading, stopped afterwards with its
    webhook configurations removed (the module fixtures of the podcert tests)."""
    op = _start_operator(kubeconfig, client.CoreV1Api(api), log_dir, **settings)
    op.wait_for_log("reconciling as leader", timeout=30)
    try:
        yield op
    finally:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
        remove_webhook_configurations(api)
