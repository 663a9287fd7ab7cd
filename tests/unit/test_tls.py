"""meshless.tls: real handshakes on loopback between contexts built from identity
directories laid out the way kubelet mounts a Secret (..data symlink swapped atomically)."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshless import tls
from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed
from meshless.pki.keys import KeyAlgorithm
from meshless.pki.svid import IssuedSvid, SvidRequest, issue_svid

TD = "cluster.local"
SERVER_ID = f"spiffe://{TD}/ns/shop/sa/payments"
CLIENT_ID = f"spiffe://{TD}/ns/shop/sa/frontend"


def svid(ca: CertificateAuthority, spiffe_id: str) -> IssuedSvid:
    request = SvidRequest(spiffe_id, (), timedelta(hours=1), KeyAlgorithm.ECDSAP256)
    return issue_svid(ca, request, datetime.now(UTC))


def atomic_write(directory: Path, files: dict[str, bytes], generation: int) -> None:
    """What kubelet's AtomicWriter does: a new timestamped directory, `..data_tmp` pointing
    at it renamed over `..data`, and per-key symlinks `tls.crt -> ..data/tls.crt`."""
    directory.mkdir(exist_ok=True)
    payload = directory / f"..2026_01_01_00_00_{generation:02d}.{os.getpid()}"
    payload.mkdir()
    for name, data in files.items():
        (payload / name).write_bytes(data)
    tmp_link = directory / "..data_tmp"
    tmp_link.symlink_to(payload.name)
    os.replace(tmp_link, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def identity_files(ca: CertificateAuthority, spiffe_id: str) -> dict[str, bytes]:
    issued = svid(ca, spiffe_id)
    return {
        "tls.crt": issued.chain_pem,
        "tls.key": issued.private_key_pem,
        "ca.crt": bundle_pem(ca.roots),
    }


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return bootstrap_self_signed(TD, datetime.now(UTC))[0]


@pytest.fixture
def server_dir(tmp_path: Path, ca: CertificateAuthority) -> Path:
    atomic_write(tmp_path / "server", identity_files(ca, SERVER_ID), 1)
    return tmp_path / "server"


@pytest.fixture
def client_dir(tmp_path: Path, ca: CertificateAuthority) -> Path:
    atomic_write(tmp_path / "client", identity_files(ca, CLIENT_ID), 1)
    return tmp_path / "client"


@dataclass
class Served:
    peer_id: str | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Server:
    """Accepts one connection at a time with the given context (through SSLSocket.accept,
    as an application would), records the peer's SPIFFE ID and answers one line."""

    context: ssl.SSLContext
    allowed: set[str] | None = None
    served: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        raw = socket.create_server(("127.0.0.1", 0))
        self.port = raw.getsockname()[1]
        self.listener = self.context.wrap_socket(raw, server_side=True)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            record = Served()
            self.served.append(record)  # done is set once the connection was handled
            try:
                conn, _ = self.listener.accept()
            except ssl.SSLError as exc:  # a refused handshake surfaces from accept()
                record.error = exc.reason or str(exc)
                record.done.set()
                continue
            except OSError:
                return
            with conn:
                try:
                    record.peer_id = tls.peer_spiffe_id(conn)
                    if self.allowed is not None:
                        tls.check_peer(conn, self.allowed)
                    conn.sendall(b"hello\n")
                except (tls.PeerNotAllowed, OSError) as exc:
                    record.error = str(exc)
            record.done.set()

    def handled(self, index: int) -> Served:
        """The index-th connection, once the server has finished with it."""
        record = self.served[index]
        assert record.done.wait(5), f"connection {index} not handled within 5s"
        return record

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[list[Server]]:
    servers: list[Server] = []
    yield servers
    for server in servers:
        server.close()


def start(servers: list[Server], context: ssl.SSLContext, **kwargs: set[str]) -> Server:
    server = Server(context, **kwargs)
    servers.append(server)
    return server


