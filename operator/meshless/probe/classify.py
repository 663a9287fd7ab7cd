"""Handshake observations -> what the port actually enforces (pure).

The probe (handshake.py) records what it saw in three steps: a TLS handshake without a client
certificate, one with the prober's identity, and a plaintext exchange. `classify` turns those
observations into one `Verdict`; nothing here opens a socket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_STATUS_LINE = re.compile(r"HTTP/\d(?:\.\d)? (\d{3})")
# What an HTTP server answers a client it refuses for lack of a certificate: nginx's
# `ssl_verify_client on` completes the TLS handshake and answers 400 ("No required SSL
# certificate was sent"); 495/496 are its internal codes; 401/403 are other servers'.
APPLICATION_REFUSALS = frozenset({400, 401, 403, 495, 496})


class Verdict(StrEnum):
    """What a port was observed to enforce. The first three are the MtlsPolicy modes."""

    STRICT = "STRICT"  # no-cert client refused, prober identity accepted
    PERMISSIVE = "PERMISSIVE"  # both accepted; a client certificate was requested
    DISABLE = "DISABLE"  # no client certificate requested
    PLAINTEXT = "PLAINTEXT"  # the port answers a plaintext client in plaintext
    WRONG_IDENTITY = "WRONG_IDENTITY"  # the server's SVID is not the expected SPIFFE ID
    UNTRUSTED = "UNTRUSTED"  # the server's chain does not verify against the bundle
    UNREACHABLE = "UNREACHABLE"  # TCP refused or timed out
    # Clients without a certificate are refused, but so is the prober's valid identity
    # (typically a server whose ca.crt does not hold our root, or an allow-list without us):
    # not proven STRICT, since meshless clients cannot get in either.
    IDENTITY_REFUSED = "IDENTITY_REFUSED"
    # TLS failed for a reason that says nothing about client certificates (no shared protocol
    # or cipher, a server that closes every connection, a handshake timeout).
    INCONCLUSIVE = "INCONCLUSIVE"


class Connect(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    ERROR = "error"  # no route, reset while connecting, ...


class Handshake(StrEnum):
    ACCEPTED = "accepted"  # completed, and the server did not abort afterwards
    REFUSED = "refused"  # the server aborted after we answered its CertificateRequest
    FAILED = "failed"  # a TLS failure before any certificate question (alert, protocol)
    UNTRUSTED = "untrusted"  # we could not verify the server's chain against the bundle
    NOT_TLS = "not-tls"  # the server answered with bytes that are not TLS records
    CLOSED = "closed"  # the server closed mid-handshake without an alert
    TIMEOUT = "timeout"  # the handshake did not finish within the step's timeout
    NOT_RUN = "not-run"  # skipped (the port is unreachable or does not speak TLS)


class PlainAnswer(StrEnum):
    TLS_RECORD = "tls-record"  # a TLS record (an alert): the server speaks TLS only
    DATA = "data"  # bytes that are not TLS: the server speaks plaintext
    CLOSED = "closed"  # closed without a byte
    SILENT = "silent"  # kept the connection open without answering until the deadline
    NOT_RUN = "not-run"


@dataclass(frozen=True)
class HandshakeObservation:
    connect: Connect
    handshake: Handshake
    detail: str = ""  # the alert or error, or how acceptance was seen
    tls_version: str | None = None
    cipher: str | None = None
    # Whether the server sent a CertificateRequest (None: the handshake ended before it could
    # be known). TLS 1.2: seen on the wire; TLS 1.3: inferred from our own second flight.
    certificate_requested: bool | None = None
    server_certificate_seen: bool = False  # the handshake got far enough to read the leaf
    server_uri_sans: tuple[str, ...] = ()
    chain_verified: bool | None = None  # None: not checked in this step
    # The first line the server answered to the probe's HTTP request (sent only after a
    # handshake that asked for a client certificate and did not refuse ours), None if none.
    application_answer: str | None = None
    seconds: float = 0.0

    @property
    def http_status(self) -> int | None:
        match = _STATUS_LINE.match(self.application_answer or "")
        return int(match.group(1)) if match else None

    @property
    def server_spiffe_id(self) -> str | None:
        """The SPIFFE ID of an X.509-SVID: its one URI SAN, when it is a spiffe:// URI."""
        if len(self.server_uri_sans) == 1 and self.server_uri_sans[0].startswith("spiffe://"):
            return self.server_uri_sans[0]
        return None


