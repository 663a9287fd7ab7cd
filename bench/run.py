"""Issuance benchmarks (`make bench`): results as JSON in bench/results/issuance.json.

Every figure comes with the baseline it should be read against, measured in the same run on
the same machine (these machines are noisy: compare ratios, not absolute times).

- signing_per_s vs crypto_baseline_per_s: our issue_svid (P-256 keygen + sign + PEM) against
  the least `cryptography` work for the same (keygen + a bare certificate + PEM), one core.
- e2e_per_s vs ideal_per_s: 1,000 WorkloadIdentities created at concurrency C until each is
  Ready with a valid Secret, against the least API work the same job needs done directly
  (create the identity, create its Secret with a pre-signed certificate, write its status).
  The two alternate BENCH_ROUNDS times (7), each from the same cluster state (what a round
  made is deleted); the round with the median ratio is reported,
  with every round's ratio in e2e_vs_ideal_rounds.
- latency_p50_ms / latency_p99_ms: apply to Ready under a steady 20 identities/s for 30 s.
- rss_mb_<N>: the operator's resident memory holding N identities (5,000 at scale 1).
- restart_reissues / restart_ready_s: a restart with those 5,000 valid identities.

Quick runs for development: BENCH_SCALE=0.1 scales the identity counts and durations down.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client, config, watch

from meshless.kube import IDENTITIES, SECRETS, Kube, load_configuration
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import bootstrap_self_signed, ca_from_secret_data
from meshless.pki.keys import KeyAlgorithm, key_matches_certificate, load_private_key
from meshless.pki.spiffe import spiffe_id
from meshless.pki.svid import SvidRequest, issue_svid, parse_certificate_chain

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "issuance.json"
KUBECONFIG = ROOT / ".cache" / "cluster" / "kubeconfig"
GROUP, VERSION, PLURAL = "meshless.dev", "v1alpha1", "workloadidentities"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))  # ideal and e2e, alternated


def scaled(n: int) -> int:
    return max(10, int(n * SCALE))


def log(msg: str) -> None:
    print(f"[bench {datetime.now(UTC):%H:%M:%S}] {msg}", flush=True)


# --- signing --------------------------------------------------------------------------------
def rate(fn: Callable[[], object], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    return count / elapsed


def bench_signing() -> dict[str, float]:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed("cluster.local", now)
    request = SvidRequest(
        spiffe_id("cluster.local", "ns", "sa"),
        ("svc.ns.svc",),
        timedelta(hours=24),
        KeyAlgorithm.ECDSAP256,
    )
    issuer_key = ca.issuer_key
    issuer_name = ca.issuer_cert.subject

    def baseline() -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(request.spiffe_id)]),
                critical=True,
            )
            .sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    seconds = max(1.0, 5 * SCALE)
    ours = rate(lambda: issue_svid(ca, request, now), seconds)
    base = rate(baseline, seconds)
    return {
        "signing_per_s": round(ours, 1),
        "crypto_baseline_per_s": round(base, 1),
        "signing_vs_baseline": round(ours / base, 3),
    }


# --- cluster helpers ------------------------------------------------------------------------
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
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
        return kb / 1024

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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_pids() -> dict[str, int]:
    pids = json.loads((ROOT / ".cache" / "cluster" / "pids.json").read_text())
    return {name: int(pid) for name, pid in pids.items()}


class CpuMeter:
    """CPU seconds each process spends during a phase, per identity (where the time goes)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def per_identity_ms(self, count: int) -> dict[str, float]:
        return {
            name: round((cpu_seconds(pid) - self.start[name]) * 1000 / count, 2)
            for name, pid in self.pids.items()
        }


