"""A real node for the local cluster: pods run, Secrets are mounted, NetworkPolicies drop packets.

Started by ``localcluster.py up --node`` next to the API server and etcd (or added to a running
control plane), stopped by ``localcluster.py down``:

- kube-controller-manager and kube-scheduler (namespace deletion, garbage collection, ...);
- containerd (Debian's, CRI) with its own root, state and socket under .cache/cluster/node/,
  runc, and the CNI bridge plugin on a private bridge ``meshless0`` (10.244.0.0/24, no
  gateway, no NAT: pods reach pod IPs, and the node at 10.244.0.1, nothing else);
- a kubelet registered as ``meshless-node`` (client certificate from the cluster CA,
  cgroupfs driver, ``failCgroupV1: false`` for this cgroup v1 machine);
- kube-network-policies, kind's NetworkPolicy engine (nftables + nfqueue), on the host network;
- kube-proxy (nftables mode) and CoreDNS (the ``kube-dns`` Service, cluster.local), host
  processes: Service IPs (10.0.0.0/24) answer from pods and from the host;
- images built locally (hack/nodeimages.py) and imported, used with ``imagePullPolicy: Never``.

One node per machine: the bridge, the pod network, the cgroup root and the nftables table are
machine-wide, so a second worktree is refused while another one's node runs
(/run/meshless-node.json says whose it is). Needs root.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HACK = Path(__file__).resolve().parent
ROOT = HACK.parent
STATE = ROOT / ".cache" / "cluster"
NODE = STATE / "node"
OWNER = Path("/run/meshless-node.json")
NODE_NAME = "meshless-node"
BRIDGE = "meshless0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
CGROUP_ROOT = "meshless"
CGROUP_FS = Path("/sys/fs/cgroup")
NFT_TABLE = "kube-network-policies"  # kube-network-policies' default table (inet family)
# Services: the API server's --service-cluster-ip-range; `kubernetes` gets its first address,
# the cluster DNS a fixed one. kube-proxy (nftables mode) programs the tables `ip kube-proxy`
# and `ip6 kube-proxy`; `inet meshless-node` keeps pod packets from leaving through the host.
SERVICE_CIDR = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[1])
DNS_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[10])
CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 1053  # CoreDNS on NODE_IP; the kube-dns Service maps port 53 to it
PROXY_TABLES = (("ip", "kube-proxy"), ("ip6", "kube-proxy"))
GUARD_TABLE = "meshless-node"  # inet family
CNI_BIN = Path("/usr/lib/cni")
RUNC = "/usr/sbin/runc"
READY_TIMEOUT_S = 120.0
# started in this order, stopped in the reverse one
COMPONENTS = (
    "containerd",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-network-policies",
    "kube-proxy",
    "coredns",
)


class NodeUnavailable(RuntimeError):
    """This machine cannot run the node; the message says why."""


@dataclass(frozen=True)
class Cluster:
    server: str  # https://127.0.0.1:PORT
    pki: Path

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def apply(self, path: str, body: dict[str, Any]) -> None:
        """Create, or leave alone when it exists (the objects here never change)."""
        try:
            self.api("POST", path, body)
        except urllib.error.HTTPError as err:
            if err.code != 409:
                raise


# ---------------------------------------------------------------------------------------------
# small helpers


def _run(
    *cmd: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        raise NodeUnavailable(
            f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # our own exited child is a zombie until reaped
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done != pid
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split(") ", 1)[-1][:1] != "Z"


def _stop(pid: int, sig: int, timeout: float) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    pki: Path, name: str, cn: str, orgs: list[str], *, client: bool, ip: str | None = None
) -> None:
    """Writes <name>.crt/.key signed by the cluster CA (client and/or serving certificate)."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if ip:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(NODE_NAME), x509.IPAddress(ipaddress.ip_address(ip))]
            ),
            critical=False,
        )
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(pki / f"{name}.key", key)
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _kubeconfig(cluster: Cluster, user: str) -> str:
    pki = cluster.pki
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": cluster.server,
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(pki / f"{user}.crt"),
                        "client-key": str(pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
            "current-context": "local",
        },
        indent=2,
    )


