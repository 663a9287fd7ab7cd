"""What a user does, on the local node: install the chart with the locally built image, apply
the examples in one command, and check what they get.

- `helm install` with `meshless.local/meshless` (`make image`) and `pullPolicy=Never`: two
  operator pods Ready on the one node (preferred anti-affinity), one holds the Lease, the PDB
  allows one disruption; the API server calls the webhooks through the chart's Service;
- `kubectl apply -k examples`: every example pod holds its identity (injected at creation);
  the examples' own clients reach their servers by Service DNS name over mTLS, a test client
  with an identity reaches nginx and the Python server by their Service DNS names, a client
  without an identity is refused by each server; every STRICT policy is Enforced (the
  operator's probes reach STRICT ports from its pods, through the NetworkPolicies meshless
  renders);
- `helm upgrade` with a changed value rolls the Deployment while pods keep being created in a
  STRICT namespace: admission errors during the roll are counted (must be 0);
- `helm uninstall` removes the release's objects and leaves the CRDs, the users' objects and
  what the operator made (charts/meshless/README.md, "Uninstalling").
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client

from meshless.api import WEBHOOK_CONFIGURATION
from meshless.leader import LEASE_NAME
from tests.conftest import ROOT, Kubectl
from tests.helmtool import CHART, helm
from tests.integration.conftest import remove_webhook_configurations
from tests.node.pods import Node, pod

pytestmark = [pytest.mark.node, pytest.mark.timeout(1200)]

RELEASE, NAMESPACE = "meshless", "meshless-system"
FULLNAME = "meshless"  # the release name contains the chart name
EXAMPLES = ("nginx", "python", "nodejs")
STRICT_POLICIES = {
    "example-nginx": "web-strict",
    "example-python": "strict",
    "example-nodejs": "strict",
}
TRUST_DOMAIN = "cluster.local"
PROBE_INTERVAL = "15s"
IDENTITY_DIR = "/var/run/secrets/meshless"
TIMEOUT_S = 240

# argv: host, port. TLS with the mounted identity, a GET, prints the server's SPIFFE ID and the
# first and last line of what it answered.
MTLS_CLIENT = r"""
import socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
d = "/var/run/secrets/meshless/"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False  # SVIDs name workloads; the SPIFFE ID is checked instead
ctx.load_verify_locations(d + "ca.crt")
ctx.load_cert_chain(d + "tls.crt", d + "tls.key")
with socket.create_connection((host, port), timeout=10) as raw:
    with ctx.wrap_socket(raw) as tls:
        uris = [v for k, v in tls.getpeercert().get("subjectAltName", ()) if k == "URI"]
        tls.sendall(b"GET / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
lines = data.decode(errors="replace").strip().splitlines() or [""]
print(json.dumps({"server": uris, "first": lines[0], "last": lines[-1]}))
""".replace("import socket", "import json, socket")

# argv: host, port. TLS with no client certificate (the server's CA is not checked either):
# prints "served <line>" when the server answers, "refused <reason>" otherwise.
NO_IDENTITY_CLIENT = r"""
import socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4]
except OSError as err:
    print("unresolved", err); sys.exit()
