"""Two `meshless run` processes against one API server elect one leader on a Lease; the
standby takes over when the leader is SIGKILLed, and a clean stop hands over at once."""

from __future__ import annotations

import signal
import time

from kubernetes import client

from meshless.leader import LEASE_NAME

from .conftest import OperatorFactory, OperatorProcess
from .kubehelpers import create_identity, is_ready, wait_identity


def _lease(api: client.ApiClient, namespace: str) -> client.V1Lease:
    return client.CoordinationV1Api(api).read_namespaced_lease(LEASE_NAME, namespace)


def _wait_leader(op: OperatorProcess, timeout: float) -> float:
    start = time.monotonic()
    op.wait_for_log("reconciling as leader", timeout=timeout)
    return time.monotonic() - start


def test_standby_takes_over_from_a_killed_leader(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    first = operator_factory()
    _wait_leader(first, timeout=30)
    second = operator_factory(namespace=first.namespace)
    lease = _lease(api_client, first.namespace)
    assert lease.spec.holder_identity.endswith(f"_{first.proc.pid}")  # type: ignore[union-attr]
    assert "reconciling as leader" not in second.log()

    create_identity(api_client, namespace, "before")
    wait_identity(api_client, namespace, "before", is_ready)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    killed = time.monotonic()
    create_identity(api_client, namespace, "after")
    # The Lease lasts 10 s and the standby retries every ~2 s (leader.Timings): 8-15 s.
    wait_identity(api_client, namespace, "after", is_ready, timeout=40)
    failover_s = time.monotonic() - killed
    assert failover_s < 30, f"failover took {failover_s:.1f}s"
    lease = _lease(api_client, first.namespace)
    assert second.proc is not None
    assert lease.spec.holder_identity.endswith(f"_{second.proc.pid}")
    assert lease.spec.lease_transitions >= 1
    # The standby rebuilt its state from watches: the identity issued before was not redone.
    assert "before: issued" not in second.log()


def test_a_clean_stop_releases_the_lease(
    operator_factory: OperatorFactory, api_client: client.ApiClient
) -> None:
    first = operator_factory()
    _wait_leader(first, timeout=30)
    second = operator_factory(namespace=first.namespace)
    assert first.stop() == 0
    assert "released the leader Lease" in first.log()
    # Released (empty holder) or already taken by the standby, which polls every ~2 s while
    # the first process finishes exiting: never still held by the stopped one.
    assert second.proc is not None
    holder = _lease(api_client, first.namespace).spec.holder_identity
    assert holder == "" or holder.endswith(f"_{second.proc.pid}"), holder
    took = _wait_leader(second, timeout=15)
    assert took < 10, f"the standby needed {took:.1f}s after a clean stop"
