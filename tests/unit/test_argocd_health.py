"""The Argo CD health checks in docs/operations.md, run with Lua 5.1 (the dialect of Argo CD's
gopher-lua) against condition sets the operator writes. The scripts are read from the doc
itself, so what users copy is what is tested."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.tools import require_tool

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def scripts() -> dict[str, str]:
    """kind -> the script under `resource.customizations.health.meshless.dev_<kind>: |`."""
    text = DOC.read_text()
    found: dict[str, str] = {}
    pattern = r"resource\.customizations\.health\.meshless\.dev_(\w+): \|\n((?:    .*\n|\n)+)"
    for kind, body in re.findall(pattern, text):
        found[kind] = "\n".join(line[4:] for line in body.splitlines())
    return found


def lua_value(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    return "{" + ", ".join(f"[{lua_value(k)}] = {lua_value(v)}" for k, v in value.items()) + "}"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    program = (
        f"obj = {lua_value(obj)}\n"
        f"local function check()\n{scripts()[kind]}\nend\n"
        'local hs = check()\nio.write(hs.status, "\\n", hs.message or "")\n'
    )
    lua = require_tool("lua5.1")
    proc = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    status, _, message = proc.stdout.partition("\n")
    return status, message


def obj(generation: int = 1, observed: int | None = 1, **conditions: Any) -> dict[str, Any]:
    status: dict[str, Any] = {
        "conditions": [
            {"type": t, "status": s, "reason": r, "message": m}
            for t, (s, r, m) in conditions.items()
        ],
        "notAfter": "2026-11-30T11:14:55Z",
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": generation}, "status": status}


def test_both_kinds_are_in_the_doc() -> None:
    assert set(scripts()) == {"WorkloadIdentity", "MtlsPolicy"}


def test_workload_identity_health() -> None:
    check = lambda o: health("WorkloadIdentity", o)  # noqa: E731
    assert check({"metadata": {"generation": 1}}) == (
        "Progressing",
        "Waiting for the first certificate",
    )
    ready = obj(Ready=("True", "Ready", "ok"), Issuing=("False", "UpToDate", ""))
    assert check(ready) == ("Healthy", "Certificate valid until 2026-11-30T11:14:55Z")
    conflict = obj(Ready=("False", "SecretConflict", "Secret shop/x-mtls is not owned"))
    assert check(conflict) == ("Degraded", "SecretConflict: Secret shop/x-mtls is not owned")
    issuing = obj(Ready=("False", "MissingData", "x"), Issuing=("True", "MissingData", "queued"))
    assert check(issuing) == ("Progressing", "queued")
    stale = obj(generation=2, observed=1, Ready=("True", "Ready", "ok"))
    assert check(stale)[0] == "Progressing"


def test_mtls_policy_health() -> None:
    check = lambda o: health("MtlsPolicy", o)  # noqa: E731
    in_effect = obj(Ready=("True", "InEffect", "In effect for 3 pods"))
    assert check(in_effect) == ("Healthy", "In effect for 3 pods")
    ignored = obj(
        Ready=("False", "Conflict", "Not in effect: Ignored in favour of shop/old"),
        Conflicted=("True", "Conflict", "Ignored in favour of shop/old"),
    )
    assert check(ignored) == ("Degraded", "Conflict: Not in effect: Ignored in favour of shop/old")
    open_np = obj(Ready=("False", "NetworkOpen", "NetworkPolicy shop/allow-all opens port 8443"))
    assert check(open_np)[0] == "Degraded"
    failing = obj(
        Ready=("True", "InEffect", "In effect for 1 pods"),
        Enforced=("False", "NotProven", "shop/web-1:8443 answered without a client certificate"),
    )
    assert check(failing) == (
        "Degraded",
        "Not enforced: shop/web-1:8443 answered without a client certificate",
    )
    terminating = obj(Ready=("False", "NamespaceTerminating", "going"))
    assert check(terminating)[0] == "Suspended"
    assert check(obj(generation=3, observed=2, Ready=("True", "InEffect", "")))[0] == "Progressing"
