"""The probe's pure core: observations -> verdict (a table), the TLS record tap, and the
report's last line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meshless.probe.classify import (
    NOT_RUN_HANDSHAKE,
    Connect,
    Expectation,
    Handshake,
    HandshakeObservation,
    Observations,
    PlainAnswer,
    PlaintextObservation,
    ProbeResult,
    Verdict,
    classify,
    satisfies,
)
from meshless.probe.records import (
    RecordTap,
    client_sent_certificate_message,
    finished_length,
)
from meshless.probe.report import report_lines

SERVER = "spiffe://cluster.local/ns/shop/sa/payments"
OTHER = "spiffe://cluster.local/ns/shop/sa/intruder"


def hs(
    outcome: Handshake,
    *,
    requested: bool | None = True,
    sans: tuple[str, ...] = (SERVER,),
    connect: Connect = Connect.OK,
    verified: bool | None = None,
    leaf: bool | None = None,
    answer: str | None = None,
) -> HandshakeObservation:
    return HandshakeObservation(
        connect=connect,
        handshake=outcome,
        certificate_requested=requested,
        server_certificate_seen=bool(sans) if leaf is None else leaf,
        server_uri_sans=sans,
        chain_verified=verified,
        application_answer=answer,
    )


def plain(answer: PlainAnswer) -> PlaintextObservation:
    return PlaintextObservation(connect=Connect.OK, answer=answer)


ACCEPTED = Handshake.ACCEPTED
REFUSED = Handshake.REFUSED
CLOSED_PLAIN = plain(PlainAnswer.CLOSED)
ALERT_PLAIN = plain(PlainAnswer.TLS_RECORD)

CASES: list[tuple[str, Observations, str | None, Verdict]] = [
    (
        "tcp refused",
        Observations(
            hs(Handshake.NOT_RUN, connect=Connect.REFUSED, sans=()),
            NOT_RUN_HANDSHAKE,
            plain(PlainAnswer.NOT_RUN),
        ),
        SERVER,
        Verdict.UNREACHABLE,
    ),
    (
        "tcp timeout",
        Observations(
            hs(Handshake.NOT_RUN, connect=Connect.TIMEOUT, sans=()),
            NOT_RUN_HANDSHAKE,
            plain(PlainAnswer.NOT_RUN),
        ),
        None,
        Verdict.UNREACHABLE,
    ),
    (
        "plaintext server answering",
        Observations(
            hs(Handshake.NOT_TLS, requested=None, sans=()),
            NOT_RUN_HANDSHAKE,
            plain(PlainAnswer.DATA),
        ),
        SERVER,
        Verdict.PLAINTEXT,
    ),
    (
        "silent port (plaintext waiting for input, or a hung TLS server): no evidence",
        Observations(
            hs(Handshake.TIMEOUT, requested=None, sans=()),
            NOT_RUN_HANDSHAKE,
            plain(PlainAnswer.SILENT),
        ),
        SERVER,
        Verdict.INCONCLUSIVE,
    ),
    (
        "silent on a ClientHello, answers a plaintext line",
        Observations(
            hs(Handshake.TIMEOUT, requested=None, sans=()),
            NOT_RUN_HANDSHAKE,
            plain(PlainAnswer.DATA),
        ),
        SERVER,
        Verdict.PLAINTEXT,
    ),
    (
        "answers ClientHello with garbage, closes on the probe",
        Observations(
            hs(Handshake.NOT_TLS, requested=None, sans=()), NOT_RUN_HANDSHAKE, CLOSED_PLAIN
        ),
        None,
        Verdict.PLAINTEXT,
    ),
    (
        "TLS port answering non-TLS bytes with a plaintext error (nginx) is judged by its TLS",
        Observations(hs(REFUSED), hs(ACCEPTED, verified=True), plain(PlainAnswer.DATA)),
        SERVER,
        Verdict.STRICT,
    ),
    (
        "nginx `ssl_verify_client on`: TLS lets it in, HTTP answers 400",
        Observations(
            hs(ACCEPTED, answer="HTTP/1.1 400 Bad Request"),
            hs(ACCEPTED, verified=True, answer="HTTP/1.1 200 OK"),
            plain(PlainAnswer.DATA),
        ),
        SERVER,
        Verdict.STRICT,
    ),
    (
        "nginx `ssl_verify_client optional`: same answer with and without certificate",
        Observations(
            hs(ACCEPTED, answer="HTTP/1.1 200 OK"),
            hs(ACCEPTED, verified=True, answer="HTTP/1.1 200 OK"),
            plain(PlainAnswer.DATA),
        ),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "the same refusal with the identity proves nothing",
        Observations(
            hs(ACCEPTED, answer="HTTP/1.1 403 Forbidden"),
            hs(ACCEPTED, verified=True, answer="HTTP/1.1 403 Forbidden"),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "a 404 is not a refusal",
        Observations(
            hs(ACCEPTED, answer="HTTP/1.0 404 Not Found"),
            hs(ACCEPTED, verified=True, answer="HTTP/1.0 200 OK"),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "a refusal status without an HTTP answer to compare with",
        Observations(
            hs(ACCEPTED, answer="HTTP/1.1 400 Bad Request"),
            hs(ACCEPTED, verified=True, answer=None),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "closes every connection",
        Observations(
            hs(Handshake.CLOSED, requested=None, sans=()),
            hs(Handshake.CLOSED, requested=None, sans=()),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.INCONCLUSIVE,
    ),
    (
        "chain does not verify (wins over a wrong ID)",
        Observations(
            hs(ACCEPTED, sans=(OTHER,)),
            hs(Handshake.UNTRUSTED, verified=False, sans=()),
            ALERT_PLAIN,
        ),
        SERVER,
        Verdict.UNTRUSTED,
    ),
    (
        "wrong SPIFFE ID",
        Observations(
            hs(REFUSED, sans=(OTHER,)), hs(ACCEPTED, sans=(OTHER,), verified=True), CLOSED_PLAIN
        ),
        SERVER,
        Verdict.WRONG_IDENTITY,
    ),
    (
        "no SPIFFE ID at all",
        Observations(
            hs(ACCEPTED, sans=(), leaf=True),
            hs(ACCEPTED, sans=(), leaf=True, verified=True),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.WRONG_IDENTITY,
    ),
    (
        "two URI SANs are not an SVID",
        Observations(
            hs(REFUSED, sans=(SERVER, OTHER)),
            hs(ACCEPTED, sans=(SERVER, OTHER), verified=True),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.WRONG_IDENTITY,
    ),
    (
        "no expected ID: identity not checked",
        Observations(hs(REFUSED, sans=(OTHER,)), hs(ACCEPTED, sans=(OTHER,)), CLOSED_PLAIN),
        None,
        Verdict.STRICT,
    ),
    (
        "STRICT, TLS 1.3 (refused after the handshake)",
        Observations(hs(REFUSED), hs(ACCEPTED, verified=True), ALERT_PLAIN),
        SERVER,
        Verdict.STRICT,
    ),
    (
        "STRICT, TLS 1.2 (refused during the handshake, no leaf seen in step 1)",
        Observations(hs(REFUSED, sans=()), hs(ACCEPTED, verified=True), CLOSED_PLAIN),
        SERVER,
        Verdict.STRICT,
    ),
    (
        "refuses the prober's identity too",
        Observations(hs(REFUSED), hs(REFUSED, verified=True), CLOSED_PLAIN),
        SERVER,
        Verdict.IDENTITY_REFUSED,
    ),
    (
        "PERMISSIVE",
        Observations(hs(ACCEPTED), hs(ACCEPTED, verified=True), CLOSED_PLAIN),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "PERMISSIVE seen only in step 2",
        Observations(
            hs(ACCEPTED, requested=None), hs(ACCEPTED, requested=True, verified=True), CLOSED_PLAIN
        ),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "PERMISSIVE that refuses the prober's identity is still PERMISSIVE",
        Observations(hs(ACCEPTED), hs(REFUSED, verified=True), CLOSED_PLAIN),
        SERVER,
        Verdict.PERMISSIVE,
    ),
    (
        "DISABLE",
        Observations(
            hs(ACCEPTED, requested=False),
            hs(ACCEPTED, requested=False, verified=True),
            CLOSED_PLAIN,
        ),
        SERVER,
        Verdict.DISABLE,
    ),
    (
        "request unknown in both steps",
        Observations(
            hs(ACCEPTED, requested=None), hs(ACCEPTED, requested=None, verified=True), CLOSED_PLAIN
        ),
        SERVER,
        Verdict.INCONCLUSIVE,
    ),
    (
        "no shared protocol",
        Observations(
            hs(Handshake.FAILED, requested=None, sans=()),
            hs(Handshake.FAILED, requested=None, sans=()),
            ALERT_PLAIN,
        ),
        SERVER,
        Verdict.INCONCLUSIVE,
    ),
    (
        "closed without an alert after the handshake: never counted as STRICT",
        Observations(hs(Handshake.CLOSED), hs(ACCEPTED, verified=True), CLOSED_PLAIN),
        SERVER,
        Verdict.INCONCLUSIVE,
    ),
]


@pytest.mark.parametrize(
    ("observations", "expected_id", "verdict"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_classify(observations: Observations, expected_id: str | None, verdict: Verdict) -> None:
    assert classify(observations, expected_id) is verdict


def test_satisfies_is_exact_and_case_insensitive() -> None:
    assert satisfies(Verdict.STRICT, "strict")
    assert not satisfies(Verdict.STRICT, "PERMISSIVE")
    assert not satisfies(Verdict.PERMISSIVE, "STRICT")
    assert satisfies(Verdict.PLAINTEXT, "PLAINTEXT")


def test_server_spiffe_id_needs_exactly_one_spiffe_uri() -> None:
    assert hs(ACCEPTED).server_spiffe_id == SERVER
    assert hs(ACCEPTED, sans=("https://example.com",)).server_spiffe_id is None
    assert hs(ACCEPTED, sans=(SERVER, OTHER)).server_spiffe_id is None


def test_http_status_parsing() -> None:
    assert hs(ACCEPTED, answer="HTTP/1.1 400 Bad Request").http_status == 400
    assert hs(ACCEPTED, answer="HTTP/2 403").http_status == 403
    assert hs(ACCEPTED, answer="hello").http_status is None
    assert hs(ACCEPTED, answer=None).http_status is None


def test_report_ends_with_the_verdict_alone() -> None:
    observations = next(case[1] for case in CASES if case[0].startswith("STRICT, TLS 1.3"))
    result = ProbeResult(
        address="10.0.0.7",
        port=8443,
        expected=Expectation(mode="PERMISSIVE", spiffe_id=SERVER),
        observations=observations,
        verdict=classify(observations, SERVER),
        seconds=0.01,
    )
    lines = report_lines(result)
    assert lines[-1] == "STRICT"
    assert "expected PERMISSIVE: NOT met" in lines
    assert not result.meets_expectation
    assert lines[0] == "endpoint: 10.0.0.7:8443"


# --- the record tap -------------------------------------------------------------------------


def record(content_type: int, payload: bytes, version: bytes = b"\x03\x03") -> bytes:
    return bytes([content_type]) + version + len(payload).to_bytes(2, "big") + payload


def handshake_message(msg_type: int, body: bytes) -> bytes:
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


def test_tap_reassembles_records_split_anywhere() -> None:
    # TLS 1.2 server flight: ServerHello, Certificate, CertificateRequest, ServerHelloDone
    # in one record followed by ChangeCipherSpec and an encrypted record.
    flight = b"".join(
        handshake_message(t, b"x" * n) for t, n in ((2, 70), (11, 300), (13, 20), (14, 0))
    )
    wire = record(22, flight) + record(20, b"\x01") + record(22, b"\x99" * 40)
    tap = RecordTap()
    for i in range(0, len(wire), 7):
        tap.feed(wire[i : i + 7])
    assert tap.spoke_tls and not tap.not_tls
    assert tap.records == [(22, len(flight)), (20, 1), (22, 40)]
    # only the cleartext part before ChangeCipherSpec is parsed
    assert tap.cleartext_handshake_types() == [2, 11, 13, 14]


def test_tap_handshake_message_split_across_records() -> None:
    message = handshake_message(13, b"y" * 50)
    tap = RecordTap()
    tap.feed(record(22, message[:10]) + record(22, message[10:]))
    assert tap.cleartext_handshake_types() == [13]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"echo: hello",
        b"SSH-2.0-OpenSSH\r\n",
        b"\x16\x07\x00\x00\x05",
    ],
)
def test_tap_flags_bytes_that_are_not_tls(answer: bytes) -> None:
    tap = RecordTap()
    tap.feed(answer)
    assert tap.not_tls and not tap.spoke_tls


def test_tap_waits_for_a_whole_header() -> None:
    tap = RecordTap()
    tap.feed(b"\x15\x03")
    assert not tap.not_tls and not tap.records


@pytest.mark.parametrize(
    ("lengths", "cipher", "sent"),
    [
        ([53], "TLS_AES_128_GCM_SHA256", False),  # Finished only: 4 + 32 + 1 + 16
        ([69], "TLS_AES_256_GCM_SHA384", False),  # Finished only: 4 + 48 + 1 + 16
        ([25, 53], "TLS_CHACHA20_POLY1305_SHA256", True),  # empty Certificate, Finished
        ([61], "TLS_AES_128_GCM_SHA256", True),  # both in one record
        ([700, 100, 69], "TLS_AES_256_GCM_SHA384", True),  # chain, CertificateVerify, Finished
        ([], "TLS_AES_128_GCM_SHA256", None),
        ([30], "TLS_AES_128_GCM_SHA256", None),  # shorter than a Finished: no inference
    ],
)
def test_client_certificate_message_inferred_from_flight_size(
    lengths: list[int], cipher: str, sent: bool | None
) -> None:
    assert client_sent_certificate_message(lengths, cipher) is sent


def test_finished_length() -> None:
    assert finished_length("TLS_AES_256_GCM_SHA384") == 52
    assert finished_length("TLS_AES_128_GCM_SHA256") == 36


def test_pure_modules_open_no_sockets_and_import_no_kubernetes() -> None:
    """classify, records and report are the pure core the operator's controller can call in
    its reconcile path: importing them pulls in no ssl, asyncio, Kopf or API client."""
    code = (
        "import sys, meshless.probe.classify, meshless.probe.records, meshless.probe.report;"
        "print(' '.join(m for m in ('ssl', 'asyncio', 'kopf', 'aiohttp',"
        " 'kubernetes', 'meshless.kube') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
