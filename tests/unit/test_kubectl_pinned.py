"""Every test, benchmark and target runs the kubectl built from the pinned kubernetes module
(hack/build-kubectl.sh; tests.tools.kubectl_path(), the Makefile's $(KUBECTL)), never a
`kubectl` found on PATH: a fresh machine has none, and another machine's may be any version.

The check reads the sources: in Python, a call or an argv list whose program is the bare name
"kubectl" (subprocess argv lists, create_subprocess_exec, shutil.which, require_tool, shell
strings); in the Makefile and the shell scripts, `kubectl` in a command's position."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON_TREES = ("tests", "bench", "hack", "examples", "operator")
SHELL_FILES = ("Makefile", ".ci/run")

# `kubectl` where a shell or make recipe expects a command: line start, after ; & | ( $( or a
# keyword, optionally behind env assignments or sudo.
SHELL_COMMAND = re.compile(
    r"(?:^|[;&|(`]|\$\(|\b(?:then|do|else|exec|sudo|xargs)\s)"  # a command's position
    r"\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"  # VAR=value prefixes
    r"kubectl(?=\s|$|[;&|)])"
)


def _is_bare_kubectl(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "kubectl"


def _is_shell_kubectl(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.match(r"\s*kubectl\s", node.value) is not None
    )


def python_offences(source: str) -> list[int]:
    """Line numbers where the Python source runs a bare `kubectl` from PATH."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple) and node.elts and _is_bare_kubectl(node.elts[0]):
            lines.append(node.lineno)  # ["kubectl", ...] as an argv
        elif isinstance(node, ast.Call) and node.args:
            first = node.args[0]
            # which("kubectl"), create_subprocess_exec("kubectl", ...), run("kubectl ...")
            if _is_bare_kubectl(first) or _is_shell_kubectl(first):
                lines.append(node.lineno)
    return sorted(set(lines))


def shell_offences(text: str) -> list[int]:
    """Line numbers where a Makefile or shell script runs a bare `kubectl` from PATH."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.lstrip("\t ").lstrip("@-+")
        if code.startswith("#"):
            continue
        if SHELL_COMMAND.search(code.split(" #", 1)[0]):
            lines.append(number)
    return lines


def _python_files() -> list[Path]:
    return sorted(p for tree in PYTHON_TREES for p in (ROOT / tree).rglob("*.py"))


def _shell_files() -> list[Path]:
    scripts = sorted((ROOT / "hack").rglob("*.sh"))
    return [ROOT / f for f in SHELL_FILES if (ROOT / f).exists()] + scripts


def test_no_python_source_runs_kubectl_from_path() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in _python_files()
        if (hits := python_offences(path.read_text()))
    }
    assert found == {}, f"bare kubectl (use tests.tools.kubectl_path()): {found}"


def test_no_target_or_script_runs_kubectl_from_path() -> None:
    found = {
        str(path.relative_to(ROOT)): hits
        for path in _shell_files()
        if (hits := shell_offences(path.read_text()))
    }
    assert found == {}, f"bare kubectl (use $(KUBECTL) / hack/build-kubectl.sh): {found}"


def test_the_docs_name_the_pinned_kubectl() -> None:
    """README, docs/node.md and examples/README.md say where the built kubectl lands: the
    path with the version hack/versions.env pins."""
    pins = (ROOT / "hack" / "versions.env").read_text()
    version = re.search(r"^KUBERNETES_VERSION=(\S+)$", pins, re.MULTILINE)
    assert version is not None
    path = f".cache/bin/kubectl-{version.group(1)}"
    for doc in ("README.md", "docs/node.md", "examples/README.md"):
        text = (ROOT / doc).read_text()
        named = set(re.findall(r"\.cache/bin/kubectl-v[0-9.]+", text))
        assert named == {path}, f"{doc} names {named or 'no kubectl path'}, not {path}"


def test_the_scan_covers_the_files_that_use_kubectl() -> None:
    scanned = {str(p.relative_to(ROOT)) for p in _python_files() + _shell_files()}
    assert {"tests/conftest.py", "tests/integration/tenants.py", "bench/run.py"} <= scanned
    assert {"Makefile", "hack/build-kubectl.sh", "hack/sync-chart-crds.sh"} <= scanned


@pytest.mark.parametrize(
    "source",
    [
        'subprocess.run(["kubectl", "get", "pods"])',
        'subprocess.run(("kubectl", f"--kubeconfig={k}", "apply"))',
        'shutil.which("kubectl")',
        'require_tool("kubectl")',
        'asyncio.create_subprocess_exec("kubectl", "get", "--raw", "/")',
        'subprocess.run("kubectl get ns", shell=True)',
        'os.system("kubectl apply -f x.yaml")',
    ],
)
def test_the_python_scan_finds_a_bare_kubectl(source: str) -> None:
    assert python_offences(source) == [1]


@pytest.mark.parametrize(
    "source",
    [
        'subprocess.run([kubectl_path(), "get", "pods"])',
        'node.kubectl("get", "pods")',
        'fields = [{"manager": "kubectl"}]',
        'print("run kubectl apply")',
    ],
)
def test_the_python_scan_passes_the_pinned_kubectl(source: str) -> None:
    assert python_offences(source) == []


@pytest.mark.parametrize(
    "line",
    [
        "\tkubectl --kubeconfig $(KUBECONFIG_LOCAL) apply -f crds/",
        "\t@kubectl get ns",
        "\t$(KUBECTL) create ns x --dry-run=client -o yaml | kubectl apply -f -",
        "out=$(kubectl get ns)",
        "if true; then kubectl get ns; fi",
        "KUBECONFIG=x kubectl get ns",
        "sudo kubectl get ns",
    ],
)
def test_the_shell_scan_finds_a_bare_kubectl(line: str) -> None:
    assert shell_offences(line) == [1]


@pytest.mark.parametrize(
    "line",
    [
        "\t$(KUBECTL) --kubeconfig $(KUBECONFIG_LOCAL) apply -f crds/",
        '"$kubectl" get ns',
        "# kubectl apply -k examples/nginx",
        "\tbash hack/build-kubectl.sh",
        "kubectl:",
        'echo "building kubectl ${KUBERNETES_VERSION}" >&2',
        'out="$root/.cache/bin/kubectl-${KUBERNETES_VERSION}"',
    ],
)
def test_the_shell_scan_passes_the_pinned_kubectl(line: str) -> None:
    assert shell_offences(line) == []
