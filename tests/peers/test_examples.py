"""The examples' programs and configuration, run on loopback with identities issued by
meshless.pki (a CA, SVIDs for server and client, and a client from another CA): real
handshakes, no cluster. The good client is served; the bad-certificate client is refused.
The manifests are rendered with `kubectl kustomize` and checked against the sources."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.peers.servers import (
    free_port,
    new_ca,
    wait_for_port,
    write_identity,
)
from tests.tools import kubectl_path, require_tool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TRUST = "spiffe://cluster.local/ns/example"
SERVER_ID, CLIENT_ID, OTHER_ID = f"{TRUST}/sa/server", f"{TRUST}/sa/client", f"{TRUST}/sa/other"


@dataclass(frozen=True)
class ExampleIdentities:
    server: Path
    client: Path
    other: Path  # same CA, a ServiceAccount the server does not allow
    rogue: Path  # the client's SPIFFE ID, signed by a CA nobody trusts
    bundle_only: Path  # ca.crt alone: a client without a certificate


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> ExampleIdentities:
    root = tmp_path_factory.mktemp("example-identities")
    ca, rogue = new_ca(), new_ca()
    bundle_only = root / "bundle-only"
    bundle_only.mkdir()
    server = write_identity(root / "server", ca, SERVER_ID)
    shutil.copy(server / "ca.crt", bundle_only / "ca.crt")
    return ExampleIdentities(
        server=server,
        client=write_identity(root / "client", ca, CLIENT_ID),
        other=write_identity(root / "other", ca, OTHER_ID),
        # trusts the real CA (it can check the server) but presents a rogue certificate
        rogue=write_identity(root / "rogue", rogue, CLIENT_ID, bundle_from=ca),
        bundle_only=bundle_only,
    )


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run(command: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _start(
    procs: list[subprocess.Popen[bytes]], command: list[str], port: int, log: Path, **env: str
) -> None:
    proc = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    procs.append(proc)
    wait_for_port(port, proc)


def _verify(port: int, prober: Path, mode: str) -> bool:
    """`python -m meshless verify` with `prober`'s identity; True when the verdict is `mode`."""
    command = [sys.executable, "-m", "meshless", "verify", f"127.0.0.1:{port}"]
    code, out = _run(
        [*command, "--cert-dir", str(prober), "--spiffe-id", SERVER_ID, "--expect", mode]
    )
    assert out.splitlines()[-1] == mode, out
    return code == 0


# --- Python (meshless.tls) ----------------------------------------------------------------


def _python_client(url: str, cert_dir: Path, *extra: str) -> tuple[int, str]:
    client = str(EXAMPLES / "python" / "client.py")
    return _run([sys.executable, client, url, "--cert-dir", str(cert_dir), *extra])


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_python_example(
    ids: ExampleIdentities,
    started: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    mode: str,
) -> None:
    port = free_port()
    server = [sys.executable, str(EXAMPLES / "python" / "server.py"), "--port", str(port)]
    server += ["--cert-dir", str(ids.server), "--allow", CLIENT_ID]
    _start(started, server, port, tmp_path / "server.log", MESHLESS_MTLS_MODE=mode)
    url = f"https://127.0.0.1:{port}/"

    assert _python_client(url, ids.client, "--server-id", SERVER_ID) == (
        0,
        f"200 hello {CLIENT_ID}",
    )
    code, out = _python_client(url, ids.rogue, "--server-id", SERVER_ID)
    assert code == 1 and out.startswith("refused: "), out  # unknown CA: refused in the handshake
    assert _python_client(url, ids.other) == (1, f"403 {OTHER_ID} is not allowed")
    code, out = _python_client(url, ids.client, "--server-id", OTHER_ID)
    assert (code, out) == (1, f"refused the server: peer {SERVER_ID} is not allowed")
    assert "refused" in (tmp_path / "server.log").read_text()
    # Without an allow-list the server is what MESHLESS_MTLS_MODE says, as the probe sees it.
    open_port = free_port()
    server = [sys.executable, str(EXAMPLES / "python" / "server.py"), "--port", str(open_port)]
    server += ["--cert-dir", str(ids.server)]
    _start(started, server, open_port, tmp_path / "open.log", MESHLESS_MTLS_MODE=mode)
    assert _verify(open_port, ids.client, mode)


# --- Node.js (tls) ------------------------------------------------------------------------


def _node_client(port: int, cert_dir: Path, *server_id: str) -> tuple[int, str]:
    client = str(EXAMPLES / "nodejs" / "client.js")
    return _run(
        [require_tool("node"), client, "127.0.0.1", str(port), *server_id],
        {"CERT_DIR": str(cert_dir)},
    )


