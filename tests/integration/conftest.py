"""The operator as users run it: `meshless run` in its own process, against the local
control plane. Waits are driven by watch events with explicit timeouts."""

from __future__ import annotations

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
from kubernetes import client

from meshless.api import WEBHOOK_CONFIGURATION


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

    def wait_for_metrics(self, predicate: Callable[[str], bool], timeout: float) -> str:
        """Scrape /metrics until `predicate` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.metrics()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics not as expected after {timeout}s:\n{text[-2000:]}")
            time.sleep(0.1)

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


def _start_operator(
    kubeconfig: str, core: client.CoreV1Api, log_dir: Path, **settings: str
) -> OperatorProcess:
    ns = settings.pop("namespace", None) or f"meshless-{uuid.uuid4().hex[:8]}"
    if not any(n.metadata.name == ns for n in core.list_namespace().items):
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    env = {
        "MESHLESS_NAMESPACE": ns,
        "MESHLESS_TTL_FLOOR": "1m",
        "MESHLESS_CA_POLL_INTERVAL": "1s",
        "MESHLESS_WRITE_BUDGET_QPS": "200",
        "MESHLESS_WRITE_BUDGET_BURST": "200",
        **{f"MESHLESS_{k.upper()}": v for k, v in settings.items()},
    }
    op = OperatorProcess(kubeconfig, env, log_dir / "operator.log")
    op.start()
    return op


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