@dataclass(frozen=True)
class PlaintextObservation:
    connect: Connect
    answer: PlainAnswer
    first_bytes: bytes = b""  # at most a few bytes of the answer, for the report
    seconds: float = 0.0


@dataclass(frozen=True)
class Observations:
    no_certificate: HandshakeObservation
    with_identity: HandshakeObservation
    plaintext: PlaintextObservation


NOT_RUN_HANDSHAKE = HandshakeObservation(connect=Connect.OK, handshake=Handshake.NOT_RUN)
NOT_RUN_PLAINTEXT = PlaintextObservation(connect=Connect.OK, answer=PlainAnswer.NOT_RUN)

_SPOKE_TLS = frozenset(
    {Handshake.ACCEPTED, Handshake.REFUSED, Handshake.FAILED, Handshake.UNTRUSTED}
)


def server_spiffe_id(observations: Observations) -> str | None:
    """The server's SPIFFE ID, preferring the step whose chain was verified."""
    return (
        observations.with_identity.server_spiffe_id or observations.no_certificate.server_spiffe_id
    )


def classify(observations: Observations, expected_spiffe_id: str | None = None) -> Verdict:
    """The verdict, checked in this order: reachability, plaintext, trust, identity, mode."""
    no_cert, identity, plain = (
        observations.no_certificate,
        observations.with_identity,
        observations.plaintext,
    )
    if no_cert.connect is not Connect.OK:
        return Verdict.UNREACHABLE
    if not ({no_cert.handshake, identity.handshake} & _SPOKE_TLS):
        # PLAINTEXT needs positive evidence: bytes that are not TLS. A port that only stays
        # silent may be a hung TLS server as well as a plaintext one.
        if plain.answer is PlainAnswer.DATA or no_cert.handshake is Handshake.NOT_TLS:
            return Verdict.PLAINTEXT
        return Verdict.INCONCLUSIVE
    if identity.handshake is Handshake.UNTRUSTED:
        return Verdict.UNTRUSTED
    saw_certificate = no_cert.server_certificate_seen or identity.server_certificate_seen
    if (
        expected_spiffe_id is not None
        and saw_certificate
        and server_spiffe_id(observations) != expected_spiffe_id
    ):
        return Verdict.WRONG_IDENTITY
    if no_cert.handshake is Handshake.REFUSED:
        if identity.handshake is Handshake.ACCEPTED:
            return Verdict.STRICT
        return Verdict.IDENTITY_REFUSED
    if no_cert.handshake is Handshake.ACCEPTED:
        if refused_by_application(no_cert, identity):
            return Verdict.STRICT
        if no_cert.certificate_requested or identity.certificate_requested:
            return Verdict.PERMISSIVE
        if no_cert.certificate_requested is None and identity.certificate_requested is None:
            return Verdict.INCONCLUSIVE
        return Verdict.DISABLE
    return Verdict.INCONCLUSIVE


def refused_by_application(no_cert: HandshakeObservation, identity: HandshakeObservation) -> bool:
    """The TLS layer let a client without a certificate in, but the HTTP server behind it
    refused it (nginx `ssl_verify_client on`): the no-certificate request got a refusal
    status, and the same request with the prober's identity got a different answer."""
    refused_status = no_cert.http_status
    return (
        refused_status in APPLICATION_REFUSALS
        and identity.handshake is Handshake.ACCEPTED
        and identity.http_status is not None
        and identity.http_status != refused_status
    )


def satisfies(verdict: Verdict, expected: str) -> bool:
    """`--expect MODE` and the operator's check: the verdict must be exactly the mode."""
    return verdict.value == expected.upper()


@dataclass(frozen=True)
class Expectation:
    """What the port should be: a mode (or any verdict name) and the server's SPIFFE ID."""

    mode: str | None = None
    spiffe_id: str | None = None


@dataclass(frozen=True)
class ProbeResult:
    address: str
    port: int
    expected: Expectation
    observations: Observations
    verdict: Verdict
    seconds: float

    @property
    def server_spiffe_id(self) -> str | None:
        return server_spiffe_id(self.observations)

    @property
    def meets_expectation(self) -> bool:
        """True when no mode was expected, or the verdict is exactly that mode."""
        return self.expected.mode is None or satisfies(self.verdict, self.expected.mode)
