"""Admission benchmark (`make bench`): results as JSON in bench/results/admission.json.

500 pods created in a namespace under a STRICT MtlsPolicy (through the mutating webhook and
both validating webhooks) and 500 in a namespace no policy reaches (no webhook is called),
interleaved in the same run at the same concurrency, while the operator is also issuing
identities (a steady stream of new WorkloadIdentities). Reported: p50/p99 of each and the
latency the webhooks add (`p50_added_ms`, `p99_added_ms`; target p99 <= 20 ms).

Quick runs: BENCH_SCALE=0.2.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from typing import Any

import uvloop
from kubernetes import client

from harness import (
    KUBECONFIG,
    LOG_DIR,
    ROOT,
    SCALE,
    Operator,
    free_port,
    identity,
    log,
    percentile,
    run_header,
    run_then_stop_cluster,
    start_cluster,
    write_results,
)
from meshless.kube import IDENTITIES, PODS, Kube, load_configuration

RESULTS = ROOT / "bench" / "results" / "admission.json"
PODS_EACH = max(50, int(500 * SCALE))
CONCURRENCY = int(os.environ.get("BENCH_ADMISSION_CONCURRENCY", "8"))
BACKGROUND_IDENTITIES_PER_S = 20.0


def pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "ports": [{"containerPort": 8443}]}]
        },
    }


async def measure(namespaces: dict[str, str], identity_ns: str) -> dict[str, list[float]]:
    """Create PODS_EACH pods in each of `namespaces` (kind -> namespace), interleaved so that
    every kind sees the same load at the same time, CONCURRENCY at once, while the operator
    issues BACKGROUND_IDENTITIES_PER_S new identities in `identity_ns`; each creation's
    latency in ms, by kind."""
    kube = Kube(load_configuration(str(KUBECONFIG)), connections=CONCURRENCY * 2 + 4)
    timings: dict[str, list[float]] = {kind: [] for kind in namespaces}
    stop = asyncio.Event()

    async def background() -> None:  # keep the operator issuing meanwhile
        i = 0
        while not stop.is_set():
            await kube.request("POST", IDENTITIES.path(identity_ns), identity(f"bg-{i}"))
            i += 1
            await asyncio.sleep(1 / BACKGROUND_IDENTITIES_PER_S)

    gate = asyncio.Semaphore(CONCURRENCY)

    async def create(kind: str, i: int) -> None:
        async with gate:
            start = time.perf_counter()
            await kube.request("POST", PODS.path(namespaces[kind]), pod(f"p-{i}"))
            timings[kind].append((time.perf_counter() - start) * 1000)

    bg = asyncio.create_task(background())
    try:
        await asyncio.gather(*(create(kind, i) for i in range(PODS_EACH) for kind in namespaces))
    finally:
        stop.set()
        await bg
        await kube.close()
    return timings


def start_operator_with_strict_policy(
    api: client.ApiClient, core: client.CoreV1Api, namespace: str, policy_ns: str, log_name: str
) -> Operator:
    """The operator (its CA in `namespace`, webhooks on loopback) and a STRICT MtlsPolicy in
    `policy_ns`, returned once the operator has labelled that namespace for admission (it
    writes its webhook configurations before the label)."""
    port = free_port()
    op = Operator(
        namespace,
        LOG_DIR / log_name,
        MESHLESS_WEBHOOK_PORT=str(port),
        MESHLESS_WEBHOOK_HOST="127.0.0.1",
        MESHLESS_WEBHOOK_URL=f"https://127.0.0.1:{port}",
        MESHLESS_WRITE_BUDGET_QPS="200",
        MESHLESS_WRITE_BUDGET_BURST="200",
    )
    op.start()
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "meshless.dev",
        "v1alpha1",
        policy_ns,
        "mtlspolicies",
        {
            "apiVersion": "meshless.dev/v1alpha1",
            "kind": "MtlsPolicy",
            "metadata": {"name": "strict"},
            "spec": {"mode": "STRICT"},
        },
    )
    deadline = time.monotonic() + 60
    while (core.read_namespace(policy_ns).metadata.labels or {}).get(
        "meshless.dev/mtls"
    ) != "enabled":
        if time.monotonic() > deadline:
            raise RuntimeError("the policy namespace was never labelled for admission")
        time.sleep(0.2)
    return op


def main() -> None:
    api, core = start_cluster()
    names = {}
    for prefix in ("bench-operator", "bench-policy", "bench-plain", "bench-ids"):
        name = f"{prefix}-{os.getpid()}"
        core.create_namespace({"metadata": {"name": name}})
        names[prefix] = name
    op = start_operator_with_strict_policy(
        api, core, names["bench-operator"], names["bench-policy"], "operator-admission.log"
    )
    log(f"creating {PODS_EACH} pods through the webhooks and {PODS_EACH} without")
    load = os.getloadavg()[0]  # the machine may be shared: a busy one slows both kinds
    kinds = {"webhooks": names["bench-policy"], "none": names["bench-plain"]}
    timings = uvloop.run(measure(kinds, names["bench-ids"]))
    injected = core.list_namespaced_pod(names["bench-policy"]).items
    with_label = sum(1 for p in injected if "meshless.dev/identity" in (p.metadata.labels or {}))
    op.stop()
    hooked, plain = timings["webhooks"], timings["none"]
    results: dict[str, Any] = {
        **run_header(load_1m_at_start=round(load, 2)),
        "pods_each": PODS_EACH,
        "concurrency": CONCURRENCY,
        "background_identities_per_s": BACKGROUND_IDENTITIES_PER_S,
        "injected_pods": with_label,
        "p50_without_ms": round(statistics.median(plain), 1),
        "p99_without_ms": round(percentile(plain, 0.99), 1),
        "p50_with_ms": round(statistics.median(hooked), 1),
        "p99_with_ms": round(percentile(hooked, 0.99), 1),
    }
    results["p50_added_ms"] = round(results["p50_with_ms"] - results["p50_without_ms"], 1)
    results["p99_added_ms"] = round(results["p99_with_ms"] - results["p99_without_ms"], 1)
    log(f"added p50 {results['p50_added_ms']} ms, p99 {results['p99_added_ms']} ms")
    write_results(RESULTS, results)


if __name__ == "__main__":
    run_then_stop_cluster(main)