class ReadyWatcher:
    """Watches a namespace's identities and records when each first became Ready."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.ready_at: dict[str, float] = {}
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rv = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)[
            "metadata"
        ]["resourceVersion"]
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=rv,
                    timeout_seconds=30,
                    allow_watch_bookmarks=True,
                ):
                    obj = event["object"]
                    rv = obj["metadata"]["resourceVersion"]
                    if self._stop.is_set():
                        return
                    conds = (obj.get("status") or {}).get("conditions") or []
                    if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                        name = obj["metadata"]["name"]
                        if name not in self.ready_at:
                            with self.changed:
                                self.ready_at[name] = time.monotonic()
                                self.changed.notify_all()
            except Exception as exc:  # a dropped stream resumes from the last version
                log(f"watch restarted: {exc}")

    def wait_all(self, count: int, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.ready_at) >= count, timeout):
                raise RuntimeError(f"only {len(self.ready_at)}/{count} Ready after {timeout}s")

    def stop(self) -> None:
        self._stop.set()


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
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if (
            uris == [spiffe_id("cluster.local", namespace, name)]
            and key_matches_certificate(load_private_key(data["tls.key"]), leaf)
            and data["ca.crt"] == bundle
        ):
            valid += 1
    return valid


# --- scenarios ------------------------------------------------------------------------------
def bench_ideal(api: client.ApiClient, count: int) -> dict[str, float]:
    """The least API work per identity, done directly: create it, create its Secret with a
    certificate signed beforehand, write its status."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    ns = new_namespace(core, "bench-ideal")
    ca, _ = bootstrap_self_signed("cluster.local", datetime.now(UTC))
    bundle = bundle_pem(ca.roots).decode()
    signed = [
        issue_svid(
            ca,
            SvidRequest(
                spiffe_id("cluster.local", ns, f"id-{i}"),
                (),
                timedelta(hours=24),
                KeyAlgorithm.ECDSAP256,
            ),
            datetime.now(UTC),
        )
        for i in range(count)
    ]

    async def one(kube: Kube, i: int) -> None:
        name = f"id-{i}"
        await kube.request("POST", IDENTITIES.path(ns), identity(name))
        await kube.request(
            "POST",
            SECRETS.path(ns),
            {
                "metadata": {"name": f"{name}-mtls", "labels": {"bench": "ideal"}},
                "type": "kubernetes.io/tls",
                "data": {
                    "tls.crt": base64.b64encode(signed[i].chain_pem).decode(),
                    "tls.key": base64.b64encode(signed[i].private_key_pem).decode(),
                    "ca.crt": base64.b64encode(bundle.encode()).decode(),
                },
            },
        )
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        await kube.request(
            "PATCH",
            IDENTITIES.path(ns, name, "status"),
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "Ready",
                            "message": "ideal",
                            "lastTransitionTime": now,
                        }
                    ],
                    "serialNumber": format(signed[i].certificate.serial_number, "x"),
                }
            },
            content_type="application/merge-patch+json",
        )

    meter = CpuMeter({**control_plane_pids(), "benchmark": os.getpid()})
    start = time.monotonic()
    run_requests(one, count, CONCURRENCY)
    elapsed = time.monotonic() - start
    cpu = meter.per_identity_ms(count)
    # Leave nothing for the operator (started next) to find, and the API server holding what
    # it held before (its garbage collector's work grows with what it holds).
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    core.delete_collection_namespaced_secret(ns, label_selector="bench=ideal")
    return {
        "ideal_per_s": round(count / elapsed, 1),
        "ideal_writes_per_identity": 3.0,
        "ideal_cpu_ms_per_identity": cpu,
    }


