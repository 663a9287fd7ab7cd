"""Tools the tests run as real peers (nginx, Node.js, Lua, kubectl). `make test` installs them
(hack/system-packages.txt); a test that finds one missing fails saying so, never skips."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def require_tool(name: str, *fallbacks: str) -> str:
    """The tool's path; fails the calling test when it is not installed."""
    found = shutil.which(name) or next((f for f in fallbacks if Path(f).exists()), None)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make system-packages` (or `make test`)")
    return found
