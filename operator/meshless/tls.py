"""TLS contexts for applications from the files meshless mounts (stdlib `ssl` only).

    from meshless import tls
    server = tls.server_context()        # mode from MESHLESS_MTLS_MODE
    client = tls.client_context()
    ...
    tls.check_peer(ssl_socket, {"spiffe://cluster.local/ns/shop/sa/frontend"})

Both contexts are `ReloadingContext`s: before each new connection (every `wrap_socket` and
`wrap_bio`, which `SSLSocket.accept`, asyncio, http.client and urllib3 all go through) they
check, with a few `stat` calls, whether kubelet swapped the mounted files, and if so load the
new certificate chain and trust bundle into the same context. Connections already open keep
the certificate they started with; new handshakes get the new one. Roots are only ever added
to a running context (ssl cannot remove one): a root that leaves the bundle stays trusted by a
process until it restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from meshless.api import ENV_MTLS_MODE, ENV_MTLS_PORTS, IDENTITY_MOUNT_PATH, Mode

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
BUNDLE_FILE = "ca.crt"
DEFAULT_MODE = Mode.STRICT  # a process that was not told otherwise fails closed

VERIFY_MODES = {
    Mode.STRICT: ssl.CERT_REQUIRED,
    Mode.PERMISSIVE: ssl.CERT_OPTIONAL,
    Mode.DISABLE: ssl.CERT_NONE,
    Mode.UNSET: ssl.CERT_OPTIONAL,  # PeerAuthentication: UNSET with nothing wider is PERMISSIVE
}


class PeerNotAllowed(PermissionError):
    """The peer's SPIFFE ID is missing or not on the allow-list."""


