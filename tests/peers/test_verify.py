"""`meshless verify` as a user runs it (a subprocess) against real local peers: Python ssl
servers in each mode and TLS version, a plaintext server, wrong identities, a closed port,
`openssl s_server`, nginx, and a server built on meshless.tls. Each test asserts the verdict
on the last line and the exit code."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshless import tls
from tests.peers.conftest import Identities, Verify
from tests.peers.servers import (
    SERVER_ID,
    PlaintextServer,
    TlsServer,
    free_port,
    new_ca,
    nginx_server,
    openssl_server,
    write_identity,
)

MODES = ["STRICT", "PERMISSIVE", "DISABLE"]
VERSIONS = {"tls1.3": ssl.TLSVersion.TLSv1_3, "tls1.2": ssl.TLSVersion.TLSv1_2}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("mode", MODES)
def test_python_servers_in_each_mode(
    identities: Identities, verify: Verify, mode: str, version: str
) -> None:
    server = TlsServer(identities.server, mode, VERSIONS[version])
    try:
        result = verify(server.port, "--expect", mode)
    finally:
        server.close()
    assert result.verdict == mode, result.lines
    assert result.code == 0
    expected_version = "TLSv1.3" if version == "tls1.3" else "TLSv1.2"
    assert any(expected_version in line for line in result.lines)


def test_expectation_not_met_exits_1(identities: Identities, verify: Verify) -> None:
    server = TlsServer(identities.server, "PERMISSIVE")
    try:
        result = verify(server.port, "--expect", "STRICT")
    finally:
        server.close()
    assert (result.verdict, result.code) == ("PERMISSIVE", 1)
    assert "expected STRICT: NOT met" in result.lines


def test_without_expect_exits_0_whatever_the_verdict(
    identities: Identities, verify: Verify
) -> None:
    server = TlsServer(identities.server, "DISABLE")
    try:
        result = verify(server.port)
    finally:
        server.close()
    assert (result.verdict, result.code) == ("DISABLE", 0)


def test_json_output(identities: Identities, verify: Verify) -> None:
    server = TlsServer(identities.server, "STRICT")
    try:
        result = verify(server.port, "--expect", "STRICT", "-o", "json")
    finally:
        server.close()
    assert result.code == 0
    data = json.loads("\n".join(result.lines))
    assert data["verdict"] == "STRICT" and data["met"] is True
    assert data["serverSpiffeID"] == SERVER_ID
    assert data["steps"]["noCertificate"]["handshake"] == "refused"
    assert data["steps"]["withIdentity"]["chainVerified"] is True
    assert data["steps"]["plaintext"]["answer"] in ("closed", "tls-record")


def test_plaintext_server(verify: Verify) -> None:
    server = PlaintextServer()
    try:
        result = verify(server.port, "--expect", "STRICT")
    finally:
        server.close()
    assert (result.verdict, result.code) == ("PLAINTEXT", 1)
    assert any("answered in plaintext" in line for line in result.lines)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts TCP and never says a word (a plaintext protocol waiting for more input)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()
    for conn in held:
        conn.close()


def test_silent_server_is_cut_at_the_timeout(silent_server: int, verify: Verify) -> None:
    started = time.monotonic()
    result = verify(silent_server, "--timeout", "1", "--expect", "STRICT")
    elapsed = time.monotonic() - started
    assert (result.verdict, result.code) == ("INCONCLUSIVE", 1)
    assert any("no complete handshake within the timeout" in line for line in result.lines)
    # step 1 waits its 1 s timeout, step 2 is skipped, step 3 waits a third of it
    assert elapsed < 1 + 1 / 3 + 3, f"took {elapsed:.1f}s"


def test_wrong_spiffe_id(identities: Identities, verify: Verify) -> None:
    server = TlsServer(identities.wrong_id, "STRICT")
    try:
        result = verify(server.port, "--expect", "STRICT")
    finally:
        server.close()
    assert (result.verdict, result.code) == ("WRONG_IDENTITY", 1)
    assert any("intruder" in line for line in result.lines)


def test_server_signed_by_another_ca(identities: Identities, verify: Verify) -> None:
    server = TlsServer(identities.other_ca, "STRICT")
    try:
        result = verify(server.port)
    finally:
        server.close()
    assert (result.verdict, result.code) == ("UNTRUSTED", 0)
    assert any("verified against the bundle: no" in line for line in result.lines)


@pytest.mark.parametrize("version", VERSIONS)
def test_strict_server_that_does_not_trust_our_root(
    identities: Identities, verify: Verify, tmp_path: Path, version: str
) -> None:
    """A stale ca.crt on the server: clients without a certificate are refused, and so is
    every valid meshless identity. Not proof of STRICT."""
    stale = write_identity(tmp_path / "stale", identities.ca, SERVER_ID, bundle_from=new_ca())
    server = TlsServer(stale, "STRICT", VERSIONS[version])
    try:
        result = verify(server.port, "--expect", "STRICT")
    finally:
        server.close()
    assert (result.verdict, result.code) == ("IDENTITY_REFUSED", 1), result.lines
    assert any("unknown ca" in line for line in result.lines), result.lines


def test_closed_port(verify: Verify) -> None:
    result = verify(free_port(), "--expect", "STRICT")
    assert (result.verdict, result.code) == ("UNREACHABLE", 1)
    assert any("connection refused" in line for line in result.lines)


@pytest.mark.parametrize(("flag", "mode"), [("-Verify", "STRICT"), ("-verify", "PERMISSIVE")])
def test_openssl_s_server(
    identities: Identities,
    verify: Verify,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    flag: str,
    mode: str,
) -> None:
    proc, port = openssl_server(identities.server, flag, tmp_path / "s_server.log")
    processes.append(proc)
    result = verify(port, "--expect", mode)
    assert (result.verdict, result.code) == (mode, 0), result.lines


NGINX_MODES = [("on", "STRICT"), ("optional", "PERMISSIVE"), ("off", "DISABLE")]


@pytest.mark.parametrize("protocols", ["TLSv1.3", "TLSv1.2"])
@pytest.mark.parametrize(("setting", "mode"), NGINX_MODES)
def test_nginx(
    identities: Identities,
    verify: Verify,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    setting: str,
    mode: str,
    protocols: str,
) -> None:
    """nginx never refuses a missing certificate in the handshake: `ssl_verify_client on`
    answers the request with 400. The probe's HTTP request tells it from `optional`."""
    proc, port = nginx_server(identities.server, setting, tmp_path / "nginx", protocols)
    processes.append(proc)
    result = verify(port, "--expect", mode)
    assert (result.verdict, result.code) == (mode, 0), result.lines
    assert any(protocols in line for line in result.lines)