def bench_e2e(api: client.ApiClient, op: Operator, count: int) -> dict[str, Any]:
    """Completion is read from the operator's count of Ready identities (/healthz), which
    counts an identity only after its Ready status write returned; a watch from the
    benchmark would add API-server work the ideal run does not have. Afterwards every identity
    is checked to be Ready in the API and every Secret to hold a valid certificate."""
    core = client.CoreV1Api(api)
    ns = new_namespace(core, "bench-e2e")
    ready_before = op.ready_count()
    requests_before = op.counter("meshless_api_requests_total")
    writes_before = op.writes()
    names = [f"id-{i}" for i in range(count)]
    assert op.proc is not None
    meter = CpuMeter({**control_plane_pids(), "operator": op.proc.pid, "benchmark": os.getpid()})
    start = time.monotonic()
    run_requests(
        lambda kube, i: kube.request("POST", IDENTITIES.path(ns), identity(names[i])),
        count,
        CONCURRENCY,
    )
    deadline = start + 600
    while op.ready_count() < ready_before + count:
        if time.monotonic() > deadline:
            raise RuntimeError("e2e: identities not Ready within 600 s")
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    cpu = meter.per_identity_ms(count)
    writes = op.writes() - writes_before
    requests = op.counter("meshless_api_requests_total") - requests_before
    listed = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
    ready_in_api = sum(
        1
        for o in listed["items"]
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (o.get("status") or {}).get("conditions") or []
        )
    )
    ca_secret = core.read_namespaced_secret("meshless-ca", op.namespace)
    ca = ca_from_secret_data(
        {k: base64.b64decode(v) for k, v in ca_secret.data.items()}, datetime.now(UTC)
    )
    valid = verify_secrets(core, ns, names, bundle_pem(ca.roots))
    if ready_in_api != count or valid != count:
        raise RuntimeError(f"e2e: {ready_in_api} Ready and {valid} valid of {count}")
    return {
        "e2e_per_s": round(count / elapsed, 1),
        "e2e_ready_in_api": ready_in_api,
        "e2e_valid_secrets": valid,
        # each identity's own writes (Secret, status, Event) plus the namespace's trust bundle
        "writes_per_identity": round(writes / count, 2),
        "requests_per_identity": round(requests / count, 2),
        "e2e_cpu_ms_per_identity": cpu,
        "e2e_namespace": ns,
    }


def remove_e2e_objects(api: client.ApiClient, namespace: str) -> None:
    client.CustomObjectsApi(api).delete_collection_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )
    client.CoreV1Api(api).delete_collection_namespaced_secret(
        namespace, label_selector="meshless.dev/identity"
    )


def bench_latency(api: client.ApiClient, rate_per_s: float, seconds: float) -> dict[str, float]:
    core = client.CoreV1Api(api)
    ns = new_namespace(core, "bench-latency")
    watcher = ReadyWatcher(api, ns)
    created_at: dict[str, float] = {}
    total = int(rate_per_s * seconds)

    async def paced() -> None:
        kube = Kube(load_configuration(str(KUBECONFIG)))
        start = time.monotonic()
        pending = []
        for i in range(total):
            await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
            name = f"id-{i}"
            created_at[name] = time.monotonic()
            pending.append(
                asyncio.create_task(kube.request("POST", IDENTITIES.path(ns), identity(name)))
            )
        await asyncio.gather(*pending)
        await kube.close()

    uvloop.run(paced())
    watcher.wait_all(total, timeout=300)
    watcher.stop()
    latencies = sorted((watcher.ready_at[n] - created_at[n]) * 1000 for n in created_at)
    return {
        "latency_p50_ms": round(statistics.median(latencies), 1),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
        "latency_rate_per_s": rate_per_s,
        "latency_duration_s": seconds,
    }


def bench_scale(api: client.ApiClient, op: Operator, count: int, log_dir: Path) -> dict[str, float]:
    core = client.CoreV1Api(api)
    ns = new_namespace(core, "bench-scale")
    watcher = ReadyWatcher(api, ns)
    run_requests(
        lambda kube, i: kube.request("POST", IDENTITIES.path(ns), identity(f"id-{i}")),
        count,
        CONCURRENCY,
    )
    watcher.wait_all(count, timeout=1200)
    watcher.stop()
    op_total = op.ready_count()
    rss = op.rss_mb()
    issued_before = op.counter("meshless_certificates_issued_total")
    op.stop()

    # Restart: how long until every identity has been checked, and how many were reissued.
    again = Operator(
        op.namespace,
        log_dir / "operator-restart.log",
        **{
            k: v
            for k, v in op.env.items()
            if k.startswith("MESHLESS_")
            and k not in ("MESHLESS_METRICS_PORT", "MESHLESS_HEALTH_PORT", "MESHLESS_NAMESPACE")
        },
    )
    started = again.start()
    while again.ready_count() < op_total:
        time.sleep(0.25)
    ready_s = time.monotonic() - started
    reissues = again.counter("meshless_certificates_issued_total")
    again.stop()
    return {
        f"rss_mb_{op_total}": round(rss, 1),
        "identities_held": op_total,
        "issued_before_restart": issued_before,
        "restart_reissues": reissues,
        "restart_ready_s": round(ready_s, 1),
    }