@contextlib.contextmanager
def in_memory_files(*contents: bytes) -> Iterator[list[str]]:
    """Paths that `load_cert_chain` can read, backed by anonymous memory (memfd) where the
    platform has it, so that key material is not copied to a filesystem."""
    if hasattr(os, "memfd_create"):
        fds: list[int] = []
        try:
            for data in contents:
                fd = os.memfd_create("meshless-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            yield [f"/proc/self/fd/{fd}" for fd in fds]
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # pragma: no cover - not Linux
        paths = []
        for index, data in enumerate(contents):
            path = Path(directory) / str(index)
            path.touch(mode=0o600)
            path.write_bytes(data)
            paths.append(str(path))
        yield paths


FileStamp = tuple[str, int, int, int]  # resolved path, inode, size, mtime_ns


def _stamp(path: Path) -> FileStamp:
    resolved = os.path.realpath(path)  # kubelet's atomic writer swaps the ..data symlink
    st = os.stat(resolved)
    return resolved, st.st_ino, st.st_size, st.st_mtime_ns


class ReloadingContext(ssl.SSLContext):
    """An SSLContext that reloads tls.crt/tls.key/ca.crt from `cert_dir` when they change."""

    cert_dir: Path
    _stamps: tuple[FileStamp, ...]
    _reload_lock: threading.Lock
    reloads: int
    last_error: str | None

    def _watch(self, cert_dir: Path) -> None:
        self.cert_dir = cert_dir
        self._stamps = ()
        self._reload_lock = threading.Lock()
        self.reloads = 0
        self.last_error = None
        self._load(self._current_stamps())

    def _paths(self) -> tuple[Path, Path, Path]:
        return (self.cert_dir / CERT_FILE, self.cert_dir / KEY_FILE, self.cert_dir / BUNDLE_FILE)

    def _current_stamps(self) -> tuple[FileStamp, ...]:
        return tuple(_stamp(path) for path in self._paths())

    def _load(self, stamps: tuple[FileStamp, ...]) -> None:
        """Read the three files once (through their resolved paths, so all from one kubelet
        generation), check them on a scratch context, then load them into this one: a
        failed load never leaves this context with a certificate whose key it lacks."""
        chain, key, bundle = (Path(stamp[0]).read_bytes() for stamp in stamps)
        with in_memory_files(chain, key) as (chain_path, key_path):
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            scratch.load_cert_chain(chain_path, key_path)
            scratch.load_verify_locations(cadata=bundle.decode("ascii"))
            self.load_cert_chain(chain_path, key_path)
        self.load_verify_locations(cadata=bundle.decode("ascii"))
        self._stamps = stamps

    def reload_if_changed(self) -> bool:
        """Load the files again if any changed since the last load. True when reloaded.

        A half-written or mismatched set (read between two swaps) keeps the old certificate
        and is retried on the next connection; `last_error` says why.
        """
        try:
            stamps = self._current_stamps()
        except OSError as exc:
            self.last_error = f"{exc.filename}: {exc.strerror}"
            return False
        if stamps == self._stamps:
            return False
        with self._reload_lock:
            if stamps == self._stamps:
                return False
            try:
                self._load(stamps)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.last_error = f"reload from {self.cert_dir} failed: {exc}"
                return False
            self.reloads += 1
            self.last_error = None
            return True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.reload_if_changed()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.reload_if_changed()
        return super().wrap_bio(*args, **kwargs)


def _directory(cert_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cert_dir if cert_dir is not None else IDENTITY_MOUNT_PATH)


def mode_from_environment(port: int | None = None) -> Mode:
    """The mode the injector set: MESHLESS_MTLS_PORTS[port] if present, else
    MESHLESS_MTLS_MODE, else STRICT. ValueError names the variable when it is malformed."""
    if port is not None and os.environ.get(ENV_MTLS_PORTS):
        try:
            ports = json.loads(os.environ[ENV_MTLS_PORTS])
        except ValueError:
            raise ValueError(f"{ENV_MTLS_PORTS} is not JSON") from None
        if not isinstance(ports, dict):
            raise ValueError(f"{ENV_MTLS_PORTS} must be a JSON object of port -> mode")
        if str(port) in ports:
            return _mode(str(ports[str(port)]), f"{ENV_MTLS_PORTS}[{port}]")
    value = os.environ.get(ENV_MTLS_MODE)
    return _mode(value, ENV_MTLS_MODE) if value else DEFAULT_MODE


def _mode(value: str, where: str) -> Mode:
    try:
        return Mode(value.upper())
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ValueError(f"{where}={value!r} is not one of {choices}") from None


def server_context(
    cert_dir: str | os.PathLike[str] | None = None,
    mode: Mode | str | None = None,
    *,
    port: int | None = None,
) -> ReloadingContext:
    """A server context presenting the workload's SVID. STRICT requires a client certificate
    chaining to ca.crt, PERMISSIVE asks for one but accepts clients without, DISABLE asks for
    none. `mode` None: from the environment (see `mode_from_environment`)."""
    resolved = _mode(str(mode), "mode") if mode is not None else mode_from_environment(port)
    context = ReloadingContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context._watch(_directory(cert_dir))
    context.verify_mode = VERIFY_MODES[resolved]
    return context


def client_context(cert_dir: str | os.PathLike[str] | None = None) -> ReloadingContext:
    """A client context presenting the workload's SVID and verifying the server's chain
    against ca.crt. Host names are not checked (SVIDs name workloads, not hosts): call
    `check_peer` on the connection to check the server's SPIFFE ID."""
    context = ReloadingContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context._watch(_directory(cert_dir))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_spiffe_id(connection: ssl.SSLSocket | ssl.SSLObject) -> str | None:
    """The peer's SPIFFE ID: the one URI SAN of its verified certificate, or None (no
    certificate, not verified, or not exactly one spiffe:// URI SAN)."""
    cert = connection.getpeercert()
    if not cert:
        return None
    sans: Iterable[tuple[str, str]] = cert.get("subjectAltName", ())  # type: ignore[assignment]
    uris = [value for kind, value in sans if kind == "URI"]
    if len(uris) == 1 and uris[0].startswith("spiffe://"):
        return uris[0]
    return None


def check_peer(connection: ssl.SSLSocket | ssl.SSLObject, allowed: Iterable[str]) -> str:
    """The peer's SPIFFE ID if it is on the allow-list (exact IDs); PeerNotAllowed otherwise."""
    spiffe_id = peer_spiffe_id(connection)
    if spiffe_id is None:
        raise PeerNotAllowed("the peer presented no verified SPIFFE ID")
    if spiffe_id not in set(allowed):
        raise PeerNotAllowed(f"peer {spiffe_id} is not allowed")
    return spiffe_id
