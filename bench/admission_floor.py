"""What two webhook calls cost a pod creation on this machine when the webhook does no work:
the floor under bench/admission.py's `p99_added_ms`. Results: bench/results/admission_floor.json.

The same run as bench/admission.py (the operator issuing 20 identities/s meanwhile, 8
concurrent creations, the same pod), with three kinds of pods interleaved:
- `meshless`: in a namespace under a STRICT MtlsPolicy, through meshless's injecting and
  STRICT webhooks;
- `noop`: in a namespace selected by a mutating and a validating webhook of
  bench/noop_webhook.py, which allow at once, the mutating one with the very patch meshless's
  injector returns for this pod (computed with `admit`), on the same stack (aiohttp, Python's
  ssl) in a process of its own;
- `none`: in a namespace no webhook selects.
Reported: p50/p99 of each and what each webhook pair adds over `none` in the same run.

Quick runs: BENCH_SCALE=0.2.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client

from admission import BACKGROUND_IDENTITIES_PER_S, CONCURRENCY, PODS_EACH, pod
from harness import (
    KUBECONFIG,
    LOG_DIR,
    ROOT,
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
from meshless.admission.admit import AdmissionRequest, AdmissionState, admit
from meshless.admission.configurations import INJECT_HANDLER
from meshless.api import Mode
from meshless.kube import IDENTITIES, PODS, Kube, load_configuration
from meshless.policy.model import PolicySpec
from meshless.policy.resolve import PolicySet

RESULTS = ROOT / "bench" / "results" / "admission_floor.json"
FLOOR_LABEL = "bench.meshless.dev/noop-webhooks"
FLOOR_CONFIGURATION = "bench-noop"
KINDS = ("meshless", "noop", "none")


def injector_patch(namespace: str, operator_namespace: str) -> str:
    """The JSONPatch meshless's injector answers for the benchmark's pod under STRICT."""
    spec = PolicySpec(namespace, "strict", "uid-strict", "2026-01-01T00:00:00Z", None, Mode.STRICT)
    state = AdmissionState(
        trust_domain="cluster.local",
        policies=PolicySet.build([spec], operator_namespace),
        identities_listed=True,
    )
    body = pod("p-0")
    body["metadata"]["namespace"] = namespace
    request = AdmissionRequest(
        webhook=INJECT_HANDLER,
        uid="bench",
        operation="CREATE",
        resource=("", "v1", "pods", ""),
        namespace=namespace,
        obj=body,
    )
    response = admit(request, state)
    assert response.allowed and response.patch, response
    return json.dumps(list(response.patch), separators=(",", ":"))


def serving_certificate(directory: Path) -> tuple[Path, Path, bytes]:
    """A self-signed certificate for 127.0.0.1: (certificate, key, the caBundle)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-noop-webhook")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path = directory / "noop.crt", directory / "noop.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path, pem


def noop_configurations(port: int, ca_bundle: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    def webhook(path: str) -> dict[str, Any]:
        return {
            "name": f"{path}.noop.bench.meshless.dev",
            "clientConfig": {
                "url": f"https://127.0.0.1:{port}/{path}",
                "caBundle": base64.b64encode(ca_bundle).decode(),
            },
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                    "scope": "Namespaced",
                }
            ],
            "namespaceSelector": {"matchLabels": {FLOOR_LABEL: "true"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }

    meta = {"name": FLOOR_CONFIGURATION}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": meta,
        "webhooks": [{**webhook("mutate"), "reinvocationPolicy": "Never"}],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": meta,
        "webhooks": [webhook("validate")],
    }
    return mutating, validating


async def measure(namespaces: dict[str, str], identity_ns: str) -> dict[str, list[float]]:
    kube = Kube(load_configuration(str(KUBECONFIG)), connections=CONCURRENCY * 2 + 4)
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
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
        await asyncio.gather(*(create(kind, i) for i in range(PODS_EACH) for kind in KINDS))
    finally:
        stop.set()
        await bg
        await kube.close()
    return timings


def main() -> None:
    api, core = start_cluster()
    names = {}
    for prefix in ("bench-operator", "bench-policy", "bench-noop", "bench-plain", "bench-ids"):
        name = f"{prefix}-{os.getpid()}"
        labels = {FLOOR_LABEL: "true"} if prefix == "bench-noop" else {}
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        names[prefix] = name
    port = free_port()
    op = Operator(
        names["bench-operator"],
        LOG_DIR / "operator-admission-floor.log",
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
        names["bench-policy"],
        "mtlspolicies",
        {
            "apiVersion": "meshless.dev/v1alpha1",
            "kind": "MtlsPolicy",
            "metadata": {"name": "strict"},
            "spec": {"mode": "STRICT"},
        },
    )
    patch_file = LOG_DIR / "noop-patch.json"
    patch_file.write_text(injector_patch(names["bench-noop"], names["bench-operator"]))
    cert, key, ca_bundle = serving_certificate(LOG_DIR)
    noop_port = free_port()
    noop = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "noop_webhook.py"),
            str(noop_port),
            str(cert),
            str(key),
            str(patch_file),
        ]
    )
    registration = client.AdmissionregistrationV1Api(api)
    mutating, validating = noop_configurations(noop_port, ca_bundle)
    registration.create_mutating_webhook_configuration(mutating)
    registration.create_validating_webhook_configuration(validating)
    try:
        deadline = time.monotonic() + 60
        while (core.read_namespace(names["bench-policy"]).metadata.labels or {}).get(
            "meshless.dev/mtls"
        ) != "enabled":
            if time.monotonic() > deadline:
                raise RuntimeError("the policy namespace was never labelled for admission")
            time.sleep(0.2)
        time.sleep(1)  # the webhook configurations are written before the label
        kinds = {
            "meshless": names["bench-policy"],
            "noop": names["bench-noop"],
            "none": names["bench-plain"],
        }
        log(f"creating {PODS_EACH} pods of each kind: {', '.join(KINDS)}")
        load = os.getloadavg()[0]
        timings = uvloop.run(measure(kinds, names["bench-ids"]))
        patched = {
            kind: sum(
                1
                for p in core.list_namespaced_pod(kinds[kind]).items
                if "meshless.dev/identity" in (p.metadata.labels or {})
            )
            for kind in ("meshless", "noop")
        }
    finally:
        registration.delete_mutating_webhook_configuration(FLOOR_CONFIGURATION)
        registration.delete_validating_webhook_configuration(FLOOR_CONFIGURATION)
        noop.terminate()
        noop.wait(timeout=30)
        op.stop()
    results: dict[str, Any] = {
        **run_header(load_1m_at_start=round(load, 2)),
        "pods_each": PODS_EACH,
        "concurrency": CONCURRENCY,
        "background_identities_per_s": BACKGROUND_IDENTITIES_PER_S,
        "injected_pods": patched,
    }
    for kind in KINDS:
        results[f"p50_{kind}_ms"] = round(statistics.median(timings[kind]), 1)
        results[f"p99_{kind}_ms"] = round(percentile(timings[kind], 0.99), 1)
    for kind in ("meshless", "noop"):
        for q in ("p50", "p99"):
            added = results[f"{q}_{kind}_ms"] - results[f"{q}_none_ms"]
            results[f"{q}_added_{kind}_ms"] = round(added, 1)
    log(
        f"added p50/p99: meshless {results['p50_added_meshless_ms']}/"
        f"{results['p99_added_meshless_ms']} ms, no-op webhooks "
        f"{results['p50_added_noop_ms']}/{results['p99_added_noop_ms']} ms"
    )
    write_results(RESULTS, results)


if __name__ == "__main__":
    run_then_stop_cluster(main)