def main() -> None:
    fresh_cluster()
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    api.configuration.connection_pool_maxsize = CONCURRENCY * 2
    core = client.CoreV1Api(api)
    log_dir = ROOT / ".cache" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "scale": SCALE,
        "concurrency": CONCURRENCY,
    }
    log("signing")
    results.update(bench_signing())
    log(f"signing: {results['signing_per_s']}/s (baseline {results['crypto_baseline_per_s']}/s)")

    count = scaled(1000)
    op_ns = new_namespace(core, "bench-operator")
    operator_env = {
        "MESHLESS_WRITE_BUDGET_QPS": "1000",
        "MESHLESS_WRITE_BUDGET_BURST": "1000",
        "MESHLESS_WORKERS": "16",
    }
    results["write_budget_qps"] = 1000
    # The ideal and the operator's run alternate, ROUNDS times: the machine's speed drifts
    # by 20% within a minute here, so one of each, a minute apart, compared noise as much as
    # work. The round with the median ratio is reported whole, every round's ratio with it.
    rounds: list[dict[str, Any]] = []
    for number in range(1, ROUNDS + 1):
        log(f"round {number}/{ROUNDS} ideal: {count} identities done directly")
        measured = bench_ideal(api, count)
        # The operator runs only for its own half (it would issue the ideal's identities),
        # and starts clean each round: its start (lists, the sweep) is not measured.
        op = Operator(op_ns, log_dir / "operator.log", **operator_env)
        op.start()
        op.wait_steady()
        log(f"round {number}/{ROUNDS} e2e: the same {count} identities through the operator")
        measured.update(bench_e2e(api, op, count))
        op.stop()
        # Each round starts from the same cluster: the API server's CPU per request grows
        # with the objects it holds (its GC marks them all), which favoured whichever half
        # ran first (the ideal's CPU per identity rose 4.0 -> 4.5 -> 5.2 ms over three
        # rounds that left their objects behind).
        remove_e2e_objects(api, str(measured.pop("e2e_namespace")))
        measured["e2e_vs_ideal"] = round(measured["e2e_per_s"] / measured["ideal_per_s"], 3)
        log(f"e2e {measured['e2e_per_s']}/s vs ideal {measured['ideal_per_s']}/s")
        rounds.append(measured)
    median = sorted(rounds, key=lambda r: float(r["e2e_vs_ideal"]))[len(rounds) // 2]
    results.update(median)
    results["e2e_vs_ideal_rounds"] = [r["e2e_vs_ideal"] for r in rounds]
    results["rounds"] = [
        {
            k: r[k]
            for k in (
                "ideal_per_s",
                "ideal_cpu_ms_per_identity",
                "e2e_per_s",
                "e2e_cpu_ms_per_identity",
                "e2e_vs_ideal",
            )
        }
        for r in rounds
    ]
    # The same comparison in CPU: the whole job's CPU per identity (API server, etcd, the
    # benchmark, the operator), ideal over e2e. On a saturated machine it is the same ratio
    # with less of the noise in it.
    results["cpu_ideal_vs_e2e_rounds"] = [
        round(
            sum(r["ideal_cpu_ms_per_identity"].values())
            / sum(r["e2e_cpu_ms_per_identity"].values()),
            3,
        )
        for r in rounds
    ]
    op = Operator(op_ns, log_dir / "operator.log", **operator_env)
    op.start()
    op.wait_steady()
    if os.environ.get("BENCH_ONLY") == "throughput":  # quick runs while tuning
        op.stop()
        print(json.dumps(results, indent=2))
        return

    log("latency under a steady 20/s")
    results.update(bench_latency(api, 20.0, max(3.0, 30 * SCALE)))
    log(f"latency p50 {results['latency_p50_ms']} ms p99 {results['latency_p99_ms']} ms")

    target = scaled(5000)
    held = len(
        client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    )
    log(f"scale: topping up to {target} identities (holding {held})")
    results.update(bench_scale(api, op, max(10, target - held), log_dir))
    held_now = results["identities_held"]
    log(
        f"rss {results[f'rss_mb_{held_now}']} MB holding {held_now}; restart reissued "
        f"{results['restart_reissues']} in {results['restart_ready_s']} s"
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


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


if __name__ == "__main__":
    run_then_stop_cluster(main)
