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
- `noop_go`: the same two answers from bench/noopwebhook (Go's net/http and crypto/tls, built
  by hack/build-go-program.sh): what the API server's own webhook calls cost, whatever the
  webhook is written in;
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
NOOPS = ("noop", "noop_go")  # the no-op servers: each its namespace and configurations
KINDS = ("meshless", *NOOPS, "none")


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


def configuration_name(kind: str) -> str:
    """The name of a no-op kind's webhook configurations (and of a benchmark namespace)."""
    return f"bench-{kind.replace('_', '-')}"


def noop_configurations(
    kind: str, port: int, ca_bundle: bytes
) -> tuple[dict[str, Any], dict[str, Any]]:
    def webhook(path: str) -> dict[str, Any]:
        return {
            "name": f"{path}.{configuration_name(kind)}.bench.meshless.dev",
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
            "namespaceSelector": {"matchLabels": {FLOOR_LABEL: kind}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        }

    meta = {"name": configuration_name(kind)}
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


def noop_servers(
    cert: Path, key: Path, patch_files: dict[str, Path]
) -> dict[str, tuple[int, list[str]]]:
    """Each no-op server's port and command line (`patch_files`: the patch each answers)."""
    go_server = (
        subprocess.run(
            [
                "bash",
                str(ROOT / "hack" / "build-go-program.sh"),
                str(ROOT / "bench" / "noopwebhook"),
                "noopwebhook",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    python_server = [sys.executable, str(ROOT / "bench" / "noop_webhook.py")]
    servers = {}
    for kind, command in (("noop", python_server), ("noop_go", [go_server])):
        port = free_port()
        servers[kind] = (port, [*command, str(port), str(cert), str(key), str(patch_files[kind])])
    return servers


def main() -> None:
    api, core = start_cluster()
    names = {}
    for role in ("operator", "policy", "plain", "ids", *NOOPS):  # a namespace each
        name = f"{configuration_name(role)}-{os.getpid()}"
        labels = {FLOOR_LABEL: role} if role in NOOPS else {}
        core.create_namespace({"metadata": {"name": name, "labels": labels}})
        names[role] = name
    op = start_operator_with_strict_policy(
        api, core, names["operator"], names["policy"], "operator-admission-floor.log"
    )
    cert, key, ca_bundle = serving_certificate(LOG_DIR)
    registration = client.AdmissionregistrationV1Api(api)
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        patch_files = {kind: LOG_DIR / f"{kind}-patch.json" for kind in NOOPS}
        for kind, path in patch_files.items():  # the patch names the pod's namespace
            path.write_text(injector_patch(names[kind], names["operator"]))
        for kind, (port, command) in noop_servers(cert, key, patch_files).items():
            running[kind] = subprocess.Popen(command)
            deadline = time.monotonic() + 30
            while not listening(port):
                if running[kind].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the {kind} webhook server did not start")
                time.sleep(0.1)
            mutating, validating = noop_configurations(kind, port, ca_bundle)
            registration.create_mutating_webhook_configuration(mutating)
            registration.create_validating_webhook_configuration(validating)
        kinds = {
            "meshless": names["policy"],
            **{kind: names[kind] for kind in NOOPS},
            "none": names["plain"],
        }
        log(f"creating {PODS_EACH} pods of each kind: {', '.join(KINDS)}")
        load = os.getloadavg()[0]
        timings = uvloop.run(measure(kinds, names["ids"]))
        patched = {
            kind: sum(
                1
                for p in core.list_namespaced_pod(kinds[kind]).items
                if "meshless.dev/identity" in (p.metadata.labels or {})
            )
            for kind in ("meshless", *NOOPS)
        }
    finally:
        for kind, server in running.items():
            registration.delete_mutating_webhook_configuration(configuration_name(kind))
            registration.delete_validating_webhook_configuration(configuration_name(kind))
            server.terminate()
            server.wait(timeout=30)
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
    for kind in ("meshless", *NOOPS):
        for q in ("p50", "p99"):
            added = results[f"{q}_{kind}_ms"] - results[f"{q}_none_ms"]
            results[f"{q}_added_{kind}_ms"] = round(added, 1)
    log(
        f"added p50/p99: meshless {results['p50_added_meshless_ms']}/"
        f"{results['p99_added_meshless_ms']} ms, no-op webhooks "
        f"{results['p50_added_noop_ms']}/{results['p99_added_noop_ms']} ms in Python, "
        f"{results['p50_added_noop_go_ms']}/{results['p99_added_noop_go_ms']} ms in Go"
    )
    write_results(RESULTS, results)


if __name__ == "__main__":
    run_then_stop_cluster(main)
