"""Real local peers for probe tests: identities from the project's PKI written as a mounted
Secret directory, Python `ssl` servers in threads, a plaintext server, `openssl s_server` and
nginx in subprocesses. Nothing is mocked; every server listens on a free loopback port."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.svid import SvidRequest, issue_svid
from tests.tools import require_tool

TRUST_DOMAIN = "cluster.local"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/sa/payments"
PROBER_ID = f"spiffe://{TRUST_DOMAIN}/ns/meshless-system/sa/meshless"


def new_ca() -> CertificateAuthority:
    ca, _root_key = bootstrap_self_signed(TRUST_DOMAIN, datetime.now(UTC))
    return ca


def write_identity(
    directory: Path,
    ca: CertificateAuthority,
    spiffe_id: str,
    *,
    bundle_from: CertificateAuthority | None = None,
    algorithm: KeyAlgorithm = KeyAlgorithm.ECDSAP256,
) -> Path:
    """tls.crt, tls.key and ca.crt as kubelet mounts an identity Secret."""
    svid = issue_svid(
        ca,
        SvidRequest(spiffe_id, ("payments.shop.svc",), timedelta(hours=1), algorithm),
        datetime.now(UTC),
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(svid.chain_pem)
    (directory / "tls.key").write_bytes(svid.private_key_pem)
    (directory / "ca.crt").write_bytes(bundle_pem((bundle_from or ca).roots))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


VERIFY_MODES = {
    "STRICT": ssl.CERT_REQUIRED,
    "PERMISSIVE": ssl.CERT_OPTIONAL,
    "DISABLE": ssl.CERT_NONE,
}


@dataclass
class TlsServer:
    """A Python ssl server in a thread, in one of the three modes. After the handshake it
    waits for the client to speak, answers one line, and closes."""

    identity: Path
    mode: str
    max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    session_tickets: bool = True
    reply: bool = True  # answer a line after reading one; False: read and stay silent
    port: int = 0
    handshakes: list[str] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = self.max_version
        context.load_cert_chain(self.identity / "tls.crt", self.identity / "tls.key")
        context.load_verify_locations(self.identity / "ca.crt")
        context.verify_mode = VERIFY_MODES[self.mode]
        if not self.session_tickets:
            context.num_tickets = 0
        self.context = context
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes.append("ok")
                if tls.recv(1024) and self.reply:
                    tls.sendall(b"hello\n")
                elif not self.reply:
                    tls.recv(1024)  # until the client closes
        except (ssl.SSLError, OSError) as exc:
            self.handshakes.append(f"error: {exc}")
        finally:
            conn.close()

    def close(self) -> None:
        self._sock.close()


@dataclass
class PlaintextServer:
    """A line-based plaintext server: greets nothing, echoes each line it reads."""

    port: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(10)
        with conn:
            try:
                while data := conn.recv(1024):
                    conn.sendall(b"echo: " + data)
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Until something accepts TCP on the port (bounded; fails if the process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout}s")


def openssl_server(identity: Path, flag: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`openssl s_server -Verify 1` (client certificate required) or `-verify 1` (requested)."""
    port = free_port()
    command = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "20"]
    command += ["-cert", str(identity / "tls.crt"), "-key", str(identity / "tls.key")]
    command += ["-cert_chain", str(identity / "tls.crt"), "-CAfile", str(identity / "ca.crt")]
    command += [flag, "1", "-quiet"]
    proc = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    wait_for_port(port, proc)
    return proc, port


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {identity}/tls.crt;
        ssl_certificate_key {identity}/tls.key;
        ssl_client_certificate {identity}/ca.crt;
        ssl_verify_client {verify};
        ssl_verify_depth 3;
        ssl_protocols {protocols};
        location / {{ return 200 "client $ssl_client_verify\\n"; }}
    }}
}}
"""


def nginx_server(
    identity: Path, verify: str, prefix: Path, protocols: str = "TLSv1.2 TLSv1.3"
) -> tuple[subprocess.Popen[bytes], int]:
    """Debian's nginx on a free loopback port, with its own prefix and config."""
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            prefix=prefix, port=port, identity=identity, verify=verify, protocols=protocols
        )
    )
    binary = require_tool("nginx", "/usr/sbin/nginx")
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        stdout=(prefix / "stdout.log").open("ab"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, proc)
    return proc, port