@pytest.mark.parametrize("mode", MODES)
def test_server_on_meshless_tls(identities: Identities, verify: Verify, mode: str) -> None:
    """The application library and the probe agree on what each mode means."""
    context = tls.server_context(identities.server, mode)
    listener = context.wrap_socket(socket.create_server(("127.0.0.1", 0)), server_side=True)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except ssl.SSLError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    try:
        result = verify(listener.getsockname()[1], "--expect", mode)
    finally:
        listener.close()
    assert (result.verdict, result.code) == (mode, 0), result.lines


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        (("tls.crt", "ca.crt"), (), "--cert-dir: cannot read"),
        (("tls.crt", "tls.key", "ca.crt"), ("--timeout", "-1"), "--timeout"),
        (("tls.crt", "tls.key", "ca.crt"), ("--spiffe-id", "payments"), "--spiffe-id"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    identities: Identities,
    tmp_path: Path,
    files: tuple[str, ...],
    args: tuple[str, ...],
    message: str,
) -> None:
    for name in files:
        (tmp_path / name).write_bytes((identities.prober / name).read_bytes())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshless",
            "verify",
            "127.0.0.1:1",
            "--cert-dir",
            str(tmp_path),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_key_that_does_not_match_is_a_usage_error(identities: Identities, tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_bytes((identities.prober / "tls.crt").read_bytes())
    (tmp_path / "tls.key").write_bytes((identities.server / "tls.key").read_bytes())
    (tmp_path / "ca.crt").write_bytes((identities.prober / "ca.crt").read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "meshless", "verify", "127.0.0.1:1", "--cert-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--cert-dir" in proc.stderr and "PRIVATE KEY" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