def node_binaries() -> Path:
    out = subprocess.run(
        ["bash", str(HACK / "build-node.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


def _versions() -> dict[str, str]:
    pairs = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


# ---------------------------------------------------------------------------------------------
# preconditions


def check_machine() -> None:
    """Raises NodeUnavailable with the reason when this machine cannot run the node."""
    if os.geteuid() != 0:
        raise NodeUnavailable("the node needs root (containerd, runc, network namespaces)")
    for tool in ("containerd", "containerd-shim-runc-v2", "ctr", "nft", "ip", "unshare"):
        if shutil.which(tool) is None:
            raise NodeUnavailable(f"{tool} not found: run `make system-packages`")
    for path in (Path(RUNC), CNI_BIN / "bridge", CNI_BIN / "host-local", CNI_BIN / "loopback"):
        if not path.exists():
            raise NodeUnavailable(f"{path} not found: run `make system-packages`")
    if "overlay" not in Path("/proc/filesystems").read_text():
        raise NodeUnavailable("the overlay filesystem is not available (containerd's snapshotter)")
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        _run("modprobe", "br_netfilter", check=False)
        if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            raise NodeUnavailable(
                "br_netfilter is not loaded (bridged pod traffic must pass netfilter for "
                "NetworkPolicies): modprobe br_netfilter"
            )
    probe = _run("nft", "--check", "-f", "-", check=False, stdin=_NFT_PROBE)
    if probe.returncode != 0:
        raise NodeUnavailable(
            "this kernel lacks an nftables feature kube-proxy's nftables mode uses (nat, "
            f"masquerade, numgen, vmap, ct, reject): {probe.stderr.strip()}"
        )
    owner = _owner()
    if owner and owner.get("root") != str(ROOT) and _pid_alive(int(owner.get("pid", 0))):
        raise NodeUnavailable(
            f"another worktree's node runs on this machine ({owner['root']}); one node per "
            "machine: stop it there with `make cluster-down`"
        )


# What kube-proxy's nftables mode writes, checked with `nft --check` (the kernel validates the
# batch, nothing is committed): a kernel without one of these expressions fails here, by name.
_NFT_PROBE = """table ip meshless-probe {
  map endpoints {
    type ipv4_addr . inet_proto . inet_service : verdict
  }
  chain nat {
    type nat hook prerouting priority dstnat;
    ct state new ip daddr 10.0.0.1 numgen random mod 2 vmap { 0 : accept, 1 : accept }
    ip daddr . meta l4proto . th dport vmap @endpoints
    meta l4proto tcp dnat to 10.244.0.2:80
  }
  chain post {
    type nat hook postrouting priority srcnat;
    meta mark 0x4000 masquerade fully-random
  }
  chain filter {
    type filter hook forward priority filter;
    ct state invalid drop
    ip daddr 10.0.0.2 reject with icmp type host-unreachable
  }
}
"""


def _owner() -> dict[str, Any]:
    try:
        return dict(json.loads(OWNER.read_text()))
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# configuration files


def _containerd_config(sandbox_image: str) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{NODE / "containerd" / "root"}"
state = "{NODE / "containerd" / "state"}"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{NODE / "containerd.sock"}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  netns_mounts_under_state_dir = true
  # without CAP_SYS_RESOURCE (this VM) runc cannot lower oom_score_adj (pause asks for -998):
  # keep containers at or above containerd's own value
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{NODE / "runc"}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{NODE / "cni"}"
    max_conf_num = 1
"""


def _cni_config() -> str:
    net = ipaddress.ip_network(POD_CIDR)
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "meshless",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": False,  # no default route, no global ip_forward
                    "ipMasq": False,
                    # a pod reaching itself through a Service IP (kube-proxy masquerades it)
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(NODE / "ipam"),
                        # Service IPs go to the node, where kube-proxy translates them
                        "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
                        "ranges": [
                            [
                                {
                                    "subnet": POD_CIDR,
                                    "rangeStart": str(net[10]),
                                    "rangeEnd": str(net[-2]),
                                }
                            ]
                        ],
                    },
                }
            ],
        },
        indent=2,
    )


def _kubelet_config(
    cluster: Cluster, port: int, healthz_port: int, gates: dict[str, bool] | None = None
) -> str:
    pki = cluster.pki
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Pod Certificates: the kubelet makes the key and sends PodCertificateRequests
            "featureGates": dict(gates or {}),
            "failCgroupV1": False,  # this machine is cgroup v1 (hybrid); KEP-5573
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            # sized for a 2-core machine shared with builds and tests
            "kubeReserved": {"cpu": "200m", "memory": "256Mi"},
            "systemReserved": {"cpu": "200m", "memory": "256Mi"},
            "maxPods": 32,
            "podPidsLimit": 1024,
            "cpuManagerPolicy": "none",
            "memoryManagerPolicy": "None",
            "failSwapOn": False,
            "address": NODE_IP,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            # only holders of a cluster-CA client certificate reach the kubelet at all
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{NODE / 'containerd.sock'}",
            "podLogsDir": str(NODE / "pod-logs"),
            "volumePluginDir": str(NODE / "volume-plugins"),
            "resolvConf": "",
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [DNS_SERVICE_IP],
            # images are imported, never pulled: keep them
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            # mounted Secrets follow their object within seconds (rotation reaches the files)
            "syncFrequency": "10s",
            "serializeImagePulls": False,
            "registerNode": True,
            # no KUBE-FIREWALL / canary chains in the host's iptables: nothing to leave behind
            "makeIPTablesUtilChains": False,
            "rotateCertificates": False,
            "shutdownGracePeriod": "0s",
            "logging": {"format": "text"},
        },
        indent=2,
    )


# ---------------------------------------------------------------------------------------------
# host setup and cleanup


def _cgroup_dirs() -> list[Path]:
    """Our cgroup root in every mounted hierarchy (v1 controllers and the unified one)."""
    dirs = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ", 1)
        fstype = fields[1].split()[0] if len(fields) == 2 else ""
        mountpoint = Path(line.split()[4])
        v1_or_hybrid = fstype in ("cgroup", "cgroup2") and mountpoint.parent == CGROUP_FS
        unified = fstype == "cgroup2" and mountpoint == CGROUP_FS
        if v1_or_hybrid or unified:
            dirs.append(mountpoint / CGROUP_ROOT)
    return dirs


def _make_cgroups() -> None:
    for d in _cgroup_dirs():
        d.mkdir(exist_ok=True)
        if d.parent.name == "cpuset":
            for f in ("cpuset.cpus", "cpuset.mems"):
                if (d / f).read_text().strip() == "":
                    (d / f).write_text((d.parent / f).read_text())


def _cgroup_processes() -> list[int]:
    """Processes in our cgroup root (containers of this node; nothing else is put there)."""
    pids: set[int] = set()
    for top in _cgroup_dirs():
        for procs in top.glob("**/cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return sorted(pids)


def _remove_cgroups() -> list[str]:
    problems = []
    for top in _cgroup_dirs():
        if not top.exists():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as err:
                problems.append(f"cgroup {dirpath}: {err.strerror}")
    return problems


def _mounts_under(path: Path) -> list[str]:
    out = []
    prefix = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            out.append(point)
    return out


def _make_bridge() -> None:
    if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    prefix = ipaddress.ip_network(POD_CIDR).prefixlen
    addrs = _run("ip", "-o", "addr", "show", "dev", BRIDGE).stdout
    if f"{NODE_IP}/{prefix}" not in addrs:
        _run("ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")


def _route_services(api_port: int) -> None:
    """Service IPs: pods send them to the node (a CNI route), the node translates them
    (kube-proxy). Everything here goes away with the bridge: the host's route to the Service
    range (so nothing for it ever leaves by the default route), forwarding for packets that
    came in on the bridge only (a Service IP translated to a pod IP goes back out on it; the
    machine-wide ip_forward stays as it is), and a guard table that drops whatever a pod would
    send through the host to another interface. The guard also keeps the API server, which
    listens on every address in node mode (for pods), to loopback and the bridge."""
    if SERVICE_CIDR not in _run("ip", "route", "show", SERVICE_CIDR).stdout:
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/forwarding").write_text("1")
    guard = (
        f"table inet {GUARD_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{BRIDGE}" oifname != "{BRIDGE}" drop\n'
        "  }\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f'    tcp dport {api_port} iifname != {{ "lo", "{BRIDGE}" }} drop\n'
        "  }\n"
        "}\n"
    )
    _run("nft", "-f", "-", stdin=guard)


def _nft_table_exists(family: str = "inet", table: str = NFT_TABLE) -> bool:
    return _run("nft", "list", "table", family, table, check=False).returncode == 0


def _node_tables() -> list[tuple[str, str]]:
    """The node's nftables tables that exist now (kube-network-policies', kube-proxy's, ours)."""
    ours = [("inet", NFT_TABLE), *PROXY_TABLES, ("inet", GUARD_TABLE)]
    return [(family, table) for family, table in ours if _nft_table_exists(family, table)]


def _our_shims() -> list[int]:
    """containerd shims serving our containerd (their command line names our socket)."""
    sock = str(NODE / "containerd.sock")
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and sock.encode() in argv:
            pids.append(int(proc.name))
    return pids


SHIM_SOCKETS = Path("/run/containerd/s")


def _task_ids() -> list[str]:
    """Containers containerd started a shim for (their bundle directories)."""
    bundles = NODE / "containerd" / "state" / "io.containerd.runtime.v2.task" / "k8s.io"
    return sorted(p.name for p in bundles.iterdir()) if bundles.is_dir() else []


def _shim_socket_name(task_id: str) -> str:
    """containerd 1.6's shim socket name: sha256 of <grpc address>/<namespace>/<id>."""
    key = os.path.join(str(NODE / "containerd.sock"), "k8s.io", task_id)
    return hashlib.sha256(key.encode()).hexdigest()


def leftovers(pids: dict[str, int] | None = None) -> list[str]:
    """What a stopped node must not leave behind; empty when everything is clean."""
    found = []
    for name, pid in (pids if pids is not None else _read_pids()).items():
        if _pid_alive(pid):
            found.append(f"process {name} ({pid})")
    found += [f"shim process {pid}" for pid in _our_shims()]
    found += [
        f"shim socket {SHIM_SOCKETS / _shim_socket_name(t)}"
        for t in _task_ids()
        if (SHIM_SOCKETS / _shim_socket_name(t)).exists()
    ]
    found += [f"mount {m}" for m in _mounts_under(NODE)]
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"network interface {BRIDGE}")
    found += [f"nftables table {family} {table}" for family, table in _node_tables()]
    if SERVICE_CIDR in _run("ip", "route", "show", SERVICE_CIDR, check=False).stdout:
        found.append(f"route {SERVICE_CIDR}")
    found += [f"process {pid} in the node's cgroups" for pid in _cgroup_processes()]
    found += [f"cgroup {d}" for d in _cgroup_dirs() if d.exists()]
    if NODE.exists():
        netns = list((NODE / "containerd" / "state").glob("**/netns/*"))
        found += [f"network namespace {p}" for p in netns]
    return found


# ---------------------------------------------------------------------------------------------
# start and stop


def _read_pids() -> dict[str, int]:
    path = NODE / "pids.json"
    if not path.exists():
        return {}
    return {k: int(v) for k, v in json.loads(path.read_text()).items()}


def _spawn(name: str, cmd: list[str], env: dict[str, str] | None = None) -> int:
    logs = NODE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{name}.log").open("ab") as log:
        pid = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env or {k: v for k, v in os.environ.items() if not k.startswith("KUBE")},
        ).pid
    pids = _read_pids()
    pids[name] = pid
    (NODE / "pids.json").write_text(json.dumps(pids))
    return pid


def _wait(what: str, ready: Any, timeout: float, watch: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (OSError, ValueError, urllib.error.URLError):
            pass
        pids = _read_pids()
        for name in watch:
            if name in pids and not _pid_alive(pids[name]):
                log = (NODE / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise NodeUnavailable(f"{name} exited while waiting for {what}; log tail:\n{log}")
        if time.monotonic() > deadline:
            raise NodeUnavailable(
                f"{what} not reached after {timeout:.0f}s; logs in {STATE / 'node-logs'}"
            )
        time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _netpol_rbac(cluster: Cluster) -> str:
    """A ServiceAccount for kube-network-policies and a token for it (TokenRequest)."""
    sa = "kube-network-policies"
    cluster.apply(
        "/api/v1/namespaces/kube-system/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}},
    )
    rules = [
        {
            "apiGroups": [""],
            "resources": ["pods", "namespaces", "nodes"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["networkpolicies"],
            "verbs": ["get", "list", "watch"],
        },
        {
            "apiGroups": ["policy.networking.k8s.io"],
            "resources": ["adminnetworkpolicies", "baselineadminnetworkpolicies"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    cluster.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": sa},
            "rules": rules,
        },
    )
    cluster.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": sa},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": "kube-system"}],
        },
    )
    token = cluster.api(
        "POST",
        f"/api/v1/namespaces/kube-system/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7 * 24 * 3600},
        },
    )
    return str(token["status"]["token"])


