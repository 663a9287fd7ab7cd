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

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from kubernetes import client

from admission import (
    BACKGROUND_IDENTITIES_PER_S,
    CONCURRENCY,
    PODS_EACH,
    measure,
    pod,
    start_operator_with_strict_policy,
)
from harness import (
    LOG_DIR,
    ROOT,
    free_port,
    log,
    percentile,
    run_header,
    run_then_stop_cluster,
    start_cluster,
    write_results,
)
from meshless.admission.admit import AdmissionRequest, AdmissionState, admit
from meshless.admission.configurations import INJECT_HANDLER
from meshless.admission.serving import issue_serving_certificate
from meshless.api import Mode
from meshless.pki.bundle import bundle_pem
from meshless.pki.webhook_ca import new_webhook_ca_data, webhook_ca_from_secret_data
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
    """A serving certificate for 127.0.0.1 from a webhook CA of its own, made as meshless
    makes its own: (certificate, key, the caBundle)."""
    now = datetime.now(UTC)
    ca = webhook_ca_from_secret_data(new_webhook_ca_data(now), now).authority
    assert ca is not None
    served = issue_serving_certificate(ca, ["127.0.0.1"], now)
    cert_path, key_path = directory / "noop.crt", directory / "noop.key"
    cert_path.write_bytes(served.chain_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(served.private_key_pem)
    return cert_path, key_path, bundle_pem(ca.roots)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


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


def main() -> None:
    api, core = start_cluster()
    names = {}
    for prefix in ("bench-operator", "bench-policy", "bench-noop", "bench-plain", "bench-ids"):
        name = f"{prefix}-{os.getpid()}"
        labels = {FLOOR_LABEL: "true"} if prefix == "bench-noop" else {}
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        names[prefix] = name
    op = start_operator_with_strict_policy(
        api, core, names["bench-operator"], names["bench-policy"], "operator-admission-floor.log"
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
        deadline = time.monotonic() + 30
        while not listening(noop_port):
            if noop.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the no-op webhook server did not start")
            time.sleep(0.1)
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
