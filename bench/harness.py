"""What the benchmarks share: the local cluster they run on, the operator as a process, the
clients that create objects at a given concurrency, and how results are written.

Each benchmark (run.py, policy.py, admission.py, probes.py, rotation.py, scale.py) is a script
that imports this module (`from harness import ...`: the scripts run as `python bench/x.py`,
so bench/ is on the path). Every benchmark scales with BENCH_SCALE (0.1 for quick runs).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from kubernetes import client, config

from meshless.kube import IDENTITIES, Kube, load_configuration
from meshless.pki.keys import key_matches_certificate, load_private_key
from meshless.pki.spiffe import spiffe_id
from meshless.pki.svid import parse_certificate_chain
from meshless.pki.x509 import uri_sans

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
KUBECONFIG = ROOT / ".cache" / "cluster" / "kubeconfig"
LOG_DIR = ROOT / ".cache" / "bench"  # the operators' logs
GROUP, VERSION, PLURAL = "meshless.dev", "v1alpha1", "workloadidentities"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))


def log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


# --- the cluster and the operator -----------------------------------------------------------
def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    return kb / 1024


def admission_children(pid: int) -> list[int]:
    """The admission child processes (meshless.admission.child) of process `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid and b"meshless.admission.child" in cmdline:
            found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Operator:
    def __init__(self, namespace: str, log_path: Path, **env: str) -> None:
        self.namespace = namespace
        self.metrics_port = free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KUBECONFIG": str(KUBECONFIG),
            "MESHLESS_NAMESPACE": namespace,
            "MESHLESS_METRICS_PORT": str(self.metrics_port),
            "MESHLESS_HEALTH_PORT": str(free_port()),
            "MESHLESS_WEBHOOK_PORT": str(free_port()),  # 9443 may be taken on a shared machine
            "MESHLESS_LOG_FORMAT": "json",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        started = time.monotonic()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "meshless", "run"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        while '"operator started"' not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: see {self.log_path}")
            time.sleep(0.05)
        return started

    def wait_steady(self, timeout: float = 120) -> None:
        """Until the operator leads, its term's sweep has queued every identity it holds and
        the queue is empty: what it does at start (its lists, checking what it holds) is
        not part of what a scenario measures."""
        deadline = time.monotonic() + timeout
        while '"message": "swept ' not in self.log_path.read_text(errors="replace") or (
            self.counter('meshless_work_queue_depth{controller="identity"}') > 0
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator not steady within {timeout}s: see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def rss_mb(self) -> float:
        """The operator process's own resident memory (its admission child not counted:
        `admission_rss_mb`)."""
        assert self.proc is not None
        return _rss_mb(self.proc.pid)

    def admission_rss_mb(self) -> float:
        """The resident memory of the operator's admission child process (0 if none runs)."""
        assert self.proc is not None
        return sum(_rss_mb(pid) for pid in admission_children(self.proc.pid))

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            return str(r.read().decode())

    def health(self) -> dict[str, Any]:
        """The operator's /healthz body: counts (`issued`, `identities_ready`) and `leading`.
        Cheap to poll, unlike /metrics, which renders a series per identity (polling it made
        the operator spend up to a fifth of its CPU on the benchmark's own scrapes)."""
        import urllib.request

        port = self.env["MESHLESS_HEALTH_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return dict(json.loads(r.read()))

    def ready_count(self) -> int:
        """Identities the operator counts Ready."""
        return int(self.health()["identities_ready"])

    def writes(self) -> float:
        return sum(
            self.counter(f'meshless_api_requests_total{{verb="{v}"}}')
            for v in ("POST", "PUT", "PATCH")
        )

    def counter(self, name: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_cluster(pool: int | None = None) -> tuple[client.ApiClient, client.CoreV1Api]:
    """A fresh cluster (`fresh_cluster`) and a client of it (`pool` connections at most);
    LOG_DIR exists."""
    fresh_cluster()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    if pool is not None:
        api.configuration.connection_pool_maxsize = pool
    return api, client.CoreV1Api(api)


def run_header(**machine: object) -> dict[str, Any]:
    """What every result file starts with: when, and on what machine."""
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), **machine},
    }


def kubectl_path() -> str:
    """The pinned kubectl (hack/build-kubectl.sh: the API server's version), never PATH's."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-kubectl.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def fresh_cluster() -> None:
    """A new, empty control plane: leftovers of earlier runs (identities issued by another
    CA) would otherwise be reissued by the operator in the middle of the measurements."""
    launcher = [sys.executable, str(ROOT / "hack" / "localcluster.py")]
    subprocess.run([*launcher, "down"], check=True)
    subprocess.run([*launcher, "up"], check=True)
    subprocess.run(
        [
            kubectl_path(),
            f"--kubeconfig={KUBECONFIG}",
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(ROOT / "crds"),
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            kubectl_path(),
            f"--kubeconfig={KUBECONFIG}",
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        check=True,
        capture_output=True,
    )


def new_namespace(core: client.CoreV1Api, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    return name


def identity(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": {"serviceAccountName": name},
    }


def run_requests(
    work: Callable[[Kube, int], Awaitable[object]], count: int, concurrency: int
) -> None:
    """`work(kube, i)` for i in range(count), at most `concurrency` at a time, through the same
    async client the operator uses."""

    async def main() -> None:
        kube = Kube(load_configuration(str(KUBECONFIG)), connections=concurrency)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await work(kube, i)

        try:
            await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            await kube.close()

    uvloop.run(main())


def create_identities(
    namespaces: list[str], names: list[str], concurrency: int = CONCURRENCY
) -> None:
    """One WorkloadIdentity per name, spread round-robin over `namespaces`."""

    async def one(kube: Kube, i: int) -> None:
        body = identity(names[i])
        body["metadata"]["namespace"] = namespaces[i % len(namespaces)]
        await kube.create(IDENTITIES, body)

    run_requests(one, len(names), concurrency)


def verify_secrets(core: client.CoreV1Api, namespace: str, names: list[str], bundle: bytes) -> int:
    """Every Secret holds a certificate for its identity that matches its key."""
    valid = 0
    secrets = {
        s.metadata.name: s
        for s in core.list_namespaced_secret(
            namespace, label_selector="meshless.dev/identity"
        ).items
    }
    for name in names:
        secret = secrets.get(f"{name}-mtls")
        if secret is None:
            continue
        data = {k: base64.b64decode(v) for k, v in secret.data.items()}
        leaf = parse_certificate_chain(data["tls.crt"])[0]
        if (
            uri_sans(leaf) == [spiffe_id("cluster.local", namespace, name)]
            and key_matches_certificate(load_private_key(data["tls.key"]), leaf)
            and data["ca.crt"] == bundle
        ):
            valid += 1
    return valid


def run_then_stop_cluster(bench: Callable[[], None]) -> None:
    """Run a benchmark that started its own cluster, and stop that cluster whatever happens
    (it holds thousands of objects: do not leave it around)."""
    try:
        bench()
    finally:
        subprocess.run(
            [sys.executable, str(ROOT / "hack" / "localcluster.py"), "down"], check=False
        )


def write_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
