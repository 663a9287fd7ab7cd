"""The examples' manifests against the real API server with the operator running: every object
is accepted (the MtlsPolicies by the CRD's schema and CEL rules), the operator takes the
policies into effect, and applying them again with server-side apply changes nothing
(`kubectl diff --server-side` is empty: the operator writes only status)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.conftest import Kubectl
from tests.integration.conftest import OperatorFactory
from tests.integration.policyhelpers import wait_policy
from tests.tools import kubectl_path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def rendered_into(example: str, namespace: str) -> str:
    """The kustomization's objects, moved into `namespace` (the Namespace object dropped)."""
    out = subprocess.run(
        [kubectl_path(), "kustomize", str(EXAMPLES / example)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(out) if d]
    kept = []
    for doc in docs:
        if doc["kind"] == "Namespace":
            continue
        doc["metadata"]["namespace"] = namespace
        kept.append(doc)
    return yaml.safe_dump_all(kept, sort_keys=False)


def in_effect(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    return (
        status.get("observedGeneration") == obj["metadata"]["generation"]
        and bool(ready)
        and ready[0]["status"] == "True"
    )


@pytest.mark.parametrize("example", ["nginx", "python", "nodejs"])
def test_example_manifests_apply_and_stay_in_sync(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    kubectl: Kubectl,
    namespace: str,
    example: str,
) -> None:
    operator_factory()
    manifests = rendered_into(example, namespace)
    kubectl("apply", "--server-side", "-f", "-", input=manifests)
    policies = [
        d["metadata"]["name"] for d in yaml.safe_load_all(manifests) if d["kind"] == "MtlsPolicy"
    ]
    assert policies
    for name in policies:
        wait_policy(api_client, namespace, name, in_effect, timeout=30, what="Ready")
    diff = kubectl("diff", "--server-side", "-f", "-", input=manifests, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr  # 0: no differences
    assert diff.stdout == ""
