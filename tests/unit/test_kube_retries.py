"""The API client rides out a flaky server: 429 waits for Retry-After, 5xx and dropped
connections back off and retry, 401 re-reads credentials once, and every attempt is bounded.
A small HTTP server on loopback plays the flaky API server (the real one is exercised by the
integration tests)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from kubernetes import client

from meshless import metrics
from meshless.kube import SECRETS, ApiError, Kube, RetryPolicy

FAST = RetryPolicy(attempts=4, base_s=0.01, max_s=0.05, max_retry_after_s=2.0, timeout_s=2.0)


@pytest.fixture
async def server() -> AsyncIterator[Callable[[list[web.Response]], Kube]]:
    answers: list[web.Response] = []
    seen: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        return answers.pop(0) if answers else web.json_response({"kind": "Secret"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kubes: list[Kube] = []

    def make(queue: list[web.Response]) -> Kube:
        answers.extend(queue)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{port}"
        kube = Kube(configuration, retry=FAST)
        kube.seen = seen  # type: ignore[attr-defined]
        kubes.append(kube)
        return kube

    yield make
    for kube in kubes:
        await kube.close()
    await runner.cleanup()


def status(code: int, **headers: str) -> web.Response:
    return web.json_response(
        {"reason": "Test", "message": f"answer {code}"}, status=code, headers=headers
    )


async def test_429_waits_for_retry_after(server: Callable[[list[web.Response]], Kube]) -> None:
    kube = server([status(429, **{"Retry-After": "1"})])
    start = time.monotonic()
    assert await kube.get(SECRETS, "ns", "s") == {"kind": "Secret"}
    assert time.monotonic() - start >= 0.9


async def test_answers_are_counted_by_status_code(
    server: Callable[[list[web.Response]], Kube],
) -> None:
    def count(code: str) -> float:
        return metrics.API_RESPONSES.labels(code)._value.get()

    before = {code: count(code) for code in ("429", "200")}
    kube = server([status(429, **{"Retry-After": "0"})])
    assert await kube.get(SECRETS, "ns", "s") == {"kind": "Secret"}
    assert count("429") == before["429"] + 1
    assert count("200") == before["200"] + 1


async def test_5xx_backs_off_and_retries(server: Callable[[list[web.Response]], Kube]) -> None:
    kube = server([status(500), status(503)])
    assert await kube.get(SECRETS, "ns", "s") == {"kind": "Secret"}
    assert len(kube.seen) == 3  # type: ignore[attr-defined]


async def test_gives_up_after_the_attempts_with_the_last_answer(
    server: Callable[[list[web.Response]], Kube],
) -> None:
    kube = server([status(500) for _ in range(4)])
    with pytest.raises(ApiError) as failed:
        await kube.get(SECRETS, "ns", "s")
    assert failed.value.status == 500 and failed.value.message == "answer 500"


async def test_4xx_is_not_retried(server: Callable[[list[web.Response]], Kube]) -> None:
    kube = server([status(409)])
    with pytest.raises(ApiError) as failed:
        await kube.create(SECRETS, {"metadata": {"name": "s", "namespace": "ns"}})
    assert failed.value.status == 409
    assert len(kube.seen) == 1  # type: ignore[attr-defined]


async def test_401_reloads_credentials_once(
    server: Callable[[list[web.Response]], Kube], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = server([status(401), status(401), status(401)])
    reloads: list[int] = []

    async def reload() -> None:
        reloads.append(1)

    monkeypatch.setattr(kube, "_reload_credentials", reload)
    with pytest.raises(ApiError) as failed:
        await kube.get(SECRETS, "ns", "s")
    assert failed.value.status == 401
    assert reloads == [1]


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(base_s=0.2, max_s=5.0)
    delays = [policy.backoff(10) for _ in range(200)]
    assert max(delays) <= 5.0 and min(delays) >= 0.0 and len(set(delays)) > 1
    assert policy.retry_after("120", 0) == policy.max_retry_after_s
    assert policy.retry_after("nonsense", 0) <= policy.base_s


async def test_a_list_is_read_a_page_at_a_time(
    server: Callable[[list[web.Response]], Kube],
) -> None:
    kube = server(
        [
            web.json_response({"items": [{"n": 1}, {"n": 2}], "metadata": {"continue": "t1"}}),
            web.json_response({"items": [{"n": 3}], "metadata": {}}),
            web.json_response({"items": [{"n": 1}], "metadata": {"continue": "t2"}}),
            web.json_response({"items": [], "metadata": {}}),
        ]
    )
    assert [page async for page in kube.pages(SECRETS, "ns")] == [[{"n": 1}, {"n": 2}], [{"n": 3}]]
    assert await kube.list(SECRETS, "ns") == [{"n": 1}]
