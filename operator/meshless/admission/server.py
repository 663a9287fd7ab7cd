"""The admission webhook server (shell): a plain aiohttp HTTPS server in front of the handler.

`POST /<webhook>`: the body is parsed as an AdmissionReview (review.py: anything else gets
HTTP 400 with the reason), answered by the handler (handler.py, which calls `admit`), and the
answer is sent back. The pod bodies are read where they lie: nothing is copied or diffed
(Kopf's webhook pipeline deep-copied and diffed every body; docs/decisions/admission.md has
the numbers that chose this server over it).

The certificate comes from our webhook CA and lives in one SSLContext: `load_certificate`
loads a renewed one into it, which OpenSSL uses for every new handshake; the socket never
closes (a listener restarted for a new certificate would refuse connections meanwhile, and
with failurePolicy Fail refuse pods).

The operator runs it in a child process of its own (admission/child.py, started and fed
by admission/process.py; docs/decisions/admission.md, "Serving"). `ServerThread` runs it on an
event loop of its own in a thread of the calling process: what the tests and
bench/admission_servers.py use to serve admission from inside their own process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import ssl
import threading
from collections.abc import Callable

import aiohttp.web

from meshless.admission.admit import AdmissionRequest, AdmissionResponse
from meshless.admission.review import BadReview, parse_review, review_answer
from meshless.admission.serving import ServingCertificate
from meshless.tls import in_memory_files

log = logging.getLogger(__name__)

Answer = Callable[[AdmissionRequest], AdmissionResponse]
# A stored object is at most ~1.5 MiB; a review carries the new and the old one.
MAX_REVIEW_BYTES = 8 * 1024 * 1024


def _load_chain(context: ssl.SSLContext, certificate: ServingCertificate) -> None:
    """ssl loads keys from paths only: anonymous memory (memfd), never a filesystem."""
    with in_memory_files(certificate.chain_pem, certificate.private_key_pem) as (chain, key):
        context.load_cert_chain(chain, key)


def server_context(certificate: ServingCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, certificate)
    return context


def _bad_request(problem: str) -> aiohttp.web.Response:
    log.warning("bad admission request: %s", problem)
    return aiohttp.web.Response(status=400, text=f"meshless admission: {problem}\n")


class AdmissionServer:
    """HTTPS on `addr:port`, every path answered by `answer`."""

    def __init__(
        self,
        answer: Answer,
        certificate: ServingCertificate,
        *,
        addr: str = "127.0.0.1",
        port: int = 9443,
    ) -> None:
        self.answer = answer
        self.certificate = certificate
        self.context = server_context(certificate)
        self.addr = addr
        self.port = port
        self._runner: aiohttp.web.AppRunner | None = None

    def load_certificate(self, certificate: ServingCertificate) -> None:
        """Serve `certificate` from the next handshake on."""
        _load_chain(self.context, certificate)
        self.certificate = certificate
        log.info("webhook serving certificate loaded (valid until %s)", certificate.not_after)

    async def serve(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        try:
            review = json.loads(await request.read())
        except ValueError as exc:  # not JSON (or not UTF-8)
            return _bad_request(f"the body is not JSON: {exc}")
        try:
            parsed = parse_review(review, request.match_info["webhook"])
        except BadReview as exc:
            return _bad_request(str(exc))
        answer = review_answer(parsed.uid, self.answer(parsed))
        return aiohttp.web.Response(
            body=json.dumps(answer, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    async def start(self) -> None:
        """Listen (once; a second call does nothing)."""
        if self._runner is not None:
            return
        app = aiohttp.web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post("/{webhook:.*}", self.serve)
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, self.port, ssl_context=self.context, reuse_address=True
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("admission webhooks served at https://%s:%d", self.addr, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ServerThread:
    """An AdmissionServer on its own event loop in its own thread. The answer function runs
    in that thread: what it reads must be safe to read from there, and what it hands over to
    the operator must go through the operator's loop (`call_soon_threadsafe`)."""

    def __init__(self, server: AdmissionServer, name: str = "admission-webhooks") -> None:
        self.server = server
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def certificate(self) -> ServingCertificate:
        return self.server.certificate

    def load_certificate(self, certificate: ServingCertificate) -> None:
        """Load `certificate` in the server's own thread (where OpenSSL makes handshakes from
        the context) and return once it serves."""
        if self._loop is None:
            self.server.load_certificate(certificate)
            return

        async def load() -> None:
            self.server.load_certificate(certificate)

        asyncio.run_coroutine_threadsafe(load(), self._loop).result(timeout=30)

    async def start(self) -> None:
        """Start the thread and return once the server listens (or raise why it cannot)."""
        if self._thread is not None:
            return
        loop = asyncio.new_event_loop()
        listening: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as exc:
                listening.set_exception(exc)
                loop.close()
                return
            listening.set_result(None)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.stop())
                loop.close()

        thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._loop, self._thread = loop, thread  # stop() can end it from here on
        thread.start()
        try:
            await asyncio.shield(asyncio.wrap_future(listening))
        except asyncio.CancelledError:
            raise
        except BaseException:
            self._loop = self._thread = None  # the thread has ended: start() may run again
            raise

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 30)
