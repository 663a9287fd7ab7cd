"""Which server to answer admission from (docs/decisions/admission.md, "Serving"): results as
JSON in bench/results/admission_servers.json. No cluster: the API server's part is the same
for every variant, so a client process posts the AdmissionReviews the API server would.

The same `admit` answers every request (the injector's review of the bench pod under a
STRICT policy, as kube-apiserver sends it, managedFields included). Variants:

- `kopf_server`: Kopf's `kopf.WebhookServer` (aiohttp) with its request function replaced
  by ours (Kopf's per-request pipeline, which deep-copies and diffs the body, bypassed);
- `aiohttp`: our plain aiohttp server (admission/server.py) on the process's event loop;
- `aiohttp_busy_loop`, `thread_busy_loop`: the same server on the event loop, or in its own
  thread, while the event loop is kept busy the way the operator's is under load (callbacks
  of BUSY_MS of CPU, back to back, half of the time).

Reported per variant: p50/p99 latency seen by the client (8 concurrent, keep-alive TLS
connections) and the server process's CPU per request. And, without a server, the CPU per
request of the request function alone: Kopf's (`serve_admission_request`, with the injector
as our Kopf handler was: decide, then apply the operations to Kopf's copy of the body) against
`parse_review` + `admit`. BENCH_SCALE scales the requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf

from meshless.admission.admit import AdmissionState
from meshless.admission.handler import AdmissionHandler
from meshless.admission.review import parse_review, review_answer
from meshless.admission.server import AdmissionServer, ServerThread, server_context
from meshless.admission.serving import ServingCertificate, issue_serving_certificate
from meshless.api import Mode
from meshless.pki.bundle import bundle_pem
from meshless.pki.webhook_ca import new_webhook_ca_data, webhook_ca_from_secret_data
from meshless.policy.model import PolicySpec
from meshless.policy.resolve import PolicySet

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "admission_servers.json"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
REQUESTS = max(200, int(3000 * SCALE))
CONCURRENCY = 8
BUSY_MS = 20.0  # one callback of the operator's loop under load (a namespace reconcile step)
NS = "bench-policy"


def review(uid: str) -> dict[str, Any]:
    """The injector's review of the bench pod, as kube-apiserver 1.36 sends it."""
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": "p-1",
            "namespace": NS,
            "uid": "9a1c2f0e-5d2b-4c8e-9f3a-1b2c3d4e5f60",
            "creationTimestamp": "2026-12-05T12:00:00Z",
            "labels": {"app": "bench"},
            "managedFields": [
                {
                    "manager": "python-aiohttp",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": "2026-12-05T12:00:00Z",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {
                        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {
                            "f:containers": {
                                'k:{"name":"app"}': {
                                    ".": {},
                                    "f:image": {},
                                    "f:imagePullPolicy": {},
                                    "f:name": {},
                                    "f:ports": {
                                        ".": {},
                                        'k:{"containerPort":8443,"protocol":"TCP"}': {
                                            ".": {},
                                            "f:containerPort": {},
                                            "f:protocol": {},
                                        },
                                    },
                                    "f:resources": {},
                                    "f:terminationMessagePath": {},
                                    "f:terminationMessagePolicy": {},
                                }
                            },
                            "f:dnsPolicy": {},
                            "f:enableServiceLinks": {},
                            "f:restartPolicy": {},
                            "f:schedulerName": {},
                            "f:securityContext": {},
                            "f:terminationGracePeriodSeconds": {},
                        },
                    },
                }
            ],
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox",
                    "ports": [{"containerPort": 8443, "protocol": "TCP"}],
                    "resources": {},
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "File",
                    "imagePullPolicy": "Always",
                }
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    }
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p-1",
            "namespace": NS,
            "operation": "CREATE",
            "userInfo": {"username": "system:admin", "groups": ["system:masters"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


# --- the client (a process of its own, as the API server is) -------------------------------
async def client(url: str, cafile: str, requests: int) -> list[float]:
    import aiohttp

    context = ssl.create_default_context(cafile=cafile)
    connector = aiohttp.TCPConnector(ssl=context, limit=CONCURRENCY)
    latencies: list[float] = []
    gate = asyncio.Semaphore(CONCURRENCY)
    bodies = [json.dumps(review(f"u-{i}")).encode() for i in range(requests)]
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes) -> None:
            async with gate:
                start = time.perf_counter()
                async with session.post(
                    f"{url}/meshless-inject",
                    data=body,
                    headers={"Content-Type": "application/json"},
                ) as answer:
                    payload = await answer.json()
                latencies.append((time.perf_counter() - start) * 1000)
                assert payload["response"]["allowed"] and payload["response"]["patch"]

        await asyncio.gather(*(one(b) for b in bodies[: CONCURRENCY * 4]))  # warm up
        latencies.clear()
        await asyncio.gather(*(one(b) for b in bodies))
    return latencies


def run_client(url: str, cafile: str) -> list[float]:
    out = subprocess.run(
        [sys.executable, __file__, "client", url, cafile, str(REQUESTS)],
        check=True,
        capture_output=True,
        text=True,
    )
    latencies: list[float] = json.loads(out.stdout)
    return latencies


# --- the servers ---------------------------------------------------------------------------
class KopfServer(kopf.WebhookServer):
    """Kopf's webhook server with our live context (what the operator ran until now)."""

    def __init__(self, context: ssl.SSLContext, port: int) -> None:
        super().__init__(addr="127.0.0.1", port=port, context=context)

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        return None, self.context


async def busy_loop(stop: asyncio.Event) -> None:
    """Keep the event loop busy half of the time, BUSY_MS of CPU at a time."""
    while not stop.is_set():
        until = time.perf_counter() + BUSY_MS / 1000
        while time.perf_counter() < until:
            pass
        await asyncio.sleep(BUSY_MS / 1000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    name: str,
    serve: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
    url: str,
    cafile: str,
    busy: bool,
) -> dict[str, Any]:
    stop_busy = asyncio.Event()
    busy_task = asyncio.create_task(busy_loop(stop_busy)) if busy else None
    stop = await serve()
    cpu = time.process_time()
    latencies = await asyncio.to_thread(run_client, url, cafile)
    cpu = time.process_time() - cpu
    await stop()
    stop_busy.set()
    if busy_task is not None:
        await busy_task
    result = {
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "server_cpu_ms_per_request": round(cpu * 1000 / len(latencies), 3),
    }
    if busy:  # the busy loop's own CPU is in the process's time: not the server's
        del result["server_cpu_ms_per_request"]
    print(f"{name}: {result}", flush=True)
    return result


async def request_function_cpu(state: AdmissionState, requests: int) -> dict[str, float]:
    """CPU per request of Kopf's request function and of ours, on the same reviews."""
    from kopf._cogs.structs import references
    from kopf._core.engines.admission import MemoGetter, serve_admission_request

    from meshless.admission.admit import admit

    class Memos(MemoGetter):
        async def recall_memo(self, raw_body: Any, **_: Any) -> Any:
            return kopf.Memo()

    registry = kopf.OperatorRegistry()

    @kopf.on.mutate("v1", "pods", id="meshless-inject", registry=registry)
    async def inject(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        decided = admit(parse_review(review("u"), "meshless-inject"), state)

        def apply(document: Any) -> None:  # the add operations, as our Kopf handler did
            for op in decided.patch:
                *parents, last = (p.replace("~1", "/") for p in op["path"].split("/")[1:])
                target = document
                for part in parents:
                    target = target[int(part)] if isinstance(target, list) else target[part]
                if isinstance(target, list):
                    target.append(op["value"])
                else:
                    target[last] = op["value"]

        patch.fns.append(apply)

    insights = references.Insights()
    insights.webhook_resources.add(
        references.Resource(
            group="", version="v1", plural="pods", kind="Pod", namespaced=True, preferred=True
        )
    )
    settings = kopf.OperatorSettings()
    reviews = [review(f"u-{i}") for i in range(requests)]
    started = time.process_time()
    for body in reviews:
        answer = await serve_admission_request(
            body,
            webhook="meshless-inject",
            settings=settings,
            memories=Memos(),
            memobase=kopf.Memo(),
            registry=registry,
            insights=insights,
            indices={},
        )
        assert answer["response"]["allowed"] and answer["response"].get("patch")
    kopf_cpu = time.process_time() - started
    reviews = [review(f"u-{i}") for i in range(requests)]
    started = time.process_time()
    for body in reviews:
        assert admit(parse_review(body, "meshless-inject"), state).patch
    ours = time.process_time() - started
    # Kopf's answer includes the patch's JSON and base64; ours is made by review_answer.
    return {
        "kopf_request_function_cpu_ms": round(kopf_cpu * 1000 / requests, 3),
        "parse_review_and_admit_cpu_ms": round(ours * 1000 / requests, 3),
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main() -> None:
    now = datetime.now(UTC)
    ca = webhook_ca_from_secret_data(new_webhook_ca_data(now), now).authority
    certificate: ServingCertificate = issue_serving_certificate(ca, ["127.0.0.1"], now)
    cafile = ROOT / ".cache" / "bench" / "webhook-ca.pem"
    cafile.parent.mkdir(parents=True, exist_ok=True)
    cafile.write_bytes(bundle_pem(ca.roots))
    strict = PolicySpec(NS, "strict", "uid-1", "2026-01-01T00:00:00Z", None, Mode.STRICT)
    state = AdmissionState(
        trust_domain="cluster.local",
        policies=PolicySet.build([strict], "meshless-system"),
        identities_listed=True,
    )
    handler = AdmissionHandler(lambda: state)

    async def answer(request: Any, *, webhook: str | None = None, **_: Any) -> Any:
        parsed = parse_review(request, webhook or "")
        return review_answer(parsed.uid, handler(parsed))

    def kopf_variant(port: int) -> Callable[[], Awaitable[Callable[[], Awaitable[None]]]]:
        async def serve() -> Callable[[], Awaitable[None]]:
            server = KopfServer(server_context(certificate), port)
            configs: AsyncIterator[Any] = server(answer)
            await anext(configs)

            async def stop() -> None:
                await configs.aclose()  # type: ignore[attr-defined]

            return stop

        return serve

    def plain_variant(
        port: int, threaded: bool
    ) -> Callable[[], Awaitable[Callable[[], Awaitable[None]]]]:
        async def serve() -> Callable[[], Awaitable[None]]:
            server = AdmissionServer(handler, certificate, port=port)
            running: AdmissionServer | ServerThread = ServerThread(server) if threaded else server
            await running.start()
            return running.stop

        return serve

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]},
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "busy_ms": BUSY_MS,
    }
    results["per_request_cpu"] = await request_function_cpu(state, REQUESTS // 4)
    print(f"per request: {results['per_request_cpu']}", flush=True)
    for name, make, busy in (
        ("kopf_server", lambda p: kopf_variant(p), False),
        ("aiohttp", lambda p: plain_variant(p, False), False),
        ("kopf_server_busy_loop", lambda p: kopf_variant(p), True),
        ("aiohttp_busy_loop", lambda p: plain_variant(p, False), True),
        ("thread_busy_loop", lambda p: plain_variant(p, True), True),
        ("thread_busy_loop_switch_1ms", lambda p: plain_variant(p, True), True),
    ):
        sys.setswitchinterval(0.001 if name.endswith("switch_1ms") else 0.005)
        port = free_port()
        results[name] = await measure(
            name, make(port), f"https://127.0.0.1:{port}", str(cafile), busy
        )
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        print(json.dumps(asyncio.run(client(sys.argv[2], sys.argv[3], int(sys.argv[4])))))
    else:
        asyncio.run(main())
