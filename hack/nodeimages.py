"""Container images for the local node, assembled from files on this machine: no registry.

Each image is written as an OCI image archive (oci-layout, index.json, blobs) that
`ctr -n k8s.io images import` takes. Names are stable, the same on every machine, so that
manifests (examples/, tests) can name them; what an image holds is this machine's:

- ``meshless.local/pause:<k8s version>``: kubernetes' pause.c, linked statically
  (hack/build-node.sh), the pod sandbox image;
- ``meshless.local/busybox:local``: /bin/busybox and its applets;
- ``meshless.local/python:local``: busybox plus Debian's python3.11, its standard library and
  the shared libraries they load (enough for an ssl server or client);
- ``meshless.local/python-meshless:<project version>``: the python image plus the project's
  ``meshless`` package and cryptography (what meshless.pki imports), for programs in pods
  that use the project's own code on the mounted files;
- ``meshless.local/nginx:local`` and ``meshless.local/nodejs:local``: busybox plus the
  machine's nginx or node binary and its libraries, when installed;
- ``meshless.local/meshless:<the chart's appVersion>``: the operator (hack/operatorimage.py).

The tag ``local`` is never a package version of this machine (a Debian upgrade, or another
machine, would make a manifest's tag name an image the node does not have). Archives are cached
in ~/.cache/meshless/images/ under a key made of the files that go in (Debian's by path, size
and mtime; ours by content), so a changed Debian package, pause binary or project source builds
a new archive, which replaces the older one and is imported under the same name.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FORMAT = "1"  # bump to rebuild every archive when this file changes how it writes them
CACHE = Path(os.environ.get("MESHLESS_IMAGE_CACHE", Path.home() / ".cache/meshless/images"))
BUSYBOX = Path("/bin/busybox")
PYTHON = Path("/usr/bin/python3.11")
PYTHON_LIB = Path("/usr/lib/python3.11")
# parts of the standard library no server needs
PYTHON_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data"}


# files from Debian packages: keyed by size and mtime; anything else by content (a copied
# pause binary or a fresh checkout of the project gets new mtimes, not new content)
SYSTEM_DIRS = ("/usr/", "/bin/", "/lib", "/etc/")


# the tag of the images made from this machine's Debian packages (see above)
LOCAL_TAG = "local"


@dataclass(frozen=True)
class Image:
    name: str  # e.g. meshless.local/busybox:local
    archive: Path


def _shared_libs(binaries: Iterable[Path]) -> set[Path]:
    libs: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts:
                target = parts[parts.index("=>") + 1]
                if target.startswith("/"):
                    libs.add(Path(target))
            elif parts and parts[0].startswith("/"):
                libs.add(Path(parts[0]))  # the dynamic loader
    return libs


class Layer:
    """A deterministic layer tar: files from the host placed at given paths, owned by root."""

    def __init__(self) -> None:
        # path -> (kind, source): dir, file (host Path), text (content), symlink (target)
        self.entries: dict[str, tuple[str, Path | str | None]] = {}

    def dir(self, path: str) -> None:
        parts = Path(path.strip("/")).parts
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), ("dir", None))

    def file(self, path: str, source: Path) -> None:
        self.dir(str(Path(path).parent))
        self.entries[path.strip("/")] = ("file", source)

    def text(self, path: str, content: str) -> None:
        self.dir(str(Path(path).parent))
        self.entries[path.strip("/")] = ("text", content)

    def symlink(self, path: str, target: str) -> None:
        self.dir(str(Path(path).parent))
        self.entries[path.strip("/")] = ("symlink", target)

    def copy_host(self, source: Path) -> None:
        """A host file at the same path; a symlink (e.g. /lib64 -> usr/lib64) is resolved."""
        real = source.resolve()
        self.file(str(real), real)
        if real != source:
            self.symlink(str(source), str(real))

    def inputs(self) -> list[str]:
        key = []
        for path, (kind, source) in sorted(self.entries.items()):
            if kind == "file" and str(source).startswith(SYSTEM_DIRS):
                assert isinstance(source, Path)  # a Debian package's file: size and mtime
                st = source.stat()
                key.append(f"{path} {st.st_size} {st.st_mtime_ns} {st.st_mode & 0o777}")
            elif kind == "file":
                assert isinstance(source, Path)  # ours (pause, the project): its content
                digest = hashlib.sha256(source.read_bytes()).hexdigest()
                key.append(f"{path} {digest} {source.stat().st_mode & 0o777}")
            elif kind == "text":
                assert isinstance(source, str)
                key.append(f"{path} text {hashlib.sha256(source.encode()).hexdigest()}")
            else:
                key.append(f"{path} {kind} {source}")
        return key

    def tar_bytes(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, (kind, source) in sorted(self.entries.items()):
                info = tarfile.TarInfo(path)
                info.mtime = 0
                if kind == "dir":
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif kind == "symlink":
                    assert isinstance(source, str)
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, source, 0o777
                    tar.addfile(info)
                elif kind == "text":
                    assert isinstance(source, str)
                    data = source.encode()
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
                else:
                    assert isinstance(source, Path)
                    data = source.read_bytes()
                    info.size, info.mode = len(data), source.stat().st_mode & 0o777
                    tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()


def _busybox_layer() -> Layer:
    layer = Layer()
    layer.file("bin/busybox", BUSYBOX)
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            layer.symlink(applet, "/bin/busybox")
    for d in ("tmp", "etc", "proc", "sys", "dev", "var/run"):
        layer.dir(d)
    return layer


def _python_layer() -> Layer:
    layer = Layer()
    layer.copy_host(PYTHON)
    layer.symlink("usr/bin/python3", "python3.11")
    extensions = []
    for dirpath, dirnames, filenames in os.walk(PYTHON_LIB):
        rel = Path(dirpath).relative_to(PYTHON_LIB)
        if rel == Path("."):
            dirnames[:] = [d for d in dirnames if d not in PYTHON_SKIP]
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and d != "site-packages"]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            layer.file(str(path), path)
            if name.endswith(".so"):
                extensions.append(path)
    for lib in sorted(_shared_libs([PYTHON, *extensions])):
        layer.copy_host(lib)
    return layer


NGINX = Path("/usr/sbin/nginx")
NODEJS = Path("/usr/bin/node")
# users nginx (and anything else) may look up; nginx run as root switches to nobody
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
# a default that answers on 8080; tests and users mount their own /etc/nginx/nginx.conf
NGINX_CONF = """daemon off;
error_log stderr;
pid /run/nginx.pid;
events {}
http {
    access_log /dev/stdout;
    server {
        listen 8080;
        location / { return 200 "nginx"; }
    }
}
"""


def _nginx_layer() -> Layer:
    layer = Layer()
    layer.copy_host(NGINX)
    for lib in sorted(_shared_libs([NGINX])):
        layer.copy_host(lib)
    layer.text("etc/passwd", PASSWD)
    layer.text("etc/group", GROUP)
    layer.text("etc/nginx/nginx.conf", NGINX_CONF)
    if Path("/etc/nginx/mime.types").exists():
        layer.file("etc/nginx/mime.types", Path("/etc/nginx/mime.types"))
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        layer.dir(f"var/lib/nginx/{d}")
    layer.dir("var/log/nginx")
    layer.dir("run")
    return layer


def _nodejs_layer() -> Layer:
    layer = Layer()
    layer.copy_host(NODEJS)
    for lib in sorted(_shared_libs([NODEJS])):
        layer.copy_host(lib)
    layer.text("etc/passwd", PASSWD)
    layer.text("etc/group", GROUP)
    return layer


SITE = "usr/lib/python3/dist-packages"  # on Debian python3.11's sys.path
# what meshless.pki needs besides the standard library, taken from the running interpreter's
# site-packages (cryptography's wheels are abi3 / cp311: they load in Debian's python3.11)
PKI_DEPENDENCIES = ("cryptography", "cffi", "pycparser")


def _tree(layer: Layer, source: Path, target: str) -> list[Path]:
    """Copies a package directory (no bytecode caches); returns the extension modules."""
    extensions = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink() and not name.endswith(".pyc"):
                layer.file(f"{target}/{path.relative_to(source)}", path)
                if name.endswith(".so"):
                    extensions.append(path)
    return extensions


def _meshless_layer(package: Path) -> Layer:
    """The project's `meshless` package and the libraries its PKI core imports."""
    import importlib.util

    layer = Layer()
    _tree(layer, package, f"{SITE}/meshless")
    extensions = []
    site_packages = None
    for dependency in PKI_DEPENDENCIES:
        spec = importlib.util.find_spec(dependency)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"{dependency} is not installed for {sys.executable}")
        directory = Path(spec.origin).parent
        site_packages = directory.parent
        extensions += _tree(layer, directory, f"{SITE}/{dependency}")
    assert site_packages is not None
    for backend in site_packages.glob("_cffi_backend*.so"):
        layer.file(f"{SITE}/{backend.name}", backend)
        extensions.append(backend)
    for lib in sorted(_shared_libs(extensions)):
        layer.copy_host(lib)
    return layer


