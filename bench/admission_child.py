"""The admission child process's memory (results in bench/results/admission_child.json).

The operator's admission child (admission/process.py, admission/child.py) mirrors every
WorkloadIdentity record the operator holds. No cluster: a policy controller is fed 50,000
identity events (BENCH_SCALE scales the count) and one STRICT policy, a real child is started
and filled, and its resident memory is read once it answers from the full state (a STRICT
request that is no longer refused with 503).

- rss_mb_admission_child_idle: the child with no identity mirrored;
- rss_mb_admission_child_<N>: the child with N identity records mirrored;
- fill_s_<N>: seconds from the child's start until it answers from the full state.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from harness import ROOT, SCALE, log, run_header, write_results
from meshless.admission.process import AdmissionProcess
from meshless.admission.serving import issue_serving_certificate
from meshless.kube import Kube
from meshless.pki.bundle import bundle_pem
from meshless.pki.webhook_ca import new_webhook_ca_data, webhook_ca_from_secret_data
from meshless.policy.admission_state import ControllerAdmissionState
from meshless.policy.controller import PolicyController
from meshless.runtime.writes import OwnWrites
from meshless.settings import Settings
from meshless.status import EventRecorder

RESULTS = ROOT / "bench" / "results" / "admission_child.json"
COUNT = max(1000, int(50_000 * SCALE))
NAMESPACES = 10


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _review(namespace: str, account: str, secret: str) -> bytes:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {
            "serviceAccountName": account,
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": "s", "secret": {"secretName": secret}}],
        },
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "operation": "CREATE",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "userInfo": {"username": "bench"},
            "object": pod,
        },
    }
    return json.dumps(review).encode()


async def measure() -> dict[str, Any]:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # never called: only events are fed
    kube = Kube(configuration)
    controller = PolicyController(
        kube, Settings(), lambda: datetime.now(UTC), EventRecorder(kube), OwnWrites()
    )
    state = ControllerAdmissionState(controller)
    now = datetime.now(UTC)
    ca = webhook_ca_from_secret_data(new_webhook_ca_data(now), now).authority
    certificate = issue_serving_certificate(ca, ["127.0.0.1"], now)
    context = ssl.create_default_context(cadata=bundle_pem(ca.roots).decode())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    def code(body: bytes) -> int:
        request = urllib.request.Request(f"https://127.0.0.1:{port}/meshless-strict", data=body)
        with urllib.request.urlopen(request, context=context, timeout=10) as answer:
            response = json.loads(answer.read())["response"]
        return 200 if response["allowed"] else int(response["status"]["code"])

    results: dict[str, Any] = {}

    def child() -> AdmissionProcess:
        return AdmissionProcess(
            state.current,
            controller.stores.identities,
            controller.stores.policies,
            state.record_admission,
            certificate,
            host="127.0.0.1",
            port=port,
        )

    idle = child()
    await idle.start()
    await idle.wait_listening()
    await asyncio.sleep(1)
    assert idle.pid is not None
    results["rss_mb_admission_child_idle"] = round(_rss_mb(idle.pid), 1)
    await idle.stop()

    controller.on_policy_event(
        "ADDED",
        {
            "metadata": {"name": "strict", "namespace": "ns-0", "uid": "u", "generation": 1},
            "spec": {"mode": "STRICT"},
        },
        enqueue=False,
    )
    for i in range(COUNT):
        namespace = f"ns-{i % NAMESPACES}"
        body = {
            "metadata": {
                "name": f"id-{i}",
                "namespace": namespace,
                "creationTimestamp": "2026-12-01T00:00:00Z",
            },
            "spec": {"serviceAccountName": f"sa-{i}", "secretName": f"id-{i}-tls"},
        }
        controller.on_identity_event("ADDED", body)
    state.policies_listed = state.identities_listed = True
    log(f"{COUNT} identities held; starting the child")
    full = child()
    started = time.monotonic()
    await full.start()
    await full.wait_listening()
    # Another ServiceAccount's identity Secret: refused (403) once the child holds every
    # record and says so; 503 before.
    stolen = _review("ns-0", "sa-0", f"id-{COUNT - NAMESPACES}-tls")
    while (answer := await asyncio.to_thread(code, stolen)) == 503:
        await asyncio.sleep(0.1)
    results[f"fill_s_{COUNT}"] = round(time.monotonic() - started, 2)
    assert answer == 403, answer
    await asyncio.sleep(2)
    assert full.pid is not None
    results[f"rss_mb_admission_child_{COUNT}"] = round(_rss_mb(full.pid), 1)
    await full.stop()
    await kube.close()
    return results


def main() -> None:
    results = {**run_header(), "identities": COUNT, **asyncio.run(measure())}
    write_results(RESULTS, results)


if __name__ == "__main__":
    main()
