"""Fixtures for probe tests against real local TLS peers (no control plane)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshless.pki.ca import CertificateAuthority
from tests.peers.servers import PROBER_ID, SERVER_ID, new_ca, write_identity


@dataclass(frozen=True)
class Identities:
    ca: CertificateAuthority
    server: Path  # the workload: SERVER_ID under the cluster's CA
    prober: Path  # the prober: PROBER_ID under the cluster's CA (the --cert-dir)
    wrong_id: Path  # another ServiceAccount's SVID under the same CA
    other_ca: Path  # SERVER_ID, but issued by a CA the bundle does not hold


@pytest.fixture(scope="session")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    root = tmp_path_factory.mktemp("identities")
    ca, rogue = new_ca(), new_ca()
    return Identities(
        ca=ca,
        server=write_identity(root / "server", ca, SERVER_ID),
        prober=write_identity(root / "prober", ca, PROBER_ID),
        wrong_id=write_identity(root / "wrong", ca, "spiffe://cluster.local/ns/shop/sa/intruder"),
        other_ca=write_identity(root / "rogue", rogue, SERVER_ID),
    )


@dataclass(frozen=True)
class Verified:
    code: int
    lines: list[str]
    stderr: str

    @property
    def verdict(self) -> str:
        return self.lines[-1] if self.lines else ""


Verify = Callable[..., Verified]


@pytest.fixture
def verify(identities: Identities) -> Verify:
    """`python -m meshless verify 127.0.0.1:PORT --cert-dir <prober> --spiffe-id <server>`."""

    def run(port: int, *extra: str, spiffe_id: str = SERVER_ID) -> Verified:
        args = [f"127.0.0.1:{port}", "--cert-dir", str(identities.prober)]
        if spiffe_id:
            args += ["--spiffe-id", spiffe_id]
        proc = subprocess.run(
            [sys.executable, "-m", "meshless", "verify", *args, *extra],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Verified(proc.returncode, proc.stdout.splitlines(), proc.stderr)

    return run


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Server processes a test starts; terminated (by their own handle) at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