def _project_version(package: Path) -> str:
    for line in (package.parent.parent / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    return "0.0.0"


def _pause_layer(pause: Path) -> Layer:
    layer = Layer()
    layer.file("pause", pause)
    return layer


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def _write_archive(path: Path, name: str, layers: list[Layer], config: dict[str, object]) -> None:
    blobs: dict[str, bytes] = {}
    layer_descs, diff_ids = [], []
    for layer in layers:
        raw = layer.tar_bytes()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip.compress(raw, compresslevel=1, mtime=0)
        layer_descs.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(blobs, gz)}
        )
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_blob(blobs, json.dumps(image_config, sort_keys=True).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layer_descs,
    }
    manifest_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(blobs, json.dumps(manifest, sort_keys=True).encode()),
        "annotations": {
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
        },
    }
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # builds in other work trees share the cache
    with tarfile.open(tmp, "w") as tar:

        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            add(f"blobs/sha256/{digest.split(':', 1)[1]}", data)
    tmp.rename(path)


def _cached(name: str, layers: list[Layer], config: dict[str, object]) -> Image:
    key = hashlib.sha256(
        "\n".join(
            [FORMAT, name, json.dumps(config, sort_keys=True)]
            + [line for layer in layers for line in layer.inputs()]
        ).encode()
    ).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    short = name.split("/")[-1].replace(":", "_")
    archive = CACHE / f"{short}-{key}.oci.tar"
    if not archive.exists():
        _write_archive(archive, name, layers, config)
        for stale in CACHE.glob(f"{short}-*.oci.tar"):  # older builds of the same image
            if stale != archive:
                stale.unlink(missing_ok=True)
    return Image(name, archive)


