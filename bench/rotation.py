"""Root rotation benchmark: results as JSON in bench/results/rotation.json.

N identities (default 5,000, BENCH_SCALE scales it) spread over 10 namespaces are issued; then
`meshless ca rotate` and the operator runs Prepare -> Switch -> Finish -> Idle at the default
write budget (50 Secret writes/s, burst 100). Reported: the duration of each phase (from the
CA Secret's own record), the operator's API writes and reads during the rotation, and Secret
writes by kind (bundle-only rewrites, reissues).

The settle time and window are set short (BENCH_SETTLE, default 10s; BENCH_WINDOW, default 60s)
so the run measures the work, not the waiting; with the defaults (2m, 1h) add 2 x 2m and
stretch Switch to max(1h, N / qps).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from harness import (
    KUBECONFIG,
    LOG_DIR,
    RESULTS_DIR,
    SCALE,
    Operator,
    create_identities,
    log,
    new_namespace,
    run_then_stop_cluster,
    start_cluster,
    write_results,
)
from meshless.pki.rotation import RotationState

OUT = RESULTS_DIR / "rotation.json"
COUNT = max(20, int(5000 * SCALE))
NAMESPACES = 10
SETTLE = os.environ.get("BENCH_SETTLE", "10s")
WINDOW = os.environ.get("BENCH_WINDOW", "60s")


def ca_state(core: client.CoreV1Api, namespace: str) -> RotationState:
    import base64

    secret = core.read_namespaced_secret("meshless-ca", namespace)
    raw = (secret.data or {}).get("rotation.json")
    return RotationState.from_json(base64.b64decode(raw) if raw else None)


def counters(op: Operator) -> dict[str, float]:
    return {
        "writes": op.writes(),
        "gets": op.counter('meshless_api_requests_total{verb="GET"}'),
        "bundle_rewrites_secret": op.counter('meshless_trust_bundle_updates_total{kind="Secret"}'),
        "bundle_rewrites_configmap": op.counter(
            'meshless_trust_bundle_updates_total{kind="ConfigMap"}'
        ),
        "reissued": op.counter("meshless_certificates_issued_total"),
    }


def main() -> None:
    _, core = start_cluster()
    op_ns = new_namespace(core, "bench-operator")
    op = Operator(
        op_ns,
        LOG_DIR / "rotation-operator.log",
        MESHLESS_CA_SETTLE_TIME=SETTLE,
        MESHLESS_CA_ROTATION_WINDOW=WINDOW,
    )
    op.start()
    namespaces = [new_namespace(core, "bench-rot") for _ in range(NAMESPACES)]
    log(f"issuing {COUNT} identities in {NAMESPACES} namespaces at the default budget")
    started = time.monotonic()
    create_identities(namespaces, [f"id-{i}" for i in range(COUNT)])
    while op.ready_count() < COUNT:
        time.sleep(1)
    issue_s = time.monotonic() - started
    log(f"issued in {issue_s:.0f}s; requesting a root rotation")

    before = counters(op)
    rotate = subprocess.run(
        [sys.executable, "-m", "meshless", "ca", "--namespace", op_ns, "rotate"],
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
        capture_output=True,
        text=True,
        check=True,
    )
    log(rotate.stdout.strip())
    t0 = time.monotonic()
    last = ""
    while (state := ca_state(core, op_ns)).last_root_rotation is None:
        if state.phase.value != last:
            last = state.phase.value
            log(f"phase {last}")
        if time.monotonic() - t0 > 3600:
            raise RuntimeError("rotation did not finish within an hour")
        time.sleep(1)
    wall_s = time.monotonic() - t0
    after = counters(op)
    rss_mb = op.rss_mb()
    op.stop()

    times = [datetime.fromisoformat(h.split("@", 1)[1]) for h in state.history]
    names = [h.split("@", 1)[0] for h in state.history]
    phases = {
        names[i]: round((times[i + 1] - times[i]).total_seconds(), 1) for i in range(len(names) - 1)
    }
    delta = {k: round(after[k] - before[k]) for k in after}
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": SCALE,
        "identities": COUNT,
        "namespaces": NAMESPACES,
        "write_budget_qps": 50,
        "write_budget_burst": 100,
        "settle_time": SETTLE,
        "window": WINDOW,
        "ca_poll_interval": "10s",
        "initial_issue_s": round(issue_s, 1),
        "rotation_wall_s": round(wall_s, 1),
        "phase_s": phases,
        "api_writes": delta["writes"],
        "api_gets": delta["gets"],
        "secret_bundle_rewrites": delta["bundle_rewrites_secret"],
        "configmap_bundle_rewrites": delta["bundle_rewrites_configmap"],
        "reissued": delta["reissued"],
        "writes_per_identity": round(delta["writes"] / COUNT, 2),
        "operator_rss_mb_after": round(rss_mb, 1),
    }
    write_results(OUT, results)


if __name__ == "__main__":
    run_then_stop_cluster(main)
