"""Probe benchmarks (`make bench`): results as JSON in bench/results/probes.json.

- probes_per_s / probes_per_cpu_s: full probes (no certificate, the prober's identity,
  plaintext) against a local STRICT server (Python ssl, TLS 1.3, in another process), 8 at a
  time with no budget: what one core of the prober sustains, and per CPU-second of it.
- verdict_1000_ports_s: the time to a complete verdict for 1,000 ports at the default budget
  (20 connections per second, cluster-wide; 3 connections per probe): the budget, not the
  prober, sets it (1000 * 3 / 20 = 150 s expected).

Quick runs: BENCH_SCALE=0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop

from meshless.budget import WriteBudget
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.svid import SvidRequest, issue_svid
from meshless.probe.classify import Expectation, Verdict
from meshless.probe.endpoint import probe_endpoint
from meshless.probe.handshake import ProbeContexts, ProberIdentity
from meshless.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "probes.json"
SCALE = float(os.environ.get("BENCH_SCALE", "1"))
PORTS = max(50, int(1000 * SCALE))
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"

SERVER = """
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1] + "/tls.crt", sys.argv[1] + "/tls.key")
ctx.load_verify_locations(sys.argv[1] + "/ca.crt")
ctx.verify_mode = ssl.CERT_REQUIRED
sock = socket.create_server(("127.0.0.1", 0), backlog=512)
print(sock.getsockname()[1], flush=True)
def handle(conn):
    conn.settimeout(10)
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            if tls.recv(1024):
                tls.sendall(b"hello\\n")
    except (ssl.SSLError, OSError):
        pass
    finally:
        conn.close()
while True:
    conn, _ = sock.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


def identities(directory: Path) -> tuple[ProberIdentity, bytes]:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed("cluster.local", now)
    bundle = bundle_pem(ca.roots)

    def issue(spiffe_id: str) -> tuple[bytes, bytes]:
        svid = issue_svid(
            ca, SvidRequest(spiffe_id, (), timedelta(hours=1), KeyAlgorithm.ECDSAP256), now
        )
        return svid.chain_pem, svid.private_key_pem

    chain, key = issue(SERVER_ID)
    (directory / "tls.crt").write_bytes(chain)
    (directory / "tls.key").write_bytes(key)
    (directory / "ca.crt").write_bytes(bundle)
    prober_chain, prober_key = issue("spiffe://cluster.local/ns/meshless-system/sa/meshless")
    return ProberIdentity(prober_chain, prober_key), bundle


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def unbudgeted(
    port: int, identity: ProberIdentity, bundle: bytes, seconds: float
) -> dict[str, float]:
    contexts = ProbeContexts.build(identity, bundle)
    expected = Expectation("STRICT", SERVER_ID)
    done, wrong = 0, 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done, wrong
        while time.monotonic() < deadline:
            result = await probe_endpoint(
                "127.0.0.1", port, expected, identity, bundle, 3.0, contexts=contexts
            )
            done += 1
            wrong += result.verdict is not Verdict.STRICT

    start_cpu, start = cpu_s(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(8)))
    wall, cpu = time.monotonic() - start, cpu_s() - start_cpu
    return {
        "probes_per_s": round(done / wall, 1),
        "probes_per_cpu_s": round(done / cpu, 1),
        "prober_cpu_share": round(cpu / wall, 2),
        "unexpected_verdicts": wrong,
    }


async def budgeted(port: int, identity: ProberIdentity, bundle: bytes) -> dict[str, float]:
    defaults = Settings()
    budget = WriteBudget(defaults.probe.qps, max(1, int(defaults.probe.qps)))
    contexts = ProbeContexts.build(identity, bundle)
    expected = Expectation("STRICT", SERVER_ID)
    gate = asyncio.Semaphore(8)  # the operator's probe workers
    verdicts: list[Verdict] = []

    async def one() -> None:
        async with gate:
            result = await probe_endpoint(
                "127.0.0.1",
                port,
                expected,
                identity,
                bundle,
                defaults.probe.timeout.total_seconds(),
                contexts=contexts,
                acquire=budget.acquire,
            )
            verdicts.append(result.verdict)

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(PORTS)))
    return {
        "ports": PORTS,
        "budget_connections_per_s": defaults.probe.qps,
        f"verdict_{PORTS}_ports_s": round(time.monotonic() - start, 1),
        "verdicts_strict": sum(v is Verdict.STRICT for v in verdicts),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        identity, bundle = identities(directory)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(directory)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            results: dict[str, Any] = {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "openssl": ssl.OPENSSL_VERSION},
                "scale": SCALE,
            }
            results.update(uvloop.run(unbudgeted(port, identity, bundle, 10 * max(SCALE, 0.5))))
            print(f"unbudgeted: {results['probes_per_s']} probes/s", flush=True)
            results.update(uvloop.run(budgeted(port, identity, bundle)))
        finally:
            server.kill()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
