"""/healthz (liveness: the event loop answers and start-up is not stuck) and /readyz (readiness:
the operator started and its admission webhooks accept connections) on the health port.

An API server that is down while the operator starts makes /readyz answer 503 with the reason;
/healthz stays 200 (an API outage must not restart every replica) unless start-up is stuck on
an error retrying cannot clear (startup.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshless.startup import StartupState

READY_CONNECT_TIMEOUT_S = 1.0


class HealthServer:
    def __init__(
        self,
        port: int,
        *,
        details: Callable[[], dict[str, Any]],
        webhook: Callable[[], tuple[str, int] | None],
        startup: StartupState | None = None,
        host: str = "0.0.0.0",
    ) -> None:
        self.port = port
        self.host = host
        self._details = details
        self._webhook = webhook  # where the webhooks listen; None while they are not served
        self._startup = startup or StartupState(started=True)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        if self._startup.stuck:
            return web.json_response(
                {"healthy": False, "startup": self._startup.describe()}, status=500
            )
        return web.json_response({**self._details(), "startup": self._startup.describe()})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self._startup.started:
            return web.json_response(
                {"ready": False, "reason": self._startup.describe()}, status=503
            )
        where = self._webhook()
        if where is None:
            return web.json_response(
                {"ready": False, "reason": "the admission webhooks are not served yet"},
                status=503,
            )
        host, port = where
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), READY_CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            return web.json_response(
                {"ready": False, "reason": f"webhook port {port} does not accept: {exc}"},
                status=503,
            )
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return web.json_response({"ready": True, **self._details()})
