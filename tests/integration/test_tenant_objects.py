"""What a tenant may do to the objects around its identities, and what it cannot make of it.

The tenant is a user holding the `admin` ClusterRole in its own namespace only (a
ServiceAccount token bound there): it may write any Secret and ConfigMap in that namespace.
- Secrets labelled with an identity's name, 300 of 1 MiB: a new leader's sweep reads none of
  their data (its RSS stays within 50 MB of its figure without them), the webhooks answer
  throughout, and neither those Secrets nor the identity's own are touched.
- The trust-bundle ConfigMap, edited: a root appended is gone within 10 s with a Warning
  Event `BundleRepaired` naming its fingerprint; a root removed during a root rotation is
  restored (the set the CA trusts now, old and new); a deleted one is recreated.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from kubernetes import client

from meshless.pki.bundle import bundle_pem
from meshless.pki.ca import bootstrap_self_signed

from .conftest import OperatorFactory, OperatorProcess, bound_token
from .kubehelpers import (
    create_identity,
    get_identity,
    is_ready,
    wait_event,
    wait_identity,
    watch_until,
)
from .policyhelpers import create_policy, wait_admission_label

BUNDLE = "meshless-trust-bundle"
LABEL = "meshless.dev/identity"
FOREIGN_SECRETS = 300
SECRET_BYTES = 1024 * 1024 - 1024  # a Secret's data may hold 1 MiB in all
RSS_MARGIN_KB = 50 * 1024
ROTATION_FOREIGN_SECRETS = 50
METADATA_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


@pytest.fixture
def tenant(api_client: client.ApiClient, namespace: str) -> Iterator[client.ApiClient]:
    """An API client for a user with the `admin` ClusterRole in `namespace` only. `admin` is
    an aggregated role whose rules the controller manager fills in, and no controller
    manager runs here: the tenant is bound to the roles it aggregates (to-admin, to-edit,
    to-view), which are its rules."""
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    for part in ("admin", "edit", "view"):
        client.RbacAuthorizationV1Api(api_client).create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"tenant-{part}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"system:aggregate-to-{part}",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
            },
        )
    token = bound_token(core, namespace, "tenant", "tenant-token")
    config = copy.copy(api_client.configuration)
    config.cert_file = None
    config.key_file = None
    config.api_key = {"authorization": f"Bearer {token}"}
    tenant_client = client.ApiClient(config)
    # Its rights are a namespace admin's, not more.
    review = client.AuthorizationV1Api(tenant_client).create_self_subject_access_review(
        {"spec": {"resourceAttributes": {"verb": "list", "resource": "secrets"}}}
    )
    assert review.status.allowed is False, "the tenant must not list Secrets cluster-wide"
    yield tenant_client
    tenant_client.close()


# --- memory ---------------------------------------------------------------------------------


def memory_kb(op: OperatorProcess) -> tuple[int, int]:
    """(VmRSS, VmHWM) of the operator's process, in kB."""
    assert op.proc is not None
    status = Path(f"/proc/{op.proc.pid}/status").read_text()
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB$", status, re.MULTILINE))
    return int(fields["VmRSS"]), int(fields["VmHWM"])


class PodCreator:
    """Creates pods in a STRICT namespace one after another, each of which the mutating
    webhook must have injected (STRICT fails closed: a create that goes through was
    answered)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.created: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def create(self) -> None:
        name = f"probe-{len(self.created) + len(self.failures)}-{uuid.uuid4().hex[:4]}"
        body = {
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        }
        pod = self.core.create_namespaced_pod(self.namespace, body)
        volumes = [v.name for v in pod.spec.volumes or ()]
        assert "meshless-identity" in volumes, f"pod {name} was not injected: {volumes}"
        self.created.append(name)

    def wait_first(self, timeout: float) -> None:
        """The new operator's webhook server answers (the old one is gone: until then a
        STRICT namespace refuses pods)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.create()
                return
            except client.ApiException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.create()
            except Exception as exc:  # recorded: the test fails on any
                self.failures.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            self._stop.wait(0.2)

    def __enter__(self) -> PodCreator:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def vouched(op: OperatorProcess) -> int:
    found = re.search(r"swept \d+ identities \((\d+) Secrets vouched for", op.log())
    assert found is not None, op.log()[-2000:]
    return int(found.group(1))


