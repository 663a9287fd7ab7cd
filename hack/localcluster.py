"""A local Kubernetes control plane for development and tests: etcd and kube-apiserver.

Like controller-runtime's envtest: no kubelet, scheduler or controller-manager. Both binaries
are built from their Go modules by hack/build-control-plane.sh. The API server listens on
loopback with a generated PKI, client-certificate admin auth, RBAC, service-account token
issuance (TokenRequest) and the admission webhook plugins on. With a node (``up --node``) the
API server runs in node mode: it listens on every address (pods reach it at the node's
10.244.0.1 through the ``kubernetes`` Service), advertises 10.244.0.1 as that Service's
endpoint, and its ServiceAccount admission plugin is on (pods get API tokens; without the
node's controller-manager no ``default`` ServiceAccount would exist, so the plain control plane
keeps the plugin off). ``localnode.py up`` switches a running plain control plane to node mode
(one API server restart, same port and data), ``localnode.py down`` back.

    python hack/localcluster.py up      # start in the background, wait for /readyz
    python hack/localcluster.py up --node  # ... and a node that runs pods (hack/localnode.py)
    python hack/localcluster.py down    # stop (the node too, if any), leaving no process behind
    python hack/localcluster.py status
    python hack/localcluster.py restart kube-apiserver  # or etcd: same flags, ports and data
    python hack/localcluster.py up --pod-certificates   # ... with the Pod Certificates API
                                                         # (or MESHLESS_POD_CERTIFICATES=1)

State lives in .cache/cluster/ (kubeconfig, PKI, logs, pids, command lines, etcd data).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
import localnode  # hack/ is not a package

ROOT = Path(__file__).resolve().parent.parent
# MESHLESS_CLUSTER_STATE: another state directory runs a second, independent control plane (the
# pod-certificate tests start one with the API on beside the default one).
STATE = Path(os.environ.get("MESHLESS_CLUSTER_STATE") or ROOT / ".cache" / "cluster")

# Pod Certificates (KEP-4317): beta and off by default in 1.35/1.36. The ONE definition of what
# each component needs; the node (hack/localnode.py) takes the kubelet's and controller-manager's.
POD_CERTIFICATE_GATES = {
    "PodCertificateRequest": True,
    "ClusterTrustBundle": True,
    "ClusterTrustBundleProjection": True,
}


def pod_certificate_flags(component: str) -> list[str]:
    """The command-line flags that turn Pod Certificates on in `component` (kube-apiserver,
    kube-controller-manager or kubelet). The API server also serves certificates.k8s.io/v1beta1,
    and runs the Node authorizer and NodeRestriction, which admit a node's PodCertificateRequest
    only for a pod bound to it."""
    gates = ",".join(f"{name}={str(on).lower()}" for name, on in POD_CERTIFICATE_GATES.items())
    flags = [f"--feature-gates={gates}"]
    if component == "kube-apiserver":
        flags.append("--runtime-config=certificates.k8s.io/v1beta1=true")
    elif component not in ("kube-controller-manager", "kubelet"):
        raise ValueError(f"no pod-certificate flags for {component!r}")
    return flags


def pod_certificates_requested() -> bool:
    """MESHLESS_POD_CERTIFICATES=1 (or true/yes): `up` turns the API on, as --pod-certificates."""
    return os.environ.get("MESHLESS_POD_CERTIFICATES", "").lower() in ("1", "true", "yes")


# Requests by ServiceAccounts (an operator run with a ServiceAccount token, as the chart's is)
# are audited, metadata only, to .cache/cluster/logs/audit.log: the chart test reads which
# verbs the operator used. Admin requests (tests, `make run`) are not audited.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
READY_TIMEOUT_S = 120.0
COMPONENTS = ("etcd", "kube-apiserver")  # in start order
KUBERNETES_SERVICE_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    f"kubernetes.default.svc.{localnode.CLUSTER_DOMAIN}",
)
# the API server's flags that differ between the plain control plane and node mode
MODE_FLAGS = ("--bind-address=", "--advertise-address=", "--disable-admission-plugins=")


def apiserver_mode_flags(node: bool) -> list[str]:
    if node:  # the ServiceAccount admission plugin is on by default
        return ["--bind-address=0.0.0.0", f"--advertise-address={localnode.NODE_IP}"]
    return [
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--disable-admission-plugins=ServiceAccount",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        usages = []
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            # localhost, and what pods use on a node: the `kubernetes` Service's names and IP
            # (and the node address the Service leads to)
            names: list[x509.GeneralName] = [
                x509.DNSName("localhost"),
                *(x509.DNSName(n) for n in KUBERNETES_SERVICE_NAMES),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address(localnode.KUBERNETES_SERVICE_IP)),
                x509.IPAddress(ipaddress.ip_address(localnode.NODE_IP)),
            ]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(pki: Path) -> None:
    """CA, API server serving cert, admin client cert, service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshless-local-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write_key(pki / "ca.key", ca_key)
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    server = _cert(server_name, server_key, ca_name, ca_key, ca=False, server=True)
    _write_key(pki / "apiserver.key", server_key)
    (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "meshless-admin"),
        ]
    )
    admin = _cert(admin_name, admin_key, ca_name, ca_key, ca=False, client=True)
    _write_key(pki / "admin.key", admin_key)
    (pki / "admin.crt").write_bytes(admin.public_bytes(serialization.Encoding.PEM))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kubeconfig(server: str, pki: Path) -> str:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "meshless-local",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "meshless-admin",
                "user": {
                    "client-certificate": str(pki / "admin.crt"),
                    "client-key": str(pki / "admin.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "meshless-local",
                "context": {"cluster": "meshless-local", "user": "meshless-admin"},
            }
        ],
        "current-context": "meshless-local",
    }
    return json.dumps(cfg, indent=2)


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie (exited, not yet reaped by a parent that is not us,
    e.g. a test process that called `restart`) counts as gone once all its threads are: a
    killed Go program's main thread turns zombie before the others have closed its sockets."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z" or threads > 1


