"""Scale benchmark (issue 11): results as JSON in bench/results/scale.json.

50,000 identities (BENCH_SCALE scales the count: 0.1 is 5,000) spread over 10 namespaces,
held by two operators with leader election, as the chart runs them. In order:

- create_per_s: the identities created and issued (every one Ready, read from the leader).
- rss_mb_<N>, standby_rss_mb_<N>: resident memory of the leader and of the standby holding
  them (docs/decisions/scale.md says where the bytes go); rss_mb_admission_<N>,
  standby_rss_mb_admission_<N>: that of their admission child processes, which mirror the
  identities too (a replica's memory is the sum of the two).
- failover_s: the leader SIGKILLed; a new identity created at that moment; seconds until it is
  Ready, i.e. the standby's first completed reconcile (takeover_s: until the standby logs that
  it leads; failover_all_ready_s: until it has checked every identity);
  failover_reissues: certificates the new leader issued beyond that one identity (target 0).
- restart_ready_s, restart_reissues: every operator stopped, one started: seconds until every
  identity is Ready in its eyes, and how many it reissued (target 0).
- Progress is polled on /healthz: a /metrics scrape renders three series per identity (0.7 s
  of the operator's CPU at 50,000; polled every 2 s it starved the storm it measured).
- storm_*: the CA Secret deleted, so a new CA is bootstrapped and every certificate is due at
  once; spread by the write budget (BENCH_STORM_QPS, default 200 writes/s); duration, the
  write rate the operator kept, the API server's p99 request latency (non-watch requests,
  from its own histogram) before and during the storm, and every identity Ready on the new
  CA afterwards (nothing dropped).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from kubernetes import client

from harness import (
    KUBECONFIG,
    LOG_DIR,
    RESULTS_DIR,
    SCALE,
    Operator,
    create_identities,
    free_port,
    identity,
    kubectl_path,
    log,
    new_namespace,
    run_header,
    run_then_stop_cluster,
    start_cluster,
    verify_secrets,
    write_results,
)
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import ca_from_secret_data

COUNT = max(100, int(50_000 * SCALE))
# The full run is scale.json; a scaled one is named after its count (scale-5000.json).
OUT = RESULTS_DIR / ("scale.json" if COUNT == 50_000 else f"scale-{COUNT}.json")
NAMESPACES = 10
STORM_QPS = int(os.environ.get("BENCH_STORM_QPS", "200"))


def ready(op: Operator) -> int:
    try:
        return op.ready_count()
    except OSError:
        return -1


def wait_ready(op: Operator, count: int, timeout: float, what: str) -> float:
    """Seconds until `op` counts `count` identities Ready (polled once a second: /healthz
    is cheap, unlike a /metrics scrape with a series per identity)."""
    start = time.monotonic()
    while (n := ready(op)) < count:
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{what}: {n}/{count} Ready after {timeout:.0f}s")
        if op.proc is not None and op.proc.poll() is not None:
            raise RuntimeError(f"{what}: the operator exited (see {op.log_path})")
        time.sleep(1.0)
    return time.monotonic() - start


def wait_log(op: Operator, needle: str, timeout: float) -> float:
    start = time.monotonic()
    while needle not in op.log_path.read_text(errors="replace"):
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"{needle!r} not logged by {op.log_path} within {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


STARTED: list[Operator] = []  # stopped at the end whatever happens


def operator(namespace: str, name: str, **env: str) -> Operator:
    webhook_port = free_port()  # two operators on one machine: each its own port
    op = Operator(
        namespace,
        LOG_DIR / f"scale-{name}.log",
        MESHLESS_WEBHOOK_HOST="127.0.0.1",
        MESHLESS_WEBHOOK_PORT=str(webhook_port),
        MESHLESS_WEBHOOK_URL=f"https://127.0.0.1:{webhook_port}",
        MESHLESS_LEADER_ELECTION="true",
        MESHLESS_CA_POLL_INTERVAL="2s",
        MESHLESS_WORKERS="16",
        **env,
    )
    STARTED.append(op)
    return op


def stop_all() -> None:
    for op in STARTED:
        if op.proc is not None and op.proc.poll() is None:
            op.proc.kill()
            op.proc.wait(timeout=30)


def took_lease_s(log_path: Path, killed: datetime) -> float:
    """Seconds from `killed` to the standby's "became leader" line (read from the JSON log's
    own timestamps: the log file is written in blocks, so its arrival time says nothing)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if "became leader" in line:
            at = datetime.fromisoformat(json.loads(line)["time"])
            return round((at - killed).total_seconds(), 1)
    raise RuntimeError(f"no 'became leader' in {log_path}")


