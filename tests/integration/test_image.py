"""The operator image, as far as it can be checked without a container engine: the Dockerfile's
shape and every path it copies, and the wheel it installs, installed into a fresh virtualenv
the same way, gives a working `meshless`."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from meshless import __version__
from meshless.settings import OPTIONS
from tests.helmtool import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions (keyword, arguments); continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def copy_sources(args: str) -> tuple[list[str], list[str]]:
    """The sources of a COPY and its flags."""
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], flags


def dockerignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


def test_every_path_the_dockerfile_copies_exists(stages: list[Stage]) -> None:
    ignore_file = ROOT / ".dockerignore"
    patterns = [
        line.strip()
        for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = 0
    for stage in stages:
        for keyword, args in stage.instructions:
            assert keyword != "ADD", "use COPY: ADD fetches URLs and unpacks archives"
            if keyword != "COPY":
                continue
            sources, flags = copy_sources(args)
            if any(f.startswith("--from=") for f in flags):
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
                assert not dockerignored(source, patterns), f"COPY {source} is in .dockerignore"
                copied += 1
    assert copied >= 3  # pyproject.toml, README.md, operator/


def test_the_dockerfile_is_multi_stage_slim_non_root_and_runs_the_operator(
    stages: list[Stage],
) -> None:
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert final.base == "python:3.11-slim"
    final_keywords = [k for k, _ in final.instructions]
    # The final stage only copies the builder's virtualenv: nothing is built or installed there.
    assert "RUN" not in final_keywords, final.instructions
    assert any(
        k == "COPY" and f"--from={builder.name}" in a and "/opt/meshless" in a
        for k, a in final.instructions
    )
    run_lines = " ".join(a for s in stages for k, a in s.instructions if k == "RUN")
    for compiler in ("gcc", "build-essential", "apt-get install"):
        assert compiler not in run_lines
    (user,) = [a for k, a in final.instructions if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric and not root"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid), "chart and image user differ"
    (entrypoint,) = [a for k, a in final.instructions if k == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["meshless", "run"]
    assert "CMD" not in final_keywords


def run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_wheel_in_a_fresh_venv_gives_a_working_meshless(tmp_path: Path) -> None:
    """What the builder stage does: `pip wheel --no-deps .`, then install it (binary wheels
    only) into a fresh virtualenv. pip's cache is reused; nothing but PyPI is reached."""
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)]
    )
    (wheel,) = wheels.glob("meshless*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    run([*pip, "install", "--quiet", "--only-binary=:all:", str(wheel)])

    meshless = str(venv / "bin" / "meshless")
    # Outside the repository and with a clean environment: nothing from the source tree.
    clean_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    version = run([meshless, "version"], cwd=tmp_path, env=clean_env)
    assert version.stdout.strip() == __version__
    located = run(
        [str(venv / "bin" / "python"), "-c", "import meshless; print(meshless.__file__)"],
        cwd=tmp_path,
        env=clean_env,
    )
    assert located.stdout.startswith(str(venv)), located.stdout
    help_text = run([meshless, "run", "--help"], cwd=tmp_path, env=clean_env).stdout
    for option in OPTIONS:
        assert option.flag in help_text and option.env in help_text, option.flag
    # A bad setting stops the installed operator with one line naming the flag and variable.
    refused = subprocess.run(
        [meshless, "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**clean_env, "MESHLESS_LOG_FORMAT": "xml"},
    )
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "meshless: invalid --log-format / MESHLESS_LOG_FORMAT: 'xml' must be text or json"
    ]
    assert time.monotonic() - started < 120, "keep the image test quick (pip's cache)"
    assert os.access(meshless, os.X_OK)
