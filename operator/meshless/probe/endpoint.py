"""`probe_endpoint`: the three steps against one address and port, classified.

No global state: the caller passes the prober identity and bundle (or prebuilt contexts, to
reuse them across probes) and, optionally, an `acquire` coroutine that is awaited before each
connection (the operator's cluster-wide probe budget, e.g. `WriteBudget(rate, burst).acquire`).
Time spent waiting for the budget does not count against a step's timeout.
"""

from __future__ import annotations

import asyncio

from meshless.probe.classify import (
    NOT_RUN_HANDSHAKE,
    NOT_RUN_PLAINTEXT,
    Connect,
    Expectation,
    Handshake,
    Observations,
    ProbeResult,
    classify,
)
from meshless.probe.handshake import (
    DEFAULT_TIMEOUT,
    MAX_SETTLE,
    Acquire,
    ProbeContexts,
    ProberIdentity,
    plaintext_step,
    tls_step,
)

__all__ = ["Expectation", "ProbeResult", "probe_endpoint", "settle_time"]


def settle_time(timeout: float) -> float:
    """How long a step waits for a server's decision after the handshake (and for an answer
    to the plaintext probe): a third of the step's timeout, at most MAX_SETTLE."""
    return min(MAX_SETTLE, timeout / 3)


async def probe_endpoint(
    address: str,
    port: int,
    expected: Expectation,
    identity: ProberIdentity,
    bundle: bytes,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    contexts: ProbeContexts | None = None,
    acquire: Acquire | None = None,
) -> ProbeResult:
    """Probe one endpoint: no-certificate handshake, prober-identity handshake, plaintext.

    At most one connection per step, one step at a time; each step is cut at `timeout`.
    Steps 2 and 3 are skipped when step 1 cannot connect; step 2 when the port does not
    answer TLS.
    """
    if not timeout > 0:
        raise ValueError("probe timeout must be > 0")
    loop = asyncio.get_running_loop()
    started = loop.time()
    contexts = contexts or ProbeContexts.build(identity, bundle)
    settle = settle_time(timeout)

    async def gate() -> None:
        if acquire is not None:
            await acquire()

    await gate()
    no_cert = await tls_step(address, port, contexts.no_certificate, timeout, settle)
    with_identity, plaintext = NOT_RUN_HANDSHAKE, NOT_RUN_PLAINTEXT
    if no_cert.connect is Connect.OK:
        if no_cert.handshake not in (Handshake.NOT_TLS, Handshake.TIMEOUT):
            await gate()
            with_identity = await tls_step(address, port, contexts.with_identity, timeout, settle)
        await gate()
        plaintext = await plaintext_step(address, port, timeout, settle)
    observations = Observations(no_cert, with_identity, plaintext)
    return ProbeResult(
        address=address,
        port=port,
        expected=expected,
        observations=observations,
        verdict=classify(observations, expected.spiffe_id),
        seconds=loop.time() - started,
    )
