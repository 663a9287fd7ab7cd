"""The admission webhooks are served by a child process of the operator (admission/process.py):
killed, it is started again and answers the API server's calls; the operator's death ends it
(no orphan)."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client

from tests.integration.conftest import OperatorFactory, OperatorProcess
from tests.integration.policyhelpers import (
    create_pod,
    create_policy,
    status_is,
    wait_admission_label,
    wait_policy,
)

CHILD = b"meshless.admission.child"


def _children(pid: int) -> list[int]:
    """The admission children of process `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(") ", 1)[1].split()[1])
        if ppid == pid and CHILD in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # exited, not yet reaped by its new parent


def _ready(op: OperatorProcess) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{op.health_port}/readyz", timeout=5):
            return True
    except urllib.error.HTTPError:
        return False


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} after {timeout}s"
        time.sleep(0.1)


def _injected(api: client.ApiClient, namespace: str, name: str) -> bool:
    pod = create_pod(api, namespace, name)
    return "meshless.dev/identity" in (pod["metadata"].get("labels") or {})


def test_a_killed_admission_child_is_restarted_and_the_api_server_calls_it_again(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    op = operator_factory()
    assert op.proc is not None
    create_policy(api_client, namespace, "strict", "STRICT")
    wait_admission_label(api_client, namespace)
    _wait(lambda: _ready(op), 30, "ready")
    [first] = _children(op.proc.pid)
    assert _injected(api_client, namespace, "before")

    os.kill(first, signal.SIGKILL)
    op.wait_for_log("the admission child exited", timeout=10)
    _wait(lambda: [p for p in _children(op.proc.pid) if p != first], 30, "restarted")
    [second] = [p for p in _children(op.proc.pid) if p != first]
    _wait(lambda: _ready(op), 30, "ready again")
    # Through the API server: the mutating webhook served by the new child injects the pod.
    assert _injected(api_client, namespace, "after")

    # The operator killed outright: the child sees its pipe close and exits (no orphan).
    op.proc.kill()
    op.proc.wait()
    _wait(lambda: _gone(second), 15, "the child gone after the operator's death")


def _labelled(api: client.ApiClient, namespace: str) -> bool:
    labels = client.CoreV1Api(api).read_namespace(namespace).metadata.labels or {}
    return labels.get("meshless.dev/mtls") == "enabled"


def test_a_namespace_is_labelled_only_once_the_child_answers_from_its_policy(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    """The label makes the API server send pods to the webhooks, so it comes only after the
    child holds the policy: with the child stopped (SIGSTOP) a new STRICT policy leaves the
    namespace unlabelled; resumed, the child catches up, the label comes, and the first pod
    created after it is injected."""
    op = operator_factory()
    assert op.proc is not None
    _wait(lambda: _ready(op), 30, "ready")
    [child] = _children(op.proc.pid)
    os.kill(child, signal.SIGSTOP)
    try:
        created = time.monotonic()
        create_policy(api_client, namespace, "strict", "STRICT")
        wait_policy(api_client, namespace, "strict", status_is())  # the operator has it
        deadline = created + 3  # the operator waits up to 5 s for its child
        while time.monotonic() < deadline:
            assert not _labelled(api_client, namespace), "labelled before the child caught up"
            time.sleep(0.2)
    finally:
        os.kill(child, signal.SIGCONT)
    wait_admission_label(api_client, namespace)
    assert _injected(api_client, namespace, "first")