def read_pids() -> dict[str, int]:
    path = STATE / "pids.json"
    if not path.exists():
        return {}
    return {k: int(v) for k, v in json.loads(path.read_text()).items()}


def is_ready() -> bool:
    info = STATE / "info.json"
    if not info.exists():
        return False
    server = json.loads(info.read_text())["server"]
    pki = STATE / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    try:
        with urllib.request.urlopen(f"{server}/readyz", context=ctx, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, ssl.SSLError):
        return False


def binaries() -> Path:
    out = (
        subprocess.run(
            ["bash", str(ROOT / "hack" / "build-control-plane.sh")],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    return Path(out)


def up(node: bool = False, pod_certificates: bool = False) -> None:
    # A node asks for pod certificates (make cluster NODE=1): the API comes with it.
    pod_certificates = pod_certificates or node or pod_certificates_requested()
    if node and STATE != localnode.STATE:
        sys.exit(f"--node runs only with the default state directory {localnode.STATE}")
    if node:  # say why before starting anything
        try:
            localnode.check_machine()
        except localnode.NodeUnavailable as err:
            sys.exit(f"the node cannot start on this machine: {err}")
    pids = read_pids()
    if pids and all(_pid_alive(p) for p in pids.values()) and is_ready():
        print(f"control plane already running; kubeconfig at {STATE / 'kubeconfig'}")
        if node:
            node_up()
        return
    down(quiet=True)
    bindir = binaries()
    started = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    pki = STATE / "pki"
    make_pki(pki)
    logs = STATE / "logs"
    logs.mkdir(exist_ok=True)
    audit_policy = STATE / "audit-policy.yaml"
    audit_policy.write_text(AUDIT_POLICY)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    data = STATE / "etcd-data"
    etcd_cmd = [
        str(bindir / "etcd"),
        "--name=default",
        f"--data-dir={data}",
        f"--listen-client-urls={etcd_url}",
        f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
        "--unsafe-no-fsync",
        "--log-level=warn",
        "--quota-backend-bytes=8589934592",
    ]
    server = f"https://127.0.0.1:{api_port}"
    api_cmd = [
        str(bindir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--cert-dir={pki}",
        f"--secure-port={api_port}",
        *apiserver_mode_flags(node),
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--service-cluster-ip-range={localnode.SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--allow-privileged=true",
        # how the API server reaches a kubelet (logs, exec) when a node runs (--node)
        f"--kubelet-client-certificate={pki / 'admin.crt'}",
        f"--kubelet-client-key={pki / 'admin.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
        # API Priority and Fairness on, as in a real cluster. The admin certificate (tests,
        # `make run`) is in system:masters, which APF's bootstrap "exempt" FlowSchema never
        # queues or rejects; a test can give another user a tiny share to meet 429s.
        # These two limits sum to the server's concurrency limit, shared by priority level.
        "--max-requests-inflight=1000",
        "--max-mutating-requests-inflight=500",
        f"--audit-policy-file={audit_policy}",
        f"--audit-log-path={logs / 'audit.log'}",
        "--audit-log-maxsize=200",
        "--audit-log-maxbackup=1",
        "--v=0",
    ]
    if pod_certificates:
        api_cmd = _with_pod_certificates(api_cmd)
    commands = {"etcd": etcd_cmd, "kube-apiserver": api_cmd}
    # What `restart` runs again: the same flags, ports and data directory.
    (STATE / "commands.json").write_text(json.dumps(commands, indent=2))
    procs = {name: _start(name, commands[name]) for name in COMPONENTS}
    (STATE / "pids.json").write_text(json.dumps(procs))
    (STATE / "info.json").write_text(json.dumps({"server": server}))
    (STATE / "kubeconfig").write_text(kubeconfig(server, pki))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not is_ready():
        for name, pid in procs.items():
            if not _pid_alive(pid) or _reaped(pid):
                tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                down(quiet=True)
                sys.exit(f"{name} exited during start; last log lines:\n{tail}")
        if time.monotonic() > deadline:
            down(quiet=True)
            sys.exit(f"control plane not ready after {READY_TIMEOUT_S:.0f}s; logs in {logs}")
        time.sleep(0.2)
    print(
        f"control plane ready in {time.monotonic() - started:.1f}s at {server}; "
        f"kubeconfig at {STATE / 'kubeconfig'}"
    )
    if node:
        node_up()


def _with_pod_certificates(api_cmd: list[str]) -> list[str]:
    """The API server's command line with Pod Certificates on: the gates and runtime-config, the
    Node authorizer before RBAC and NodeRestriction among the admission plugins."""
    out = []
    for arg in api_cmd:
        if arg == "--authorization-mode=RBAC":
            arg = "--authorization-mode=Node,RBAC"
        elif arg.startswith("--enable-admission-plugins="):
            arg += ",NodeRestriction"
        out.append(arg)
    return out + pod_certificate_flags("kube-apiserver")


def _start(name: str, command: list[str]) -> int:
    """Start one component in its own session, appending to its log; returns its pid."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    with (STATE / "logs" / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        ).pid


def _stop(pid: int, sig: int = signal.SIGTERM, grace_s: float = 15.0) -> None:
    """Signal the process group of `pid`; SIGKILL it if it is still there after `grace_s`."""
    if not _pid_alive(pid):
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _pid_alive(pid) and not _reaped(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid) and not _reaped(pid):
        os.killpg(pid, signal.SIGKILL)
        while _pid_alive(pid) and not _reaped(pid):
            time.sleep(0.05)


def _etcd_healthy(command: list[str]) -> bool:
    flag = "--listen-client-urls="
    url = next(arg[len(flag) :] for arg in command if arg.startswith(flag)).split(",")[0]
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def restart(name: str, sig: int = signal.SIGTERM, timeout: float = READY_TIMEOUT_S) -> int:
    """Stop one component of the running control plane (`sig`, e.g. SIGKILL for a crash) and
    start it again with the command line `up` recorded: same flags, ports and etcd data. Updates
    pids.json and returns once the API server answers /readyz again (its etcd check included);
    returns the new pid."""
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")
    commands_file = STATE / "commands.json"
    if not commands_file.exists():
        raise RuntimeError(f"no {commands_file}: start the control plane with `up` first")
    command = json.loads(commands_file.read_text())[name]
    pids = read_pids()
    if name in pids:
        _stop(pids[name], sig)
    pids[name] = pid = _start(name, command)
    (STATE / "pids.json").write_text(json.dumps(pids))
    deadline = time.monotonic() + timeout
    # The API server's /readyz caches its etcd check for a moment: etcd answers first.
    while not is_ready() or (name == "etcd" and not _etcd_healthy(command)):
        if not _pid_alive(pid) or _reaped(pid):
            tail = (STATE / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited after a restart; last log lines:\n{tail}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"control plane not ready {timeout:.0f}s after restarting {name}")
        time.sleep(0.1)
    return pid


def node_mode(on: bool) -> bool:
    """Switches the running API server to node mode (`on`: the node's flags, and the Pod
    Certificates API, which stays on afterwards) or back to the plain control plane: the same
    command line with the mode's flags, restarted (same port and etcd data). Returns
    whether it restarted (False: already in that mode)."""
    commands_file = STATE / "commands.json"
    commands = json.loads(commands_file.read_text())
    command = commands["kube-apiserver"]
    kept = [arg for arg in command if not arg.startswith(MODE_FLAGS)]
    wanted = [kept[0], *apiserver_mode_flags(on), *kept[1:]]
    flags = pod_certificate_flags("kube-apiserver")
    if on and not all(flag in wanted for flag in flags):
        wanted = _with_pod_certificates(wanted)  # the node's kubelet asks for pod certificates
    if sorted(wanted) == sorted(command):
        return False
    commands["kube-apiserver"] = wanted
    commands_file.write_text(json.dumps(commands, indent=2))
    restart("kube-apiserver")
    return True


def _cluster() -> localnode.Cluster:
    server = json.loads((STATE / "info.json").read_text())["server"]
    return localnode.Cluster(server=server, pki=STATE / "pki")


def node_up() -> None:
    """Adds the node (hack/localnode.py) to the running control plane."""
    try:
        localnode.up(_cluster())
    except localnode.NodeUnavailable as err:
        localnode.down(_cluster(), quiet=True)
        sys.exit(f"the node cannot start on this machine: {err}")


def _reaped(pid: int) -> bool:
    """True if pid is our exited (zombie) child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def down(quiet: bool = False) -> None:
    # The node belongs to the default state directory's control plane only.
    if STATE == localnode.STATE and (localnode.NODE.exists() or localnode.OWNER.exists()):
        localnode.down(_cluster() if is_ready() else None, quiet=quiet)
    pids = read_pids()
    # API server first, so it does not log etcd errors on its way out.
    for name in reversed(COMPONENTS):
        pid = pids.get(name)
        if pid is not None:
            _stop(pid)
    for leftover in ("pids.json", "info.json", "kubeconfig", "commands.json"):
        (STATE / leftover).unlink(missing_ok=True)
    data = STATE / "etcd-data"
    if data.exists():
        subprocess.run(["rm", "-rf", str(data)], check=True)
    if not quiet:
        print("control plane stopped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "restart"])
    parser.add_argument(
        "component", nargs="?", choices=COMPONENTS, help="restart: the component to restart"
    )
    parser.add_argument(
        "--node", action="store_true", help="up: also run a node (kubelet, containerd, ...)"
    )
    parser.add_argument(
        "--pod-certificates",
        action="store_true",
        help="up: serve the Pod Certificates API (gates, certificates.k8s.io/v1beta1, Node "
        "authorizer); also MESHLESS_POD_CERTIFICATES=1",
    )
    parser.add_argument(
        "--signal",
        default="SIGTERM",
        choices=["SIGTERM", "SIGKILL"],
        help="restart: how to stop the component (SIGKILL: a crash)",
    )
    args = parser.parse_args()
    if args.command == "up":
        up(node=args.node, pod_certificates=args.pod_certificates)
    elif args.command == "down":
        down()
    elif args.command == "restart":
        if args.component is None:
            parser.error("restart needs a component: " + " or ".join(COMPONENTS))
        started = time.monotonic()
        try:
            pid = restart(args.component, signal.Signals[args.signal])
        except RuntimeError as err:
            sys.exit(str(err))
        print(f"{args.component} restarted (pid {pid}); ready in {time.monotonic() - started:.1f}s")
    else:
        ok = is_ready()
        print("ready" if ok else "not running")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
