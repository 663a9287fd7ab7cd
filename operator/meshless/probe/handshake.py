"""The three probe steps as real connections (asyncio + ssl over memory BIOs).

Each step opens exactly one TCP connection, bounded by the step's timeout, and never sleeps.
`ssl.SSLObject` runs over a `MemoryBIO` pair so that every byte passes a `RecordTap`: that is
how the probe sees a TLS 1.2 CertificateRequest and infers a TLS 1.3 one (records.py), and how
it tells a server that answers in plaintext from one that speaks TLS.

After a TLS 1.3 handshake completes on our side the server may still refuse our (empty or
rejected) certificate: it has not read our Certificate yet. So when a certificate was asked
for, the step "settles": it reads until the first sign of the server's decision (an alert:
refused; a NewSessionTicket, application data or close_notify: accepted), or until the settle
time passes without an alert (accepted: a server that wanted to refuse would have said so as
soon as it read our flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509

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
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return ()
    return tuple(san.get_values_for_type(x509.UniformResourceIdentifier))


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
    outcome, detail = Handshake.ACCEPTED, "handshake completed"
    if version == "TLSv1.3" and requested:
        outcome, detail = await _settle(connection, settle)
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
    )


async def _settle(connection: _TlsConnection, settle: float) -> tuple[Handshake, str]:
    """TLS 1.3, after our Finished: wait for the server's verdict on our certificate."""
    tls = connection.tls
    settle_deadline = min(connection.deadline, connection.loop.time() + settle)
    while True:
        try:
            if tls.read(1024):
                return Handshake.ACCEPTED, "the server sent application data"
            return Handshake.ACCEPTED, "the server closed with close_notify"
        except ssl.SSLWantReadError:
            session = tls.session
            if session is not None and session.has_ticket:
                return Handshake.ACCEPTED, "the server sent a session ticket"
        except ssl.SSLZeroReturnError:
            return Handshake.ACCEPTED, "the server closed with close_notify"
        except ssl.SSLError as exc:
            if _is_eof(exc):
                return Handshake.CLOSED, "the server closed without an alert after the handshake"
            return Handshake.REFUSED, _reason(exc)
        try:
            await connection.receive(settle_deadline)
        except _Timeout:
            return Handshake.ACCEPTED, f"no alert within {settle:g}s after the handshake"


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