def new_term_memory(
    op: OperatorProcess, api: client.ApiClient, namespace: str
) -> tuple[tuple[int, int], PodCreator]:
    """(VmRSS, VmHWM) once a new leader has swept and settled, and how many pods its
    webhooks answered meanwhile (every create from its first answer on must go through)."""
    pods = PodCreator(api, namespace)
    pods.wait_first(timeout=60)
    with pods:
        op.wait_for_log("swept ", timeout=60)
        wait_identity(api, namespace, "payments", is_ready)
        time.sleep(2)  # the settled figure: what the term holds after its sweep
        measured = memory_kb(op)
    return measured, pods


def restart(
    operator_factory: OperatorFactory, previous: OperatorProcess
) -> tuple[OperatorProcess, float]:
    assert previous.stop() == 0
    started = time.monotonic()
    op = operator_factory(namespace=previous.namespace)  # same CA
    return op, started


def test_labelled_tenant_secrets_cost_a_new_leader_no_memory(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    tenant: client.ApiClient,
    namespace: str,
) -> None:
    core = client.CoreV1Api(api_client)
    first = operator_factory()
    create_identity(api_client, namespace, "payments", serviceAccountName="default")
    wait_identity(api_client, namespace, "payments", is_ready)
    create_policy(api_client, namespace, "strict", "STRICT")
    wait_admission_label(api_client, namespace)
    own = core.read_namespaced_secret("payments-mtls", namespace).metadata.resource_version
    identity = get_identity(api_client, namespace, "payments")

    # The figure without them: a restarted operator (a new leader's sweep), settled.
    baseline, _ = restart(operator_factory, first)
    before, answered = new_term_memory(baseline, api_client, namespace)
    assert not answered.failures, answered.failures
    assert vouched(baseline) >= 1, "the identity's own Secret is vouched for by its metadata"

    # The tenant's Secrets, 1 MiB each, labelled with the identity's name.
    payload = {"blob": base64.b64encode(os.urandom(SECRET_BYTES)).decode()}
    tenant_core = client.CoreV1Api(tenant)

    def make(i: int) -> str:
        secret = tenant_core.create_namespaced_secret(
            namespace,
            {"metadata": {"name": f"blob-{i}", "labels": {LABEL: "payments"}}, "data": payload},
        )
        return str(secret.metadata.resource_version)

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:  # bounded: a few 1 MiB writes at once
            list(pool.map(make, range(FOREIGN_SECRETS)))
        versions = labelled_versions(api_client, namespace)
        assert len(versions) == FOREIGN_SECRETS + 1  # theirs and the identity's own
        # The running leader watches them (metadata only); now a new leader sweeps.
        op, _ = restart(operator_factory, baseline)
        after, answered = new_term_memory(op, api_client, namespace)
        rss, peak = after[0] - before[0], after[1] - before[1]
        print(f"RSS without {before[0]} kB, with {after[0]} kB; peak {before[1]} -> {after[1]} kB")
        assert rss < RSS_MARGIN_KB, f"RSS grew by {rss} kB with {FOREIGN_SECRETS} MiB labelled"
        assert peak < RSS_MARGIN_KB, f"peak RSS grew by {peak} kB"
        # The webhooks answered every pod created while the new leader swept and settled.
        assert not answered.failures, answered.failures
        assert len(answered.created) >= 5, answered.created
        # The identity is as it was: Ready, its Secret not written; the tenant's untouched.
        assert vouched(op) == vouched(baseline)
        assert labelled_versions(api_client, namespace) == versions
        assert versions["payments-mtls"] == own
        after_identity = get_identity(api_client, namespace, "payments")
        assert is_ready(after_identity)
        assert after_identity["status"] == identity["status"]
        assert (
            after_identity["metadata"]["resourceVersion"] == identity["metadata"]["resourceVersion"]
        )
    finally:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(
                pool.map(
                    lambda i: delete_secret(core, namespace, f"blob-{i}"), range(FOREIGN_SECRETS)
                )
            )


