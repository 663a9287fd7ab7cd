"""Start-up that recovers: the API server unreachable for the operator's first 30 s
(connection refused), then reachable. The operator leads and issues within 15 s of that; its
health port is bound once (no "address already in use" from a retried start-up); while it
cannot start /readyz says why and /healthz stays 200, so a liveness probe does not restart
every replica during an API outage."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from .conftest import OperatorProcess, free_port, operator_env, remove_webhook_configurations
from .kubehelpers import create_identity, is_ready, wait_identity

OUTAGE_S = 30.0
RECOVERY_LIMIT_S = 15.0


class Forwarder:
    """A TCP forwarder on loopback, started when the test says: until then its port refuses
    connections, as an API server that is not up yet."""

    def __init__(self, listen_port: int, target: tuple[str, int]) -> None:
        self.listen_port = listen_port
        self.target = target
        self._server: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.listen_port))
        server.listen(64)
        server.settimeout(0.2)
        self._server = server
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                downstream, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            pipe = threading.Thread(target=self._pipe, args=(downstream, upstream), daemon=True)
            pipe.start()
            self._threads.append(pipe)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with a, b:
            while not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (b if source is a else a).sendall(data)

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for thread in self._threads:
            thread.join(timeout=2)


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


@pytest.fixture
def unreachable_kubeconfig(kubeconfig: str, tmp_path: Path) -> Iterator[tuple[str, Forwarder]]:
    """A kubeconfig whose server is a loopback port that refuses until the forwarder starts."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    real = urlsplit(config["clusters"][0]["cluster"]["server"])
    assert real.hostname and real.port
    port = free_port()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp_path / "late-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    forwarder = Forwarder(port, (real.hostname, real.port))
    yield str(path), forwarder
    forwarder.stop()


def test_the_operator_starts_within_seconds_of_the_api_server_answering(
    unreachable_kubeconfig: tuple[str, Forwarder],
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    late_kubeconfig, forwarder = unreachable_kubeconfig
    op_ns = f"meshless-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": op_ns}})
    op = OperatorProcess(late_kubeconfig, operator_env(op_ns), tmp_path / "operator.log")
    started = time.monotonic()
    starting = threading.Thread(target=op.start)  # returns once "operator started" is logged
    try:
        starting.start()
        # While the API server refuses: alive (200), not ready (503, with the reason), retrying.
        deadline = started + OUTAGE_S - 5
        seen_retry = False
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                health, _ = _get(op.health_port, "/healthz")
                ready, why = _get(op.health_port, "/readyz")
                assert health == 200
                assert ready == 503 and "starting" in str(why["reason"]), why
                seen_retry = seen_retry or "retrying" in str(why["reason"])
            assert op.proc is None or op.proc.poll() is None, op.log()[-3000:]
            time.sleep(1)
        assert seen_retry, op.log()[-3000:]
        assert "cannot read the CA yet" in op.log()

        time.sleep(max(0.0, started + OUTAGE_S - time.monotonic()))
        forwarder.start()
        reachable = time.monotonic()
        starting.join(timeout=RECOVERY_LIMIT_S)
        assert not starting.is_alive(), f"not started:\n{op.log()[-3000:]}"
        op.wait_for_log(
            "reconciling as leader", timeout=reachable + RECOVERY_LIMIT_S - time.monotonic()
        )
        create_identity(api_client, namespace, "late", ttl="1h")
        wait_identity(
            api_client,
            namespace,
            "late",
            is_ready,
            timeout=max(1.0, reachable + RECOVERY_LIMIT_S - time.monotonic()),
        )
        recovered = time.monotonic() - reachable
        print(f"leading and issued {recovered:.1f}s after the API server answered")
        assert recovered <= RECOVERY_LIMIT_S
        log = op.log()
        assert "address already in use" not in log.lower() and "errno 98" not in log.lower()
        assert _get(op.health_port, "/healthz")[0] == 200
        assert _get(op.health_port, "/readyz")[0] == 200
    finally:
        if op.proc is not None and op.proc.poll() is None:
            op.stop()
        remove_webhook_configurations(api_client)
        client.CoreV1Api(api_client).delete_namespace(op_ns)  # its CA Secret and Lease
