"""Real X.509 verifiers as peers, for tests of what the CA's certificates are accepted by:
`openssl verify`, Python `ssl` (a server in a thread and a client), Node.js `tls` and
go-spiffe (tests/gospiffe, built by hack/build-gospiffe.sh). Files only; nothing is mocked.
A tool that is missing fails the test (tests.tools.require_tool), never skips it."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshless.pki.ca import CertificateAuthority, authority_key_id_for
from meshless.pki.keys import PrivateKey
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parent.parent


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass(frozen=True)
class Identity:
    """tls.crt (leaf first), tls.key and ca.crt in a directory, as a pod mounts them."""

    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"


def write_identity(directory: Path, chain_pem: bytes, key_pem: bytes, roots_pem: bytes) -> Identity:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(chain_pem)
    (directory / "tls.key").write_bytes(key_pem)
    (directory / "ca.crt").write_bytes(roots_pem)
    return Identity(directory)


# --- CA certificates built by hand (an attacker's, a user's, a control) --------------------
def ca_cert(
    subject: str,
    key: PrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: PrivateKey,
    path_length: int | None,
    constraints: x509.NameConstraints | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(minutes=5))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if issuer is not None:
        builder = builder.add_extension(authority_key_id_for(issuer), critical=False)
    if constraints is not None:
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def unconstrained_ca() -> CertificateAuthority:
    """A root without a path length and an intermediate without NameConstraints: a user's CA
    as many are, meshless's own before constraints, and the tests' control."""
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("control root", root_key, None, root_key, None)
    issuer = ca_cert("control intermediate", key, root, root_key, 0)
    return CertificateAuthority(issuer, key, (issuer,), (root,))


# --- openssl verify ------------------------------------------------------------------------
def openssl_verify(
    identity: Identity, *, purpose: str = "sslclient", at: datetime | None = None
) -> subprocess.CompletedProcess[str]:
    """`openssl verify -CAfile ca.crt -untrusted <the chain's CAs> tls.crt` (the leaf)."""
    openssl = require_tool("openssl")
    chain = x509.load_pem_x509_certificates(identity.cert.read_bytes())
    leaf = identity.directory / "leaf.pem"
    leaf.write_bytes(pem(chain[0]))
    cmd = [openssl, "verify", "-purpose", purpose, "-CAfile", str(identity.ca)]
    if len(chain) > 1:
        untrusted = identity.directory / "untrusted.pem"
        untrusted.write_bytes(pem(*chain[1:]))
        cmd += ["-untrusted", str(untrusted)]
    if at is not None:
        cmd += ["-attime", str(int(at.timestamp()))]
    return subprocess.run([*cmd, str(leaf)], capture_output=True, text=True, timeout=30)


# --- Python ssl ----------------------------------------------------------------------------
@dataclass
class PythonTlsServer:
    """A Python ssl server on loopback presenting `identity`; with `require_client` it asks for
    a client certificate that chains to the identity's ca.crt. Answers `hello` to a line and
    records each handshake's outcome."""

    identity: Identity
    require_client: bool = True
    port: int = 0
    outcomes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.identity.cert, self.identity.key)
        context.load_verify_locations(self.identity.ca)
        context.verify_mode = ssl.CERT_REQUIRED if self.require_client else ssl.CERT_NONE
        self.context = context
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._done = threading.Condition()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                outcome = "ok"
                if tls.recv(1024):
                    tls.sendall(b"hello\n")
        except (ssl.SSLError, OSError) as exc:
            outcome = f"error: {exc}"
        finally:
            conn.close()
        with self._done:
            self.outcomes.append(outcome)
            self._done.notify_all()

    def wait_outcomes(self, count: int, timeout: float = 10) -> list[str]:
        with self._done:
            if not self._done.wait_for(lambda: len(self.outcomes) >= count, timeout):
                raise AssertionError(f"fewer than {count} handshakes seen: {self.outcomes}")
            return list(self.outcomes)

    def __enter__(self) -> PythonTlsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def python_client(port: int, bundle: Path, client: Identity | None = None) -> str:
    """A Python ssl handshake (the server's chain verified against `bundle`, no host name
    check: peers are dialled by address and identified by SPIFFE ID), presenting `client`
    when given. Returns the server's answer; raises ssl.SSLError when refused."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(bundle)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"hi\n")
        return tls.recv(1024).decode()


# --- Node.js tls ---------------------------------------------------------------------------
NODE_CLIENT = r"""
const tls = require("tls"), fs = require("fs");
const [port, ca, cert, key] = process.argv.slice(1);
const options = {
  host: "127.0.0.1", port: Number(port), ca: fs.readFileSync(ca),
  checkServerIdentity: () => undefined,
};
if (cert) { options.cert = fs.readFileSync(cert); options.key = fs.readFileSync(key); }
const socket = tls.connect(options, () => {
  const san = socket.getPeerCertificate().subjectaltname;
  socket.write("hi\n");
  socket.once("data", (data) => {
    console.log("ok " + san + " " + data.toString().trim());
    socket.end();
  });
});
socket.on("error", (err) => {
  console.log("tls-error " + err.code + " " + err.message);
  process.exitCode = 1;
});
"""


def node_client(
    port: int, bundle: Path, client: Identity | None = None
) -> subprocess.CompletedProcess[str]:
    """A Node.js `tls.connect` (rejectUnauthorized, the default) to the server: prints
    `ok <server SANs> hello` or `tls-error <code> <message>` (exit 1)."""
    node = require_tool("node", "/usr/bin/nodejs")
    args = [str(port), str(bundle)]
    if client is not None:
        args += [str(client.cert), str(client.key)]
    return subprocess.run(
        [node, "-e", NODE_CLIENT, *args], capture_output=True, text=True, timeout=30
    )


# --- go-spiffe -----------------------------------------------------------------------------
@cache
def gospiffe_binary() -> str:
    """tests/gospiffe, built once per machine (hack/build-gospiffe.sh caches it)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-gospiffe.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"building the go-spiffe peer failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def gospiffe_verify(identity: Identity, trust_domain: str) -> subprocess.CompletedProcess[str]:
    """go-spiffe's x509svid.Verify of tls.crt against ca.crt as the trust domain's bundle:
    prints the SPIFFE ID (exit 0) or the refusal on stderr (exit 1)."""
    return subprocess.run(
        [
            gospiffe_binary(),
            "verify",
            "-trust-domain",
            trust_domain,
            "-bundle",
            str(identity.ca),
            "-chain",
            str(identity.cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def gospiffe_dial(
    port: int, client: Identity, trust_domain: str, server_id: str
) -> subprocess.CompletedProcess[str]:
    """Mutual TLS through go-spiffe's tlsconfig.MTLSClientConfig (the server must present
    `server_id`): prints the server's SPIFFE ID and answer (exit 0) or the refusal (exit 1)."""
    return subprocess.run(
        [
            gospiffe_binary(),
            "dial",
            "-trust-domain",
            trust_domain,
            "-bundle",
            str(client.ca),
            "-cert",
            str(client.cert),
            "-key",
            str(client.key),
            "-addr",
            f"127.0.0.1:{port}",
            "-server-id",
            server_id,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