def build_images(
    bindir: Path, kubernetes_version: str, package: Path | None = None
) -> dict[str, Image]:
    """Builds (or reuses) every node image; keys are short names: pause, busybox, python,
    python-meshless (when `package`, the project's meshless directory, is given), and nginx
    and nodejs when this machine has them (Debian's nginx, nodejs)."""
    busybox = _busybox_layer()
    python = _python_layer()
    path_env = ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"]
    images = {
        "pause": _cached(
            f"meshless.local/pause:{kubernetes_version}",
            [_pause_layer(bindir / "pause")],
            {"Entrypoint": ["/pause"]},
        ),
        "busybox": _cached(
            f"meshless.local/busybox:{LOCAL_TAG}",
            [busybox],
            {"Env": path_env, "Cmd": ["sh"]},
        ),
        "python": _cached(
            f"meshless.local/python:{LOCAL_TAG}",
            [busybox, python],
            {"Env": [*path_env, "PYTHONDONTWRITEBYTECODE=1"], "Cmd": ["python3"]},
        ),
    }
    if package is not None:
        images["python-meshless"] = _cached(
            f"meshless.local/python-meshless:{_project_version(package)}",
            [busybox, python, _meshless_layer(package)],
            {"Env": [*path_env, "PYTHONDONTWRITEBYTECODE=1"], "Cmd": ["python3"]},
        )
    if NGINX.exists():
        images["nginx"] = _cached(
            f"meshless.local/nginx:{LOCAL_TAG}",
            [busybox, _nginx_layer()],
            {"Env": path_env, "Cmd": ["nginx"]},
        )
    if NODEJS.exists():
        images["nodejs"] = _cached(
            f"meshless.local/nodejs:{LOCAL_TAG}",
            [busybox, _nodejs_layer()],
            {"Env": path_env, "Cmd": ["node"]},
        )
    return images
