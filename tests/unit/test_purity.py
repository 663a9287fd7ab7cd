"""The pure core stays pure: importing a pure module must not pull in Kopf, aiohttp, the
Kubernetes client or meshless.kube, directly or through anything it imports.

Each module is imported in a fresh interpreter, so what an earlier import (or pytest itself)
loaded cannot hide a dependency. Modules that do not exist yet are left out; the ones that
must exist are checked for.
"""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys

import pytest

FORBIDDEN = ("kopf", "aiohttp", "kubernetes", "meshless.kube")

# The pure core (docs/architecture.md, "Layers"); meshless.pki.* is discovered below.
PURE_CANDIDATES = (
    "meshless.api",
    "meshless.selectors",
    "meshless.durations",
    "meshless.timestamps",
    "meshless.settings",
    "meshless.identity.spec",
    "meshless.identity.render",
    "meshless.identity.checked",
    "meshless.identity.rotation_marks",
    "meshless.identity.bundle_drift",
    "meshless.identity.plan",
    "meshless.identity.held",
    "meshless.policy.plan",
    "meshless.policy.held",
    "meshless.policy.audit",
    "meshless.runtime.store",
    "meshless.runtime.writes",
    "meshless.policy.model",
    "meshless.policy.resolve",
    "meshless.policy.spec",
    "meshless.policy.render",
    "meshless.policy.provision",
    "meshless.policy.report",
    "meshless.policy.pod_certificates",
    "meshless.delivery",
    "meshless.conditions",
    "meshless.policy.netpol",
    "meshless.netpol",
    "meshless.admission.pods",
    "meshless.admission.inject",
    "meshless.admission.validate",
    "meshless.admission.configurations",
    "meshless.admission.admit",
    "meshless.admission.review",
    "meshless.admission.mirror",
    "meshless.probe.classify",
    "meshless.pki.rotation",
    "meshless.commands.output",
    "meshless.commands.certificate",
    "meshless.commands.views",
    "meshless.podcert.request",
    "meshless.podcert.decide",
    "meshless.podcert.answer",
    "meshless.podcert.current",
)
MUST_EXIST = (
    "meshless.api",
    "meshless.selectors",
    "meshless.durations",
    "meshless.pki.keys",
    "meshless.identity.spec",
    "meshless.policy.model",
    "meshless.policy.resolve",
    "meshless.policy.spec",
    "meshless.admission.admit",
)

# Run in a fresh interpreter: import the module, print what forbidden modules got loaded.
CHECKER = """
import importlib, json, sys
forbidden = json.loads(sys.argv[2])
importlib.import_module(sys.argv[1])
loaded = sorted(
    name for name in sys.modules
    if any(name == f or name.startswith(f + ".") for f in forbidden)
)
print(json.dumps(loaded))
"""


def exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package that does not exist yet
        return False


def pure_modules() -> list[str]:
    found = [m for m in PURE_CANDIDATES if exists(m)]
    pki = importlib.util.find_spec("meshless.pki")
    assert pki is not None and pki.submodule_search_locations is not None
    found += sorted(
        f"meshless.pki.{info.name}" for info in pkgutil.iter_modules(pki.submodule_search_locations)
    )
    return ["meshless.pki", *found]


def forbidden_imports(module: str) -> list[str]:
    """The forbidden modules that importing `module` loads, in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", CHECKER, module, json.dumps(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"importing {module} failed:\n{proc.stderr}"
    loaded: list[str] = json.loads(proc.stdout)
    return loaded


PURE = pure_modules()


def test_the_core_modules_are_all_there() -> None:
    missing = [m for m in MUST_EXIST if m not in PURE]
    assert not missing, f"pure modules not found: {missing}"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_kubernetes_machinery(module: str) -> None:
    loaded = forbidden_imports(module)
    assert not loaded, f"{module} is pure but importing it loads {', '.join(loaded[:5])}"


def test_the_check_sees_an_impure_module() -> None:
    # meshless.kube talks to the API through aiohttp: the checker must notice.
    loaded = forbidden_imports("meshless.kube")
    assert "meshless.kube" in loaded
    assert "aiohttp" in loaded
