"""Faults survived (issue 11: high availability), against the local control plane: the leader
SIGKILLed in the middle of a 1,000-identity storm, kube-apiserver and etcd restarted mid-storm,
the API server paused for 30 s, a 429 storm from API Priority and Fairness, and credentials
rotated under a running operator. Afterwards every identity is Ready with exactly one valid
Secret, none was issued twice without need, and none flipped to not Ready for a transient
error."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client, watch

from meshless.pki.keys import key_matches_certificate, load_private_key
from meshless.pki.svid import parse_certificate_chain

from .conftest import OperatorFactory, OperatorProcess, bound_token, operator_as_service_account
from .kubehelpers import (
    GROUP,
    PLURAL,
    VERSION,
    Json,
    condition,
    create_identities,
    create_identity,
    is_ready,
    list_all,
)
from .policyhelpers import wait_collection

ROOT = Path(__file__).resolve().parents[2]
STORM = 1000  # the leader killed mid-storm: the issue's figure
RESTART_STORM = 500  # kube-apiserver or etcd restarted mid-storm
PAUSE_STORM = 300  # in flight while the API server is paused
THROTTLED_STORM = 200  # issued through a tiny APF concurrency share
PAUSE_S = 30.0
# The operator's log line for each certificate it issued (text log format).
ISSUED = re.compile(
    r"(?P<namespace>[a-z0-9-]+)/(?P<name>[a-z0-9.-]+): "
    r"issued (?P<serial>[0-9a-f]+) \((?P<reason>\w+)\)$",
    re.MULTILINE,
)
REISSUED_EVENT = re.compile(r"^Issued certificate (?P<serial>[0-9a-f]+) .*\(SecretMissing: ")


def _local_control_plane() -> None:
    if os.environ.get("MESHLESS_TEST_KUBECONFIG"):
        pytest.fail(
            "this fault needs the local control plane's processes; unset MESHLESS_TEST_KUBECONFIG"
        )


def _api_server_pid() -> int:
    _local_control_plane()
    pids = json.loads((ROOT / ".cache" / "cluster" / "pids.json").read_text())
    return int(pids["kube-apiserver"])


def _restart(component: str) -> float:
    """Crash one control-plane component (SIGKILL) and start it again with the same flags,
    ports and data (hack/localcluster.py's `restart`, in this process so that the crash comes
    at once); returns the seconds until the API server is ready again."""
    _local_control_plane()
    if str(ROOT / "hack") not in sys.path:
        sys.path.insert(0, str(ROOT / "hack"))  # hack/ is not a package
    import localcluster

    started = time.monotonic()
    localcluster.restart(component, signal.SIGKILL)
    return time.monotonic() - started


def _ready(op: OperatorProcess, namespace: str) -> int:
    """How many identities of `namespace` the operator holds Ready (its per-identity gauge)."""
    where = f'namespace="{namespace}"'
    return sum(
        1
        for line in op.metrics().splitlines()
        if line.startswith("meshless_certificate_ready_status{")
        and where in line
        and line.endswith(" 1.0")
    )


def _wait_ready_count(
    op: OperatorProcess, namespace: str, count: int, timeout: float, interval: float = 0.5
) -> None:
    """Until the operator holds at least `count` identities of `namespace` Ready: its own
    gauge, cheaper than listing a thousand objects from the API server on every event."""
    deadline = time.monotonic() + timeout
    missed: list[OSError] = []
    while True:
        try:
            if _ready(op, namespace) >= count:
                return
        except OSError as exc:  # a scrape refused or reset under load: look again
            missed.append(exc)
        assert op.proc is not None and op.proc.poll() is None, op.log()[-3000:]
        assert time.monotonic() < deadline, (
            f"not {count} Ready in {namespace} after {timeout}s; failed scrapes: {missed[-3:]}"
        )
        time.sleep(interval)


def _all_ready(api: client.ApiClient, namespace: str, count: int, timeout: float) -> list[Json]:
    return wait_collection(
        client.CustomObjectsApi(api).list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        predicate=lambda items: len(items) == count and all(is_ready(i) for i in items),
        timeout=timeout,
        what=f"{count} Ready identities in {namespace}",
    )


def _storm_ready(
    op: OperatorProcess, api: client.ApiClient, namespace: str, count: int, timeout: float
) -> list[Json]:
    """Every identity of the storm Ready: the operator's gauge first, then the objects."""
    _wait_ready_count(op, namespace, count, timeout)
    return _all_ready(api, namespace, count, timeout=30)


