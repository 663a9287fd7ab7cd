"""Human-readable lines for a probe result (pure): `meshless verify` prints them, and the
operator can reuse them in Events. The verdict word is always the last line, alone."""

from __future__ import annotations

from meshless.probe.classify import (
    Connect,
    Handshake,
    HandshakeObservation,
    PlainAnswer,
    PlaintextObservation,
    ProbeResult,
    refused_by_application,
)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _handshake_line(label: str, obs: HandshakeObservation) -> str:
    if obs.handshake is Handshake.NOT_RUN:
        if obs.connect is Connect.OK:
            return f"{label}: skipped"
        return f"{label}: TCP connect {obs.connect.value} ({obs.detail}); {_ms(obs.seconds)}"
    parts = [f"{label}: {obs.handshake.value} ({obs.detail})"]
    if obs.tls_version:
        parts.append(f"{obs.tls_version} {obs.cipher}")
    parts.append(f"client certificate requested: {_yes_no(obs.certificate_requested)}")
    if obs.application_answer is not None:
        parts.append(f"HTTP probe answered {obs.application_answer!r}")
    if obs.chain_verified is not None:
        parts.append(f"server chain verified against the bundle: {_yes_no(obs.chain_verified)}")
    parts.append(_ms(obs.seconds))
    return "; ".join(parts)


def _plaintext_line(obs: PlaintextObservation) -> str:
    label = "step 3, plaintext"
    if obs.answer is PlainAnswer.NOT_RUN:
        return f"{label}: skipped"
    text = {
        PlainAnswer.TLS_RECORD: "answered with a TLS record (speaks TLS only)",
        PlainAnswer.DATA: f"answered in plaintext {obs.first_bytes!r}",
        PlainAnswer.CLOSED: "closed the connection without answering",
        PlainAnswer.SILENT: "kept the connection open without answering",
    }[obs.answer]
    return f"{label}: {text}; {_ms(obs.seconds)}"


def report_lines(result: ProbeResult) -> list[str]:
    obs = result.observations
    expected = result.expected
    lines = [
        f"endpoint: {result.address}:{result.port}",
        _handshake_line("step 1, no client certificate", obs.no_certificate),
        _handshake_line("step 2, prober identity", obs.with_identity),
        _plaintext_line(obs.plaintext),
        f"server SPIFFE ID: {result.server_spiffe_id or 'none'}"
        + (f" (expected {expected.spiffe_id})" if expected.spiffe_id else ""),
    ]
    if refused_by_application(obs.no_certificate, obs.with_identity):
        lines.append(
            "the TLS layer accepts clients without a certificate, but the HTTP server refuses "
            "them (nginx `ssl_verify_client on` does this)"
        )
    if expected.mode is not None:
        met = "met" if result.meets_expectation else "NOT met"
        lines.append(f"expected {expected.mode.upper()}: {met}")
    lines.append(f"probe took {_ms(result.seconds)}")
    lines.append(result.verdict.value)
    return lines


def _handshake_dict(obs: HandshakeObservation) -> dict[str, object]:
    return {
        "connect": obs.connect.value,
        "handshake": obs.handshake.value,
        "detail": obs.detail,
        "tlsVersion": obs.tls_version,
        "cipher": obs.cipher,
        "certificateRequested": obs.certificate_requested,
        "serverURISANs": list(obs.server_uri_sans),
        "chainVerified": obs.chain_verified,
        "applicationAnswer": obs.application_answer,
        "seconds": round(obs.seconds, 4),
    }


def result_to_dict(result: ProbeResult) -> dict[str, object]:
    """The result as JSON-ready data (camelCase, like Kubernetes status fields)."""
    obs = result.observations
    return {
        "endpoint": f"{result.address}:{result.port}",
        "verdict": result.verdict.value,
        "expected": {"mode": result.expected.mode, "spiffeID": result.expected.spiffe_id},
        "met": result.meets_expectation,
        "serverSpiffeID": result.server_spiffe_id,
        "seconds": round(result.seconds, 4),
        "steps": {
            "noCertificate": _handshake_dict(obs.no_certificate),
            "withIdentity": _handshake_dict(obs.with_identity),
            "plaintext": {
                "connect": obs.plaintext.connect.value,
                "answer": obs.plaintext.answer.value,
                "firstBytes": obs.plaintext.first_bytes.decode("latin-1"),
                "seconds": round(obs.plaintext.seconds, 4),
            },
        },
    }
