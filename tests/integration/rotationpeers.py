"""Peers for CA rotation tests: identity files kept in step with their Secrets the way kubelet
does it (late, and atomically by a directory swap), TLS servers and clients that re-read those
files for every connection, and a loop that handshakes every client with every server (Python
ssl both ways, plus openssl s_client) and records each failure."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from kubernetes import client

from meshless.pki.bundle import fingerprint, parse_pem_certificates
from meshless.pki.x509 import anchor_of

FILES = ("tls.crt", "tls.key", "ca.crt")


def secret_data(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, bytes] | None:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def fingerprints(pem: bytes | None) -> set[str]:
    if not pem:
        return set()
    return {fingerprint(c).hex() for c in parse_pem_certificates(pem)}


def leaf_root(chain_pem: bytes, roots: list[x509.Certificate]) -> str | None:
    """Hex SHA-256 of the root among `roots` that the chain ends at."""
    root = anchor_of(parse_pem_certificates(chain_pem), roots)
    return fingerprint(root).hex() if root is not None else None


class Kubelet:
    """Projects identity Secrets into directories `<base>/<identity>/current/` with a per-
    identity lag (a kubelet syncs mounted Secrets on its own period), swapping a symlink so a
    reader never sees half an update. Records which root each on-disk leaf chained to."""

    def __init__(
        self,
        core: client.CoreV1Api,
        namespace: str,
        base: Path,
        roots: Callable[[], list[x509.Certificate]],
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.base = base
        self.roots = roots  # every root seen so far, to classify leaves
        self.lags: dict[str, float] = {}
        self._on_disk: dict[str, tuple[bytes, ...]] = {}
        self._pending: dict[str, tuple[tuple[bytes, ...], float]] = {}
        self.leaf_roots: dict[str, str | None] = {}
        self.mixed_seen = False  # at some moment leaves under two different roots were on disk
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._synced = threading.Condition(self._lock)
        self._generation = 0

    def add(self, identity: str, lag: float) -> None:
        """Start projecting `identity`'s Secret; returns once its files exist."""
        self.lags[identity] = lag
        data = secret_data(self.core, self.namespace, f"{identity}-mtls")
        assert data is not None, f"Secret of {identity} missing"
        with self._lock:
            self._write(identity, tuple(data[f] for f in FILES))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def directory(self, identity: str) -> Path:
        return self.base / identity / "current"

    def in_sync(self) -> bool:
        """Every projected identity's files equal its Secret right now."""
        for name in list(self.lags):
            data = secret_data(self.core, self.namespace, f"{name}-mtls")
            if data is None or tuple(data[f] for f in FILES) != self._on_disk.get(name):
                return False
        return True

    def wait_in_sync(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.in_sync():
            if time.monotonic() > deadline:
                raise AssertionError(f"mounted files not in step with Secrets after {timeout}s")
            time.sleep(0.2)

    def _write(self, identity: str, files: tuple[bytes, ...]) -> None:
        self._generation += 1
        target = self.base / identity / f"..data-{self._generation}"
        target.mkdir(parents=True)
        for name, content in zip(FILES, files, strict=True):
            (target / name).write_bytes(content)
        link = self.base / identity / "current"
        tmp = self.base / identity / f"..tmp-{self._generation}"
        tmp.symlink_to(target.name)
        os.replace(tmp, link)  # atomic, as kubelet's AtomicWriter
        self._on_disk[identity] = files
        self.leaf_roots[identity] = leaf_root(files[0], self.roots())
        if len({r for r in self.leaf_roots.values() if r}) > 1:
            self.mixed_seen = True

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                items = self.core.list_namespaced_secret(self.namespace).items
            except Exception:  # the API may blink during an operator restart; keep going
                time.sleep(0.2)
                continue
            current = {}
            for secret in items:
                name = secret.metadata.name.removesuffix("-mtls")
                if name in self.lags and secret.data:
                    data = {k: base64.b64decode(v) for k, v in secret.data.items()}
                    if all(f in data for f in FILES):
                        current[name] = tuple(data[f] for f in FILES)
            with self._lock:
                for name, files in current.items():
                    if files == self._on_disk.get(name):
                        self._pending.pop(name, None)
                        continue
                    first_seen = self._pending.get(name, (files, now))[1]
                    self._pending[name] = (files, first_seen)
                    if now - first_seen >= self.lags[name]:
                        self._write(name, files)
                        self._pending.pop(name, None)
            self._stop.wait(0.1)


def _load_files(directory: Path) -> tuple[Path, Path, Path]:
    real = directory.resolve()  # one generation for all three files
    return real / "tls.crt", real / "tls.key", real / "ca.crt"


class ReloadingServer:
    """Requires a client certificate (STRICT); builds its TLS context from the current files
    for every connection, as a server that watches its mounted files would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _context(self) -> ssl.SSLContext:
        cert, key, ca = _load_files(self.directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
        return context

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
                with self._context().wrap_socket(conn, server_side=True) as tls:
                    cert = tls.getpeercert() or {}
                    uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
                    tls.sendall(b"hello " + (uris[0] if uris else "").encode() + b"\n")
            except (ssl.SSLError, OSError) as exc:
                self.errors.append(str(exc))

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


def python_client(port: int, directory: Path) -> str:
    cert, key, ca = _load_files(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        data = b""
        while not data.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


def openssl_client(port: int, directory: Path) -> str:
    cert, key, ca = _load_files(directory)
    proc = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-cert",
            str(cert),
            "-cert_chain",  # -cert alone sends only the leaf, not the intermediate
            str(cert),
            "-key",
            str(key),
            "-CAfile",
            str(ca),
            "-verify_return_error",
            "-quiet",  # implies -ign_eof: prints what the server sends until it closes
        ],
        input=b"",
        capture_output=True,
        timeout=10,
    )
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0 and "hello" not in out:
        return f"openssl exit {proc.returncode}: {proc.stderr.decode(errors='replace')[-300:]}"
    return out


@dataclass
class Failure:
    at: float
    client: str
    server: str
    tool: str
    error: str


@dataclass
class HandshakeLoop:
    """Every client with every server, again and again, until stopped. A handshake counts as
    good only when the server's greeting (which names the client's SPIFFE ID) arrives: under
    TLS 1.3 a client can finish its side before the server refuses its certificate."""

    kubelet: Kubelet
    servers: dict[str, ReloadingServer] = field(default_factory=dict)
    attempts: int = 0
    openssl_attempts: int = 0
    rounds: int = 0
    failures: list[Failure] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, identity: str) -> None:
        server = ReloadingServer(self.kubelet.directory(identity))
        with self._lock:
            self.servers[identity] = server

    def start(self) -> None:
        self._thread.start()

    def wait_rounds(self, more: int, timeout: float = 30) -> None:
        target = self.rounds + more
        deadline = time.monotonic() + timeout
        while self.rounds < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"handshake loop made fewer than {more} rounds")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for server in self.servers.values():
            server.close()

    def _one(self, tool: str, client_name: str, server_name: str, port: int) -> None:
        connect = python_client if tool == "python" else openssl_client
        try:
            greeting = connect(port, self.kubelet.directory(client_name))
            error = "" if greeting.startswith("hello spiffe://") else f"no greeting: {greeting!r}"
        except (ssl.SSLError, OSError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if tool == "python":
            self.attempts += 1
        else:
            self.openssl_attempts += 1
        if error:
            self.failures.append(Failure(time.time(), client_name, server_name, tool, error))

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                servers = dict(self.servers)
            names = sorted(servers)
            for client_name in names:
                for server_name in names:
                    self._one("python", client_name, server_name, servers[server_name].port)
            if names:
                pick = names[self.rounds % len(names)]
                other = names[(self.rounds + 1) % len(names)]
                self._one("openssl", pick, other, servers[other].port)
            self.rounds += 1