try:
    with socket.create_connection(addr, timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = tls.recv(4096)
    line = data.decode(errors="replace").strip().splitlines()[0] if data else ""
    if line.startswith(("HTTP/1.1 200", "HTTP/1.0 200", "hello")):
        print("served", line)
    else:
        print("refused", "answered:", line or "closed")
except TimeoutError:
    print("refused", "timeout")
except (ssl.SSLError, OSError) as err:
    print("refused", type(err).__name__, getattr(err, "reason", None) or err)
"""


@dataclass
class PodCreator:
    """Creates a pod in a STRICT namespace every `period` seconds (unschedulable: they stay
    Pending, admission is what is measured) and counts the refusals."""

    core: client.CoreV1Api
    namespace: str
    period: float = 0.25
    created: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.period):
            n += 1
            body = {
                "metadata": {"name": f"roll-{n}", "labels": {"app": "roll"}},
                "spec": {
                    "nodeSelector": {"meshless.dev/test": "never-scheduled"},
                    "containers": [
                        {"name": "c", "image": "meshless.local/busybox:local", "ports": [
                            {"containerPort": 8443}
                        ]}
                    ],
                },
            }  # fmt: skip
            try:
                created = self.core.create_namespaced_pod(self.namespace, body)
                volumes = [v.name for v in created.spec.volumes or []]
                if "meshless-identity" not in volumes:
                    self.errors.append(f"roll-{n}: admitted without its identity")
                self.created += 1
            except client.ApiException as exc:
                self.errors.append(f"roll-{n}: {exc.status} {exc.body or exc.reason}")
            except Exception as exc:  # a timeout of the client itself counts too
                self.errors.append(f"roll-{n}: {type(exc).__name__}: {exc}")


def wait_for(what: str, check: Any, timeout: float = TIMEOUT_S, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def operator_pods(core: client.CoreV1Api) -> list[client.V1Pod]:
    return core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}"
    ).items


def ready(p: client.V1Pod) -> bool:
    conditions = {c.type: c.status for c in (p.status.conditions or [])}
    return p.metadata.deletion_timestamp is None and conditions.get("Ready") == "True"


def policy_table(kubectl: Kubectl) -> dict[tuple[str, str], dict[str, str]]:
    """`kubectl get mtlspol -A` as the user reads it: column name -> value per policy."""
    out = kubectl("get", "mtlspol", "-A").stdout.splitlines()
    header = out[0].split()
    rows = {}
    for line in out[1:]:
        row = dict(zip(header, line.split(), strict=False))
        rows[(row["NAMESPACE"], row["NAME"])] = row
    return rows


@pytest.fixture
def installed(
    node: Node, kubeconfig: str, api_client: client.ApiClient, kubectl: Kubectl
) -> Iterator[str]:
    """The release, and everything the test makes; all removed at the end, passed or not."""
    assert "meshless" in node.images, (
        "the node runs without the operator's image: restart it (`make cluster-down`)"
    )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert node.images["meshless"] == f"meshless.local/meshless:{chart['appVersion']}"
    remove_webhook_configurations(api_client)  # an earlier test's operator's, if any
    namespaces = [NAMESPACE, *STRICT_POLICIES]
    try:
        yield kubeconfig
    finally:
        helm("uninstall", RELEASE, "--kubeconfig", kubeconfig, "-n", NAMESPACE, check=False)
        remove_webhook_configurations(api_client)
        core = client.CoreV1Api(api_client)
        extra = core.list_namespace(label_selector="meshless.dev/test=helm-on-node").items
        for name in [*namespaces, *(n.metadata.name for n in extra)]:
            try:
                core.delete_namespace(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        kubectl("wait", "--for=delete", "namespace", *namespaces, "--timeout=100s", check=False)


def test_helm_install_examples_upgrade_uninstall(
    installed: str, node: Node, api_client: client.ApiClient, kubectl: Kubectl
) -> None:
    kubeconfig = installed
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)

    # --- helm install, as docs/node.md shows it -------------------------------------------
    started = time.monotonic()
    helm(
        "install", RELEASE, str(CHART), "--kubeconfig", kubeconfig,
        "-n", NAMESPACE, "--create-namespace",
        "--set", "image.repository=meshless.local/meshless", "--set", "image.pullPolicy=Never",
        "--set", f"settings.probeInterval={PROBE_INTERVAL}",
        "--wait", "--timeout", f"{TIMEOUT_S}s",
        timeout=TIMEOUT_S + 30,
    )  # fmt: skip
    install_s = time.monotonic() - started
    pods = [p for p in operator_pods(core) if ready(p)]
    assert len(pods) == 2, [p.metadata.name for p in operator_pods(core)]
    assert {p.spec.node_name for p in pods} == {"meshless-node"}  # both on the one node
    assert {c.image for p in pods for c in p.spec.containers} == {node.images["meshless"]}
    names = {p.metadata.name for p in pods}
    coordination = client.CoordinationV1Api(api_client)
    holder = wait_for(
        "a leader",
        lambda: coordination.read_namespaced_lease(LEASE_NAME, NAMESPACE).spec.holder_identity,
        timeout=60,
    )
    assert holder in names, (holder, names)
    pdb = client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget(FULLNAME, NAMESPACE)
    wait_for(
        "the PDB to allow one disruption",
        lambda: (
            client.PolicyV1Api(api_client)
            .read_namespaced_pod_disruption_budget(FULLNAME, NAMESPACE)
            .status.disruptions_allowed
            == 1
        ),
        timeout=60,
    )
    assert pdb.spec.max_unavailable == 1

    # The webhooks go through the chart's Service (no URL), filled in by the leader.
    registration = client.AdmissionregistrationV1Api(api_client)

    def webhooks() -> list[Any]:
        return [
            *(registration.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION).webhooks
              or []),
            *(registration.read_validating_webhook_configuration(WEBHOOK_CONFIGURATION).webhooks
              or []),
        ]  # fmt: skip

    wait_for("the leader's webhooks", lambda: len(webhooks()) >= 4, timeout=60)
    for webhook in webhooks():
        assert webhook.client_config.url is None, webhook.name
        service = webhook.client_config.service
        assert (service.namespace, service.name, service.port) == (
            NAMESPACE,
            f"{FULLNAME}-webhook",
            443,
        ), webhook.name

    # --- the examples, in one apply -------------------------------------------------------
    kubectl("apply", "-k", str(ROOT / "examples"))
    for namespace in STRICT_POLICIES:
        assert apps.list_namespaced_deployment(namespace).items
        wait_for(f"every Deployment of {namespace} available", lambda ns=namespace: all(
            d.status.updated_replicas == d.status.ready_replicas == d.spec.replicas
            for d in apps.list_namespaced_deployment(ns).items
        ), timeout=TIMEOUT_S, every=2)  # fmt: skip
    identities = {}
    pod_certificates: set[tuple[str, str]] = set()  # (namespace, ServiceAccount)
    for namespace in STRICT_POLICIES:
        for p in core.list_namespaced_pod(namespace).items:
            if p.metadata.labels.get("app") == "bad-client":  # DISABLE: no identity
                assert "meshless.dev/identity" not in p.metadata.labels
                continue
            account = p.spec.service_account_name
            assert p.metadata.labels.get("meshless.dev/identity") == account, p.metadata.name
            mounts = {m.mount_path.rstrip("/") for c in p.spec.containers for m in c.volume_mounts}
            assert IDENTITY_DIR in mounts, p.metadata.name
            identities[(namespace, p.metadata.name)] = account
            (volume,) = [v for v in p.spec.volumes if v.name == "meshless-identity"]
            if volume.projected is not None:  # PodCertificate delivery (auto: the API is on)
                pod_certificates.add((namespace, account))
    assert len(identities) == 5  # web, python server and client, nodejs server and client

    # The examples' own clients reach their servers by Service DNS name ("server") over mTLS.
    def logged(namespace: str, deployment: str, text: str) -> bool:
        logs = kubectl("logs", "-n", namespace, f"deployment/{deployment}", check=False)
        return text in logs.stdout

    python_id = f"spiffe://{TRUST_DOMAIN}/ns/example-python/sa/client"
    wait_for("the Python client's answer", lambda: logged("example-python", "client",
             f"200 hello {python_id}"), timeout=90)  # fmt: skip
    nodejs_id = f"spiffe://{TRUST_DOMAIN}/ns/example-nodejs/sa/client"
    wait_for("the Node.js client's answer", lambda: logged("example-nodejs", "client",
             f"hello {nodejs_id}"), timeout=90)  # fmt: skip
    wait_for("the bad client refused", lambda: logged("example-nodejs", "bad-client",
             "refused"), timeout=90)  # fmt: skip

    # A client of ours with an identity (the Python example's client ServiceAccount, injected)
    # reaches nginx and the Python server by their Service DNS names.
    image = node.images["meshless"]
    node.apply(
        "example-python",
        pod("mtls-client", image, ["sleep", "3600"], service_account="client"),
    )
    # a namespace under no policy: its pods get no identity
    plain = f"plain-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        {"metadata": {"name": plain, "labels": {"meshless.dev/test": "helm-on-node"}}}
    )
    node.apply(plain, pod("no-identity", image, ["sleep", "3600"]))
    node.wait_ready("example-python", "mtls-client")
    node.wait_ready(plain, "no-identity")
    answers = {}
    for host, server_id in (
        ("web.example-nginx.svc.cluster.local", "ns/example-nginx/sa/web"),
        ("server.example-python.svc.cluster.local", "ns/example-python/sa/server"),
    ):
        answer = json.loads(node.python("example-python", "mtls-client", MTLS_CLIENT, host, "8443"))
        answers[host] = answer
        assert answer["server"] == [f"spiffe://{TRUST_DOMAIN}/{server_id}"], answer
        assert answer["first"].split()[1] == "200", answer
    assert answers["web.example-nginx.svc.cluster.local"]["last"] == (
        "hello from nginx: client certificate SUCCESS"
    )
    assert answers["server.example-python.svc.cluster.local"]["last"] == f"hello {python_id}"

    # Without an identity, every server refuses: nginx and Python by their NetworkPolicies (no
    # TCP connection), Node.js (its policy turns NetworkPolicies off) in the TLS handshake.
    refusals = {}
    for host in (
        "web.example-nginx.svc.cluster.local",
        "server.example-python.svc.cluster.local",
        "server.example-nodejs.svc.cluster.local",
    ):
        refusals[host] = node.python(plain, "no-identity", NO_IDENTITY_CLIENT, host, "8443")
    assert all(r.startswith("refused") for r in refusals.values()), refusals
    assert refusals["web.example-nginx.svc.cluster.local"].strip() == "refused timeout"
    assert refusals["server.example-python.svc.cluster.local"].strip() == "refused timeout"
    assert "timeout" not in refusals["server.example-nodejs.svc.cluster.local"]

    # Every STRICT policy Enforced: the operator's probes, from its pods, passed the
    # NetworkPolicies and proved each STRICT port.
    def enforced() -> bool:
        table = policy_table(kubectl)
        return all(
            table.get((ns, name), {}).get("ENFORCED") == "True"
            for ns, name in STRICT_POLICIES.items()
        )

    wait_for("every STRICT policy Enforced", enforced, timeout=180, every=3)
    for ns, name in STRICT_POLICIES.items():
        policy = custom.get_namespaced_custom_object(
            "meshless.dev", "v1alpha1", ns, "mtlspolicies", name
        )
        strict = policy["status"]["enforcement"]["strict"]
        assert strict["proven"] >= 1 and strict["failing"] == strict["unreachable"] == 0, policy

    # --- helm upgrade with a changed value, while pods are created in a STRICT namespace --
    rolling = f"roll-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        {"metadata": {"name": rolling, "labels": {"meshless.dev/test": "helm-on-node"}}}
    )
    custom.create_namespaced_custom_object(
        "meshless.dev", "v1alpha1", rolling, "mtlspolicies",
        {"apiVersion": "meshless.dev/v1alpha1", "kind": "MtlsPolicy",
         "metadata": {"name": "strict"}, "spec": {"mode": "STRICT"}},
    )  # fmt: skip
    wait_for(
        "the rollout namespace labelled",
        lambda: (
            (core.read_namespace(rolling).metadata.labels or {}).get("meshless.dev/mtls")
            == "enabled"
        ),
        timeout=60,
    )
    before = {p.metadata.name for p in operator_pods(core)}
    creator = PodCreator(core, rolling)
    creator.start()
    try:
        wait_for("the first pods", lambda: creator.created >= 4, timeout=60)
        assert creator.errors == [], creator.errors
        rolled = time.monotonic()
        helm(
            "upgrade", RELEASE, str(CHART), "--kubeconfig", kubeconfig, "-n", NAMESPACE,
            "--reuse-values", "--set", "settings.logFormat=text",
            "--wait", "--timeout", f"{TIMEOUT_S}s",
            timeout=TIMEOUT_S + 30,
        )  # fmt: skip
        wait_for(
            "the old replicas gone",
            lambda: not ({p.metadata.name for p in operator_pods(core)} & before),
            timeout=120,
        )
        roll_s = time.monotonic() - rolled
        time.sleep(5)  # pods keep coming a little longer: the new replicas answer them too
    finally:
        creator.stop()
    after = [p for p in operator_pods(core) if ready(p)]
    assert len(after) == 2 and not ({p.metadata.name for p in after} & before)
    env = {e.name: e.value for e in after[0].spec.containers[0].env}
    assert env["MESHLESS_LOG_FORMAT"] == "text"
    print(
        f"\nhelm install {install_s:.0f} s; rollout {roll_s:.0f} s: {creator.created} pods "
        f"created, {len(creator.errors)} admission errors"
    )
    assert creator.errors == [], creator.errors
    assert creator.created >= 10
    new_holder = wait_for(
        "a leader among the new replicas",
        lambda: (
            coordination.read_namespaced_lease(LEASE_NAME, NAMESPACE).spec.holder_identity
            in {p.metadata.name for p in after}
        ),
        timeout=60,
    )
    assert new_holder

    # --- helm uninstall --------------------------------------------------------------------
    manifest = helm("get", "manifest", RELEASE, "--kubeconfig", kubeconfig, "-n", NAMESPACE).stdout
    release_objects = [o for o in yaml.safe_load_all(manifest) if o]
    helm("uninstall", RELEASE, "--kubeconfig", kubeconfig, "-n", NAMESPACE, "--wait")
    for obj in release_objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        namespaced = ["-n", NAMESPACE] if obj["metadata"].get("namespace") else []
        got = kubectl("get", kind, name, *namespaced, "--ignore-not-found", "-o", "name")
        assert got.stdout.strip() == "", f"{kind}/{name} outlived helm uninstall"
    wait_for("the operator pods gone", lambda: not operator_pods(core), timeout=120)
    # What stays (charts/meshless/README.md): the CRDs and the users' objects...
    for crd in ("mtlspolicies.meshless.dev", "workloadidentities.meshless.dev"):
        kubectl("get", "crd", crd)
    for ns, name in STRICT_POLICIES.items():
        custom.get_namespaced_custom_object("meshless.dev", "v1alpha1", ns, "mtlspolicies", name)
        for deployment in apps.list_namespaced_deployment(ns).items:
            assert deployment.status.ready_replicas == deployment.spec.replicas, ns
    # ...and what the operator made: CA Secret, webhook CA, Lease, identities and their
    # Secrets, trust bundles, NetworkPolicies, the namespace label.
    core.read_namespaced_secret("meshless-ca", NAMESPACE)
    core.read_namespaced_secret("meshless-webhook-ca", NAMESPACE)
    coordination.read_namespaced_lease(LEASE_NAME, NAMESPACE)
    for (ns, _), account in identities.items():
        labels = core.read_namespace(ns).metadata.labels or {}
        assert labels.get("meshless.dev/mtls") == "enabled"
        if (ns, account) in pod_certificates:  # the kubelet holds the key: nothing was made
            continue
        custom.get_namespaced_custom_object(
            "meshless.dev", "v1alpha1", ns, "workloadidentities", f"meshless-{account}"
        )
        core.read_namespaced_secret(f"meshless-{account}-mtls", ns)
        core.read_namespaced_config_map("meshless-trust-bundle", ns)
    if pod_certificates:  # their trust bundle, kept in step with the CA by the operator
        kubectl("get", "clustertrustbundle", "meshless.dev:spiffe:primary")
    assert client.NetworkingV1Api(api_client).list_namespaced_network_policy("example-nginx").items
