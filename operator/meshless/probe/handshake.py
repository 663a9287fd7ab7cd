"""The three probe steps as real connections (asyncio + ssl over memory BIOs).

Each step opens exactly one TCP connection, bounded by the step's timeout, and never sleeps.
`ssl.SSLObject` runs over a `MemoryBIO` pair so that every byte passes a `RecordTap`: that is
how the probe sees a TLS 1.2 CertificateRequest and infers a TLS 1.3 one (records.py), and how
it tells a server that answers in plaintext from one that speaks TLS.

After a TLS 1.3 handshake completes on our side the server may still refuse our (empty or
rejected) certificate: it has not read our Certificate yet. So when a certificate was asked
for, the step "settles": it reads, sending nothing, until the first sign of the server's
decision (an alert: refused; a NewSessionTicket, application data or close_notify: accepted),
or until the settle time passes without an alert (accepted: a server that wanted to refuse
would have said so as soon as it read our flight).

Some servers accept every handshake and enforce the certificate in the application (nginx's
`ssl_verify_client on` answers HTTP 400). So after any handshake in which a certificate was
asked for and not refused, the step sends one `HEAD /` request and keeps the first line of
the answer; classify compares the answers of the no-certificate and the identity steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509

from meshless.pki.x509 import uri_sans
from meshless.probe.classify import (
    Connect,
    Handshake,
    HandshakeObservation,
    PlainAnswer,
    PlaintextObservation,
)
from meshless.probe.records import (
    CERTIFICATE,
    CERTIFICATE_REQUEST,
    CONTENT_TYPES,
    RecordTap,
    client_sent_certificate_message,
)
from meshless.tls import in_memory_files

DEFAULT_TIMEOUT = 3.0
MAX_SETTLE = 1.0
# Not a ClientHello, not an HTTP method (OpenSSL answers "GET "/"POST " with an HTTP error
# that nginx turns into a plaintext 400), at least one record header long.
PLAINTEXT_PROBE = b"MESHLESS-PROBE\r\n\r\n"
READ_CHUNK = 65536
# Sent over TLS only after a handshake in which the server asked for a client certificate
# and did not refuse ours: the same request in steps 1 and 2, so that a server enforcing the
# certificate at the HTTP layer (nginx) shows it by answering the two differently.
APPLICATION_PROBE = (
    b"HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshless-probe\r\nConnection: close\r\n\r\n"
)
MAX_ANSWER_LINE = 120

Acquire = Callable[[], Awaitable[object]]


@dataclass(frozen=True, repr=False)
class ProberIdentity:
    """The prober's certificate chain and private key, as PEM bytes. Kept in memory only."""

    chain_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "ProberIdentity(<chain>, <key redacted>)"


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False  # pods are dialled by IP; the SPIFFE ID is checked instead
    return context


@dataclass(frozen=True)
class ProbeContexts:
    """The two client contexts of a probe: build once per identity and bundle, reuse freely."""

    no_certificate: ssl.SSLContext
    with_identity: ssl.SSLContext

    @classmethod
    def build(cls, identity: ProberIdentity, bundle_pem: bytes) -> ProbeContexts:
        # Step 1 verifies nothing: it asks only how the server treats a client without a
        # certificate, and reads the server's SVID. Step 2 verifies the chain.
        no_certificate = _client_context()
        no_certificate.verify_mode = ssl.CERT_NONE
        with_identity = _client_context()
        with_identity.verify_mode = ssl.CERT_REQUIRED
        with_identity.load_verify_locations(cadata=bundle_pem.decode("ascii"))
        with in_memory_files(identity.chain_pem, identity.key_pem) as (chain, key):
            with_identity.load_cert_chain(chain, key)
        return cls(no_certificate=no_certificate, with_identity=with_identity)


def _uri_sans(der: bytes | None) -> tuple[str, ...]:
    if not der:
        return ()
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return ()
    return tuple(uri_sans(cert))