def _node_rbac(cluster: Cluster) -> None:
    """The kubelet authenticates as system:node:<name>; RBAC's system:node role lets it work."""
    cluster.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "meshless:node"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:node",
            },
            "subjects": [
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": f"system:node:{NODE_NAME}",
                }
            ],
        },
    )


def _proxy_config(cluster: Cluster) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(NODE / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,  # also the node IP kube-proxy assumes
            "healthzBindAddress": f"127.0.0.1:{_free_port()}",
            "metricsBindAddress": f"127.0.0.1:{_free_port()}",
            # nftables: see docs/node.md (this kernel has nftables' nat, numgen and vmaps
            # built in; iptables would work too, through nft_compat, with more rules)
            "mode": "nftables",
            "clusterCIDR": POD_CIDR,
            "detectLocalMode": "ClusterCIDR",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # leave the machine's conntrack sysctls alone (0: do not set)
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "oomScoreAdj": 0,
            "logging": {"format": "text"},
        },
        indent=2,
    )


def _reverse_zone(cidr: str) -> str:
    """The in-addr.arpa zone of a /24 (10.0.0.0/24 -> 0.0.10.in-addr.arpa)."""
    net = ipaddress.ip_network(cidr)
    assert net.prefixlen == 24, cidr
    return net.network_address.reverse_pointer.split(".", 1)[1]


