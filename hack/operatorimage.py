"""The operator's image for the local node, built without a registry or a container engine.

`make image` runs this: the same wheel and the same pinned dependencies the Dockerfile installs
(hack/image-requirements.txt, `pip install --no-deps`), in a virtualenv at /opt/meshless on
Debian's python3.11 (the node's python image: busybox plus Debian's interpreter and standard
library, hack/nodeimages.py), with the Dockerfile's user, environment and entrypoint. The OCI
archive is imported into the running node's containerd as
``meshless.local/meshless:<the chart's appVersion>``, so that

    helm install meshless charts/meshless -n meshless-system --create-namespace \\
      --set image.repository=meshless.local/meshless --set image.pullPolicy=Never

runs it. The node imports it again at every start (hack/localnode.py builds it with the
other node images).

Layers: busybox, python (both shared with the node's other images), the dependencies (cached in
~/.cache/meshless/images/ by the requirements file's content: pip runs once per pin set) and
the project (its wheel, built again only when operator/, pyproject.toml or README.md change).
Bytecode is compiled with unchecked hashes, so that the read-only image's .pyc files are used.

    python hack/operatorimage.py build     # the archive; prints its name and path
    python hack/operatorimage.py load      # build, then import into the running node
    python hack/operatorimage.py lock      # rewrite hack/image-requirements.txt from pyproject
"""

from __future__ import annotations

import compileall
import hashlib
import json
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HACK = Path(__file__).resolve().parent
ROOT = HACK.parent
sys.path.insert(0, str(HACK))

import nodeimages  # noqa: E402
from nodeimages import CACHE, Image, Layer  # noqa: E402

REQUIREMENTS = HACK / "image-requirements.txt"
CHART = ROOT / "charts" / "meshless" / "Chart.yaml"
REPOSITORY = "meshless.local/meshless"
PREFIX = "opt/meshless"  # the Dockerfile's virtualenv
SITE = f"{PREFIX}/lib/python3.11/site-packages"
UID = 65532  # the Dockerfile's USER, the chart's runAsUser
PASSWD = f"root:x:0:0:root:/root:/bin/sh\nnonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/bin/false\n"
GROUP = f"root:x:0:\nnonroot:x:{UID}:\n"
# what the Dockerfile's final stage sets (python:3.11-slim's PATH with the venv first)
CONFIG: dict[str, object] = {
    "Env": [
        f"PATH=/{PREFIX}/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
    ],
    "User": f"{UID}:{UID}",
    "Entrypoint": ["meshless", "run"],
}
# pip's console script for `meshless = "meshless.cli:main"` (pyproject.toml)
SCRIPT = f"""#!/{PREFIX}/bin/python3
import re
import sys
from meshless.cli import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""
PYVENV = "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n"
# the project's files that go into its wheel
SOURCES = ("pyproject.toml", "README.md", "operator")


def app_version() -> str:
    for line in CHART.read_text().splitlines():
        if line.startswith("appVersion:"):
            return line.split(":", 1)[1].strip().strip("\"'")
    raise RuntimeError(f"{CHART} has no appVersion")


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def _source_files() -> list[Path]:
    files = []
    for name in SOURCES:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        else:
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            )
    return files


def _pip(*args: str) -> None:
    if sys.version_info[:2] != (3, 11):
        raise RuntimeError(
            f"pip must run on Python 3.11 (the image's), not {sys.version.split()[0]}: "
            "run with the project's .venv/bin/python"
        )
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")


def _compile(directory: Path) -> None:
    """Bytecode the image's interpreter uses as it is: unchecked hashes (the layers' mtimes are
    0, so timestamp-based .pyc files would be stale, and the root filesystem is read-only)."""
    ok = compileall.compile_dir(
        str(directory),
        quiet=2,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        workers=1,
    )
    if not ok:
        raise RuntimeError(f"compiling {directory} failed")


def _cached_dir(prefix: str, key: str, fill: object) -> Path:
    """A directory in the image cache made once per key by fill(tmpdir); older ones removed."""
    target = CACHE / f"{prefix}-{key}"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=CACHE))
    try:
        assert callable(fill)
        fill(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():  # another build of the same key won the race: use it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in CACHE.glob(f"{prefix}-*"):
        if stale != target and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return target


def dependencies_dir() -> Path:
    """hack/image-requirements.txt installed with pip (binary wheels only, no resolution:
    the file pins every package), keyed by the file's content."""
    key = _digest(REQUIREMENTS.read_bytes(), b"cp311")

    def fill(tmp: Path) -> None:
        site = tmp / "site-packages"
        _pip(
            "install",
            "--no-deps",
            "--only-binary=:all:",
            "--no-compile",
            "--target",
            str(site),
            "-r",
            str(REQUIREMENTS),
        )
        shutil.rmtree(site / "bin", ignore_errors=True)  # scripts naming this machine's python
        _compile(site)

    return _cached_dir("operator-deps", key, fill) / "site-packages"


