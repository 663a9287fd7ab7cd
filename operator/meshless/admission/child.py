"""The admission child process: `python -m meshless.admission.child --port P [--host H]
[--log-format F]`, started by the operator (admission/process.py), one per replica.

It serves the same aiohttp server (server.py) answered by the same handler and `admit`, from
a mirror of the operator's state (mirror.py) that the operator keeps current down the child's
stdin. Admission then never waits for the operator's interpreter lock: the operator's own
work (issuing, Kopf's watch events, its collector) runs in another process.

- It listens once the first serving certificate arrives (the operator sends its state first,
  so the first request already knows the trust domain and the name policy), and says so
  (`pipe.Listening`) on stdout; the Warn/Audit records go up the same way, and so does the
  answer to each sync marker (`pipe.Synced`: every message before it applied).
- It exits when stdin closes: the operator stopped it, or died (no orphan). It ignores
  SIGINT (a terminal's Ctrl-C reaches the whole process group: the operator stops it in
  order); SIGTERM ends it.
- It imports neither Kopf nor the Kubernetes client: its memory is the server, `admit` and
  the mirrored records.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

from meshless.admission.handler import AdmissionHandler
from meshless.admission.mirror import (
    AdmissionMirror,
    CertificateMessage,
    StateMessage,
    SyncMessage,
)
from meshless.admission.pipe import Listening, Synced, frame, read_frame
from meshless.admission.server import AdmissionServer
from meshless.admission.validate import AdmissionRecord
from meshless.logs import configure_logging

log = logging.getLogger("meshless.admission.child")
# A port that cannot be bound: the operator logs it and starts another child shortly.
EXIT_CANNOT_LISTEN = 3


async def _pipes() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return reader, writer


async def serve(host: str, port: int) -> int:
    """Apply the operator's messages and serve until stdin closes; the exit status."""
    reader, writer = await _pipes()
    mirror = AdmissionMirror()

    def record(admitted: AdmissionRecord) -> None:
        writer.write(frame(admitted))

    server: AdmissionServer | None = None
    primed = False
    try:
        while (message := await read_frame(reader)) is not None:
            if isinstance(message, CertificateMessage) and server is not None:
                server.load_certificate(message.certificate)
            mirror.apply(message)  # type: ignore[arg-type]
            if server is None and mirror.certificate is not None:
                server = AdmissionServer(
                    AdmissionHandler(mirror.current, record),
                    mirror.certificate,
                    addr=host,
                    port=port,
                )
                try:
                    await server.start()
                except OSError as exc:
                    log.error("admission child cannot listen on %s:%d: %s", host, port, exc)
                    return EXIT_CANNOT_LISTEN
                writer.write(frame(Listening(port)))
            if isinstance(message, SyncMessage):
                writer.write(frame(Synced(message.seq)))
            if not primed and isinstance(message, StateMessage):
                state = mirror.current()
                if state.policies is not None and state.identities_listed:
                    # The bulk of what this process holds from now on: out of the
                    # collector's full passes (as the operator does with its caches).
                    gc.freeze()
                    primed = True
        log.info("admission child: the operator closed the pipe; stopping")
        return 0
    finally:
        if server is not None:
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshless.admission.child")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    configure_logging(args.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
