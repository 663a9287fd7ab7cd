"""Fetches the pinned Go toolchain from the Go module proxy, where each Go release is the module
golang.org/toolchain at version v0.0.1-<go version>.<os>-<arch>, so a machine needs no Go (and
no curl or unzip) to build the project's Go binaries. hack/go.sh calls it when the machine's Go
is missing or older than GO_MIN_VERSION.

The zip is checked against GO_TOOLCHAIN_H1_LINUX_AMD64 in hack/versions.env (its go.sum hash,
as the Go checksum database records it, computed the way the go command computes a module
zip's hash) before anything in it is unpacked; a mismatch unpacks nothing and exits 1. It lands
in ~/.cache/meshless/go/<go version>/ (MESHLESS_GO_CACHE overrides the parent), and the path of
its bin/go is printed on stdout. The proxy is the first of GOPROXY's entries that is a URL
(else the default of a go on the machine, even one too old to build with; with neither, it
asks for GOPROXY), so a mirror or a file:// directory works as it does for go.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

HACK = Path(__file__).resolve().parent
MODULE = "golang.org/toolchain"
MARKER = ".meshless-h1"  # the verified hash, written last: a half-unpacked tree has none


class ToolchainError(Exception):
    pass


def pinned() -> dict[str, str]:
    pairs = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def configured_proxies() -> str:
    """GOPROXY from the environment, else what a Go on the machine (even one too old to build
    with, such as Debian 12's) says its default is, else nothing."""
    if os.environ.get("GOPROXY"):
        return os.environ["GOPROXY"]
    named = os.environ.get("MESHLESS_GO")  # as in go.sh: the only go to consider
    for go in [named] if named else [shutil.which("go"), "/usr/local/go/bin/go"]:
        if go and os.access(go, os.X_OK):
            try:
                answer = subprocess.run(
                    [go, "env", "GOPROXY"], capture_output=True, text=True, timeout=30
                )
            except OSError:
                continue
            if answer.returncode == 0 and answer.stdout.strip():
                return answer.stdout.strip()
    return ""


def proxy_url() -> str:
    for entry in re.split(r"[,|]", configured_proxies()):
        if "://" in entry:
            return entry.strip().rstrip("/")
    raise ToolchainError(
        "no Go module proxy known: set GOPROXY to the proxy's URL (there is no go on this"
        " machine to ask for its default)"
    )


def target() -> str:
    """The toolchain's platform suffix, e.g. linux-amd64."""
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    machine = platform.machine().lower()
    if sys.platform != "linux" or machine not in arch:
        raise ToolchainError(f"no pinned Go toolchain for {sys.platform}/{machine}: install Go")
    return f"linux-{arch[machine]}"


def zip_h1(path: Path) -> str:
    """The go.sum hash of a module zip (golang.org/x/mod/sumdb/dirhash Hash1 over its files)."""
    summary = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if "\n" in name:
                raise ToolchainError(f"file name with a newline in {path.name}")
            summary.update(f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except OSError as err:
        raise ToolchainError(f"cannot fetch {url}: {err}") from err


def unpack(archive_path: Path, prefix: str, dest: Path) -> None:
    """Unpacks the files under prefix into dest; module zips keep no modes, so bin/ and
    pkg/tool/ are made executable as the go command does for the toolchains it fetches."""
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(prefix) or ".." in info.filename.split("/"):
                raise ToolchainError(f"unexpected path in the toolchain zip: {info.filename!r}")
            rel = info.filename[len(prefix) :]
            if not rel or info.is_dir():
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            if rel.startswith(("bin/", "pkg/tool/")):
                out.chmod(0o755)


def fetch() -> Path:
    versions = pinned()
    go_version = versions["GO_TOOLCHAIN_VERSION"]  # go1.27.3
    platform_suffix = target()
    want = versions.get(f"GO_TOOLCHAIN_H1_{platform_suffix.upper().replace('-', '_')}")
    if not want:
        raise ToolchainError(
            f"no GO_TOOLCHAIN_H1_{platform_suffix.upper().replace('-', '_')} in "
            "hack/versions.env: install Go, or pin that hash"
        )
    cache = Path(os.environ.get("MESHLESS_GO_CACHE") or Path.home() / ".cache/meshless/go")
    root = cache / go_version
    go = root / "bin" / "go"
    if go.exists() and (root / MARKER).is_file() and (root / MARKER).read_text().strip() == want:
        return go

    version = f"v0.0.1-{go_version}.{platform_suffix}"
    url = f"{proxy_url()}/{MODULE}/@v/{version}.zip"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as tmp:
        archive_path = Path(tmp) / "toolchain.zip"
        print(f"fetching Go {go_version} from {url}", file=sys.stderr)
        download(url, archive_path)
        try:
            got = zip_h1(archive_path)
        except zipfile.BadZipFile as err:
            raise ToolchainError(f"{url} is not a zip: {err}") from err
        if got != want:
            raise ToolchainError(
                f"{MODULE}@{version}: checksum mismatch: got {got}, hack/versions.env pins "
                f"{want}; nothing was unpacked"
            )
        staged = Path(tmp) / "goroot"
        unpack(archive_path, f"{MODULE}@{version}/", staged)
        (staged / MARKER).write_text(want + "\n")
        if root.exists():
            shutil.rmtree(root)
        staged.rename(root)
    print(f"Go {go_version} verified ({want}) and unpacked in {root}", file=sys.stderr)
    return go


def main(argv: list[str]) -> int:
    if argv[1:] != ["fetch"]:
        print("usage: gotoolchain.py fetch", file=sys.stderr)
        return 2
    try:
        print(fetch())
    except ToolchainError as err:
        print(f"gotoolchain: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
