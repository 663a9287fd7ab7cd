"""The operator's life: restarts, a user-provided CA that is wrong in each way the schema
cannot see, and a clean stop."""

from __future__ import annotations

import base64
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from kubernetes import client

from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm, generate_private_key, private_key_to_pem
from meshless.pki.svid import SvidRequest, issue_svid, parse_certificate_chain

from .conftest import OperatorFactory
from .kubehelpers import (
    condition,
    create_identity,
    get_identity,
    is_ready,
    ready_with_reason,
    wait_event,
    wait_identity,
    watch_until,
)


def pem(*certs: object) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)  # type: ignore[attr-defined]


def user_ca() -> CertificateAuthority:
    ca, _root_key = bootstrap_self_signed("cluster.local", datetime.now(UTC))
    return ca


def key_mismatch(ca: CertificateAuthority) -> dict[str, bytes]:
    """The CA's certificate with somebody else's key."""
    other_key = private_key_to_pem(generate_private_key(KeyAlgorithm.ECDSAP256))
    return {"tls.crt": pem(ca.issuer_cert), "tls.key": other_key}


def put_secret(core: client.CoreV1Api, namespace: str, name: str, data: dict[str, bytes]) -> None:
    body = {
        "metadata": {"name": name},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    try:
        core.replace_namespaced_secret(name, namespace, body)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_secret(namespace, body)


def secret_versions(core: client.CoreV1Api, namespace: str, names: list[str]) -> dict[str, str]:
    return {n: core.read_namespaced_secret(n, namespace).metadata.resource_version for n in names}


def ready_gauges(metrics: str, namespace: str) -> int:
    pattern = rf'meshless_certificate_ready_status\{{name="[^"]+",namespace="{namespace}"\}} 1\.0'
    return len(re.findall(pattern, metrics))


def test_a_restart_with_valid_identities_reissues_nothing(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    first = operator_factory()
    names = [f"svc-{i}" for i in range(40)]
    for name in names:
        create_identity(api_client, namespace, name)
    serials = {
        n: wait_identity(api_client, namespace, n, is_ready)["status"]["serialNumber"]
        for n in names
    }
    before = secret_versions(core, namespace, [f"{n}-mtls" for n in names])
    identity_versions = {
        n: get_identity(api_client, namespace, n)["metadata"]["resourceVersion"] for n in names
    }
    assert first.stop() == 0, "SIGTERM must stop the operator cleanly"

    second = operator_factory(namespace=first.namespace)  # same CA Secret
    second.wait_for_log("operator started", timeout=30)
    # Every identity has been looked at once the ready gauge is set for all of them.
    metrics = second.wait_for_metrics(
        lambda text: ready_gauges(text, namespace) == len(names), timeout=30
    )
    assert "meshless_certificates_issued_total{" not in metrics
    assert secret_versions(core, namespace, [f"{n}-mtls" for n in names]) == before
    after = {n: get_identity(api_client, namespace, n) for n in names}
    assert {n: o["status"]["serialNumber"] for n, o in after.items()} == serials
    # Not even a status write: the identities are exactly as the first operator left them.
    assert {n: o["metadata"]["resourceVersion"] for n, o in after.items()} == identity_versions
    # The Secrets were vouched for by their metadata (listed in pages), not read one GET per
    # identity (the remaining GETs: the CA Secret, the Lease, a trust bundle, the priming
    # lists).
    handed = re.search(
        r"swept \d+ identities \((\d+) Secrets vouched for by their metadata\)", second.log()
    )
    assert handed is not None and int(handed.group(1)) >= len(names)
    assert second.counter('meshless_api_requests_total{verb="GET"}') < len(names)


def test_a_user_ca_that_is_wrong_is_reported_and_a_good_one_is_used(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api_client)
    op = operator_factory(ca_source="user-ca")  # the Secret does not exist yet
    ca_ns = op.namespace
    create_identity(api_client, namespace, "early")
    wid = wait_identity(api_client, namespace, "early", ready_with_reason("CASecretMissing"))
    assert "user-ca" in condition(wid, "Ready")["message"]  # type: ignore[index]
    wait_event(api_client, namespace, "early", "CASecretMissing")

    good = user_ca()
    leaf = issue_svid(
        good,
        SvidRequest(
            "spiffe://cluster.local/ns/x/sa/y",
            (),
            good.issuer_cert.not_valid_after_utc - datetime.now(UTC),
            KeyAlgorithm.ECDSAP256,
        ),
        datetime.now(UTC),
    )
    # A certificate that is not a CA.
    put_secret(
        core,
        ca_ns,
        "user-ca",
        {
            "tls.crt": leaf.chain_pem,
            "tls.key": leaf.private_key_pem,
            "ca.crt": pem(*good.roots),
        },
    )
    wait_identity(api_client, namespace, "early", ready_with_reason("CANotACA"))
    # A CA whose key does not match.
    put_secret(
        core,
        ca_ns,
        "user-ca",
        {**key_mismatch(good), "ca.crt": pem(*good.roots)},
    )
    wait_identity(api_client, namespace, "early", ready_with_reason("CAKeyMismatch"))
    wait_event(api_client, ca_ns, "user-ca", "CAKeyMismatch")

    # A good intermediate: the identity is issued under it, chaining to the user's root.
    put_secret(
        core,
        ca_ns,
        "user-ca",
        {
            "tls.crt": pem(good.issuer_cert),
            "tls.key": private_key_to_pem(good.issuer_key),
            "ca.crt": pem(*good.roots),
        },
    )
    wait_identity(api_client, namespace, "early", is_ready)
    data = {
        k: base64.b64decode(v)
        for k, v in core.read_namespaced_secret("early-mtls", namespace).data.items()
    }
    chain = parse_certificate_chain(data["tls.crt"])
    assert chain[0].issuer == good.issuer_cert.subject
    assert data["ca.crt"] == pem(*good.roots)
    (tmp_path / "ca.crt").write_bytes(data["ca.crt"])
    (tmp_path / "leaf.pem").write_bytes(pem(chain[0]))
    (tmp_path / "chain.pem").write_bytes(pem(*chain[1:]))
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "ca.crt"),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    early_version = core.read_namespaced_secret("early-mtls", namespace).metadata.resource_version

    # The CA Secret breaks while the operator is down: the CA in use (kept in the operator's
    # own meshless-ca) goes on issuing, even for a new identity, and the broken replacement is
    # reported on the user's Secret (docs/decisions/ca-rotation.md).
    assert op.stop() == 0
    put_secret(
        core,
        ca_ns,
        "user-ca",
        key_mismatch(good),
    )
    op2 = operator_factory(namespace=ca_ns, ca_source="user-ca")
    create_identity(api_client, namespace, "late")
    wait_identity(api_client, namespace, "late", is_ready)
    late_chain = parse_certificate_chain(
        base64.b64decode(core.read_namespaced_secret("late-mtls", namespace).data["tls.crt"])
    )
    assert late_chain[0].issuer == good.issuer_cert.subject
    assert late_chain[1] == good.issuer_cert
    watch_until(
        core.list_namespaced_event,
        ca_ns,
        field_selector="involvedObject.name=user-ca,reason=CAKeyMismatch",
        predicate=lambda event: "keeps issuing" in (event.message or ""),
        timeout=15,
        what="CAKeyMismatch Event saying the CA in use keeps issuing",
        resource_version=lambda listed: listed.metadata.resource_version,
        items=lambda listed: listed.items,
    )
    early = get_identity(api_client, namespace, "early")
    assert is_ready(early)
    assert core.read_namespaced_secret("early-mtls", namespace).metadata.resource_version == (
        early_version
    )
    assert op2.proc is not None and op2.proc.poll() is None, "one bad CA must not stop the operator"


def test_a_renewal_storm_is_spread_by_the_write_budget_and_nothing_is_dropped(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    """20 identities against a budget of 4 Secret writes per second (burst 1): all are
    issued, and their Secrets are written over at least (20 - 1) / 4 seconds."""
    op = operator_factory(write_budget_qps="4", write_budget_burst="1")
    names = [f"storm-{i}" for i in range(20)]
    for name in names:
        create_identity(api_client, namespace, name)
    for name in names:
        wait_identity(api_client, namespace, name, is_ready, timeout=60)
    core = client.CoreV1Api(api_client)
    secrets = core.list_namespaced_secret(namespace, label_selector="meshless.dev/identity").items
    assert sorted(s.metadata.name for s in secrets) == sorted(f"{n}-mtls" for n in names)
    created = sorted(s.metadata.creation_timestamp for s in secrets)
    assert (created[-1] - created[0]).total_seconds() >= 4.0  # 19 tokens at 4/s, 1 s granularity

    metrics = op.metrics()
    waited = re.search(r"^meshless_write_budget_wait_seconds_sum (\S+)$", metrics, re.M)
    assert waited is not None and float(waited.group(1)) > 10, "writers waited for tokens"
    assert 'meshless_certificates_issued_total{reason="SecretMissing"} 20.0' in metrics
    # Per-identity gauges carry the certificate's real times.
    wid = get_identity(api_client, namespace, names[0])
    not_after = datetime.strptime(wid["status"]["notAfter"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    expiration = re.search(
        rf'^meshless_certificate_expiration_timestamp_seconds\{{name="{names[0]}",'
        rf'namespace="{namespace}"\}} (\S+)$',
        metrics,
        re.M,
    )
    assert expiration is not None and float(expiration.group(1)) == not_after.timestamp()
    assert re.search(r"^meshless_ca_expiration_timestamp_seconds \d", metrics, re.M)


def test_the_operator_serves_healthz_and_logs_json(operator_factory: OperatorFactory) -> None:
    import json
    import time
    import urllib.error
    import urllib.request

    op = operator_factory(log_format="json")
    with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/healthz", timeout=10) as r:
        assert r.status == 200
        probes = json.loads(r.read())
    assert probes.get("issued") == 0 and probes.get("leading") in (True, False)
    deadline = time.monotonic() + 30  # readiness follows once the webhooks accept connections
    while True:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{op.health_port}/readyz", timeout=10
            ) as r:
                assert json.loads(r.read())["ready"] is True
                break
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.2)
    lines = [line for line in op.log().splitlines() if line.strip()]
    started = [json.loads(line) for line in lines if '"operator started"' in line]
    assert started and started[0]["level"] == "info" and started[0]["logger"] == "meshless.operator"
    assert op.stop() == 0


def test_a_busy_port_is_one_clear_line() -> None:
    import socket
    import sys

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "meshless", "run", "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--metrics-port / MESHLESS_METRICS_PORT" in lines[0] and str(port) in lines[0]