def test_nodejs_example(
    ids: ExampleIdentities, started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    node = require_tool("node")
    port = free_port()
    log = tmp_path / "server.log"
    _start(
        started,
        [node, str(EXAMPLES / "nodejs" / "server.js"), str(port)],
        port,
        log,
        CERT_DIR=str(ids.server),
        ALLOWED_SPIFFE_IDS=CLIENT_ID,
    )
    assert _node_client(port, ids.client, SERVER_ID) == (0, f"hello {CLIENT_ID}")
    # the seed's bad client: a certificate from a CA the server does not trust
    code, out = _node_client(port, ids.rogue, SERVER_ID)
    assert code == 1 and out.startswith("refused:") and "hello" not in out, out
    code, out = _node_client(port, ids.bundle_only, SERVER_ID)  # no certificate at all
    assert code == 1 and out.startswith("refused:"), out
    assert _node_client(port, ids.other) == (1, f"refused: forbidden {OTHER_ID}")
    code, out = _node_client(port, ids.client, OTHER_ID)
    assert code == 1 and f"server is {SERVER_ID}, expected {OTHER_ID}" in out, out
    assert _verify(port, ids.client, "STRICT")
    text = log.read_text()
    assert f"served {CLIENT_ID}" in text and "refused" in text, text


# --- nginx --------------------------------------------------------------------------------

MOUNT = "/var/run/secrets/meshless/"


def render_nginx(identity: Path, port: int, prefix: Path) -> str:
    """examples/nginx/nginx.conf for a loopback port, with `identity` as the mounted files
    and `prefix` for what the container keeps in /tmp/nginx. Nothing else changes."""
    conf = (EXAMPLES / "nginx" / "nginx.conf").read_text()
    replacements = {
        MOUNT: f"{identity}/",
        "listen 8443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/tmp/nginx": str(prefix),
        "access_log /dev/stdout;": f"access_log {prefix}/access.log;",
    }
    for old, new in replacements.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    return conf


def test_nginx_example_is_strict(
    ids: ExampleIdentities, started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, prefix = free_port(), tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx(ids.server, port, prefix))
    binary = require_tool("nginx", "/usr/sbin/nginx")
    command = [binary, "-e", "stderr", "-p", str(prefix), "-c", str(conf)]
    _start(started, command, port, tmp_path / "nginx.log")

    assert _verify(port, ids.client, "STRICT")
    url = f"https://127.0.0.1:{port}/"
    code, out = _python_client(url, ids.client, "--server-id", SERVER_ID)
    assert (code, out) == (0, "200 hello from nginx: client certificate SUCCESS")
    code, out = _python_client(url, ids.rogue, "--server-id", SERVER_ID)
    assert code == 1 and out.startswith("400 "), out  # nginx answers 400, never serves it


# --- manifests ----------------------------------------------------------------------------


def _rendered(example: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [kubectl_path(), "kustomize", str(EXAMPLES / example)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _app_version() -> str:
    chart = yaml.safe_load((ROOT / "charts" / "meshless" / "Chart.yaml").read_text())
    return str(chart["appVersion"])


# Images the local node has on every machine (hack/nodeimages.py, `make image`): names that
# never carry a package version of the machine that built them.
NODE_IMAGES = {
    "meshless.local/nginx:local",
    "meshless.local/nodejs:local",
    f"meshless.local/meshless:{_app_version()}",
}


def test_all_examples_render_as_one_kustomization_in_order() -> None:
    """`kubectl apply -k examples`: every example, each Namespace and MtlsPolicy before that
    example's Deployments."""
    docs = _rendered(".")
    seen_policy: set[str] = set()
    for doc in docs:
        meta = doc["metadata"]
        assert isinstance(meta, dict)
        if doc["kind"] == "MtlsPolicy":
            seen_policy.add(meta["namespace"])
        if doc["kind"] == "Deployment":
            assert meta["namespace"] in seen_policy, meta
    assert seen_policy == {f"example-{name}" for name in SOURCES}


SOURCES = {
    "nginx": ["nginx.conf"],
    "python": ["server.py", "client.py"],
    "nodejs": ["server.js", "client.js"],
}


@pytest.mark.parametrize("example", sorted(SOURCES))
def test_manifests_render_from_the_tested_sources(example: str) -> None:
    docs = _rendered(example)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}  # type: ignore[index]
    namespace = f"example-{example}"
    assert ("Namespace", namespace) in kinds
    assert all(
        d["metadata"].get("namespace") == namespace  # type: ignore[index,union-attr]
        for d in docs
        if d["kind"] != "Namespace"
    )
    config_maps = [d for d in docs if d["kind"] == "ConfigMap"]
    assert len(config_maps) == 1
    for name in SOURCES[example]:  # the ConfigMap carries exactly the files tested above
        assert config_maps[0]["data"][name] == (EXAMPLES / example / name).read_text()  # type: ignore[index]
    # Applied in the order listed: the Namespace, then the MtlsPolicies, then the workloads
    # (kustomize's default order would create the Deployments first; examples/README.md).
    order = [d["kind"] for d in docs]
    first_workload = order.index("Deployment")
    assert order[0] == "Namespace"
    assert all(i < first_workload for i, kind in enumerate(order) if kind == "MtlsPolicy")
    policies = [d for d in docs if d["kind"] == "MtlsPolicy"]
    assert policies and all(p["apiVersion"] == "meshless.dev/v1alpha1" for p in policies)
    assert any(p["spec"]["mode"] == "STRICT" for p in policies)  # type: ignore[index]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]  # type: ignore[index]
        for container in pod["containers"]:
            assert container["imagePullPolicy"] == "Never"
            assert container["image"] in NODE_IMAGES, container["image"]  # tag by kustomization
            assert container["securityContext"]["runAsNonRoot"] is True
