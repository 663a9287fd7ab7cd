"""Tools the tests run as real peers (nginx, Node.js, Lua). `make test` installs them
(hack/system-packages.txt); a test that finds one missing fails saying so, never skips.
kubectl is not taken from PATH: `kubectl_path()` is the one built from the pinned kubernetes
module, the API server's own version (tests/unit/test_kubectl_pinned.py keeps it so)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str, *fallbacks: str) -> str:
    """The tool's path; fails the calling test when it is not installed."""
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make system-packages` (or `make test`)")
    return found


@functools.cache
def kubectl_path() -> str:
    """The kubectl every test runs: hack/build-kubectl.sh's, built from the kubernetes module
    and version of the local API server (hack/versions.env) and cached machine-wide; `make test`
    builds it before pytest starts, so here it is only copied or found."""
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-kubectl.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]