def test_labelled_tenant_secrets_cost_a_root_rotation_no_memory_and_do_not_hold_it_back(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    tenant: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    """Every CA poll of a root rotation (and `meshless ca status`) counts the identities'
    Secrets. 50 Secrets of 1 MiB that the tenant labels with an identity's name, each even
    claiming the identity as its owner, are listed as metadata and ignored: the rotation goes
    Prepare -> Switch -> Finish -> Idle, the count names only the identities' own Secrets,
    the operator's peak RSS stays within 50 MB of its figure before the rotation, and the
    tenant's Secrets are never written."""
    core = client.CoreV1Api(api_client)
    op = operator_factory(ca_settle_time="1s", ca_rotation_window="6s")
    for name in ("alpha", "bravo"):
        create_identity(api_client, namespace, name, serviceAccountName="default")
    alpha = wait_identity(api_client, namespace, "alpha", is_ready)
    wait_identity(api_client, namespace, "bravo", is_ready)
    payload = {"blob": base64.b64encode(os.urandom(SECRET_BYTES)).decode()}
    claimed_owner = {
        "apiVersion": "meshless.dev/v1alpha1",
        "kind": "WorkloadIdentity",
        "name": "alpha",
        "uid": alpha["metadata"]["uid"],
    }
    tenant_core = client.CoreV1Api(tenant)

    def make(i: int) -> None:
        tenant_core.create_namespaced_secret(
            namespace,
            {
                "metadata": {
                    "name": f"rotation-blob-{i}",
                    "labels": {LABEL: "alpha"},
                    "ownerReferences": [claimed_owner],
                },
                "data": payload,
            },
        )

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(make, range(ROTATION_FOREIGN_SECRETS)))
        versions = labelled_versions(api_client, namespace)
        assert len(versions) == ROTATION_FOREIGN_SECRETS + 2
        time.sleep(2)  # settled: the tenant's writes came as metadata-only watch events
        before = memory_kb(op)
        started = time.monotonic()
        rotate = ca_cli(kubeconfig, "--namespace", op.namespace, "rotate")
        assert rotate.returncode == 0, rotate.stderr
        events = {}
        for reason in ("CARotationPrepare", "CARotationBundlesComplete", "CARotationSwitch"):
            events[reason] = wait_event(api_client, op.namespace, "meshless-ca", reason, 30)
            print(f"{reason} after {time.monotonic() - started:.1f}s; RSS {memory_kb(op)} kB")
        # `meshless ca status` counts the same way (the Switch lasts the 6 s window at least).
        status = ca_cli(kubeconfig, "--namespace", op.namespace, "status", "-o", "json")
        assert status.returncode == 0, status.stderr
        progress = json.loads(status.stdout)["progress"]
        for reason in ("CARotationFinish", "CARotationComplete"):
            events[reason] = wait_event(api_client, op.namespace, "meshless-ca", reason, 30)
        elapsed = time.monotonic() - started
        after = memory_kb(op)
        print(
            f"root rotation with {ROTATION_FOREIGN_SECRETS} MiB labelled: {elapsed:.1f}s; RSS "
            f"{before[0]} -> {after[0]} kB, peak {before[1]} -> {after[1]} kB"
        )
        # Counted: the two identities' Secrets and the namespace's ConfigMap, nothing else.
        assert "bundles with the new root 3/3" in events["CARotationBundlesComplete"].message
        assert "reissued 2" in events["CARotationFinish"].message
        assert progress is not None and progress["bundlesTotal"] == 3, progress
        assert progress["leavesTotal"] == 2, progress
        assert after[1] - before[1] < RSS_MARGIN_KB, f"peak RSS grew by {after[1] - before[1]} kB"
        assert after[0] - before[0] < RSS_MARGIN_KB, f"RSS grew by {after[0] - before[0]} kB"
        # The tenant's Secrets untouched; the identities' own carry what the count reads.
        after_versions = labelled_versions(api_client, namespace)
        assert {k: v for k, v in after_versions.items() if k.startswith("rotation-blob-")} == {
            k: v for k, v in versions.items() if k.startswith("rotation-blob-")
        }
        for name in ("alpha", "bravo"):
            secret = core.read_namespaced_secret(f"{name}-mtls", namespace)
            annotations = secret.metadata.annotations
            [new_root] = roots_of(base64.b64decode(secret.data["ca.crt"]).decode())
            assert annotations["meshless.dev/bundle-roots"] == new_root
            assert annotations["meshless.dev/leaf-roots"] == new_root  # reissued under it
    finally:
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(
                pool.map(
                    lambda i: delete_secret(core, namespace, f"rotation-blob-{i}"),
                    range(ROTATION_FOREIGN_SECRETS),
                )
            )


