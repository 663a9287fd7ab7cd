"""Two replicas of the signer: the leader answers, the standby only watches; when the leader
stops, the standby answers what waits and what comes next."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.pcrs import kubelet_key, pcr_body

from .conftest import OperatorProcess, operator_env, remove_webhook_configurations
from .podcerts import (
    condition,
    create_bound_pod,
    create_node,
    create_request,
    node_client,
    wait_request,
)

TIMEOUT = 30
ISSUED = 'meshless_pod_certificates_signed_total{result="issued"}'


@pytest.fixture
def replicas(
    podcert_kubeconfig: str, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, OperatorProcess]]:
    api = config.new_client_from_config(config_file=podcert_kubeconfig)
    namespace = f"meshless-pcha-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    ops = tuple(
        OperatorProcess(podcert_kubeconfig, operator_env(namespace), tmp_path / f"op{i}.log")
        for i in range(2)
    )
    first, second = ops
    first.start()
    first.wait_for_log("reconciling as leader", timeout=TIMEOUT)
    second.start()
    try:
        yield first, second
    finally:
        for op in ops:
            if op.proc is not None and op.proc.poll() is None:
                op.stop()
        remove_webhook_configurations(api)


def test_only_the_leader_answers_and_the_standby_takes_over(
    replicas: tuple[OperatorProcess, OperatorProcess], podcert_kubeconfig: str
) -> None:
    leader, standby = replicas
    api = config.new_client_from_config(config_file=podcert_kubeconfig)
    namespace = f"pcha-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    node = create_node(api)
    pod = create_bound_pod(api, namespace, node)
    try:
        kubelet = node_client(podcert_kubeconfig, pod.node)

        def ask() -> dict[str, object]:
            body = pcr_body(**pod.request_fields(), key=kubelet_key("ECDSAP256"))
            answered = wait_request(api, create_request(kubelet, body), timeout=TIMEOUT)
            assert condition(answered)["type"] == "Issued", answered["status"]
            return answered

        ask()
        assert leader.counter(ISSUED) == 1
        assert standby.counter(ISSUED) == 0
        assert "reconciling as leader" not in standby.log()
        leader.stop()  # a clean stop releases the Lease: the standby leads at once
        standby.wait_for_log("reconciling as leader", timeout=TIMEOUT)
        ask()
        assert standby.counter(ISSUED) == 1
    finally:
        client.CoreV1Api(api).delete_namespaced_pod(pod.name, namespace, grace_period_seconds=0)
        client.CoreV1Api(api).delete_node(node[0])