# --- the API server's own latency --------------------------------------------------------
def apiserver_histogram() -> dict[float, float]:
    """Cumulative counts by upper bound of apiserver_request_duration_seconds over every
    non-watch request (the API server's view of how long requests took)."""
    text = subprocess.run(
        [kubectl_path(), f"--kubeconfig={KUBECONFIG}", "get", "--raw", "/metrics"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_duration_seconds_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        if 'verb="WATCH"' in labels or 'verb="CONNECT"' in labels:
            continue
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = float("inf") if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def p99_ms(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the bucket holding the 99th percentile of the requests made
    between the two readings."""
    delta = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in after}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return 0.0
    for bound in sorted(delta):
        if delta[bound] >= 0.99 * total:
            return round(bound * 1000, 1)
    return float("inf")


# --- phases ------------------------------------------------------------------------------
def ca_of(core: client.CoreV1Api, namespace: str) -> Any:
    secret = core.read_namespaced_secret("meshless-ca", namespace)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    return ca_from_secret_data(data, datetime.now(UTC))


def all_valid(core: client.CoreV1Api, members: dict[str, list[str]], bundle: bytes) -> int:
    """Identities (names by namespace) whose Secret holds a valid certificate on `bundle`."""
    return sum(verify_secrets(core, ns, names, bundle) for ns, names in members.items())


def issued_by(core: client.CoreV1Api, namespaces: list[str], issuer: x509.Certificate) -> int:
    """Identity Secrets whose leaf the given CA certificate signed."""
    count = 0
    for ns in namespaces:
        token = None
        while True:
            page = core.list_namespaced_secret(
                ns, label_selector="meshless.dev/identity", limit=500, _continue=token
            )
            for secret in page.items:
                pem = base64.b64decode(secret.data["tls.crt"])
                leaf = x509.load_pem_x509_certificates(pem)[0]
                if leaf.issuer == issuer.subject:
                    try:
                        leaf.verify_directly_issued_by(issuer)
                        count += 1
                    except Exception:  # signed by another key of the same name
                        pass
            token = page.metadata._continue
            if not token:
                break
    return count


def measure_storm(
    core: client.CoreV1Api, storm: Operator, op_ns: str, members: dict[str, list[str]]
) -> dict[str, Any]:
    """The CA Secret deleted under a running operator holding every identity in `members`
    (names by namespace): the new CA's storm, measured until every certificate was reissued
    on it, then every Secret checked."""
    count = sum(len(names) for names in members.values())
    quiet = apiserver_histogram()
    time.sleep(10)
    idle = apiserver_histogram()
    old_issuer = ca_of(core, op_ns).issuer_cert
    writes_before = storm.writes()
    issued_before = int(storm.health()["issued"])  # /healthz: cheap to poll, unlike /metrics
    core.delete_namespaced_secret("meshless-ca", op_ns)
    begun = time.monotonic()
    while True:
        try:
            new_ca = ca_of(core, op_ns)
            if new_ca.issuer_cert != old_issuer:
                break
        except client.ApiException:
            pass
        time.sleep(0.5)
    during_start = apiserver_histogram()
    while (reissued := int(storm.health()["issued"]) - issued_before) < count:
        if time.monotonic() - begun > 3 * 3600:
            raise RuntimeError(f"storm: {reissued}/{count} reissued after 3 h")
        time.sleep(2.0)
    wait_ready(storm, count, 600, "after the storm")
    storm_s = time.monotonic() - begun
    during_end = apiserver_histogram()
    writes = storm.writes() - writes_before
    valid = all_valid(core, members, bundle_pem(new_ca.roots))
    on_new = issued_by(core, list(members), new_ca.issuer_cert)
    result = {
        "storm_write_budget_qps": STORM_QPS,
        "storm_s": round(storm_s, 1),
        "storm_writes": writes,
        "storm_writes_per_s": round(writes / storm_s, 1),  # Secrets, status, Events
        "storm_certificates_per_s": round(reissued / storm_s, 1),
        "storm_reissued": reissued,
        "storm_valid_on_new_ca": valid,
        "storm_leaves_signed_by_new_issuer": on_new,
        "storm_dropped": count - valid,
        "apiserver_p99_ms_idle": p99_ms(quiet, idle),
        "apiserver_p99_ms_storm": p99_ms(during_start, during_end),
        "storm_rss_mb": round(storm.rss_mb(), 1),
    }
    log(
        f"storm: {reissued} reissued in {result['storm_s']} s ({result['storm_writes_per_s']} "
        f"writes/s); API p99 {result['apiserver_p99_ms_storm']} ms (idle "
        f"{result['apiserver_p99_ms_idle']} ms); {valid} valid on the new CA"
    )
    return result


def main() -> None:
    api, core = start_cluster()
    results: dict[str, Any] = {
        **run_header(),
        "scale": SCALE,
        "identities": COUNT,
        "namespaces": NAMESPACES,
    }
    op_ns = new_namespace(core, "bench-operator")
    namespaces = [new_namespace(core, "bench-scale") for _ in range(NAMESPACES)]
    names = [f"id-{i}" for i in range(COUNT)]
    fast = {"MESHLESS_WRITE_BUDGET_QPS": "1000", "MESHLESS_WRITE_BUDGET_BURST": "1000"}

    # 1. Two operators; the identities created and issued.
    first = operator(op_ns, "first", **fast)
    first.start()
    wait_log(first, "reconciling as leader", 60)
    second = operator(op_ns, "second", **fast)
    second.start()
    log(f"creating {COUNT} identities in {NAMESPACES} namespaces")
    start = time.monotonic()
    create_identities(namespaces, names)
    wait_ready(first, COUNT, 3600, "creation")
    results["create_per_s"] = round(COUNT / (time.monotonic() - start), 1)
    time.sleep(10)  # let the standby's watch catch up before measuring it
    results[f"rss_mb_{COUNT}"] = round(first.rss_mb(), 1)
    results[f"standby_rss_mb_{COUNT}"] = round(second.rss_mb(), 1)
    results[f"rss_mb_admission_{COUNT}"] = round(first.admission_rss_mb(), 1)
    results[f"standby_rss_mb_admission_{COUNT}"] = round(second.admission_rss_mb(), 1)
    log(
        f"created at {results['create_per_s']}/s; rss leader {results[f'rss_mb_{COUNT}']} MB, "
        f"its admission child {results[f'rss_mb_admission_{COUNT}']} MB"
    )

    # 2. Failover: the leader killed; one new identity created at that moment.
    assert first.proc is not None
    issued_before = second.counter("meshless_certificates_issued_total")
    killed = time.monotonic()
    killed_wall = datetime.now(UTC)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    probe_ns = namespaces[0]
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "meshless.dev", "v1alpha1", probe_ns, "workloadidentities", identity("after-failover")
    )
    while True:
        obj = custom.get_namespaced_custom_object(
            "meshless.dev", "v1alpha1", probe_ns, "workloadidentities", "after-failover"
        )
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
            break
        if time.monotonic() - killed > 300:
            raise RuntimeError("failover: the new identity is not Ready after 300 s")
        time.sleep(0.2)
    results["failover_s"] = round(time.monotonic() - killed, 1)
    results["takeover_s"] = took_lease_s(second.log_path, killed_wall)
    wait_ready(second, COUNT + 1, 1800, "failover")
    results["failover_all_ready_s"] = round(time.monotonic() - killed, 1)
    results["failover_reissues"] = (
        second.counter("meshless_certificates_issued_total") - issued_before - 1
    )
    log(
        f"failover: first reconcile {results['failover_s']} s, every identity checked "
        f"{results['failover_all_ready_s']} s, {results['failover_reissues']} reissued"
    )
    second.stop()

    # 3. Restart: one operator, every identity valid.
    again = operator(op_ns, "restart", **fast)
    started = again.start()
    wait_ready(again, COUNT + 1, 1800, "restart")
    results["restart_ready_s"] = round(time.monotonic() - started, 1)
    results["restart_reissues"] = again.counter("meshless_certificates_issued_total")
    results[f"restart_rss_mb_{COUNT}"] = round(again.rss_mb(), 1)
    results[f"restart_rss_mb_admission_{COUNT}"] = round(again.admission_rss_mb(), 1)
    log(f"restart: Ready in {results['restart_ready_s']} s, {results['restart_reissues']} reissued")
    again.stop()

    # 4. The renewal storm: a new CA, every certificate due at once, at the write budget.
    storm = operator(
        op_ns,
        "storm",
        MESHLESS_WRITE_BUDGET_QPS=str(STORM_QPS),
        MESHLESS_WRITE_BUDGET_BURST=str(STORM_QPS),
    )
    storm.start()
    wait_ready(storm, COUNT + 1, 1800, "before the storm")
    members: dict[str, list[str]] = {ns: [] for ns in namespaces}
    for i, name in enumerate(names):
        members[namespaces[i % NAMESPACES]].append(name)
    members[probe_ns].append("after-failover")
    results.update(measure_storm(core, storm, op_ns, members))
    storm.stop()
    write_results(OUT, results)


def run() -> None:
    try:
        main()
    finally:
        stop_all()


if __name__ == "__main__":
    run_then_stop_cluster(run)
