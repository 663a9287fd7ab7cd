"""The helm the tests use: the one `make helm` builds from its Go module (hack/build-helm.sh,
pinned in hack/versions.env), or MESHLESS_HELM. Chart tests fail, never skip, without it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "meshless"


def pinned_helm_version() -> str:
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("HELM_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("HELM_VERSION not pinned in hack/versions.env")


def helm_binary() -> str:
    named = os.environ.get("MESHLESS_HELM")
    built = ROOT / ".cache" / "bin" / f"helm-{pinned_helm_version()}" / "helm"
    path = Path(named) if named else built
    if not os.access(path, os.X_OK):
        raise AssertionError(f"no helm at {path}: run `make helm` (hack/build-helm.sh)")
    return str(path)


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def render(*values: str, namespace: str = "meshless-system") -> list[dict[str, Any]]:
    """`helm template` of the chart: the objects it would create (CRDs included)."""
    out = helm(
        "template", "meshless", str(CHART), "-n", namespace, "--include-crds", *values
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} in {json.dumps(objects)[:300]}"
    return matches[0]