def _is_eof(exc: ssl.SSLError) -> bool:
    return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) or "EOF" in str(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


class _ConnectFailed(Exception):
    def __init__(self, connect: Connect, detail: str) -> None:
        super().__init__(detail)
        self.connect, self.detail = connect, detail


async def _open(
    address: str, port: int, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """One TCP connection, or _ConnectFailed."""
    try:
        return await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except ConnectionRefusedError:
        raise _ConnectFailed(Connect.REFUSED, "connection refused") from None
    except TimeoutError:
        raise _ConnectFailed(Connect.TIMEOUT, f"no TCP connection within {timeout:g}s") from None
    except OSError as exc:
        raise _ConnectFailed(Connect.ERROR, exc.strerror or str(exc)) from None


class _Timeout(Exception):
    pass


class _TlsConnection:
    """An SSLObject over a memory BIO pair, pumped through asyncio streams and two taps."""

    def __init__(
        self,
        context: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deadline: float,
    ) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=False)
        self.reader, self.writer, self.deadline = reader, writer, deadline
        self.sent, self.received = RecordTap(), RecordTap()
        self.loop = asyncio.get_running_loop()

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sent.feed(data)
            with contextlib.suppress(OSError):
                self.writer.write(data)

    async def receive(self, deadline: float | None = None) -> bool:
        """Feed the next bytes from the server; False at EOF. Raises _Timeout."""
        remaining = (deadline or self.deadline) - self.loop.time()
        if remaining <= 0:
            raise _Timeout
        try:
            data = await asyncio.wait_for(self.reader.read(READ_CHUNK), remaining)
        except TimeoutError:
            raise _Timeout from None
        except OSError:  # reset by peer
            data = b""
        if not data:
            self.incoming.write_eof()
            return False
        self.received.feed(data)
        self.incoming.write(data)
        return True

    def certificate_request_seen(self) -> bool:
        """TLS 1.2: the server's CertificateRequest, and our Certificate answering it."""
        return CERTIFICATE_REQUEST in self.received.cleartext_handshake_types() or (
            CERTIFICATE in self.sent.cleartext_handshake_types()
        )


async def tls_step(
    address: str,
    port: int,
    context: ssl.SSLContext,
    timeout: float = DEFAULT_TIMEOUT,
    settle: float | None = None,
) -> HandshakeObservation:
    """One TLS handshake on one connection, observed."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        reader, writer = await _open(address, port, timeout)
    except _ConnectFailed as failed:
        return HandshakeObservation(
            connect=failed.connect,
            handshake=Handshake.NOT_RUN,
            detail=failed.detail,
            seconds=loop.time() - started,
        )
    connection = _TlsConnection(context, reader, writer, started + timeout)
    try:
        observation = await _handshake(connection, settle if settle is not None else timeout / 3)
    finally:
        writer.close()
    return dataclasses.replace(observation, seconds=loop.time() - started)


async def _handshake(connection: _TlsConnection, settle: float) -> HandshakeObservation:
    tls = connection.tls
    verifying = tls.context.verify_mode != ssl.CERT_NONE
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                connection.flush()
                if connection.received.not_tls:
                    return _observed(Handshake.NOT_TLS, "the server answered with non-TLS bytes")
                await connection.receive()
    except _Timeout:
        if connection.received.not_tls:
            return _observed(Handshake.NOT_TLS, "the server answered with non-TLS bytes")
        return _observed(Handshake.TIMEOUT, "no complete handshake within the timeout")
    except ssl.SSLCertVerificationError as exc:
        connection.flush()
        return _observed(
            Handshake.UNTRUSTED,
            _reason(exc),
            uri_sans=(),
            chain_verified=False,
            requested=connection.certificate_request_seen() or None,
        )
    except ssl.SSLError as exc:
        connection.flush()
        if connection.received.not_tls:
            return _observed(Handshake.NOT_TLS, "the server answered with non-TLS bytes")
        if connection.certificate_request_seen():  # TLS 1.2: refused while the handshake still ran
            return _observed(Handshake.REFUSED, _reason(exc), requested=True)
        outcome = Handshake.CLOSED if _is_eof(exc) else Handshake.FAILED
        return _observed(outcome, _reason(exc), requested=None)
    connection.flush()  # our Finished (and our Certificate, if asked for)

    version = tls.version() or ""
    cipher = (tls.cipher() or ("", "", 0))[0]
    leaf = tls.getpeercert(binary_form=True)
    requested: bool | None
    if version == "TLSv1.3":
        requested = client_sent_certificate_message(connection.sent.encrypted_lengths(), cipher)
    else:
        requested = connection.certificate_request_seen()
    outcome, detail, answer = Handshake.ACCEPTED, "handshake completed", None
    if requested:
        outcome, detail, answer = await _after_handshake(connection, settle, version)
    return HandshakeObservation(
        connect=Connect.OK,
        handshake=outcome,
        detail=detail,
        tls_version=version,
        cipher=cipher,
        certificate_requested=requested,
        server_certificate_seen=bool(leaf),
        server_uri_sans=_uri_sans(leaf),
        chain_verified=True if verifying else None,
        application_answer=answer,
    )


async def _after_handshake(
    connection: _TlsConnection, settle: float, version: str
) -> tuple[Handshake, str, str | None]:
    """After a handshake in which the server asked for a certificate. Returns (outcome,
    detail, first line of the application's answer to the HTTP probe, or None).

    TLS 1.2: the server's Finished already proved that it accepted our Certificate.
    TLS 1.3: the server reads our Certificate only now, so first wait, sending nothing, for
    its decision (`_settle`). Sending before it has decided would race its alert: a server
    that closes with our unread bytes in its buffer resets the connection, and the reset can
    discard the alert before we read it. Then send the HTTP probe and read the answer.
    """
    detail, early = "handshake completed", b""
    if version == "TLSv1.3":
        outcome, detail, early = await _settle(connection, settle)
        if outcome is not Handshake.ACCEPTED:
            return outcome, detail, None
    answer = await _application_answer(connection, settle, early)
    if isinstance(answer, Handshake):
        return answer, "TLS alert in answer to the application request", None
    return Handshake.ACCEPTED, detail, answer


async def _settle(connection: _TlsConnection, settle: float) -> tuple[Handshake, str, bytes]:
    """TLS 1.3, after our Finished: an alert means refused; a session ticket, application
    data or close_notify means accepted; EOF without any of those is CLOSED (never counted as
    a refusal); no alert within the settle time means accepted (a refusing server alerts as
    soon as it reads our flight). Returns any application data the server sent first."""
    tls = connection.tls
    deadline = min(connection.deadline, connection.loop.time() + settle)
    while True:
        try:
            data = tls.read(READ_CHUNK)
        except ssl.SSLWantReadError:
            session = tls.session
            if session is not None and session.has_ticket:
                return Handshake.ACCEPTED, "the server sent a session ticket", b""
        except ssl.SSLZeroReturnError:
            return Handshake.ACCEPTED, "the server closed with close_notify", b""
        except ssl.SSLError as exc:
            if _is_eof(exc):
                return (
                    Handshake.CLOSED,
                    "the server closed without an alert after the handshake",
                    b"",
                )
            return Handshake.REFUSED, _reason(exc), b""
        else:
            if not data:
                return Handshake.ACCEPTED, "the server closed with close_notify", b""
            return Handshake.ACCEPTED, "the server sent application data", data
        try:
            await connection.receive(deadline)
        except _Timeout:
            return Handshake.ACCEPTED, f"no alert within {settle:g}s after the handshake", b""


async def _application_answer(
    connection: _TlsConnection, settle: float, early: bytes = b""
) -> str | Handshake | None:
    """Send the HTTP probe; the first line of the answer (bounded, printable), None when
    the server said nothing within the settle time or closed, Handshake.REFUSED on an alert.
    A server that spoke first (`early`) is not sent anything: its first line is the answer."""
    tls = connection.tls
    if not early:
        host = str(connection.writer.get_extra_info("peername", ("probe",))[0])
        host = f"[{host}]" if ":" in host else host  # IPv6 literal in a Host header
        with contextlib.suppress(ssl.SSLError):
            tls.write(APPLICATION_PROBE.replace(b"{host}", host.encode("ascii", "replace")))
        connection.flush()
    deadline = min(connection.deadline, connection.loop.time() + settle)
    answer = early
    while b"\n" not in answer and len(answer) < MAX_ANSWER_LINE:
        try:
            data = tls.read(READ_CHUNK)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            if isinstance(exc, ssl.SSLZeroReturnError) or _is_eof(exc):
                break
            return Handshake.REFUSED
        else:
            if not data:
                break
            answer += data
            continue
        try:
            await connection.receive(deadline)
        except _Timeout:
            break
    if not answer:
        return None
    line = answer.split(b"\n", 1)[0][:MAX_ANSWER_LINE].rstrip(b"\r").decode("latin-1")
    return "".join(c if c.isprintable() else "?" for c in line)


def _observed(
    outcome: Handshake,
    detail: str,
    *,
    uri_sans: tuple[str, ...] = (),
    chain_verified: bool | None = None,
    requested: bool | None = None,
) -> HandshakeObservation:
    return HandshakeObservation(
        connect=Connect.OK,
        handshake=outcome,
        detail=detail,
        certificate_requested=requested,
        server_uri_sans=uri_sans,
        chain_verified=chain_verified,
    )


async def plaintext_step(
    address: str, port: int, timeout: float = DEFAULT_TIMEOUT, settle: float | None = None
) -> PlaintextObservation:
    """Connect, send a few bytes that are not a ClientHello, and see what comes back."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        reader, writer = await _open(address, port, timeout)
    except _ConnectFailed as failed:
        return PlaintextObservation(
            connect=failed.connect, answer=PlainAnswer.NOT_RUN, seconds=loop.time() - started
        )
    wait = min(settle if settle is not None else timeout / 3, timeout - (loop.time() - started))
    try:
        writer.write(PLAINTEXT_PROBE)
        data = await asyncio.wait_for(reader.read(64), max(wait, 0.0))
    except TimeoutError:
        answer, data = PlainAnswer.SILENT, b""
    except OSError:
        answer, data = PlainAnswer.CLOSED, b""
    else:
        if not data:
            answer = PlainAnswer.CLOSED
        elif data[0] in CONTENT_TYPES and (len(data) < 2 or data[1] == 3):
            answer = PlainAnswer.TLS_RECORD
        else:
            answer = PlainAnswer.DATA
    finally:
        writer.close()
    return PlaintextObservation(
        connect=Connect.OK, answer=answer, first_bytes=data[:16], seconds=loop.time() - started
    )
