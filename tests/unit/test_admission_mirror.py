"""Admission's child process answers from a mirror of the operator's state (admission/mirror.py),
kept current by the operator (admission/process.py): the message stream the operator writes,
applied in order, gives the same answers as the operator's own state at every step, and a
child that has not got the full state yet refuses as the operator did before priming."""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
import socket
import ssl
import struct
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from meshless.admission.admit import AdmissionRequest, AdmissionResponse, AdmissionState, admit
from meshless.admission.configurations import BINDING_HANDLER, INJECT_HANDLER, STRICT_HANDLER
from meshless.admission.mirror import (
    AdmissionMirror,
    CertificateMessage,
    IdentityDeltas,
    StateMessage,
)
from meshless.admission.process import AdmissionProcess
from meshless.admission.serving import issue_serving_certificate
from meshless.kube import Kube
from meshless.pki.bundle import bundle_pem
from meshless.pki.webhook_ca import new_webhook_ca_data, webhook_ca_from_secret_data
from meshless.policy.admission_state import ControllerAdmissionState
from meshless.policy.controller import PolicyController
from meshless.runtime.writes import OwnWrites
from meshless.settings import Settings
from meshless.status import EventRecorder
from tests.unit.admission_helpers import pod

NS = "shop"
POD = ("", "v1", "pods", "")
ACCOUNTS = ("payments", "admin", "other")
SECRETS = ("payments-tls", "admin-tls", "moved-tls", "plain")
NOW = datetime.now(UTC)
CA = webhook_ca_from_secret_data(new_webhook_ca_data(NOW), NOW).authority
CERTIFICATE = issue_serving_certificate(CA, ["127.0.0.1"], NOW)


def _controller() -> PolicyController:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # never called: only watch events are fed
    kube = Kube(configuration)
    return PolicyController(
        kube, Settings(), lambda: datetime.now(UTC), EventRecorder(kube), OwnWrites()
    )


def _identity(name: str, account: str, secret: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2026-11-29T00:00:00Z"},
        "spec": {"serviceAccountName": account, "secretName": secret},
    }


STRICT_POLICY = {
    "metadata": {"name": "strict", "namespace": NS, "uid": "u1", "generation": 1},
    "spec": {"mode": "STRICT"},
}