def _corefile(ready_port: int, health_port: int) -> str:
    """cluster.local and the reverse zones of the Service and pod ranges, from the API. No
    upstream: pods here have no route beyond the node, so other names are refused at once."""
    zones = [CLUSTER_DOMAIN, _reverse_zone(SERVICE_CIDR), _reverse_zone(POD_CIDR)]
    kubeconfig = NODE / "coredns.kubeconfig"
    return f"""{" ".join(f"{z}:{DNS_PORT}" for z in zones)} {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    health 127.0.0.1:{health_port}
    kubernetes {" ".join(zones)} {{
        kubeconfig {kubeconfig} local
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""


def _dns_rbac(cluster: Cluster) -> None:
    """CoreDNS authenticates with a client certificate as meshless:coredns: it reads Services,
    EndpointSlices, pods and namespaces (the rules of CoreDNS's own deployment manifests)."""
    name = "meshless:coredns"
    cluster.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
    )
    cluster.apply(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}],
        },
    )


def _dns_service(cluster: Cluster) -> None:
    """The `kube-dns` Service at its fixed IP, port 53 (UDP and TCP). CoreDNS is a host
    process, not a pod: the Service has no selector and one EndpointSlice, the node's
    address and CoreDNS's port."""
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    cluster.apply(
        "/api/v1/namespaces/kube-system/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "labels": labels},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": DNS_PORT},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": DNS_PORT},
                ],
            },
        },
    )
    cluster.apply(
        "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices",
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "localnode.meshless.dev",
                },
            },
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": [NODE_IP], "conditions": {"ready": True}, "nodeName": NODE_NAME}
            ],
            "ports": [
                {"name": "dns", "port": DNS_PORT, "protocol": "UDP"},
                {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP"},
            ],
        },
    )


