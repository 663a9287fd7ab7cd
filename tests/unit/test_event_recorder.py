"""Events ride out a throttled or absent API: transient refusals are tried again under the
same name (409 then means an earlier try got through), other refusals are not."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from meshless.kube import ApiError, Kube
from meshless.status import EventRecorder

INVOLVED = {"apiVersion": "v1", "kind": "Secret", "name": "s", "namespace": "ns"}


class FlakyEvents:
    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.names: list[str] = []

    async def post_event(self, involved: dict[str, Any], **fields: Any) -> None:
        self.names.append(fields["name"])
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


async def post(kube: FlakyEvents, tries: int = 5) -> EventRecorder:
    recorder = EventRecorder(cast(Kube, kube), tries=tries, retry_s=0.001)
    recorder.post(INVOLVED, "Normal", "Issued", "message")
    await asyncio.wait_for(asyncio.gather(*recorder._tasks, return_exceptions=True), 5)
    return recorder


async def test_throttled_and_unavailable_answers_are_tried_again_under_one_name() -> None:
    kube = FlakyEvents(ApiError(429, "TooManyRequests", ""), ApiError(503, "Unavailable", ""))
    await post(kube)
    assert len(kube.names) == 3
    assert len(set(kube.names)) == 1
    assert kube.names[0].startswith("s.")


async def test_already_exists_means_an_earlier_try_got_through() -> None:
    kube = FlakyEvents(TimeoutError(), ApiError(409, "AlreadyExists", ""))
    await post(kube)
    assert len(kube.names) == 2


async def test_a_refusal_that_is_not_transient_is_not_retried() -> None:
    kube = FlakyEvents(ApiError(403, "Forbidden", ""))
    await post(kube)
    assert len(kube.names) == 1


async def test_tries_are_bounded() -> None:
    kube = FlakyEvents(*[ApiError(429, "TooManyRequests", "")] * 10)
    await post(kube, tries=3)
    assert len(kube.names) == 3