def talk(port: int, context: ssl.SSLContext) -> tuple[bytes, x509.Certificate]:
    """Handshake, read the greeting; returns it and the server's leaf certificate."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as conn,
    ):
        leaf = x509.load_der_x509_certificate(conn.getpeercert(binary_form=True) or b"")
        return conn.recv(100), leaf


def no_cert_client(ca_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca_dir / "ca.crt")
    return context


def test_strict_requires_a_client_certificate(
    server_dir: Path, client_dir: Path, serve: list[Server]
) -> None:
    server = start(serve, tls.server_context(server_dir, tls.Mode.STRICT))
    assert server.context.verify_mode == ssl.CERT_REQUIRED

    greeting, leaf = talk(server.port, tls.client_context(client_dir))
    assert greeting == b"hello\n"
    assert server.handled(0).peer_id == CLIENT_ID
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [SERVER_ID]

    # TLS 1.3: the refusal arrives after the client's handshake, on the first read
    with pytest.raises((ssl.SSLError, ConnectionError)):
        talk(server.port, no_cert_client(client_dir))
    assert "CERTIFICATE" in (server.handled(1).error or "")


def test_permissive_accepts_both_and_identifies_the_one_with_a_certificate(
    server_dir: Path, client_dir: Path, serve: list[Server]
) -> None:
    server = start(serve, tls.server_context(server_dir, "permissive"))
    assert talk(server.port, no_cert_client(client_dir))[0] == b"hello\n"
    assert talk(server.port, tls.client_context(client_dir))[0] == b"hello\n"
    assert [server.handled(i).peer_id for i in (0, 1)] == [None, CLIENT_ID]


def test_disable_asks_for_no_certificate(
    server_dir: Path, client_dir: Path, serve: list[Server]
) -> None:
    server = start(serve, tls.server_context(server_dir, "DISABLE"))
    assert talk(server.port, tls.client_context(client_dir))[0] == b"hello\n"
    assert server.handled(0).peer_id is None  # the client had nothing to answer


def test_mode_from_environment(server_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHLESS_MTLS_MODE", raising=False)
    monkeypatch.delenv("MESHLESS_MTLS_PORTS", raising=False)
    assert tls.server_context(server_dir).verify_mode == ssl.CERT_REQUIRED  # fails closed
    monkeypatch.setenv("MESHLESS_MTLS_MODE", "PERMISSIVE")
    assert tls.server_context(server_dir).verify_mode == ssl.CERT_OPTIONAL
    monkeypatch.setenv("MESHLESS_MTLS_PORTS", '{"9090": "DISABLE"}')
    assert tls.server_context(server_dir, port=9090).verify_mode == ssl.CERT_NONE
    assert tls.server_context(server_dir, port=8443).verify_mode == ssl.CERT_OPTIONAL
    monkeypatch.setenv("MESHLESS_MTLS_MODE", "STRICTLY")
    with pytest.raises(ValueError, match="MESHLESS_MTLS_MODE='STRICTLY'"):
        tls.server_context(server_dir)
    monkeypatch.setenv("MESHLESS_MTLS_PORTS", "[9090]")
    with pytest.raises(ValueError, match="MESHLESS_MTLS_PORTS"):
        tls.server_context(server_dir, port=9090)


def test_missing_files_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tls.server_context(tmp_path, "STRICT")


def test_allow_list(server_dir: Path, client_dir: Path, serve: list[Server]) -> None:
    allowed = start(serve, tls.server_context(server_dir, "STRICT"), allowed={CLIENT_ID})
    assert talk(allowed.port, tls.client_context(client_dir))[0] == b"hello\n"

    denied = start(serve, tls.server_context(server_dir, "STRICT"), allowed={SERVER_ID})
    assert talk(denied.port, tls.client_context(client_dir))[0] == b""  # closed, no greeting
    assert denied.handled(0).error == f"peer {CLIENT_ID} is not allowed"

    # the client side checks the server the same way
    client = tls.client_context(client_dir)
    with (
        socket.create_connection(("127.0.0.1", allowed.port), timeout=5) as raw,
        client.wrap_socket(raw) as conn,
    ):
        assert tls.check_peer(conn, [SERVER_ID]) == SERVER_ID
        with pytest.raises(tls.PeerNotAllowed, match="not allowed"):
            tls.check_peer(conn, [CLIENT_ID])


def test_client_refuses_a_server_from_another_ca(
    tmp_path: Path, client_dir: Path, serve: list[Server]
) -> None:
    other = bootstrap_self_signed(TD, datetime.now(UTC))[0]
    atomic_write(tmp_path / "rogue", identity_files(other, SERVER_ID), 1)
    server = start(serve, tls.server_context(tmp_path / "rogue", "DISABLE"))
    with pytest.raises(ssl.SSLCertVerificationError):
        talk(server.port, tls.client_context(client_dir))


def serial(leaf: x509.Certificate) -> int:
    return leaf.serial_number


def serial_on_disk(directory: Path) -> int:
    return x509.load_pem_x509_certificate((directory / "tls.crt").read_bytes()).serial_number


def test_reloads_when_kubelet_swaps_the_files(
    server_dir: Path, client_dir: Path, ca: CertificateAuthority, serve: list[Server]
) -> None:
    context = tls.server_context(server_dir, "STRICT")
    server = start(serve, context)
    first = serial(talk(server.port, tls.client_context(client_dir))[1])
    assert (
        first == x509.load_pem_x509_certificate((server_dir / "tls.crt").read_bytes()).serial_number
    )

    # No change: no reload.
    assert serial(talk(server.port, tls.client_context(client_dir))[1]) == first
    assert context.reloads == 0

    atomic_write(server_dir, identity_files(ca, SERVER_ID), 2)
    second = serial(talk(server.port, tls.client_context(client_dir))[1])
    assert second != first
    assert (
        second
        == x509.load_pem_x509_certificate((server_dir / "tls.crt").read_bytes()).serial_number
    )
    assert context.reloads == 1 and context.last_error is None
    assert server.context is context  # the same SSLContext object serves the new certificate


def test_new_root_in_the_bundle_is_trusted_after_reload(
    tmp_path: Path, server_dir: Path, ca: CertificateAuthority, serve: list[Server]
) -> None:
    """CA rotation, Prepare phase: ca.crt gains the new root; then the peer's leaf is
    reissued under it. A long-running client keeps working across both swaps."""
    new_ca = bootstrap_self_signed(TD, datetime.now(UTC))[0]
    both = bundle_pem((*ca.roots, *new_ca.roots))
    atomic_write(tmp_path / "client", identity_files(ca, CLIENT_ID), 1)
    client = tls.client_context(tmp_path / "client")
    server = start(serve, tls.server_context(server_dir, "STRICT"))
    talk(server.port, client)

    files = identity_files(ca, CLIENT_ID) | {"ca.crt": both}
    atomic_write(tmp_path / "client", files, 2)
    atomic_write(server_dir, identity_files(ca, SERVER_ID) | {"ca.crt": both}, 2)
    talk(server.port, client)

    atomic_write(server_dir, identity_files(new_ca, SERVER_ID) | {"ca.crt": both}, 3)
    assert talk(server.port, client)[0] == b"hello\n"
    assert client.reloads == 1


def test_mismatched_swap_keeps_the_old_certificate(
    server_dir: Path, client_dir: Path, ca: CertificateAuthority, serve: list[Server]
) -> None:
    context = tls.server_context(server_dir, "STRICT")
    server = start(serve, context)
    first = serial(talk(server.port, tls.client_context(client_dir))[1])
    good = identity_files(ca, SERVER_ID)
    other_key = identity_files(ca, SERVER_ID)["tls.key"]
    atomic_write(server_dir, good | {"tls.key": other_key}, 2)
    assert serial(talk(server.port, tls.client_context(client_dir))[1]) == first
    assert context.last_error is not None and "reload" in context.last_error
    assert "PRIVATE KEY" not in context.last_error
    atomic_write(server_dir, good, 3)
    assert serial(talk(server.port, tls.client_context(client_dir))[1]) != first
    assert context.last_error is None


def test_peer_spiffe_id_without_certificate_is_none(
    server_dir: Path, client_dir: Path, serve: list[Server]
) -> None:
    server = start(serve, tls.server_context(server_dir, "PERMISSIVE"), allowed={CLIENT_ID})
    assert talk(server.port, no_cert_client(client_dir))[0] == b""
    assert server.handled(0).error == "the peer presented no verified SPIFFE ID"
