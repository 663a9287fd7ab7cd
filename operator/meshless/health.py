"""/healthz (liveness: the event loop answers) and /readyz (readiness: the operator started and
its admission webhooks accept connections) on the health port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

READY_CONNECT_TIMEOUT_S = 1.0


class HealthServer:
    def __init__(
        self,
        port: int,
        *,
        details: Callable[[], dict[str, Any]],
        webhook: Callable[[], tuple[str, int] | None],
        host: str = "0.0.0.0",
    ) -> None:
        self.port = port
        self.host = host
        self._details = details
        self._webhook = webhook  # where the webhooks listen; None while they are not served
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
        return web.json_response(self._details())

    async def _readyz(self, request: web.Request) -> web.Response:
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