def _assert_one_valid_secret_each(api: client.ApiClient, namespace: str, items: list[Json]) -> None:
    """Exactly one Secret per identity; its key matches its certificate, whose serial is the
    one the identity's status reports."""
    secrets = list_all(
        client.CoreV1Api(api).list_namespaced_secret,
        namespace,
        label_selector="meshless.dev/identity",
    )
    by_name = {s.metadata.name: s for s in secrets}
    assert len(secrets) == len(items), (len(secrets), len(items))
    for item in items:
        secret = by_name[f"{item['metadata']['name']}-mtls"]
        data = {k: base64.b64decode(v) for k, v in secret.data.items()}
        leaf = parse_certificate_chain(data["tls.crt"])[0]
        assert format(leaf.serial_number, "x") == item["status"]["serialNumber"]
        assert key_matches_certificate(load_private_key(data["tls.key"]), leaf)


def _assert_issued_once(
    api: client.ApiClient, namespace: str, items: list[Json], *ops: OperatorProcess
) -> int:
    """No identity issued twice: no Reissued Event, no IssuingFailed Event, and in the logs of
    every operator that ran (`ops`) at most one issuance per identity, of the serial the
    identity holds, for the reason SecretMissing. Returns how many identities have their
    issuance logged (one whose issuance was cut short by the fault, its Secret written but
    the operator gone before the status, is Ready without a line). A first issuance has no
    Event (docs/decisions.md): the operators' own record of it is their log."""
    events = list_all(client.CoreV1Api(api).list_namespaced_event, namespace)
    assert not [e.involved_object.name for e in events if e.reason == "Reissued"]
    assert not [e.message for e in events if e.reason == "IssuingFailed"]
    logged = [
        match
        for op in ops
        for match in ISSUED.finditer(op.log())
        if match.group("namespace") == namespace
    ]
    per_identity = Counter(match.group("name") for match in logged)
    assert not [n for n, c in per_identity.items() if c > 1]
    serials = {i["metadata"]["name"]: i["status"]["serialNumber"] for i in items}
    for match in logged:
        assert match.group("serial") == serials[match.group("name")], match.group(0)
        assert match.group("reason") == "SecretMissing", match.group(0)
    return len(per_identity)


def _wait_events(
    api: client.ApiClient, namespace: str, reason: str, count: int, timeout: float
) -> None:
    """Until `namespace` holds `count` Events with `reason`: listed, then watched from the
    list's resourceVersion and listed again on each new Event. Fails after `timeout` s."""
    core = client.CoreV1Api(api)
    selector = f"reason={reason}"
    deadline = time.monotonic() + timeout
    while True:
        listed = core.list_namespaced_event(namespace, field_selector=selector)
        if len(listed.items) >= count:
            return
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            raise AssertionError(f"{len(listed.items)} of {count} {reason} Events in {timeout}s")
        stream = watch.Watch()
        for _ in stream.stream(
            core.list_namespaced_event,
            namespace,
            field_selector=selector,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=remaining,
        ):
            stream.stop()
            break