def project_dir() -> Path:
    """The project's wheel (`pip wheel --no-deps .`, as the Dockerfile builds it) installed
    alone into site-packages/, and bin/meshless (its console script for the image's venv),
    keyed by the content of the files that go into the wheel."""
    files = _source_files()
    key = _digest(*(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() for p in files))

    def fill(tmp: Path) -> None:
        wheels = tmp / "wheels"
        with tempfile.TemporaryDirectory() as src:
            for name in SOURCES:  # a clean copy: no egg-info or build/ in the work tree
                path = ROOT / name
                if path.is_dir():
                    shutil.copytree(path, Path(src) / name, ignore=_no_caches)
                else:
                    shutil.copy2(path, Path(src) / name)
            _pip("wheel", "--no-deps", "--wheel-dir", str(wheels), src)
        (wheel,) = wheels.glob("meshless_mtls-*.whl")
        site = tmp / "site-packages"
        _pip("install", "--no-deps", "--no-compile", "--target", str(site), str(wheel))
        shutil.rmtree(site / "bin", ignore_errors=True)
        _compile(site)
        script = tmp / "bin" / "meshless"
        script.parent.mkdir()
        script.write_text(SCRIPT)
        script.chmod(0o755)

    return _cached_dir("operator-project", key, fill)


def _no_caches(directory: str, names: list[str]) -> list[str]:
    return [n for n in names if n in ("__pycache__", "build") or n.endswith(".egg-info")]


def _tree_layer(site: Path) -> Layer:
    layer = Layer()
    for path in sorted(site.rglob("*")):
        if path.is_file() and not path.is_symlink():
            layer.file(f"{SITE}/{path.relative_to(site)}", path)
    return layer


def _libraries_layer(sites: list[Path]) -> Layer:
    """The machine's shared libraries the wheels' extension modules load (libgcc_s for
    cryptography's Rust core, ...), beyond what the python layer has; a wheel's own
    libraries (auditwheel's <package>.libs) are in its directory already."""
    extensions = [p for site in sites for p in site.rglob("*.so*") if p.is_file()]
    layer = Layer()
    for lib in sorted(nodeimages._shared_libs(extensions)):
        if str(lib).startswith(nodeimages.SYSTEM_DIRS):
            layer.copy_host(lib)
    return layer


def _venv_layer() -> Layer:
    layer = Layer()
    layer.text(f"{PREFIX}/pyvenv.cfg", PYVENV)
    layer.symlink(f"{PREFIX}/bin/python3", "/usr/bin/python3.11")
    layer.symlink(f"{PREFIX}/bin/python", "python3")
    layer.text("etc/passwd", PASSWD)
    layer.text("etc/group", GROUP)
    layer.dir("home/nonroot")
    return layer


def build_image() -> Image:
    """Builds (or reuses) the operator image's archive."""
    deps, project = dependencies_dir(), project_dir()
    app = _tree_layer(project / "site-packages")
    app.file(f"{PREFIX}/bin/meshless", project / "bin" / "meshless")
    app.entries.update(_venv_layer().entries)
    libraries = _libraries_layer([deps, project])
    layers = [
        nodeimages._busybox_layer(),
        nodeimages._python_layer(),
        libraries,
        _tree_layer(deps),
        app,
    ]
    return nodeimages._cached(f"{REPOSITORY}:{app_version()}", layers, CONFIG)


def load(image: Image) -> bool:
    """Imports the archive into this work tree's running node (containerd's k8s.io namespace);
    False when no node runs (it imports the image when it starts)."""
    sock = ROOT / ".cache" / "cluster" / "node" / "containerd.sock"
    if not sock.is_socket():
        return False
    cmd = ["ctr", "-a", str(sock), "-n", "k8s.io", "images", "import", "--no-unpack"]
    subprocess.run([*cmd, str(image.archive)], check=True, capture_output=True)
    return True


def lock() -> None:
    """Resolves pyproject.toml's dependencies in a fresh virtualenv and pins them all."""
    header = [line for line in REQUIREMENTS.read_text().splitlines() if line.startswith("#")]
    with tempfile.TemporaryDirectory() as tmp:
        _pip("wheel", "--no-deps", "--wheel-dir", f"{tmp}/wheels", str(ROOT))
        subprocess.run([sys.executable, "-m", "venv", f"{tmp}/venv"], check=True)
        pip = [f"{tmp}/venv/bin/python", "-m", "pip", "--disable-pip-version-check", "-q"]
        (wheel,) = Path(tmp, "wheels").glob("meshless_mtls-*.whl")
        subprocess.run([*pip, "install", "--only-binary=:all:", str(wheel)], check=True)
        frozen = subprocess.run(
            [*pip, "freeze", "--exclude", "meshless-mtls"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    REQUIREMENTS.write_text("\n".join([*header, *frozen.split()]) + "\n")


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "lock":
        lock()
        return
    if command not in ("build", "load"):
        raise SystemExit("usage: operatorimage.py build|load|lock")
    started = time.monotonic()
    image = build_image()
    loaded = command == "load" and load(image)
    if command == "load" and not loaded:
        print("no node runs in this work tree: `make cluster NODE=1` imports the image at start")
    size = image.archive.stat().st_size
    print(
        json.dumps(
            {
                "image": image.name,
                "archive": str(image.archive),
                "bytes": size,
                "seconds": round(time.monotonic() - started, 1),
                "loaded": loaded,
            }
        )
    )


if __name__ == "__main__":
    main()