def _tcp_answers(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def _node_ready(cluster: Cluster) -> bool:
    node = cluster.api("GET", f"/api/v1/nodes/{NODE_NAME}")
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions", [])
    )
    not_ready_taint = any(
        t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", [])
    )
    return ready and not not_ready_taint


def running() -> bool:
    pids = _read_pids()
    return bool(pids) and all(_pid_alive(pids.get(name, 0)) for name in COMPONENTS)


def up(cluster: Cluster) -> dict[str, str]:
    """Starts the node next to a running control plane; returns the image names by short name."""
    if running():
        return dict(json.loads((NODE / "images.json").read_text()))
    check_machine()
    down(cluster, quiet=True)
    # localcluster.py holds the one definition of the API server's node-mode and Pod
    # Certificates flags (imported here, where no cycle remains)
    sys.path.insert(0, str(HACK))
    import localcluster

    bindir = node_binaries()
    started = time.monotonic()
    versions = _versions()
    import nodeimages

    # pods get API tokens and reach the API server, and the kubelet asks for pod certificates:
    # a plain control plane restarts in node mode, with the Pod Certificates API on
    if localcluster.node_mode(True):
        print(f"kube-apiserver restarted in node mode in {time.monotonic() - started:.1f}s")

    images = nodeimages.build_images(
        bindir, versions["KUBERNETES_VERSION"], ROOT / "operator" / "meshless"
    )
    import operatorimage  # the operator's own image (`make image`), for the Helm chart

    images["meshless"] = operatorimage.build_image()
    NODE.mkdir(parents=True)
    OWNER.write_text(json.dumps({"root": str(ROOT), "pid": os.getpid()}))
    (NODE / "images.json").write_text(json.dumps({k: v.name for k, v in images.items()}))
    pki = cluster.pki
    _issue(pki, "kubelet", f"system:node:{NODE_NAME}", ["system:nodes"], client=True)
    _issue(pki, "kubelet-serving", NODE_NAME, [], client=False, ip=NODE_IP)
    # local controllers act with full rights (like the admin user), under their own names
    _issue(
        pki,
        "kube-controller-manager",
        "system:kube-controller-manager",
        ["system:masters"],
        client=True,
    )
    _issue(pki, "kube-scheduler", "system:kube-scheduler", ["system:masters"], client=True)
    # kube-proxy as the user the bootstrap binding `system:node-proxier` names; CoreDNS read-only
    _issue(pki, "kube-proxy", "system:kube-proxy", [], client=True)
    _issue(pki, "coredns", "meshless:coredns", [], client=True)
    for user in ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns"):
        (NODE / f"{user}.kubeconfig").write_text(_kubeconfig(cluster, user))

    _make_bridge()
    _route_services(int(cluster.server.rsplit(":", 1)[1]))
    _make_cgroups()
    (NODE / "cni").mkdir()
    (NODE / "cni" / "10-meshless.conflist").write_text(_cni_config())
    (NODE / "containerd.toml").write_text(_containerd_config(images["pause"].name))
    containerd = _spawn("containerd", ["containerd", "--config", str(NODE / "containerd.toml")])
    # the node is this worktree's while its containerd lives
    OWNER.write_text(json.dumps({"root": str(ROOT), "pid": containerd}))
    sock = str(NODE / "containerd.sock")
    _wait(
        "containerd's socket",
        lambda: (
            Path(sock).is_socket()
            and _run("ctr", "-a", sock, "version", check=False).returncode == 0
        ),
        30,
        ["containerd"],
    )
    for image in images.values():
        _run(
            "ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--no-unpack", str(image.archive)
        )

    kubeconfig = NODE / "kube-controller-manager.kubeconfig"
    _spawn(
        "kube-controller-manager",
        [
            str(bindir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={_free_port()}",
            f"--cert-dir={NODE / 'kcm-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--controllers=*",
            "--concurrent-namespace-syncs=5",
            "--node-monitor-grace-period=40s",
            *localcluster.pod_certificate_flags("kube-controller-manager"),
            "--v=0",
        ],
    )
    kubeconfig = NODE / "kube-scheduler.kubeconfig"
    _spawn(
        "kube-scheduler",
        [
            str(bindir / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={_free_port()}",
            f"--cert-dir={NODE / 'scheduler-certs'}",
            "--leader-elect=false",
            "--v=0",
        ],
    )
    _node_rbac(cluster)
    gates = localcluster.POD_CERTIFICATE_GATES
    (NODE / "kubelet.yaml").write_text(_kubelet_config(cluster, _free_port(), _free_port(), gates))
    _spawn(
        "kubelet",
        [
            str(bindir / "kubelet"),
            f"--config={NODE / 'kubelet.yaml'}",
            f"--kubeconfig={NODE / 'kubelet.kubeconfig'}",
            f"--root-dir={NODE / 'kubelet'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            "--v=1",
        ],
    )

    # kube-network-policies reads only the in-cluster config (token and CA at fixed paths):
    # give it those in a private mount namespace instead of writing under /run on the host.
    token_dir = NODE / "netpol-sa"
    token_dir.mkdir()
    (token_dir / "token").write_text(_netpol_rbac(cluster))
    shutil.copy(pki / "ca.crt", token_dir / "ca.crt")
    sa_path = "/run/secrets/kubernetes.io/serviceaccount"
    script = (
        "mount -t tmpfs -o size=1m,mode=0755 tmpfs /run && "
        f"mkdir -p {sa_path} && cp {token_dir}/token {token_dir}/ca.crt {sa_path}/ && "
        f'exec {bindir / "kube-network-policies"} "$@"'
    )
    port = cluster.server.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env.update(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=port)
    _spawn(
        "kube-network-policies",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "netpol",
            f"--hostname-override={NODE_NAME}",
            "--disable-nri",  # containerd 1.6 has no NRI v0.9 endpoint; pod IPs come from the API
            f"--metrics-bind-address=127.0.0.1:{_free_port()}",
            "--v=2",
        ],
        env=env,
    )

    # Services: kube-proxy and CoreDNS on the host (docs/node.md says why)
    (NODE / "kube-proxy.json").write_text(_proxy_config(cluster))
    _spawn(
        "kube-proxy",
        [str(bindir / "kube-proxy"), f"--config={NODE / 'kube-proxy.json'}", "--v=1"],
    )
    _dns_rbac(cluster)
    _dns_service(cluster)
    ready_port = _free_port()
    (NODE / "Corefile").write_text(_corefile(ready_port, _free_port()))
    _spawn("coredns", [str(bindir / "coredns"), "-conf", str(NODE / "Corefile")])

    _wait(
        "node Ready without taints", lambda: _node_ready(cluster), READY_TIMEOUT_S, list(COMPONENTS)
    )
    _wait("kube-network-policies' nftables table", _nft_table_exists, 30, ["kube-network-policies"])
    _wait(
        f"the kubernetes Service ({KUBERNETES_SERVICE_IP}:443) from the host",
        lambda: _tcp_answers(KUBERNETES_SERVICE_IP, 443),
        60,
        ["kube-proxy"],
    )
    _wait(
        "CoreDNS ready", lambda: _http_ok(f"http://127.0.0.1:{ready_port}/ready"), 60, ["coredns"]
    )
    _wait(
        f"the kube-dns Service ({DNS_SERVICE_IP}:53) from the host",
        lambda: _tcp_answers(DNS_SERVICE_IP, 53),
        60,
        ["kube-proxy", "coredns"],
    )
    print(f"node {NODE_NAME} ready in {time.monotonic() - started:.1f}s (pods on {POD_CIDR})")
    return {k: v.name for k, v in images.items()}


def down(cluster: Cluster | None, quiet: bool = False) -> list[str]:
    """Stops the node and removes what it made; returns what could not be removed."""
    owner = _owner()
    if owner and owner.get("root") != str(ROOT) and _pid_alive(int(owner.get("pid", 0))):
        return []  # another worktree's node: not ours to stop
    pids = _read_pids()
    if not pids and not NODE.exists() and not owner:
        return []
    # kube-network-policies removes its nftables table on SIGINT (not on SIGTERM)
    # (and then idles 5 s before exiting: once the table is gone it is killed)
    netpol = pids.get("kube-network-policies")
    if netpol is not None and _pid_alive(netpol):
        os.kill(netpol, signal.SIGINT)
        deadline = time.monotonic() + 10
        while _nft_table_exists() and _pid_alive(netpol) and time.monotonic() < deadline:
            time.sleep(0.1)
        _stop(netpol, signal.SIGKILL, 5)
    for name in ("coredns", "kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"):
        if name in pids:
            _stop(pids[name], signal.SIGTERM, 15)
    sock = str(NODE / "containerd.sock")
    if "containerd" in pids and _pid_alive(pids["containerd"]):
        ctr = ["ctr", "-a", sock, "-n", "k8s.io"]
        tasks = _run(*ctr, "tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            _run(*ctr, "tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
        for task in tasks:
            _run(*ctr, "tasks", "rm", "-f", task, check=False)
        for container in _run(*ctr, "containers", "ls", "-q", check=False).stdout.split():
            _run(*ctr, "containers", "rm", container, check=False)
        _stop(pids["containerd"], signal.SIGTERM, 15)
    shim_ids = _task_ids()
    for pid in _our_shims():
        _stop(pid, signal.SIGKILL, 5)
    # a shim that was killed leaves its socket in containerd 1.6's fixed directory
    for task in shim_ids:
        (SHIM_SOCKETS / _shim_socket_name(task)).unlink(missing_ok=True)
    # containers whose shim died (a crashed node) keep running: everything in our cgroups goes
    for pid in _cgroup_processes():
        _stop(pid, signal.SIGKILL, 5)
    # network namespaces, container root filesystems, volumes: innermost first
    for point in sorted(_mounts_under(NODE), key=len, reverse=True):
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)
    for family, table in _node_tables():
        _run("nft", "delete", "table", family, table, check=False)
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        ports = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False).stdout
        for line in ports.splitlines():
            _run("ip", "link", "del", line.split(":")[1].strip().split("@")[0], check=False)
        _run("ip", "link", "del", BRIDGE, check=False)
    problems = _remove_cgroups()
    # containerd 1.6 keeps shim sockets in a fixed /run/containerd/s: remove it if left empty
    for stale in (SHIM_SOCKETS, SHIM_SOCKETS.parent / "fifo", SHIM_SOCKETS.parent / "runc"):
        with contextlib.suppress(OSError):
            stale.rmdir()
    with contextlib.suppress(OSError):
        SHIM_SOCKETS.parent.rmdir()
    if cluster is not None:  # the control plane stays: forget the node and its pods
        try:
            on_node = cluster.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE_NAME}")
            for pod in on_node["items"]:
                meta = pod["metadata"]
                cluster.api(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                )
            cluster.api("DELETE", f"/api/v1/nodes/{NODE_NAME}")
            # the kube-dns Service led to the node's CoreDNS
            for path in (
                "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns-node",
                "/api/v1/namespaces/kube-system/services/kube-dns",
            ):
                with contextlib.suppress(urllib.error.HTTPError):
                    cluster.api("DELETE", path)
        except (OSError, urllib.error.URLError, ValueError):
            pass
    if (NODE / "logs").exists():  # kept for a look after the node is gone
        shutil.rmtree(STATE / "node-logs", ignore_errors=True)
        shutil.copytree(NODE / "logs", STATE / "node-logs")
    if not _mounts_under(NODE):
        shutil.rmtree(NODE, ignore_errors=True)
    OWNER.unlink(missing_ok=True)
    problems += leftovers(pids)
    if not quiet:
        print("node stopped" + (f"; left behind: {problems}" if problems else ""))
    return problems