def _create_through_a_fault(
    api: client.ApiClient, namespace: str, names: Iterable[str], timeout: float
) -> Counter[str]:
    """Create identities as a GitOps controller would while the API server is faulty: an
    answer in the 5xx range is tried again until `timeout`. A paused kube-apiserver answers the
    requests it held with 500 "resource quota evaluation timed out" once it runs again (its
    quota admission waited through the pause); that write was not stored. AlreadyExists on a
    second try means an earlier try got through. Returns the answers tried again, counted."""
    deadline = time.monotonic() + timeout
    retried: Counter[str] = Counter()

    def create(name: str) -> None:
        tried = False
        while True:
            try:
                create_identity(api, namespace, name)
                return
            except client.ApiException as error:
                if tried and error.status == 409:
                    return
                if error.status < 500 or time.monotonic() > deadline:
                    raise
                tried = True
                retried[f"{error.status} {error.reason}"] += 1
                time.sleep(0.5)  # a client's back-off; bounded by the deadline

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(create, names))
    return retried


def _assert_signed_once_each(op: OperatorProcess, count: int) -> None:
    """The operator that survived the fault signed exactly one certificate per identity (a
    certificate the API did not store was reused on the retry, not signed again)."""
    assert op.counter("meshless_certificates_signed_total") == count