def _with_secret(body: dict[str, Any], secret: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    body["spec"]["volumes"] = [{"name": "certs", "secret": {"secretName": secret}}]
    return body


def _requests() -> list[AdmissionRequest]:
    """Every webhook that reads the state, over pods of each ServiceAccount using each
    Secret (or none)."""
    found = []
    for webhook in (INJECT_HANDLER, STRICT_HANDLER, BINDING_HANDLER):
        for account in ACCOUNTS:
            for secret in (None, *SECRETS):
                body = pod(sa=account)
                if secret is not None:
                    body = _with_secret(body, secret)
                found.append(AdmissionRequest(webhook, "u", "CREATE", POD, NS, body))
    return found


def _answers(state: AdmissionState) -> list[AdmissionResponse]:
    return [admit(request, state) for request in _requests()]


class Pipe:
    """The child's stdin as the replication writes it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def is_closing(self) -> bool:
        return False

    def take(self) -> list[Any]:
        """The messages written since the last call, in order."""
        messages, view = [], bytes(self.data)
        while view:
            (length,) = struct.unpack(">I", view[:4])
            messages.append(pickle.loads(view[4 : 4 + length]))
            view = view[4 + length :]
        self.data.clear()
        return messages


async def _settle() -> None:
    """Long enough for the replication to wake (on a store write, or at its resync for the
    flags, which are not in a store) and drain."""
    for _ in range(50):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    for _ in range(50):
        await asyncio.sleep(0)


def _process(controller: PolicyController, state: ControllerAdmissionState) -> AdmissionProcess:
    return AdmissionProcess(
        state.current,
        controller.stores.identities,
        controller.stores.policies,
        state.record_admission,
        CERTIFICATE,
        host="127.0.0.1",
        port=0,
        resync=0.01,
    )


def _real_child(
    controller: PolicyController,
    state: Callable[[], AdmissionState],
    record: Callable[[Any], None],
    restart_delay: float = 2.0,
) -> tuple[AdmissionProcess, int]:
    """An AdmissionProcess that runs a real child on a free loopback port, and the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = AdmissionProcess(
        state,
        controller.stores.identities,
        controller.stores.policies,
        record,
        CERTIFICATE,
        host="127.0.0.1",
        port=port,
        restart_delay=restart_delay,
    )
    return process, port


def test_the_stream_applied_in_order_answers_as_the_operators_state() -> None:
    async def scenario() -> None:
        controller = _controller()
        state = ControllerAdmissionState(controller)
        process = _process(controller, state)
        for i in range(3):  # held before the child starts: sent in its first fill
            controller.on_identity_event("ADDED", _identity(f"old-{i}", f"old-{i}", f"old-{i}"))
        pipe, mirror = Pipe(), AdmissionMirror()
        replicate = asyncio.create_task(process._replicate(pipe))  # type: ignore[arg-type]

        async def same() -> list[Any]:
            await _settle()
            messages = pipe.take()
            for message in messages:
                mirror.apply(message)
            assert _answers(mirror.current()) == _answers(state.current())
            return messages

        try:
            first = await same()  # starting: nothing read, every answer "not yet"
            assert isinstance(first[0], StateMessage)
            assert isinstance(first[1], CertificateMessage)
            assert mirror.certificate == CERTIFICATE
            controller.on_policy_event("ADDED", STRICT_POLICY, enqueue=False)
            state.policies_listed = True
            controller.on_identity_event("ADDED", _identity("payments-id", "payments", "x"))
            controller.on_identity_event("ADDED", _identity("admin-id", "admin", "admin-tls"))
            await same()
            state.identities_listed = True
            await same()
            # Modified (a Secret renamed), deleted, added: only what changed is sent.
            controller.on_identity_event(
                "MODIFIED", _identity("payments-id", "payments", "payments-tls")
            )
            controller.on_identity_event("DELETED", _identity("admin-id", "admin", "admin-tls"))
            controller.on_identity_event("ADDED", _identity("moved", "other", "moved-tls"))
            sent = await same()
            deltas = [m for m in sent if isinstance(m, IdentityDeltas)]
            assert sorted(key for m in deltas for key, _ in m.changes) == [
                (NS, "admin-id"),
                (NS, "moved"),
                (NS, "payments-id"),
            ]
            assert len(mirror.identities) == len(controller.stores.identities) == 5
            # The answers did change along the way (the comparison is not of constants).
            binding = _requests().index(
                AdmissionRequest(
                    BINDING_HANDLER,
                    "u",
                    "CREATE",
                    POD,
                    NS,
                    _with_secret(pod(sa="admin"), "moved-tls"),
                )
            )
            assert not _answers(mirror.current())[binding].allowed
            # Nothing changed: nothing is sent.
            assert await same() == []
        finally:
            replicate.cancel()

    asyncio.run(scenario())


def test_a_child_without_the_full_state_refuses_as_before_priming() -> None:
    async def scenario() -> None:
        controller = _controller()
        state = ControllerAdmissionState(controller)
        controller.on_policy_event("ADDED", STRICT_POLICY, enqueue=False)
        for i in range(5000):  # more than one batch
            controller.on_identity_event("ADDED", _identity(f"id-{i}", f"sa-{i}", f"s-{i}"))
        state.policies_listed = state.identities_listed = True
        process = _process(controller, state)
        pipe = Pipe()
        replicate = asyncio.create_task(process._replicate(pipe))  # type: ignore[arg-type]
        await _settle()
        replicate.cancel()
        messages = pipe.take()
        # The first state says "not listed", whatever the operator's says: no record is
        # there yet. The one that says "listed" comes after the last record.
        first = messages[0]
        assert isinstance(first, StateMessage) and not first.state.identities_listed
        listed = [
            i
            for i, m in enumerate(messages)
            if isinstance(m, StateMessage) and m.state.identities_listed
        ]
        last_record = max(i for i, m in enumerate(messages) if isinstance(m, IdentityDeltas))
        assert listed and listed[0] > last_record

        uses_secret = _with_secret(pod(sa="sa-1"), "s-2")  # another ServiceAccount's Secret
        strict = AdmissionRequest(STRICT_HANDLER, "u", "CREATE", POD, NS, uses_secret)
        binding = AdmissionRequest(BINDING_HANDLER, "u", "CREATE", POD, NS, uses_secret)
        inject = AdmissionRequest(INJECT_HANDLER, "u", "CREATE", POD, NS, pod(sa="sa-1"))

        empty = AdmissionMirror()  # nothing received: refused as before priming
        assert admit(strict, empty.current()).code == 503
        assert admit(inject, empty.current()).code == 503
        unchecked = admit(binding, empty.current())
        assert unchecked.allowed and "not read yet" in unchecked.note

        partial = AdmissionMirror()  # the first state, the certificate, some records
        for message in messages[:last_record]:
            partial.apply(message)
        assert admit(strict, partial.current()).code == 503
        assert admit(binding, partial.current()).note

        full = AdmissionMirror()
        for message in messages:
            full.apply(message)
        refused = admit(strict, full.current())
        assert not refused.allowed and refused.code != 503
        assert admit(strict, full.current()) == admit(strict, state.current())

    asyncio.run(scenario())


def _post(port: int, body: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cadata=bundle_pem(CA.roots).decode())
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/{STRICT_HANDLER}", data=json.dumps(body).encode()
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        return json.loads(answer.read())["response"]  # type: ignore[no-any-return]


def _review(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "operation": "CREATE",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NS,
            "userInfo": {"username": "tenant"},
            "object": body,
        },
    }


