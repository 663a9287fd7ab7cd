"""Real TLS peers for tests: a Python `ssl` server that requires client certificates, and
clients that present (or do not present) one. Files only; nothing is mocked."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.x509peers import Identity
from tests.x509peers import write_identity as write_files


def write_identity(directory: Path, data: dict[str, bytes]) -> Identity:
    """An identity Secret's data as a pod mounts it (tests/x509peers.py's files)."""
    return write_files(directory, data["tls.crt"], data["tls.key"], data["ca.crt"])


@dataclass
class MtlsServer:
    """Accepts connections on loopback, requiring a client certificate that chains to the
    bundle (STRICT). Records the peer's URI SAN or the handshake error of each connection."""

    files: Identity
    port: int = 0
    peers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(self.files.cert, self.files.key)
        self.context.load_verify_locations(self.files.ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop = threading.Event()
        self._handled = threading.Condition()
        self._thread.start()

    def wait_handled(self, count: int, timeout: float = 10) -> None:
        """Block until `count` connections were handled (the server side of a refused
        handshake can finish after the client has seen its error)."""
        with self._handled:
            if not self._handled.wait_for(
                lambda: len(self.peers) + len(self.errors) >= count, timeout
            ):
                raise AssertionError(f"server handled fewer than {count} connections")

    def _serve(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    cert = tls.getpeercert() or {}
                    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
                    self.peers.append(uris[0] if uris else "")
                    tls.sendall(b"hello " + (uris[0] if uris else "").encode() + b"\n")
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(str(exc))
            with self._handled:
                self._handled.notify_all()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


def connect(
    port: int, ca: Path, cert: Path | None = None, key: Path | None = None, server_name: str = ""
) -> str:
    """A TLS client: verifies the server against `ca`, presents `cert` if given, and returns
    the server's greeting. Raises ssl.SSLError/OSError when the handshake is refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.check_hostname = bool(server_name)
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name or None) as tls,
    ):
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            data += chunk
        return data.decode().strip()
