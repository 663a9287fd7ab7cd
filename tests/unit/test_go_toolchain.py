"""hack/go.sh: the go the build scripts use. A machine without a Go new enough (none at all, or
Debian 12's go 1.19, which predates GOTOOLCHAIN) gets the pinned toolchain from the Go module
proxy, verified against the go.sum hash in hack/versions.env before anything of it is unpacked.

Each run is a clean environment: PATH of /usr/bin:/bin only (no go there), a temporary HOME
for ~/.cache/meshless/go, and MESHLESS_GO naming the machine's only go (a stand-in script
that reports the version under test). The fetch test downloads the real toolchain (76 MB)."""

from __future__ import annotations

import re
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GO_SH = ROOT / "hack" / "go.sh"


def pinned(key: str) -> str:
    for line in (ROOT / "hack" / "versions.env").read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{key} not pinned in hack/versions.env")


def stand_in_go(directory: Path, version: str) -> Path:
    """A `go` that only answers `go version`, as a machine's go of that version would."""
    go = directory / "bin" / "go"
    go.parent.mkdir(parents=True)
    go.write_text(f'#!/bin/sh\necho "go version go{version} linux/amd64"\n')
    go.chmod(0o755)
    return go


def machine_goproxy() -> str:
    """The proxy this machine's go uses (the test environment names no proxy host itself)."""
    answer = subprocess.run(["go", "env", "GOPROXY"], capture_output=True, text=True, check=True)
    return answer.stdout.strip()


def go_sh(home: Path, machine_go: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(GO_SH)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), "MESHLESS_GO": str(machine_go), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_go_new_enough_is_used_as_it_is(tmp_path: Path) -> None:
    go = stand_in_go(tmp_path / "machine", pinned("GO_MIN_VERSION"))
    proc = go_sh(tmp_path / "home", go)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(go)
    assert not (tmp_path / "home" / ".cache").exists()  # nothing fetched


def test_without_go_the_pinned_toolchain_is_fetched_and_verified(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old = stand_in_go(tmp_path / "machine", "1.19.8")  # Debian 12's
    proc = go_sh(home, old, GOPROXY=machine_goproxy())
    assert proc.returncode == 0, proc.stderr
    toolchain = pinned("GO_TOOLCHAIN_VERSION")
    go = home / ".cache" / "meshless" / "go" / toolchain / "bin" / "go"
    assert proc.stdout.strip() == str(go)
    assert "older than" in proc.stderr and "verified" in proc.stderr
    version = subprocess.run(
        [str(go), "version"], env={"PATH": "/usr/bin:/bin", "GOTOOLCHAIN": "local"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert version.split()[2] == toolchain

    # a second call (a missing go this time) reuses it without fetching
    again = go_sh(home, tmp_path / "no-such-go")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(go) and "fetching" not in again.stderr


def test_a_toolchain_that_does_not_match_the_pinned_hash_is_refused(tmp_path: Path) -> None:
    """A proxy (here a file:// one) serving another zip under the pinned version's name: it
    is refused and nothing of it is unpacked."""
    toolchain = pinned("GO_TOOLCHAIN_VERSION")
    version = f"v0.0.1-{toolchain}.linux-amd64"
    served = tmp_path / "proxy" / "golang.org" / "toolchain" / "@v" / f"{version}.zip"
    served.parent.mkdir(parents=True)
    with zipfile.ZipFile(served, "w") as archive:
        prefix = f"golang.org/toolchain@{version}/"
        archive.writestr(f"{prefix}bin/go", "#!/bin/sh\necho owned\n")
        archive.writestr(f"{prefix}VERSION", f"{toolchain}\n")
    home = tmp_path / "home"

    proc = go_sh(home, tmp_path / "no-such-go", GOPROXY=f"file://{tmp_path / 'proxy'}")

    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "checksum mismatch" in proc.stderr
    assert pinned("GO_TOOLCHAIN_H1_LINUX_AMD64") in proc.stderr
    cache = home / ".cache" / "meshless" / "go"
    assert list(cache.iterdir()) == []  # neither the toolchain nor the download is left


def test_every_build_script_takes_its_go_from_go_sh() -> None:
    """A script that runs `go` asks hack/go.sh for it first (a fresh machine has no go)."""
    runs_go = re.compile(r"(?:^|[;&|(]|\$\()\s*(?:[A-Z_][A-Z0-9_]*=\S*\s+)*go\s", re.MULTILINE)
    scripts = [p for p in sorted((ROOT / "hack").glob("*.sh")) if p.name != "go.sh"]
    users = [p for p in scripts if runs_go.search(p.read_text()) or '"$go" ' in p.read_text()]
    assert {p.name for p in users} >= {"build-control-plane.sh", "build-kubectl.sh"}
    missing = [p.name for p in users if '"$here/go.sh"' not in p.read_text()]
    assert missing == []


def test_with_no_go_and_no_goproxy_it_asks_for_goproxy(tmp_path: Path) -> None:
    proc = go_sh(tmp_path / "home", tmp_path / "no-such-go")
    assert proc.returncode != 0
    assert "set GOPROXY" in proc.stderr
    assert not (tmp_path / "home" / ".cache" / "meshless" / "go").exists()