def test_the_child_process_serves_is_restarted_and_stops_with_its_pipe() -> None:
    """A real child: it answers over TLS from the replicated state, another starts when it is
    killed, and it exits when the operator closes its pipe."""
    import os
    import signal

    async def scenario() -> None:
        controller = _controller()
        state = ControllerAdmissionState(controller)
        controller.on_policy_event("ADDED", STRICT_POLICY, enqueue=False)
        controller.on_identity_event("ADDED", _identity("admin-id", "admin", "admin-tls"))
        state.policies_listed = state.identities_listed = True
        process, port = _real_child(
            controller, state.current, state.record_admission, restart_delay=0.1
        )
        stolen = _review(_with_secret(pod(sa="payments"), "admin-tls"))
        await process.start()
        await asyncio.wait_for(process.wait_listening(), 30)
        try:
            answer = await asyncio.to_thread(_post, port, stolen)
            assert answer["allowed"] is False and "admin" in answer["status"]["message"]
            first = process.pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
            async with asyncio.timeout(30):
                while process.pid == first or not process.listening:
                    await asyncio.sleep(0.05)
            answer = await asyncio.to_thread(_post, port, stolen)
            assert answer["allowed"] is False and "admin" in answer["status"]["message"]
            assert process.started == 2
            second = process.pid
        finally:
            await process.stop()
        assert second is not None
        assert not os.path.exists(f"/proc/{second}") or _zombie(second)

    asyncio.run(scenario())


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1].startswith("Z")


def test_the_child_imports_neither_kopf_nor_the_kubernetes_client() -> None:
    """Its memory is the server, `admit` and the mirror (docs/decisions/admission.md)."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, meshless.admission.child; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "aiohttp" in loaded  # the check sees what the child imports
    assert not {"kopf", "kubernetes", "prometheus_client"} & set(loaded)


def test_a_child_that_cannot_be_kept_current_is_stopped_and_another_started() -> None:
    """A failure on the operator's side of the pipe must not leave a child answering from a
    stale mirror: it is killed, and the next one is filled from the start."""

    async def scenario() -> None:
        controller = _controller()
        state = ControllerAdmissionState(controller)
        calls = 0

        def failing_once() -> AdmissionState:
            nonlocal calls
            calls += 1
            if calls == 2:  # the first child's first update
                raise RuntimeError("the state cannot be read")
            return state.current()

        process, _ = _real_child(
            controller, failing_once, state.record_admission, restart_delay=0.1
        )
        try:
            async with asyncio.timeout(30):
                await process.start()
                await process.wait_listening()
                while process.started < 2 or not process.listening:
                    await asyncio.sleep(0.05)
        finally:
            await process.stop()
        assert calls > 2

    asyncio.run(scenario())


def test_caught_up_returns_once_the_child_answers_from_the_state_it_was_asked_after() -> None:
    """The operator labels a namespace for the webhooks only after `caught_up()`: a real child,
    stopped (SIGSTOP) while a STRICT policy arrives, keeps `caught_up()` waiting; resumed, it
    answers the marker, and the next request is judged under the policy. A child that does
    not answer in time is not waited for longer than the timeout."""
    import os
    import signal

    async def scenario() -> None:
        controller = _controller()
        state = ControllerAdmissionState(controller)
        state.policies_listed = state.identities_listed = True  # no policy yet
        process, port = _real_child(controller, state.current, state.record_admission)
        plain = _review(pod(sa="payments"))  # no identity mounted: refused only under STRICT
        await process.start()
        await asyncio.wait_for(process.wait_listening(), 30)
        try:
            assert await process.caught_up() is True
            answer = await asyncio.to_thread(_post, port, plain)
            assert answer["allowed"] is True  # no policy: nothing to enforce
            child = process.pid
            assert child is not None
            os.kill(child, signal.SIGSTOP)
            try:
                controller.on_policy_event("ADDED", STRICT_POLICY, enqueue=False)
                assert await process.caught_up(timeout=0.5) is False  # not answered in time
                waiting = asyncio.create_task(process.caught_up(timeout=30))
                done, _ = await asyncio.wait({waiting}, timeout=0.5)
                assert not done, "caught_up() returned while the child could not read"
            finally:
                os.kill(child, signal.SIGCONT)
            assert await asyncio.wait_for(waiting, 30) is True
            answer = await asyncio.to_thread(_post, port, plain)
            assert answer["allowed"] is False
            assert "STRICT" in answer["status"]["message"]
        finally:
            await process.stop()
        assert await process.caught_up() is True  # no child answers: nothing to wait for

    asyncio.run(scenario())
