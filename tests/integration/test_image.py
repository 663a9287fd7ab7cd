"""The operator image, as far as it can be checked without a container engine: the Dockerfile's
shape and every path it copies; the wheel and pinned dependencies it installs, installed into a
fresh virtualenv the same way, give a working `meshless`; and the image `make image` builds for
the local node (hack/operatorimage.py) holds exactly the packages the Dockerfile installs, with
its user, environment and entrypoint, under the chart's appVersion."""

from __future__ import annotations

import email.parser
import fnmatch
import gzip
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

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
    assert copied >= 4  # pyproject.toml, README.md, hack/image-requirements.txt, operator/


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


def dockerfile_requirements(stages: list[Stage]) -> Path:
    """The requirements file the builder's `pip install -r` reads, as a repository path (the
    COPY that put it into the build's working directory)."""
    builder = stages[0]
    run_line = " ".join(a for k, a in builder.instructions if k == "RUN")
    words = shlex.split(run_line)
    (named,) = [words[i + 1] for i, w in enumerate(words) if w == "-r"]
    for keyword, args in builder.instructions:
        if keyword == "COPY":
            sources, _ = copy_sources(args)
            for source in sources:
                if Path(source).name == named:
                    return ROOT / source
    raise AssertionError(f"the Dockerfile installs -r {named} but copies no such file")


def pinned(requirements: Path) -> dict[str, str]:
    """name (normalized) -> version of every `name==version` line."""
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{requirements.name}: {line!r} is not pinned with =="
        pins[normalize(name)] = version.strip()
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_dockerfile_installs_the_wheel_with_pinned_dependencies_only(
    stages: list[Stage],
) -> None:
    builder = stages[0]
    run_line = " ".join(a for k, a in builder.instructions if k == "RUN")
    assert "--no-deps" in run_line and "--only-binary=:all:" in run_line
    assert "--without-pip" in run_line  # the final image holds no pip and no setuptools
    pins = pinned(dockerfile_requirements(stages))
    for dependency in ("kopf", "aiohttp", "kubernetes", "cryptography", "pyyaml"):
        assert dependency in pins, dependency
    assert "meshless-mtls" not in pins and "pip" not in pins and "setuptools" not in pins


def test_the_wheel_in_a_fresh_venv_gives_a_working_meshless(
    tmp_path: Path, stages: list[Stage]
) -> None:
    """What the builder stage does: `pip wheel --no-deps .`, then install it and the pinned
    dependencies (binary wheels only, no resolution) into a fresh virtualenv without pip, and
    check that nothing is missing. pip's cache is reused; nothing but PyPI is reached."""
    started = time.monotonic()
    wheels = tmp_path / "wheels"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(ROOT)]
    )
    (wheel,) = wheels.glob("meshless*.whl")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    pip += ["--python", str(venv / "bin" / "python")]
    requirements = str(dockerfile_requirements(stages))
    run([*pip, "install", "--quiet", "--no-deps", "--only-binary=:all:", "-r", requirements])
    run([*pip, "install", "--quiet", "--no-deps", str(wheel)])
    run([*pip, "check"])  # the pins are complete: every dependency of every package is there

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


# --- the image `make image` builds for the local node -----------------------------------------


def operatorimage() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "operatorimage", ROOT / "hack" / "operatorimage.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_files(
    archive: Path,
) -> tuple[dict[str, object], dict[str, tuple[tarfile.TarInfo, bytes]]]:
    """The image's config and its root filesystem (later layers over earlier ones), read from
    the OCI archive as containerd imports it."""
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> bytes:
            member = outer.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None
            return member.read()

        index = json.loads(blob_of(outer, "index.json"))
        (manifest_desc,) = index["manifests"]
        manifest = json.loads(blob(manifest_desc["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        files: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layer["digest"])))) as tar:
                for member in tar.getmembers():
                    data = b""
                    if member.isfile() and member.name.endswith(("METADATA", "meshless")):
                        extracted = tar.extractfile(member)
                        data = extracted.read() if extracted else b""
                    files[member.name] = (member, data)
    return {**config, "name": manifest_desc["annotations"]["io.containerd.image.name"]}, files


def blob_of(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


def test_make_image_holds_the_packages_the_dockerfile_installs(stages: list[Stage]) -> None:
    """hack/operatorimage.py (`make image`), built or reused from the machine's image cache:
    the packages in its virtualenv are the Dockerfile's pins plus the project's wheel, no more
    and no fewer; user, environment and entrypoint are the Dockerfile's; its name carries the
    chart's appVersion; and the `meshless` on its PATH runs the installed package."""
    image = operatorimage().build_image()
    config, files = image_files(image.archive)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert config["name"] == f"meshless.local/meshless:{chart['appVersion']}"

    site = "opt/meshless/lib/python3.11/site-packages/"
    installed = {}
    for path, (_, data) in files.items():
        if path.startswith(site) and path.endswith(".dist-info/METADATA"):
            meta = email.parser.BytesParser().parsebytes(data, headersonly=True)
            installed[normalize(meta["Name"])] = meta["Version"]
    expected = {**pinned(dockerfile_requirements(stages)), "meshless-mtls": __version__}
    assert installed == expected

    final = stages[-1]
    (user,) = [a for k, a in final.instructions if k == "USER"]
    (entrypoint,) = [a for k, a in final.instructions if k == "ENTRYPOINT"]
    image_config = config["config"]
    assert isinstance(image_config, dict)
    assert image_config["User"] == user
    assert image_config["Entrypoint"] == json.loads(entrypoint)
    env = dict(e.split("=", 1) for e in image_config["Env"])
    assert env["PATH"].split(":")[0] == "/opt/meshless/bin"  # ENV PATH=/opt/meshless/bin:$PATH
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    script, data = files["opt/meshless/bin/meshless"]
    assert script.mode & 0o111, "bin/meshless is not executable"
    assert data.startswith(b"#!/opt/meshless/bin/python3\n") and b"meshless.cli" in data
    python = files["opt/meshless/bin/python3"][0]
    assert python.issym() and python.linkname == "/usr/bin/python3.11"
    assert "usr/bin/python3.11" in files and "opt/meshless/pyvenv.cfg" in files
    # no pip, no setuptools, no source tree, no caches of this machine's paths
    assert not any(p.startswith(f"{site}pip/") or p.startswith(f"{site}setuptools/") for p in files)
    assert not any(p.startswith(("src/", "work/", "root/")) for p in files)
