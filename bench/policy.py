"""Policy benchmarks (`make bench`): results as JSON in bench/results/policy.json.

- rss_mb_idle / rss_mb_held: the operator's resident memory with no pods, and holding 10,000
  pods and 200 MtlsPolicies (50 namespaces, each with one namespace-wide and three workload
  policies) once every reconcile has settled. rss_kb_per_pod is the difference per pod.
- settle_s: from the operator's start (pods and policies already stored) until every policy
  reports status for its generation and both work queues are empty: the cost of a restart.
- change_to_netpol_ms p50/p99: from a workload policy's mode flipped (STRICT <-> DISABLE) to
  the first NetworkPolicy write it causes, seen through a watch started before the change.

Quick runs: BENCH_SCALE=0.1 scales pods, namespaces and changes down.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from kubernetes import client, watch

from harness import (
    CONCURRENCY,
    LOG_DIR,
    ROOT,
    SCALE,
    Operator,
    log,
    new_namespace,
    percentile,
    run_header,
    run_requests,
    run_then_stop_cluster,
    start_cluster,
    write_results,
)
from meshless.kube import PODS, POLICIES, Kube

RESULTS = ROOT / "bench" / "results" / "policy.json"
NAMESPACES = max(2, int(50 * SCALE))
PODS_PER_NAMESPACE = 200
APPS = 8  # app labels per namespace; three of them get a workload policy
ACCOUNTS = 10  # ServiceAccounts per namespace
CHANGES = max(10, int(60 * SCALE))


def pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"p-{i}",
            "labels": {"app": f"app-{i % APPS}", "tier": f"t{i % 3}", "rev": f"r{i % 2}"},
        },
        "spec": {
            "serviceAccountName": f"sa-{i % ACCOUNTS}",
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "ports": [{"containerPort": 8443}, {"containerPort": 9090}],
                }
            ],
        },
    }


def policy(name: str, mode: str, app: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mode": mode}
    if app is not None:
        spec["selector"] = {"matchLabels": {"app": app}}
        spec["portLevelMtls"] = {"9090": {"mode": "DISABLE"}}
    return {
        "apiVersion": "meshless.dev/v1alpha1",
        "kind": "MtlsPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def populate(core: client.CoreV1Api) -> list[str]:
    namespaces = [new_namespace(core, "bench-pol") for _ in range(NAMESPACES)]
    per_ns = PODS_PER_NAMESPACE

    async def create_pod(kube: Kube, i: int) -> None:
        ns = namespaces[i // per_ns]
        await kube.request("POST", PODS.path(ns), pod(i % per_ns))

    run_requests(create_pod, NAMESPACES * per_ns, CONCURRENCY)

    async def create_policies(kube: Kube, i: int) -> None:
        ns = namespaces[i]
        await kube.request("POST", POLICIES.path(ns), policy("ns-wide", "STRICT"))
        for k, mode in enumerate(("DISABLE", "PERMISSIVE", "STRICT")):
            await kube.request("POST", POLICIES.path(ns), policy(f"w-{k}", mode, f"app-{k}"))

    run_requests(create_policies, NAMESPACES, CONCURRENCY)
    return namespaces


def settled(api: client.ApiClient, op: Operator, expected: int) -> bool:
    depth = op.counter("meshless_work_queue_depth")
    if depth:
        return False
    items = client.CustomObjectsApi(api).list_cluster_custom_object(
        "meshless.dev", "v1alpha1", "mtlspolicies"
    )["items"]
    return len(items) == expected and all(
        (p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
        for p in items
    )


def wait_settled(api: client.ApiClient, op: Operator, expected: int, timeout: float) -> float:
    start = time.monotonic()
    quiet = 0
    while quiet < 3:  # three scrapes in a row with empty queues and current status
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"the operator did not settle within {timeout}s")
        quiet = quiet + 1 if settled(api, op, expected) else 0
        time.sleep(0.5)
    return time.monotonic() - start


def change_latencies(api: client.ApiClient, namespaces: list[str]) -> list[float]:
    custom = client.CustomObjectsApi(api)
    networking = client.NetworkingV1Api(api)
    latencies: list[float] = []
    for i in range(CHANGES):
        ns = namespaces[i % len(namespaces)]
        current = custom.get_namespaced_custom_object(
            "meshless.dev", "v1alpha1", ns, "mtlspolicies", "w-2"
        )
        mode = "DISABLE" if current["spec"]["mode"] == "STRICT" else "STRICT"
        rv = networking.list_namespaced_network_policy(ns).metadata.resource_version
        seen = threading.Event()
        stamp: list[float] = []

        def watch_netpols(
            namespace: str = ns,
            since: str = rv,
            stamp: list[float] = stamp,
            seen: threading.Event = seen,
        ) -> None:
            stream = watch.Watch()
            for _ in stream.stream(
                networking.list_namespaced_network_policy,
                namespace,
                resource_version=since,
                timeout_seconds=60,
            ):
                stamp.append(time.monotonic())
                seen.set()
                stream.stop()
                return

        watcher = threading.Thread(target=watch_netpols, daemon=True)
        watcher.start()  # from the listed resourceVersion: no write can be missed
        start = time.monotonic()
        custom.patch_namespaced_custom_object(
            "meshless.dev", "v1alpha1", ns, "mtlspolicies", "w-2", {"spec": {"mode": mode}}
        )
        if not seen.wait(60):
            raise RuntimeError(f"no NetworkPolicy write in {ns} within 60s of a mode change")
        latencies.append((stamp[0] - start) * 1000)
        watcher.join(timeout=5)
    return latencies


def main() -> None:
    api, core = start_cluster(pool=CONCURRENCY * 2)
    results: dict[str, Any] = {
        **run_header(),
        "scale": SCALE,
    }
    op_ns = new_namespace(core, "bench-operator")
    env = {"MESHLESS_WRITE_BUDGET_QPS": "500", "MESHLESS_WRITE_BUDGET_BURST": "500"}
    op = Operator(op_ns, LOG_DIR / "operator-policy-idle.log", **env)
    op.start()
    time.sleep(2)
    results["rss_mb_idle"] = round(op.rss_mb(), 1)
    op.stop()

    log(f"creating {NAMESPACES * PODS_PER_NAMESPACE} pods and {NAMESPACES * 4} policies")
    namespaces = populate(core)
    expected = NAMESPACES * 4
    op = Operator(op_ns, LOG_DIR / "operator-policy.log", **env)
    op.start()
    results["settle_s"] = round(wait_settled(api, op, expected, timeout=1800), 1)
    results["pods"] = NAMESPACES * PODS_PER_NAMESPACE
    results["policies"] = expected
    results["rss_mb_held"] = round(op.rss_mb(), 1)
    results["rss_kb_per_pod"] = round(
        (results["rss_mb_held"] - results["rss_mb_idle"]) * 1024 / results["pods"], 2
    )
    log(f"settled in {results['settle_s']} s; rss {results['rss_mb_held']} MB")

    latencies = change_latencies(api, namespaces)
    results["changes"] = len(latencies)
    results["change_to_netpol_p50_ms"] = round(statistics.median(latencies), 1)
    results["change_to_netpol_p99_ms"] = round(percentile(latencies, 0.99), 1)
    log(
        f"policy change to NetworkPolicy p50 {results['change_to_netpol_p50_ms']} ms, "
        f"p99 {results['change_to_netpol_p99_ms']} ms"
    )
    op.stop()
    write_results(RESULTS, results)


if __name__ == "__main__":
    run_then_stop_cluster(main)