def _running_cluster() -> Cluster | None:
    info = STATE / "info.json"
    if not info.exists():
        return None
    return Cluster(server=json.loads(info.read_text())["server"], pki=STATE / "pki")


def main() -> None:
    """`down`: stop the node only (the control plane stays); `leftovers`: list what is left."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "leftovers", "check"])
    args = parser.parse_args()
    if args.command == "check":
        try:
            check_machine()
        except NodeUnavailable as err:
            sys.exit(f"the node cannot start on this machine: {err}")
        print("this machine can run the node")
    elif args.command == "up":
        cluster = _running_cluster()
        if cluster is None:
            sys.exit("no control plane: run `python hack/localcluster.py up --node`")
        try:
            print(json.dumps(up(cluster)))
        except NodeUnavailable as err:
            down(cluster, quiet=True)
            sys.exit(f"the node cannot start on this machine: {err}")
    elif args.command == "down":
        cluster = _running_cluster()
        problems = down(cluster)
        import localcluster  # hack/ is not a package

        if cluster is not None and localcluster.is_ready():
            # the control plane stays: back to plain (no controller-manager, no ServiceAccounts)
            localcluster.node_mode(False)
        sys.exit(1 if problems else 0)
    else:
        found = leftovers()
        print(json.dumps(found))
        sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
