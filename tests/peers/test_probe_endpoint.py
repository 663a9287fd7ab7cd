"""probe_endpoint as the operator will call it (in its event loop): connection count, the
budget hook, reuse of contexts, and the settle window for servers without session tickets."""

from __future__ import annotations

import ssl

import pytest

from meshless.budget import WriteBudget
from meshless.probe.classify import Expectation, Verdict
from meshless.probe.endpoint import probe_endpoint
from meshless.probe.handshake import ProbeContexts, ProberIdentity
from tests.peers.conftest import Identities
from tests.peers.servers import SERVER_ID, TlsServer, free_port


def prober(identities: Identities) -> tuple[ProberIdentity, bytes]:
    identity = ProberIdentity(
        (identities.prober / "tls.crt").read_bytes(), (identities.prober / "tls.key").read_bytes()
    )
    return identity, (identities.prober / "ca.crt").read_bytes()


async def test_one_connection_per_step_each_through_the_budget(identities: Identities) -> None:
    identity, bundle = prober(identities)
    server = TlsServer(identities.server, "STRICT")
    budget = WriteBudget(rate=1000, burst=3)
    acquired: list[float] = []

    async def acquire() -> float:
        acquired.append(await budget.acquire())
        return acquired[-1]

    try:
        result = await probe_endpoint(
            "127.0.0.1",
            server.port,
            Expectation("STRICT", SERVER_ID),
            identity,
            bundle,
            acquire=acquire,
        )
    finally:
        server.close()
    assert result.verdict is Verdict.STRICT and result.meets_expectation
    assert len(acquired) == 3
    assert server.connections == 3  # no-cert, identity, plaintext


async def test_unreachable_costs_one_connection(identities: Identities) -> None:
    identity, bundle = prober(identities)
    calls = 0

    async def acquire() -> None:
        nonlocal calls
        calls += 1

    result = await probe_endpoint(
        "127.0.0.1", free_port(), Expectation(), identity, bundle, acquire=acquire
    )
    assert result.verdict is Verdict.UNREACHABLE
    assert calls == 1


async def test_contexts_are_reusable_across_probes(identities: Identities) -> None:
    identity, bundle = prober(identities)
    contexts = ProbeContexts.build(identity, bundle)
    servers = [TlsServer(identities.server, mode) for mode in ("STRICT", "PERMISSIVE", "DISABLE")]
    try:
        verdicts = [
            (
                await probe_endpoint(
                    "127.0.0.1", s.port, Expectation(), identity, bundle, contexts=contexts
                )
            ).verdict
            for s in servers
        ]
    finally:
        for s in servers:
            s.close()
    assert verdicts == [Verdict.STRICT, Verdict.PERMISSIVE, Verdict.DISABLE]


@pytest.mark.parametrize(
    ("mode", "reply"), [("STRICT", False), ("PERMISSIVE", True), ("PERMISSIVE", False)]
)
async def test_tls13_server_without_session_tickets(
    identities: Identities, mode: str, reply: bool
) -> None:
    """Without a NewSessionTicket, acceptance shows only as the absence of an alert for the
    settle time (timeout / 3); a refusal shows at once."""
    identity, bundle = prober(identities)
    server = TlsServer(
        identities.server, mode, ssl.TLSVersion.TLSv1_3, session_tickets=False, reply=reply
    )
    try:
        result = await probe_endpoint(
            "127.0.0.1", server.port, Expectation(mode, SERVER_ID), identity, bundle, timeout=3
        )
    finally:
        server.close()
    assert result.verdict.value == mode
    no_cert = result.observations.no_certificate
    if mode == "STRICT":
        assert "certificate required" in no_cert.detail
        assert no_cert.seconds < 1.0  # did not wait for the settle time
    else:
        assert no_cert.detail == "no alert within 1s after the handshake"
        assert no_cert.seconds >= 1.0
        assert no_cert.application_answer == ("hello" if reply else None)


def test_identity_repr_hides_the_key(identities: Identities) -> None:
    identity, _ = prober(identities)
    assert "PRIVATE" not in repr(identity) and "redacted" in repr(identity)
