"""Pod create -> Ready on the local node with each identity delivery: results as JSON in
bench/results/podcert-node.json.

The node is machine-wide: run it as `flock /tmp/node.lock .venv/bin/python
bench/podcert_node.py`. It starts the local control plane with a node (`hack/localcluster.py
up --node`: the Pod Certificates API on), one operator, and for each delivery a namespace with
a STRICT policy that says `spec.identity.delivery`. PODS pods (busybox, one ServiceAccount)
are created in waves of WAVE (the node takes 32 pods), each timed from just before its create
call to its Ready=True as a watch sees it; a wave is deleted before the next.

- Secret: the first pods wait for the WorkloadIdentity's Secret (issued after the pod
  appears); the kubelet then mounts a Secret.
- PodCertificate: every pod's kubelet makes a key and waits for the signer's answer to its
  PodCertificateRequest before the container starts.

Results: `pod_ready_p50_s` / `pod_ready_p99_s` per delivery (keys `secret`, `podcertificate`).
Quick runs: BENCH_SCALE=0.2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config, watch

from run import (
    KUBECONFIG,
    ROOT,
    SCALE,
    Operator,
    free_port,
    kubectl_path,
    log,
    percentile,
    write_results,
)

RESULTS = ROOT / "bench" / "results" / "podcert-node.json"
PODS = max(10, int(50 * SCALE))
WAVE = 25
LAUNCHER = [sys.executable, str(ROOT / "hack" / "localcluster.py")]
IMAGES = ROOT / ".cache" / "cluster" / "node" / "images.json"


def kubectl(*args: str) -> None:
    subprocess.run([kubectl_path(), "--kubeconfig", str(KUBECONFIG), *args], check=True)


class ReadyWatch:
    """The moment (monotonic) each pod of a namespace is first seen Ready=True."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.ready: dict[str, float] = {}
        self.cond = threading.Condition()
        self.watch = watch.Watch()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._follow()
        except Exception:  # the stream cut by stop(): nothing more to record
            if not self.stopped:
                raise

    def _follow(self) -> None:
        for event in self.watch.stream(self.core.list_namespaced_pod, self.namespace):
            pod = event["object"]
            conditions = (pod.status.conditions if pod.status else None) or []
            if any(c.type == "Ready" and c.status == "True" for c in conditions):
                with self.cond:
                    self.ready.setdefault(pod.metadata.name, time.monotonic())
                    self.cond.notify_all()

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.ready for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.ready]
                    raise RuntimeError(f"not Ready within {timeout}s: {missing[:5]}")
                self.cond.wait(left)

    def stop(self) -> None:
        self.stopped = True
        self.watch.stop()


def pod(name: str, image: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "serviceAccountName": "app",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }


def bench_delivery(api: client.ApiClient, delivery: str, image: str) -> dict[str, float]:
    core = client.CoreV1Api(api)
    namespace = f"bench-{delivery.lower()}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "app"}})
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "meshless.dev",
        "v1alpha1",
        namespace,
        "mtlspolicies",
        {
            "apiVersion": "meshless.dev/v1alpha1",
            "kind": "MtlsPolicy",
            "metadata": {"name": "strict"},
            "spec": {"mode": "STRICT", "identity": {"delivery": delivery}},
        },
    )
    deadline = time.monotonic() + 60
    while (core.read_namespace(namespace).metadata.labels or {}).get("meshless.dev/mtls") != (
        "enabled"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{namespace}: never labelled for admission")
        time.sleep(0.2)
    ready = ReadyWatch(api, namespace)
    latencies: list[float] = []
    try:
        for start in range(0, PODS, WAVE):
            names = [f"p{i:03d}" for i in range(start, min(PODS, start + WAVE))]
            created: dict[str, float] = {}
            for name in names:
                created[name] = time.monotonic()
                core.create_namespaced_pod(namespace, pod(name, image))
            ready.wait(names, timeout=300)
            latencies += [ready.ready[n] - created[n] for n in names]
            for name in names:
                core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            deadline = time.monotonic() + 120
            while core.list_namespaced_pod(namespace).items:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{namespace}: pods not gone within 120s")
                time.sleep(0.5)
            log(f"{delivery}: {len(latencies)} pods Ready")
    finally:
        ready.stop()
    return {
        "pod_ready_p50_s": round(percentile(latencies, 0.5), 2),
        "pod_ready_p99_s": round(percentile(latencies, 0.99), 2),
        "pods": len(latencies),
    }


def main() -> None:
    subprocess.run([*LAUNCHER, "up", "--node"], check=True)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    api = config.new_client_from_config(config_file=str(KUBECONFIG))
    image = json.loads(IMAGES.read_text())["busybox"]
    client.CoreV1Api(api).create_namespace({"metadata": {"name": "bench-operator"}})
    log_dir = ROOT / ".cache" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    op = Operator(
        "bench-operator",
        log_dir / "operator-podcert-node.log",
        MESHLESS_WEBHOOK_PORT=str(port),
        MESHLESS_WEBHOOK_HOST="127.0.0.1",
        MESHLESS_WEBHOOK_URL=f"https://127.0.0.1:{port}",
    )
    op.start()
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "pods_per_delivery": PODS,
        "wave": WAVE,
    }
    try:
        for delivery in ("Secret", "PodCertificate"):
            results[delivery.lower()] = bench_delivery(api, delivery, image)
    finally:
        op.stop()
        subprocess.run([*LAUNCHER, "down"], check=False)
    write_results(RESULTS, results)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