def test_a_tenant_edit_of_the_rotation_annotations_is_not_believed(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    tenant: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    """During Switch (a window of an hour: both leaves stay on the old root), the tenant
    rewrites `meshless.dev/leaf-roots` on its identity's Secret to claim that the leaf is on
    no leaving root: were it believed, the Switch could end while that leaf is in use. The
    count reads that Secret by name instead (another field manager owns the annotation) and
    still finds both leaves on the old root."""
    op = operator_factory(ca_settle_time="1s", ca_rotation_window="1h")
    for name in ("alpha", "bravo"):
        create_identity(api_client, namespace, name, serviceAccountName="default")
    for name in ("alpha", "bravo"):
        wait_identity(api_client, namespace, name, is_ready)
    rotate = ca_cli(kubeconfig, "--namespace", op.namespace, "rotate")
    assert rotate.returncode == 0, rotate.stderr
    wait_event(api_client, op.namespace, "meshless-ca", "CARotationSwitch", 30)

    def progress() -> dict[str, int]:
        status = ca_cli(kubeconfig, "--namespace", op.namespace, "status", "-o", "json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["phase"] == "Switch", doc["phase"]
        return doc["progress"]  # type: ignore[no-any-return]

    honest = progress()
    assert honest["leavesTotal"] == 2 and honest["leavesOnOldRoot"] == 2, honest
    own = client.CoreV1Api(api_client).read_namespaced_secret("alpha-mtls", namespace)
    assert own.metadata.annotations["meshless.dev/leaf-roots"]  # the old root, as written
    edited = client.CoreV1Api(tenant).patch_namespaced_secret(
        "alpha-mtls", namespace, {"metadata": {"annotations": {"meshless.dev/leaf-roots": ""}}}
    )
    assert edited.metadata.annotations["meshless.dev/leaf-roots"] == ""
    assert progress() == honest


def labelled_versions(api: client.ApiClient, namespace: str) -> dict[str, str]:
    """name -> resourceVersion of the Secrets labelled with an identity's name, read as
    metadata only (the test need not hold 300 MiB either)."""
    request = api.param_serialize(
        "GET",
        f"/api/v1/namespaces/{namespace}/secrets",
        query_params=[("labelSelector", LABEL)],
        header_params={"Accept": METADATA_ONLY_LIST},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request)
    response.read()
    assert response.status == 200, response.data
    listed = json.loads(response.data)
    return {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in listed["items"]}


def delete_secret(core: client.CoreV1Api, namespace: str, name: str) -> None:
    try:
        core.delete_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status != 404:
            raise


# --- trust bundles --------------------------------------------------------------------------


def roots_of(text: str) -> set[str]:
    """SHA-256 fingerprints (hex) of the certificates in a bundle text."""
    return {
        c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(text.encode())
    }


def wait_bundle(
    api: client.ApiClient,
    namespace: str,
    predicate: Callable[[Any], bool],
    timeout: float,
    what: str,
) -> client.V1ConfigMap:
    return watch_until(  # type: ignore[no-any-return]
        client.CoreV1Api(api).list_namespaced_config_map,
        namespace,
        field_selector=f"metadata.name={BUNDLE}",
        predicate=predicate,
        timeout=timeout,
        what=what,
        resource_version=lambda listed: listed.metadata.resource_version,
        items=lambda listed: listed.items,
    )


def bundle_events(api: client.ApiClient, namespace: str) -> list[client.CoreV1Event]:
    return list(
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={BUNDLE},reason=BundleRepaired"
        )
        .items
    )


def wait_repairs(api: client.ApiClient, namespace: str, count: int, timeout: float = 10) -> int:
    """Until `count` BundleRepaired Events are there (each is posted after its write)."""
    deadline = time.monotonic() + timeout
    while len(seen := bundle_events(api, namespace)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} BundleRepaired Events"
        time.sleep(0.2)
    return len(seen)


def ca_cli(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshless", "ca", *args],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_edited_trust_bundle_is_put_back_and_the_edit_reported(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    tenant: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    op = operator_factory()
    create_identity(api_client, namespace, "payments", serviceAccountName="default")
    wait_identity(api_client, namespace, "payments", is_ready)
    tenant_core = client.CoreV1Api(tenant)
    original = tenant_core.read_namespaced_config_map(BUNDLE, namespace).data["ca.crt"]
    assert bundle_events(api_client, namespace) == []  # writing it first is no repair
    [ours] = roots_of(original)

    # A root appended by the tenant: gone within 10 s, and the Event names it.
    stranger = bootstrap_self_signed("cluster.local", datetime.now(UTC))[0].roots[0]
    stranger_fp = stranger.fingerprint(hashes.SHA256()).hex()
    edited = original + bundle_pem([stranger]).decode()
    written = tenant_core.patch_namespaced_config_map(
        BUNDLE, namespace, {"data": {"ca.crt": edited}}
    )
    assert roots_of(written.data["ca.crt"]) == {ours, stranger_fp}
    started = time.monotonic()
    repaired = wait_bundle(
        api_client,
        namespace,
        lambda cm: (cm.data or {}).get("ca.crt") == original,
        timeout=10,
        what="the appended root removed",
    )
    print(f"appended root removed after {time.monotonic() - started:.2f}s")
    assert set(repaired.data) == {"ca.crt"}
    event = wait_event(api_client, namespace, BUNDLE, "BundleRepaired")
    assert event.type == "Warning"
    assert event.involved_object.kind == "ConfigMap"
    assert f"sha256:{stranger_fp}" in event.message
    assert ours not in event.message  # only what was removed is named
    assert "BEGIN" not in event.message

    # Deleted: recreated.
    tenant_core.delete_namespaced_config_map(BUNDLE, namespace)
    wait_bundle(
        api_client,
        namespace,
        lambda cm: (cm.data or {}).get("ca.crt") == original,
        timeout=10,
        what="the deleted bundle recreated",
    )

    # A key added next to the bundle (a directory mount would expose it) is removed too
    # (and what that removal leaves in managedFields makes no later update a "repair").
    tenant_core.patch_namespaced_config_map(
        BUNDLE, namespace, {"data": {"extra.crt": bundle_pem([stranger]).decode()}}
    )
    wait_bundle(
        api_client,
        namespace,
        lambda cm: set(cm.data or {}) == {"ca.crt"} and cm.data["ca.crt"] == original,
        timeout=10,
        what="the extra key removed",
    )

    # A root rotation: the CA trusts the old and the new root through Prepare (the settle
    # time is 2 minutes by default). The tenant removes the new root, then puts a stranger
    # in: each time the bundle returns to the set the CA trusts now, both roots.
    repairs = wait_repairs(api_client, namespace, 3)  # appended root, deletion, extra key
    rotate = ca_cli(kubeconfig, "--namespace", op.namespace, "rotate")
    assert rotate.returncode == 0, rotate.stderr
    both = wait_bundle(
        api_client,
        namespace,
        lambda cm: len(roots_of((cm.data or {}).get("ca.crt") or "")) == 2,
        timeout=30,
        what="the new root added by the rotation",
    ).data["ca.crt"]
    [new] = roots_of(both) - {ours}
    time.sleep(1)  # an Event follows its write: the rotation's own update is no repair
    assert len(bundle_events(api_client, namespace)) == repairs
    only_old = original  # the old root alone: what the bundle held before the rotation
    events_before = len(bundle_events(api_client, namespace))
    tenant_core.patch_namespaced_config_map(BUNDLE, namespace, {"data": {"ca.crt": only_old}})
    restored = wait_bundle(
        api_client,
        namespace,
        lambda cm: roots_of((cm.data or {}).get("ca.crt") or "") == {ours, new},
        timeout=10,
        what="the removed new root restored",
    )
    assert restored.data["ca.crt"] == both
    deadline = time.monotonic() + 10
    while len(bundle_events(api_client, namespace)) <= events_before:
        assert time.monotonic() < deadline, "no BundleRepaired Event for the removed root"
        time.sleep(0.2)
    messages = [e.message for e in bundle_events(api_client, namespace)]
    assert any("missing roots restored (1)" in m for m in messages), messages
    tenant_core.patch_namespaced_config_map(
        BUNDLE, namespace, {"data": {"ca.crt": both + bundle_pem([stranger]).decode()}}
    )
    wait_bundle(
        api_client,
        namespace,
        lambda cm: (cm.data or {}).get("ca.crt") == both,
        timeout=10,
        what="the stranger removed during the rotation",
    )


def test_an_identity_secret_edited_while_no_operator_ran_is_read_and_repaired(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    tenant: client.ApiClient,
    namespace: str,
) -> None:
    """The sweep vouches for a Secret by its metadata only when our field manager alone wrote
    its data: an edit by anyone else (here the tenant's patch) makes the new leader read it."""
    first = operator_factory()
    for name in ("kept", "edited"):
        create_identity(api_client, namespace, name, serviceAccountName="default")
    serials = {
        name: wait_identity(api_client, namespace, name, is_ready)["status"]["serialNumber"]
        for name in ("kept", "edited")
    }
    assert first.stop() == 0
    garbage = base64.b64encode(b"not a certificate").decode()
    client.CoreV1Api(tenant).patch_namespaced_secret(
        "edited-mtls", namespace, {"data": {"tls.crt": garbage}}
    )
    op = operator_factory(namespace=first.namespace)
    repaired = wait_identity(
        api_client,
        namespace,
        "edited",
        lambda wid: is_ready(wid) and wid["status"]["serialNumber"] != serials["edited"],
    )
    event = wait_event(api_client, namespace, "edited", "Reissued")
    assert "InvalidCertificate" in event.message
    data = client.CoreV1Api(api_client).read_namespaced_secret("edited-mtls", namespace).data
    leaf = x509.load_pem_x509_certificates(base64.b64decode(data["tls.crt"]))[0]
    assert format(leaf.serial_number, "x") == repaired["status"]["serialNumber"]
    op.wait_for_log("swept ", timeout=30)
    assert get_identity(api_client, namespace, "kept")["status"]["serialNumber"] == serials["kept"]
