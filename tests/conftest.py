"""Shared fixtures. Integration tests run against a real local kube-apiserver.

The session starts the local control plane (hack/localcluster.py) once and stops it at the end
(a control plane that was already running, e.g. from `make cluster`, is used and left running),
unless MESHLESS_TEST_KUBECONFIG names a cluster to use instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from kubernetes import client, config

from tests.tools import kubectl_path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_KUBECONFIG = ROOT / ".cache" / "cluster" / "kubeconfig"


class Kubectl(Protocol):
    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    named = os.environ.get("MESHLESS_TEST_KUBECONFIG")
    if named:
        yield named
        return
    launcher = [sys.executable, str(ROOT / "hack" / "localcluster.py")]
    already_running = subprocess.run([*launcher, "status"], capture_output=True).returncode == 0
    subprocess.run([*launcher, "up"], check=True)
    try:
        yield str(LOCAL_KUBECONFIG)
    finally:
        if not already_running:  # leave a cluster started by `make cluster` running
            subprocess.run([*launcher, "down"], check=False)


def _kubectl_runner(kubeconfig: str) -> Kubectl:
    def run(
        *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [kubectl_path(), f"--kubeconfig={kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc

    return run


@pytest.fixture(scope="session")
def crds_applied(kubeconfig: str) -> None:
    kubectl = _kubectl_runner(kubeconfig)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str, crds_applied: None) -> Kubectl:
    """kubectl against the test cluster, with crds/ applied and Established."""
    return _kubectl_runner(kubeconfig)


@pytest.fixture(scope="session")
def api_client(kubeconfig: str, crds_applied: None) -> client.ApiClient:
    return config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace per test. Without a controller-manager a deleted namespace stays
    Terminating with its objects in it, so the test's policies and identities are deleted first:
    operators started by later tests then do not meet them."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    custom = client.CustomObjectsApi(api_client)
    for plural in ("mtlspolicies", "workloadidentities"):
        custom.delete_collection_namespaced_custom_object("meshless.dev", "v1alpha1", name, plural)
    core.delete_namespace(name)


@pytest.fixture
def unique() -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"