@pytest.mark.timeout(600)
def test_the_standby_finishes_a_storm_the_killed_leader_started(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    first = operator_factory()
    first.wait_for_log("reconciling as leader", timeout=30)
    second = operator_factory(namespace=first.namespace)
    with ThreadPoolExecutor(1) as creator:  # the storm still arriving when the leader dies
        created = creator.submit(
            create_identities, api_client, namespace, (f"storm-{i}" for i in range(STORM))
        )
        _wait_ready_count(first, namespace, STORM // 5, timeout=120, interval=0.2)
        at_kill = _ready(first, namespace)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
        killed = time.monotonic()
        created.result(timeout=120)
    assert at_kill < STORM // 2, f"the storm was half over ({at_kill} Ready) at the kill"

    second.wait_for_log("reconciling as leader", timeout=45)  # the Lease lasts 10 s
    failover = time.monotonic() - killed
    items = _storm_ready(second, api_client, namespace, STORM, timeout=300)
    _assert_one_valid_secret_each(api_client, namespace, items)
    logged = _assert_issued_once(api_client, namespace, items, first, second)
    print(
        f"killed at {at_kill}/{STORM} Ready; standby leading {failover:.1f}s later; all Ready "
        f"{time.monotonic() - killed:.1f}s after the kill; {logged} issuances logged"
    )
    # Only the identities in flight when the leader died may lack their logged issuance.
    assert logged >= STORM - 16 * 2, logged
    assert second.proc is not None and second.proc.poll() is None
    assert "IssuingFailed" not in second.log()


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_control_plane_component_restarted_mid_storm(
    component: str,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    """kube-apiserver or etcd (its data kept) crashes and comes back while identities are
    being issued: the operator rides it out and finishes, issuing each identity once."""
    _local_control_plane()
    # The storm is waiting when the operator starts: it begins the moment it leads.
    create_identities(api_client, namespace, (f"restart-{i}" for i in range(RESTART_STORM)))
    op = operator_factory()
    _wait_ready_count(op, namespace, RESTART_STORM // 10, timeout=60, interval=0.1)
    ready_before = _ready(op, namespace)
    down_s = _restart(component)
    assert ready_before < RESTART_STORM / 2, "the storm was nearly over before the restart"

    items = _storm_ready(op, api_client, namespace, RESTART_STORM, timeout=180)
    _assert_one_valid_secret_each(api_client, namespace, items)
    _assert_issued_once(api_client, namespace, items, op)
    _assert_signed_once_each(op, RESTART_STORM)
    assert op.proc is not None and op.proc.poll() is None
    assert "IssuingFailed" not in op.log()
    print(f"{component} back in {down_s:.1f}s with {ready_before:.0f}/{RESTART_STORM} Ready")


def test_a_paused_api_server_flips_nothing_to_not_ready(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    """SIGSTOP for 30 s during a storm: calls hang and time out, the leader cannot renew its
    Lease and steps down, then takes it again and finishes; no Ready identity flips."""
    pid = _api_server_pid()
    op = operator_factory(resync_interval="2s")
    op.wait_for_log("reconciling as leader", timeout=30)
    create_identities(api_client, namespace, (f"steady-{i}" for i in range(10)))
    _wait_ready_count(op, namespace, 10, timeout=60)
    # The storm is still being created when the API server stops (the operator issues as fast
    # as identities arrive, so a storm created beforehand was over before the pause).
    with ThreadPoolExecutor(1) as creator:
        created = creator.submit(
            _create_through_a_fault,
            api_client,
            namespace,
            (f"paused-{i}" for i in range(PAUSE_STORM)),
            timeout=PAUSE_S + 90,
        )
        _wait_ready_count(op, namespace, 10 + PAUSE_STORM // 10, timeout=60, interval=0.1)
        listed = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
        before = {
            i["metadata"]["name"]: condition(i, "Ready")["lastTransitionTime"]  # type: ignore[index]
            for i in listed
            if is_ready(i)
        }
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(PAUSE_S)  # the fault itself: the operator's calls hang, time out, retry
        finally:
            os.kill(pid, signal.SIGCONT)
        retried = created.result(timeout=150)  # the creations the pause held up go through
    assert len(before) < 10 + PAUSE_STORM, "the storm was over before the pause"

    create_identity(api_client, namespace, "after-pause")
    count = 10 + PAUSE_STORM + 1
    items = _storm_ready(op, api_client, namespace, count, timeout=120)
    for item in items:
        name = item["metadata"]["name"]
        if name in before:  # Ready all along: never flipped, so the transition time holds
            assert condition(item, "Ready")["lastTransitionTime"] == before[name]  # type: ignore[index]
    _assert_one_valid_secret_each(api_client, namespace, items)
    _assert_issued_once(api_client, namespace, items, op)
    _assert_signed_once_each(op, count)
    assert op.proc is not None and op.proc.poll() is None
    log = op.log()
    assert "IssuingFailed" not in log
    # The Lease could not be renewed within its deadline: the leader stepped down, and took
    # it again once the API answered.
    lost = log.find("lost the leader Lease")
    assert lost >= 0, "the leader kept leading through a 30 s pause"
    assert "reconciling as leader" in log[lost:], "the leader never took its Lease back"
    print(
        f"paused with {len(before)}/{count - 1} Ready; none flipped; the Lease lost and retaken; "
        f"creations answered 5xx and tried again: {dict(retried) or 'none'}"
    )


def test_credentials_rotated_under_a_running_operator(
    kubeconfig: str, api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """A token-file kubeconfig whose token is replaced and the old one revoked: the operator
    re-reads its credentials on the 401 and goes on."""
    core = client.CoreV1Api(api_client)
    with operator_as_service_account(kubeconfig, api_client, tmp_path) as sa:
        create_identity(api_client, namespace, "before")
        _all_ready(api_client, namespace, 1, timeout=60)
        # Rotate: a new token in the file, then the old one revoked.
        new = bound_token(core, sa.namespace, sa.account, "token-2")
        staged = tmp_path / "token.new"
        staged.write_text(new)
        staged.replace(sa.token_file)
        core.delete_namespaced_secret("token-1", sa.namespace)
        _wait_refused(api_client, sa.token)  # the API server caches good tokens for a while
        create_identity(api_client, namespace, "after")
        _all_ready(api_client, namespace, 2, timeout=90)
        assert sa.op.proc is not None and sa.op.proc.poll() is None
        assert "re-read the API credentials after a 401" in sa.op.log()


def _wait_refused(api: client.ApiClient, token: str, timeout: float = 60) -> None:
    configuration = client.Configuration()
    configuration.host = api.configuration.host
    configuration.ssl_ca_cert = api.configuration.ssl_ca_cert
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    probe = client.CoreV1Api(client.ApiClient(configuration))
    deadline = time.monotonic() + timeout
    while True:
        try:
            probe.list_namespace(limit=1)
        except client.ApiException as exc:
            if exc.status == 401:
                return
            raise
        assert time.monotonic() < deadline, "the revoked token is still accepted"
        time.sleep(0.5)


# --- API Priority and Fairness: a tiny concurrency share -------------------------------------
FLOWCONTROL = ("flowcontrol.apiserver.k8s.io", "v1")


def _api_server_metrics(api: client.ApiClient) -> str:
    response = api.call_api("GET", api.configuration.host + "/metrics")
    response.read()
    return str(response.data.decode())


def _samples(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in wanted)
    )


@pytest.fixture
def tiny_share(api_client: client.ApiClient) -> Iterator[str]:
    """A priority level with one seat (the server's 1,500 shared by nominal shares: ours 1
    against a ballast level's 10,000, which lends all of its seats to the others) and no
    borrowing, whose one queue holds four requests: what does not fit is rejected (429).
    Yields its name; the test's FlowSchema of the same name (`_send_to_level`) is removed
    with it at the end."""
    custom = client.CustomObjectsApi(api_client)
    name = f"meshless-tiny-{uuid.uuid4().hex[:6]}"
    ballast = f"{name}-ballast"
    levels = [
        {
            "metadata": {"name": name},
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": 1,
                    "lendablePercent": 0,
                    "borrowingLimitPercent": 0,
                    "limitResponse": {
                        "type": "Queue",
                        "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 4},
                    },
                },
            },
        },
        {
            "metadata": {"name": ballast},
            "spec": {
                "type": "Limited",
                "limited": {
                    "nominalConcurrencyShares": 10000,
                    "lendablePercent": 100,
                    "limitResponse": {"type": "Reject"},
                },
            },
        },
    ]
    try:
        for level in levels:
            custom.create_cluster_custom_object(*FLOWCONTROL, "prioritylevelconfigurations", level)
        yield name
    finally:
        for plural, obj in (
            ("flowschemas", name),
            ("prioritylevelconfigurations", name),
            ("prioritylevelconfigurations", ballast),
        ):
            try:
                custom.delete_cluster_custom_object(*FLOWCONTROL, plural, obj)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


def _send_to_level(api: client.ApiClient, level: str, user_namespace: str, account: str) -> None:
    """A FlowSchema ahead of every bootstrap one but `exempt` and `probes`: all requests of
    the ServiceAccount go to `level`."""
    client.CustomObjectsApi(api).create_cluster_custom_object(
        *FLOWCONTROL,
        "flowschemas",
        {
            "metadata": {"name": level},
            "spec": {
                "priorityLevelConfiguration": {"name": level},
                "matchingPrecedence": 50,
                "distinguisherMethod": {"type": "ByUser"},
                "rules": [
                    {
                        "subjects": [
                            {
                                "kind": "ServiceAccount",
                                "serviceAccount": {"name": account, "namespace": user_namespace},
                            }
                        ],
                        "resourceRules": [
                            {
                                "verbs": ["*"],
                                "apiGroups": ["*"],
                                "resources": ["*"],
                                "clusterScope": True,
                                "namespaces": ["*"],
                            }
                        ],
                        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                    }
                ],
            },
        },
    )


def test_a_429_storm_slows_issuance_but_drops_nothing(
    kubeconfig: str,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    tiny_share: str,
) -> None:
    """The operator's user gets one seat of API concurrency, and APF rejects with 429 what
    does not fit: every request is retried (Retry-After), progress continues at the allowed
    rate, every identity ends Ready with one Secret, and none reports a failure."""
    _local_control_plane()
    level = tiny_share
    with operator_as_service_account(kubeconfig, api_client, tmp_path) as sa:
        _send_to_level(api_client, level, sa.namespace, sa.account)
        # The API server applies new flow-control objects asynchronously.
        deadline = time.monotonic() + 30
        while (
            _samples(
                _api_server_metrics(api_client),
                "apiserver_flowcontrol_nominal_limit_seats",
                priority_level=level,
            )
            != 1
        ):
            assert time.monotonic() < deadline, f"priority level {level} not at one seat"
            time.sleep(0.2)
        rejected_before = _samples(
            _api_server_metrics(api_client),
            "apiserver_flowcontrol_rejected_requests_total",
            priority_level=level,
        )
        started = time.monotonic()
        create_identities(api_client, namespace, (f"throttled-{i}" for i in range(THROTTLED_STORM)))
        items = _storm_ready(sa.op, api_client, namespace, THROTTLED_STORM, timeout=240)
        took = time.monotonic() - started
        rejected = (
            _samples(
                _api_server_metrics(api_client),
                "apiserver_flowcontrol_rejected_requests_total",
                priority_level=level,
            )
            - rejected_before
        )
        seen_429 = sa.op.counter('meshless_api_responses_total{code="429"}')
        print(
            f"{THROTTLED_STORM} identities in {took:.1f}s; APF rejected {rejected:.0f} "
            f"requests of {sa.user}; the operator saw {seen_429:.0f} 429s"
        )
        assert rejected > 0, "APF rejected nothing: the share was not tiny enough"
        assert seen_429 > 0, "the operator never met a 429"
        _assert_one_valid_secret_each(api_client, namespace, items)
        assert _assert_issued_once(api_client, namespace, items, sa.op) == THROTTLED_STORM
        _assert_signed_once_each(sa.op, THROTTLED_STORM)

        # Every Secret deleted, still throttled: each identity is repaired with a new
        # certificate, and each repair the operator logged has its Reissued Event: an Event
        # refused with a 429 is posted again later (as client-go's recorder does), none is
        # lost. (A repair cut short when APF starves the Lease renewal and the leader steps
        # down is finished by the next term without a log line or Event of its own.)
        old = {i["metadata"]["name"]: i["status"]["serialNumber"] for i in items}
        client.CoreV1Api(api_client).delete_collection_namespaced_secret(
            namespace, label_selector="meshless.dev/identity"
        )
        items = wait_collection(
            client.CustomObjectsApi(api_client).list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            predicate=lambda listed: (
                len(listed) == THROTTLED_STORM
                and all(
                    is_ready(i) and i["status"]["serialNumber"] != old[i["metadata"]["name"]]
                    for i in listed
                )
            ),
            timeout=180,
            what=f"{THROTTLED_STORM} identities Ready on new certificates",
        )
        _assert_one_valid_secret_each(api_client, namespace, items)
        serials = {i["metadata"]["name"]: i["status"]["serialNumber"] for i in items}
        logged = Counter(
            match.group("name")
            for match in ISSUED.finditer(sa.op.log())
            if match.group("namespace") == namespace
        )
        repaired = {name for name, lines in logged.items() if lines == 2}
        assert len(repaired) >= THROTTLED_STORM - 16, len(repaired)  # 16 workers in flight
        _wait_events(api_client, namespace, "Reissued", len(repaired), timeout=150)
        events = list_all(client.CoreV1Api(api_client).list_namespaced_event, namespace)
        reissued: Counter[str] = Counter()
        for event in events:
            if event.reason == "Reissued":
                match = REISSUED_EVENT.match(event.message)
                assert match, event.message
                reissued[event.involved_object.name] += 1
                assert match.group("serial") == serials[event.involved_object.name]
        assert set(reissued) == repaired and set(reissued.values()) == {1}
        assert sa.op.proc is not None and sa.op.proc.poll() is None
        assert "IssuingFailed" not in sa.op.log()
