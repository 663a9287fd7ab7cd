"""CA rotation against the local control plane, with the operator as users run it: a root
rotation with peers handshaking all the way through (and a control run that skips Prepare and
shows failures), the bundle invariant, an intermediate rotation, and SIGKILLs in Prepare and in
Switch."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from kubernetes import client

from meshless.pki.bundle import fingerprint, parse_pem_certificates
from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed, ca_to_secret_data
from meshless.pki.constraints import report as constraints_report
from meshless.pki.rotation import RotationState
from tests.x509peers import unconstrained_ca

from .conftest import OperatorFactory, OperatorProcess
from .kubehelpers import condition, create_identity, is_ready, wait_event, wait_identity
from .rotationpeers import HandshakeLoop, Kubelet, fingerprints, leaf_root, secret_data

CA_SECRET = "meshless-ca"
SETTLE = "4s"
WINDOW = "6s"
LAGS = {"alpha": 0.3, "bravo": 1.5, "charlie": 2.5}  # kubelet sync lag per identity (< SETTLE)


def rotation_settings(**extra: str) -> dict[str, str]:
    return {"ca_settle_time": SETTLE, "ca_rotation_window": WINDOW, **extra}


class CAWatcher:
    """Reads the CA Secret: every root ever seen (to classify leaves) and the phase."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self._roots: dict[str, x509.Certificate] = {}
        self._lock = threading.Lock()

    def data(self) -> dict[str, bytes]:
        data = secret_data(self.core, self.namespace, CA_SECRET)
        assert data is not None
        return data

    def roots(self) -> list[x509.Certificate]:
        current = parse_pem_certificates(self.data()["ca.crt"])
        with self._lock:
            for root in current:
                self._roots[fingerprint(root).hex()] = root
            return list(self._roots.values())

    def state(self) -> RotationState:
        return RotationState.from_json(self.data().get("rotation.json"))

    def wait(self, predicate: Callable[[RotationState], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(state := self.state()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout}s; state: {state}")
            time.sleep(0.1)


class BundleMonitor:
    """Samples every identity Secret and the trust-bundle ConfigMap. At the first sample in
    which any leaf chains to a root other than the original one, every bundle must already
    carry both roots."""

    def __init__(
        self, core: client.CoreV1Api, namespace: str, ca: CAWatcher, old_root: str
    ) -> None:
        self.core, self.namespace, self.ca, self.old_root = core, namespace, ca, old_root
        self.first_new_leaf: dict[str, object] | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def bundles(self) -> dict[str, bytes | None]:
        cm = self.core.read_namespaced_config_map("meshless-trust-bundle", self.namespace)
        out: dict[str, bytes | None] = {"ConfigMap": (cm.data or {}).get("ca.crt", "").encode()}
        for s in self.core.list_namespaced_secret(self.namespace).items:
            out[s.metadata.name] = base64.b64decode((s.data or {}).get("ca.crt", ""))
        return out

    def _run(self) -> None:
        while not self._stop.is_set() and self.first_new_leaf is None:
            try:
                roots = self.ca.roots()
                bundles = self.bundles()
                secrets = self.core.list_namespaced_secret(self.namespace).items
            except Exception:
                time.sleep(0.1)
                continue
            self.samples += 1
            for s in secrets:
                chain = base64.b64decode((s.data or {}).get("tls.crt", ""))
                root = leaf_root(chain, roots) if chain else None
                if root is not None and root != self.old_root:
                    self.first_new_leaf = {
                        "secret": s.metadata.name,
                        "bundles": {k: sorted(fingerprints(v)) for k, v in bundles.items()},
                        "new_root": root,
                    }
                    break
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def meshless_cli(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshless", "ca", *args],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def peers(
    api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Callable[[OperatorProcess], tuple[Kubelet, HandshakeLoop, CAWatcher]]]:
    """Identities alpha/bravo/charlie issued, their files projected, servers and the loop
    running (stopped at the end)."""
    started: list[tuple[Kubelet, HandshakeLoop]] = []
    core = client.CoreV1Api(api_client)

    def start(op: OperatorProcess) -> tuple[Kubelet, HandshakeLoop, CAWatcher]:
        ca = CAWatcher(core, op.namespace)
        for name in LAGS:
            create_identity(api_client, namespace, name)
        for name in LAGS:
            wait_identity(api_client, namespace, name, is_ready)
        kubelet = Kubelet(core, namespace, tmp_path / "pods", ca.roots)
        loop = HandshakeLoop(kubelet)
        for name, lag in LAGS.items():
            kubelet.add(name, lag)
            loop.add(name)
        kubelet.start()
        loop.start()
        started.append((kubelet, loop))
        loop.wait_rounds(2)
        assert loop.failures == [], loop.failures[:3]
        return kubelet, loop, ca

    yield start
    for kubelet, loop in started:
        loop.stop()
        kubelet.stop()


def describe(loop: HandshakeLoop) -> str:
    return (
        f"{len(loop.failures)} failures of {loop.attempts + loop.openssl_attempts}: "
        + "; ".join(
            f"{f.client}->{f.server} ({f.tool}): {f.error[:120]}" for f in loop.failures[:5]
        )
    )


def test_a_root_rotation_fails_no_handshake(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
    peers: Callable[[OperatorProcess], tuple[Kubelet, HandshakeLoop, CAWatcher]],
) -> None:
    started = time.monotonic()
    core = client.CoreV1Api(api_client)
    op = operator_factory(**rotation_settings())
    kubelet, loop, ca = peers(op)
    old_root = fingerprint(ca.roots()[0]).hex()
    monitor = BundleMonitor(core, namespace, ca, old_root)

    rotate = meshless_cli(kubeconfig, "--namespace", op.namespace, "rotate")
    assert rotate.returncode == 0, rotate.stderr
    assert "requested a root rotation" in rotate.stdout
    ca.wait(lambda s: s.phase.value == "Prepare", 15, "Prepare")
    again = meshless_cli(kubeconfig, "--namespace", op.namespace, "rotate")
    assert again.returncode == 1
    assert "already in progress (phase Prepare" in again.stderr
    status = meshless_cli(kubeconfig, "--namespace", op.namespace, "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["phase"] == "Prepare"
    assert {r["role"] for r in doc["roots"]} == {"leaving", "incoming"}

    ca.wait(lambda s: s.phase.value == "Switch", 30, "Switch")
    # An identity made during Switch gets a leaf from the new chain straight away.
    create_identity(api_client, namespace, "delta")
    wait_identity(api_client, namespace, "delta", is_ready)
    kubelet.add("delta", 1.0)
    loop.add("delta")
    text = meshless_cli(kubeconfig, "--namespace", op.namespace, "status")
    assert "phase:      Switch" in text.stdout, text.stdout + text.stderr
    assert "on the old chain" in text.stdout

    ca.wait(lambda s: s.last_root_rotation is not None, 60, "the end of the rotation")
    kubelet.wait_in_sync(15)
    loop.wait_rounds(2)
    monitor.stop()
    loop.stop()
    kubelet.stop()

    assert loop.failures == [], describe(loop)
    assert loop.attempts > 100 and loop.openssl_attempts > 10, (
        loop.attempts,
        loop.openssl_attempts,
    )
    assert kubelet.mixed_seen, "no moment with old-root and new-root leaves in use together"

    # Every bundle carried both roots before the first new-root leaf existed...
    first = monitor.first_new_leaf
    assert first is not None, f"no new-root leaf seen in {monitor.samples} samples"
    new_root = str(first["new_root"])
    for name, prints in first["bundles"].items():  # type: ignore[attr-defined]
        assert {old_root, new_root} <= set(prints), f"{name} lacked a root: {prints}"
    # ...and the old root is gone from all of them at the end.
    final = monitor.bundles()
    assert len(final) == len(LAGS) + 2  # four Secrets and the ConfigMap
    for name, pem in final.items():
        assert fingerprints(pem) == {new_root}, name
    assert fingerprints(ca.data()["ca.crt"]) == {new_root}

    doc = json.loads(
        meshless_cli(kubeconfig, "--namespace", op.namespace, "status", "-o", "json").stdout
    )
    assert doc["phase"] == "Idle" and doc["lastRootRotation"]
    history = [h.split("@")[0] for h in ca.state().history]
    assert history == ["Prepare", "Switch", "Finish", "Idle"]
    for reason in (
        "CARotationPrepare",
        "CARotationSwitch",
        "CARotationFinish",
        "CARotationComplete",
    ):
        wait_event(api_client, op.namespace, CA_SECRET, reason)
    assert 'meshless_ca_rotation_phase{phase="Idle"} 1.0' in op.metrics()
    print(
        f"root rotation: {loop.attempts} Python + {loop.openssl_attempts} openssl handshakes, "
        f"0 failures, {time.monotonic() - started:.1f}s"
    )


def test_control_switching_roots_without_prepare_fails_handshakes(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    peers: Callable[[OperatorProcess], tuple[Kubelet, HandshakeLoop, CAWatcher]],
) -> None:
    """The same peers and lags, but the CA Secret is replaced by a new root outright (what a
    user would do by hand, and what meshless did before rotation existed)."""
    core = client.CoreV1Api(api_client)
    op = operator_factory(**rotation_settings())
    kubelet, loop, ca = peers(op)
    old_root = fingerprint(ca.roots()[0]).hex()
    new_ca, new_root_key = bootstrap_self_signed("cluster.local", datetime.now(UTC))
    secret = core.read_namespaced_secret(CA_SECRET, op.namespace)
    ca.roots()  # remember the old root before it disappears
    secret.data = {
        k: base64.b64encode(v).decode() for k, v in ca_to_secret_data(new_ca, new_root_key).items()
    }
    core.replace_namespaced_secret(CA_SECRET, op.namespace, secret)
    new_root = fingerprint(new_ca.roots[0]).hex()

    deadline = time.monotonic() + 30
    while not all(kubelet.leaf_roots.get(n) == new_root for n in LAGS):
        assert time.monotonic() < deadline, kubelet.leaf_roots
        time.sleep(0.1)
    loop.wait_rounds(1)
    loop.stop()
    kubelet.stop()
    assert old_root != new_root
    assert loop.failures, "switching roots without Prepare failed no handshake: the test is blind"
    print(f"control run: {describe(loop)}")


def test_an_intermediate_rotation_leaves_the_bundle_untouched(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    core = client.CoreV1Api(api_client)
    op = operator_factory(**rotation_settings())
    names = list(LAGS)
    for name in names:
        create_identity(api_client, namespace, name)
    for name in names:
        wait_identity(api_client, namespace, name, is_ready)
    ca = CAWatcher(core, op.namespace)
    before = ca.data()
    cm_version = core.read_namespaced_config_map(
        "meshless-trust-bundle", namespace
    ).metadata.resource_version
    secret_versions = {
        n: core.read_namespaced_secret(f"{n}-mtls", namespace).metadata.resource_version
        for n in names
    }

    rotate = meshless_cli(kubeconfig, "--namespace", op.namespace, "rotate", "--intermediate")
    assert rotate.returncode == 0, rotate.stderr
    ca.wait(lambda s: s.last_intermediate_rotation is not None, 15, "intermediate rotation")
    after = ca.data()
    assert after["tls.crt"] != before["tls.crt"] and after["tls.key"] != before["tls.key"]
    assert after["ca.crt"] == before["ca.crt"] and after["root.key"] == before["root.key"]
    assert ca.state().phase.value == "Idle"
    wait_event(api_client, op.namespace, CA_SECRET, "CAIntermediateRotated")
    as_yaml = meshless_cli(kubeconfig, "-n", op.namespace, "status", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert "phase: Idle" in as_yaml.stdout and "lastIntermediateRotation: '" in as_yaml.stdout

    # A new identity is issued by the new intermediate...
    create_identity(api_client, namespace, "delta")
    wait_identity(api_client, namespace, "delta", is_ready)
    delta = secret_data(core, namespace, "delta-mtls")
    assert delta is not None
    new_issuer = parse_pem_certificates(after["tls.crt"])[0]
    assert parse_pem_certificates(delta["tls.crt"])[1] == new_issuer
    assert delta["ca.crt"] == before["ca.crt"]
    # ...while nothing that existed is rewritten: neither bundle nor certificates (they move at
    # their own renewal). Proving an absence takes a bounded wait: three CA polls (1s each)
    # after the new CA issued above, a rewrite would have happened.
    time.sleep(3)
    assert (
        core.read_namespaced_config_map(
            "meshless-trust-bundle", namespace
        ).metadata.resource_version
        == cm_version
    )
    assert {
        n: core.read_namespaced_secret(f"{n}-mtls", namespace).metadata.resource_version
        for n in names
    } == secret_versions


def test_a_rotation_survives_sigkill_in_prepare_and_in_switch(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    core = client.CoreV1Api(api_client)
    settings = rotation_settings(ca_settle_time="6s", ca_rotation_window="6s")
    op = operator_factory(**settings)
    names = list(LAGS)
    for name in names:
        create_identity(api_client, namespace, name)
    for name in names:
        wait_identity(api_client, namespace, name, is_ready)
    ca = CAWatcher(core, op.namespace)
    old_root = fingerprint(ca.roots()[0]).hex()
    assert meshless_cli(kubeconfig, "--namespace", op.namespace, "rotate").returncode == 0

    ca.wait(lambda s: s.phase.value == "Prepare", 15, "Prepare")
    op.proc.kill()  # type: ignore[union-attr]
    op.proc.wait()  # type: ignore[union-attr]
    prepared = ca.state()
    op = operator_factory(namespace=op.namespace, **settings)
    ca.wait(lambda s: s.phase.value == "Switch", 30, "Switch after a restart in Prepare")
    switched = ca.state()
    assert switched.new_root == prepared.new_root, "the restart made another new root"
    assert switched.started_at == prepared.started_at

    op.proc.kill()  # type: ignore[union-attr]
    op.proc.wait()  # type: ignore[union-attr]
    op = operator_factory(namespace=op.namespace, **settings)
    ca.wait(lambda s: s.last_root_rotation is not None, 60, "the end after a restart in Switch")
    final = ca.state()
    # One pass through the phases; the window kept the Switch time of the first operator.
    assert [h.split("@")[0] for h in final.history] == ["Prepare", "Switch", "Finish", "Idle"]
    assert switched.switched_at is not None
    assert final.history[1] == f"Switch@{switched.switched_at.isoformat()}"
    roots = ca.roots()
    for name in names:
        data = secret_data(core, namespace, f"{name}-mtls")
        assert data is not None
        assert leaf_root(data["tls.crt"], roots) == switched.new_root
        assert fingerprints(data["ca.crt"]) == {switched.new_root}
        assert old_root not in fingerprints(data["ca.crt"])
    # Nothing reissued twice: one Reissued Event per identity for the whole rotation.
    events = core.list_namespaced_event(namespace, field_selector="reason=Reissued").items
    per_identity = {n: sum(1 for e in events if e.involved_object.name == n) for n in names}
    assert per_identity == dict.fromkeys(names, 1), per_identity


def put_user_ca(core: client.CoreV1Api, namespace: str, data: dict[str, bytes]) -> None:
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="user-ca"),
        data={k: base64.b64encode(v).decode() for k, v in data.items()},
    )
    try:
        core.replace_namespaced_secret("user-ca", namespace, body)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespaced_secret(namespace, body)


def user_ca_data(ca: CertificateAuthority) -> dict[str, bytes]:
    return ca_to_secret_data(ca, None)


def test_a_user_ca_under_a_new_root_rotates_through_the_phases_and_a_broken_one_never_does(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    peers: Callable[[OperatorProcess], tuple[Kubelet, HandshakeLoop, CAWatcher]],
    unique: Callable[[str], str],
) -> None:
    core = client.CoreV1Api(api_client)
    ca_ns = unique("meshless")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ca_ns)))
    first, _ = bootstrap_self_signed("cluster.local", datetime.now(UTC))
    put_user_ca(core, ca_ns, user_ca_data(first))
    op = operator_factory(namespace=ca_ns, ca_source="user-ca", **rotation_settings())
    kubelet, loop, ca = peers(op)
    old_root = fingerprint(first.roots[0]).hex()
    assert fingerprints(ca.data()["ca.crt"]) == {old_root}

    # A broken replacement (the new CA's certificate with somebody else's key): reported on
    # the user's Secret, no rotation, the CA in use keeps issuing.
    second, _ = bootstrap_self_signed("cluster.local", datetime.now(UTC))
    other, _ = bootstrap_self_signed("cluster.local", datetime.now(UTC))
    broken = {**user_ca_data(second), "tls.key": user_ca_data(other)["tls.key"]}
    put_user_ca(core, ca_ns, broken)
    event = wait_event(api_client, ca_ns, "user-ca", "CAKeyMismatch")
    assert "no rotation starts" in event.message
    assert ca.state().phase.value == "Idle"
    assert fingerprints(ca.data()["ca.crt"]) == {old_root}

    # A good CA under a new root: the same phases as a self-signed root rotation.
    new_root = fingerprint(second.roots[0]).hex()
    put_user_ca(core, ca_ns, user_ca_data(second))
    ca.wait(lambda s: s.phase.value == "Prepare", 15, "Prepare")
    assert ca.state().reason == "CASourceReplaced"
    assert fingerprints(ca.data()["ca.crt"]) == {old_root, new_root}
    ca.wait(lambda s: s.last_root_rotation is not None, 60, "the end of the rotation")
    kubelet.wait_in_sync(15)
    loop.wait_rounds(2)
    loop.stop()
    kubelet.stop()
    assert loop.failures == [], describe(loop)
    assert kubelet.mixed_seen
    data = ca.data()
    assert parse_pem_certificates(data["tls.crt"])[0] == second.issuer_cert
    assert fingerprints(data["ca.crt"]) == {new_root}
    assert "root.key" not in data  # a user's CA never has its root key here
    for name in LAGS:
        secret = secret_data(core, namespace, f"{name}-mtls")
        assert secret is not None
        assert fingerprints(secret["ca.crt"]) == {new_root}
    cm = core.read_namespaced_config_map("meshless-trust-bundle", namespace)
    assert fingerprints(cm.data["ca.crt"].encode()) == {new_root}


def test_a_secret_the_api_refuses_to_update_is_reported_and_holds_prepare_back(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
    unique: Callable[[str], str],
) -> None:
    """A ValidatingAdmissionPolicy refuses updates of one identity Secret: the identity says
    so, the operator keeps retrying, and Switch does not start until that bundle has the new
    root too."""
    core = client.CoreV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    op = operator_factory(**rotation_settings(ca_settle_time="1s", ca_rotation_window="3s"))
    for name in ("alpha", "bravo"):
        create_identity(api_client, namespace, name)
    for name in ("alpha", "bravo"):
        wait_identity(api_client, namespace, name, is_ready)
    policy_name = unique("deny-bravo")
    admission.create_validating_admission_policy(
        {
            "metadata": {"name": policy_name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["secrets"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": f"!(request.namespace == '{namespace}' && "
                        "object.metadata.name == 'bravo-mtls')",
                        "message": "bravo-mtls is frozen by the test",
                    }
                ],
            },
        }
    )
    admission.create_validating_admission_policy_binding(
        {
            "metadata": {"name": policy_name},
            "spec": {"policyName": policy_name, "validationActions": ["Deny"]},
        }
    )
    try:
        # The policy is in force once a test update of the Secret is refused.
        deadline = time.monotonic() + 20
        while True:
            try:
                core.patch_namespaced_secret(
                    "bravo-mtls",
                    namespace,
                    {"metadata": {"annotations": {"probe": str(time.time())}}},
                )
            except client.ApiException as exc:
                assert exc.status in (403, 422), exc
                break
            assert time.monotonic() < deadline, "the admission policy never took effect"
            time.sleep(0.2)

        ca = CAWatcher(core, op.namespace)
        assert meshless_cli(kubeconfig, "--namespace", op.namespace, "rotate").returncode == 0
        ca.wait(lambda s: s.phase.value == "Prepare", 15, "Prepare")
        wid = wait_identity(
            api_client,
            namespace,
            "bravo",
            lambda obj: "frozen by the test" in str((condition(obj, "Ready") or {}).get("message")),
            timeout=20,
            what="the refused update reported",
        )
        assert (condition(wid, "Ready") or {}).get("reason") == "IssuingFailed"
        # Several CA polls and settle times later the rotation still waits for bravo's bundle.
        time.sleep(4)
        state = ca.state()
        assert state.phase.value == "Prepare" and state.bundles_complete_at is None, state
        doc = json.loads(
            meshless_cli(kubeconfig, "--namespace", op.namespace, "status", "-o", "json").stdout
        )
        progress = doc["progress"]
        assert progress["bundlesWithNewRoot"] == progress["bundlesTotal"] - 1, progress
    finally:
        admission.delete_validating_admission_policy_binding(policy_name)
        admission.delete_validating_admission_policy(policy_name)
    # Unfrozen: the retry lands, and the rotation completes.
    wait_identity(api_client, namespace, "bravo", is_ready, timeout=60)
    ca.wait(lambda s: s.last_root_rotation is not None, 60, "the end of the rotation")
    bravo = secret_data(core, namespace, "bravo-mtls")
    assert bravo is not None
    assert fingerprints(bravo["ca.crt"]) == fingerprints(ca.data()["ca.crt"])
    assert len(fingerprints(bravo["ca.crt"])) == 1


def test_new_allowed_dns_names_after_a_restart_rotate_the_intermediate_not_the_root(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    peers: Callable[[OperatorProcess], tuple[Kubelet, HandshakeLoop, CAWatcher]],
) -> None:
    """The operator restarts with MESHLESS_ALLOWED_DNS_NAMES=*.{namespace}.example.com: the
    intermediate is replaced (same root, same bundle) by one whose NameConstraints permit
    example.com, before the new term issues anything; a name of the new pattern is issued
    under it, and every peer, old intermediate or new, keeps handshaking."""
    core = client.CoreV1Api(api_client)
    op = operator_factory(**rotation_settings())
    kubelet, loop, ca = peers(op)
    before = ca.data()
    old_issuer = parse_pem_certificates(before["tls.crt"])[0]
    assert "DNS:example.com" not in constraints_report(old_issuer, None).permitted
    op.stop()

    restarted = operator_factory(
        namespace=op.namespace,
        allowed_dns_names="*.{namespace}.example.com",
        **rotation_settings(),
    )
    ca.wait(lambda s: s.last_intermediate_rotation is not None, 30, "intermediate rotation")
    after = ca.data()
    new_issuer = parse_pem_certificates(after["tls.crt"])[0]
    assert new_issuer != old_issuer
    assert after["ca.crt"] == before["ca.crt"] and after["root.key"] == before["root.key"]
    assert constraints_report(new_issuer, None).permitted == (
        "URI:cluster.local",
        "DNS:example.com",
        "DNS:svc",
        "DNS:svc.cluster.local",
    )
    event = wait_event(api_client, op.namespace, CA_SECRET, "CAIntermediateRotated")
    assert "NameConstraintsChanged" in event.message and "DNS:example.com" in event.message
    restarted.wait_for_log("swept", 30)
    log = restarted.log()
    assert log.index("NameConstraintsChanged") < log.index("swept")  # before the term issued

    name = f"api.{namespace}.example.com"
    create_identity(api_client, namespace, "delta", dnsNames=[name, f"api.{namespace}.svc"])
    wait_identity(api_client, namespace, "delta", is_ready)
    delta = secret_data(core, namespace, "delta-mtls")
    assert delta is not None
    chain = parse_pem_certificates(delta["tls.crt"])
    assert chain[1] == new_issuer
    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert name in san.get_values_for_type(x509.DNSName)
    kubelet.add("delta", 0.1)
    loop.add("delta")
    loop.wait_rounds(3)
    loop.stop()
    kubelet.stop()
    assert loop.attempts > 0 and loop.failures == [], describe(loop)


def test_a_user_ca_without_name_constraints_keeps_issuing_and_is_reported(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
    unique: Callable[[str], str],
) -> None:
    core = client.CoreV1Api(api_client)
    ca_ns = unique("meshless")
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ca_ns)))
    user = unconstrained_ca()
    put_user_ca(core, ca_ns, user_ca_data(user))
    operator_factory(namespace=ca_ns, ca_source="user-ca", **rotation_settings())

    create_identity(api_client, namespace, "echo")
    wait_identity(api_client, namespace, "echo", is_ready)
    echo = secret_data(core, namespace, "echo-mtls")
    assert echo is not None
    assert parse_pem_certificates(echo["tls.crt"])[1] == user.issuer_cert
    event = wait_event(api_client, ca_ns, "user-ca", "NotNameConstrained")
    assert "carries no NameConstraints" in event.message and "keeps issuing" in event.message

    status = meshless_cli(kubeconfig, "-n", ca_ns, "--ca-source", "user-ca", "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["nameConstraints"]["constrained"] is False
    assert [(c["type"], c["status"], c["reason"]) for c in doc["conditions"]] == [
        ("NameConstrained", "False", "NotNameConstrained")
    ]
    table = meshless_cli(kubeconfig, "-n", ca_ns, "--ca-source", "user-ca", "status")
    assert "constraints: NONE (NotNameConstrained)" in table.stdout, table.stdout + table.stderr
    # Never rotated for it: a user's CA has no root key here.
    in_use = secret_data(core, ca_ns, CA_SECRET)
    assert in_use is not None
    assert parse_pem_certificates(in_use["tls.crt"])[0] == user.issuer_cert
