"""What the operator holds per object at scale: the identity controller's compact record, the
per-identity metric series served from one table, the policy controller's identity indexes
and Kopf's per-object memories (none kept). Each is checked on what a caller sees."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from kubernetes import client
from prometheus_client import CollectorRegistry, generate_latest

from meshless.budget import WriteBudget
from meshless.ca_store import CAStore
from meshless.delivery import ServedApis
from meshless.identity.controller import IdentityController
from meshless.identity.held import HeldIdentity, pack, unpack
from meshless.kube import Kube
from meshless.metrics import CertificateSeries
from meshless.operator import EventOnlyMemories
from meshless.policy.admission_state import ControllerAdmissionState
from meshless.policy.controller import PolicyController
from meshless.policy.held import LabelsWork, NamespaceWork
from meshless.policy.model import PolicyRef
from meshless.runtime.writes import OwnWrites
from meshless.settings import Settings
from meshless.status import EventRecorder

BODY = {
    "metadata": {
        "name": "payments",
        "namespace": "shop",
        "uid": "0b6f1c1e-8d44-4a43-9a59-1f4a1f3c9d10",
        "generation": 3,
        "resourceVersion": "4711",
        "labels": {"team": "a"},
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
    },
    "spec": {"serviceAccountName": "payments", "dnsNames": ["payments.shop.svc"]},
    "status": {
        "serialNumber": "7f",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Ready",
                "message": "Certificate is valid until 2026-11-30T00:00:00Z",
                "lastTransitionTime": "2026-11-29T00:00:00Z",
            }
        ],
    },
}


def test_a_held_identity_gives_back_what_a_reconcile_reads() -> None:
    held = HeldIdentity.of(BODY)
    body = held.body("shop", "payments")
    assert body == {
        "metadata": {
            "name": "payments",
            "namespace": "shop",
            "uid": BODY["metadata"]["uid"],  # type: ignore[index]
            "generation": 3,
            "resourceVersion": "4711",
        },
        "spec": BODY["spec"],
        "status": BODY["status"],
    }
    # Decoded afresh each time: a reconcile that edits its copy cannot change what is held.
    body["status"]["conditions"][0]["status"] = "False"
    assert held.body("shop", "payments")["status"] == BODY["status"]


# A status as the controller writes it (the shape the packing preset expects).
TYPICAL_STATUS = {
    "conditions": [
        {
            "lastTransitionTime": "2026-12-05T16:59:09Z",
            "message": "Certificate is valid until 2026-12-06T16:59:08Z",
            "observedGeneration": 1,
            "reason": "Ready",
            "status": "True",
            "type": "Ready",
        },
        {
            "lastTransitionTime": "2026-12-05T16:59:09Z",
            "message": "Renews at 2026-12-06T07:46:49Z",
            "observedGeneration": 1,
            "reason": "UpToDate",
            "status": "False",
            "type": "Issuing",
        },
    ],
    "notAfter": "2026-12-06T16:59:08Z",
    "notBefore": "2026-12-05T16:58:08Z",
    "observedGeneration": 1,
    "renewalTime": "2026-12-06T07:46:49Z",
    "secretName": "id-1004-mtls",
    "serialNumber": "4240dbc5807dcbe702a3f39dfce06e81",
    "spiffeID": "spiffe://cluster.local/ns/bench-scale-00e9c5/sa/id-1004",
}


def test_packing_gives_back_any_value_and_a_typical_status_in_a_quarter() -> None:
    long_message = {"message": "é" * 5000 + "".join(chr(0x2600 + i) for i in range(300))}
    for value in ({}, BODY["spec"], BODY["status"], TYPICAL_STATUS, long_message):
        assert unpack(pack(value)) == value  # type: ignore[arg-type]
    assert unpack(pack(None)) == {}
    as_json = len(json.dumps(TYPICAL_STATUS, separators=(",", ":")))
    assert as_json > 600 and len(pack(TYPICAL_STATUS)) < as_json / 4


def test_a_held_identity_without_status_or_generation() -> None:
    held = HeldIdentity.of({"metadata": {"name": "a", "namespace": "b", "uid": "u"}})
    assert held.body("b", "a") == {
        "metadata": {"name": "a", "namespace": "b", "uid": "u"},
        "spec": {},
        "status": {},
    }


def _exposition(series: CertificateSeries) -> list[str]:
    registry = CollectorRegistry()
    registry.register(series)
    return [
        line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")
    ]


def test_certificate_series_are_served_like_labelled_gauges() -> None:
    series = CertificateSeries()
    series.ready("shop", "payments", 1800000000.0, 1799990000.0)
    series.not_ready("shop", "orders")  # never Ready: no times yet
    assert _exposition(series) == [
        'meshless_certificate_expiration_timestamp_seconds{name="payments",namespace="shop"}'
        " 1.8e+09",
        'meshless_certificate_renewal_timestamp_seconds{name="payments",namespace="shop"}'
        " 1.79999e+09",
        'meshless_certificate_ready_status{name="payments",namespace="shop"} 1.0',
        'meshless_certificate_ready_status{name="orders",namespace="shop"} 0.0',
    ]
    assert series.ready_count == 1


def test_a_failing_identity_keeps_its_times_and_a_forgotten_one_is_gone() -> None:
    series = CertificateSeries()
    series.ready("shop", "payments", 1800000000.0, 1799990000.0)
    series.ready("shop", "payments", 1800000000.0, 1799990000.0)  # counted once
    assert series.ready_count == 1
    series.not_ready("shop", "payments")
    assert series.ready_count == 0
    assert 'meshless_certificate_ready_status{name="payments",namespace="shop"} 0.0' in (
        _exposition(series)
    )
    assert any("expiration" in line for line in _exposition(series))
    series.ready("shop", "payments", 1800000000.0, 1799990000.0)
    series.forget("shop", "payments")
    series.forget("shop", "payments")
    assert series.ready_count == 0
    assert _exposition(series) == []


def test_kopf_keeps_no_memory_per_object() -> None:
    memories = EventOnlyMemories()
    raw = {"metadata": {"uid": "u1", "name": "a", "namespace": "b"}}

    async def recall_twice() -> bool:
        first = await memories.recall(raw, noticed_by_listing=True)  # type: ignore[arg-type]
        second = await memories.recall(raw)  # type: ignore[arg-type]
        return first is second

    assert asyncio.run(recall_twice()) is False
    assert list(memories.iter_all_memories()) == []


def _controller() -> PolicyController:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # never called: only watch events are fed
    kube = Kube(configuration)
    return PolicyController(
        kube, Settings(), lambda: datetime.now(UTC), EventRecorder(kube), OwnWrites()
    )


def _identity(name: str, account: str, created: str, provisioned: bool = False) -> dict:  # type: ignore[type-arg]
    labels = {"meshless.dev/provisioned": "true"} if provisioned else {}
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "labels": labels,
            "creationTimestamp": created,
        },
        "spec": {"serviceAccountName": account},
    }


def _pod(name: str, account: str) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": name},
        "spec": {"serviceAccountName": account, "containers": [{"name": "app"}]},
    }


LABELS = LabelsWork()


def test_a_storm_of_identities_no_pod_uses_costs_no_namespace_reconcile() -> None:
    policies = _controller()
    for i in range(50):
        policies.on_identity_event("ADDED", _identity(f"id-{i}", f"sa-{i}", "2026-11-29T00:00:00Z"))
    # Only the namespace's first identity asks for its label (meshless.dev/identities).
    assert policies.queue._queued == {LABELS}
    policies.queue._queued.clear()
    # A pod that runs as one of them makes that identity matter.
    policies.on_pod_event("ADDED", _pod("web-1", "sa-7"), enqueue=False)
    policies.on_identity_event("ADDED", _identity("other", "sa-8", "2026-11-29T00:00:00Z"))
    assert len(policies.queue._queued) == 0
    policies.on_identity_event("ADDED", _identity("also-7", "sa-7", "2026-11-29T00:00:00Z"))
    assert policies.queue._queued == {NamespaceWork("shop")}


def test_the_first_and_the_last_identity_of_a_namespace_relabel_it() -> None:
    policies = _controller()
    policies.on_identity_event("ADDED", _identity("a", "web", "2026-11-29T00:00:00Z"))
    assert LABELS in policies.queue._queued
    policies.queue._queued.clear()
    policies.on_identity_event("ADDED", _identity("b", "db", "2026-11-29T00:00:00Z"))
    policies.on_identity_event("DELETED", _identity("a", "web", ""))
    assert LABELS not in policies.queue._queued
    policies.on_identity_event("DELETED", _identity("b", "db", ""))
    assert LABELS in policies.queue._queued


def test_admission_learns_whose_identity_a_secret_holds() -> None:
    policies = _controller()
    policies.on_identity_event("ADDED", _identity("web-id", "web", "2026-11-29T00:00:00Z"))
    [record] = policies.identities_with_secret("shop", "web-id-mtls")
    assert (record.name, record.service_account) == ("web-id", "web")
    policies.on_identity_event("DELETED", _identity("web-id", "", ""))
    assert policies.identities_with_secret("shop", "web-id-mtls") == []
    assert list(policies.stores.identities.index_values("secret")) == []


def test_a_provisioned_identity_always_matters() -> None:
    policies = _controller()
    policies.on_identity_event(
        "ADDED", _identity("meshless-web", "web", "2026-11-29T00:00:00Z", provisioned=True)
    )
    assert policies.queue._queued == {NamespaceWork("shop"), LABELS}


def test_the_identity_for_a_service_account_comes_from_the_index() -> None:
    policies = _controller()
    policies.on_identity_event("ADDED", _identity("newer", "web", "2026-11-29T02:00:00Z"))
    policies.on_identity_event("ADDED", _identity("older", "web", "2026-11-29T01:00:00Z"))
    policies.on_identity_event("ADDED", _identity("unrelated", "db", "2026-11-29T00:00:00Z"))
    assert policies.identity_ref_for("shop", "web").name == "older"
    # The ServiceAccount of "older" changes: it no longer serves web.
    policies.on_identity_event("MODIFIED", _identity("older", "batch", "2026-11-29T01:00:00Z"))
    assert policies.identity_ref_for("shop", "web").name == "newer"
    assert policies.identity_ref_for("shop", "batch").name == "older"
    for name in ("newer", "older", "unrelated"):
        policies.on_identity_event("DELETED", _identity(name, "", ""))
    # Nothing left: the provisioned name, and no empty index entries kept around.
    assert policies.identity_ref_for("shop", "web").name == "meshless-web"
    assert list(policies.stores.identities.index_values("namespace")) == []
    assert list(policies.stores.identities.index_values("account")) == []


def test_an_identity_with_a_refused_name_is_passed_over_by_the_operators_own_verdict() -> None:
    """Judged from the spec with the operator's settings, before the identity controller has
    written any status: a pod admitted in the same second gets the provisioned Secret."""
    policies = _controller()
    policies.on_pod_event("ADDED", _pod("web-1", "web"), enqueue=False)
    bad = _identity("mine", "web", "2026-11-29T01:00:00Z")
    bad["spec"]["dnsNames"] = ["payments.other.svc"]
    policies.on_identity_event("ADDED", bad)
    assert policies.identity_ref_for("shop", "web").name == "meshless-web"
    # provisions meshless-web; the namespace's first identity also brings the labels work
    assert policies.queue._queued == {NamespaceWork("shop"), LabelsWork()}
    # Fixed by its owner: it serves its ServiceAccount again.
    bad["spec"]["dnsNames"] = ["web.shop.svc"]
    policies.on_identity_event("MODIFIED", bad)
    assert policies.identity_ref_for("shop", "web").name == "mine"


def test_identities_a_list_did_not_return_are_handed_back_as_deleted() -> None:
    """After a (re-)list, held identities the API no longer has (deleted while no watch ran)
    come back as DELETED events with what forgetting them needs (their Secret's name)."""
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # never called: only watch events are fed
    kube = Kube(configuration)
    settings = Settings()
    clock = lambda: datetime.now(UTC)  # noqa: E731
    identities = IdentityController(
        kube,
        settings,
        CAStore(kube, settings, clock),
        WriteBudget(10, 10),
        clock,
        EventRecorder(kube),
        OwnWrites(),
    )
    for namespace, name in (("shop", "kept"), ("shop", "gone"), ("other", "elsewhere")):
        body = _identity(name, "sa", "2026-11-29T00:00:00Z")
        body["metadata"].update(namespace=namespace, uid=f"uid-{name}", resourceVersion="1")
        body["spec"]["secretName"] = f"{name}-tls"
        identities.on_identity_event(None, body)

    # A list of namespace "shop" returned only "kept": "other" is not in its scope.
    vanished = identities.vanished("shop", {("shop", "kept")})
    assert vanished == [
        {
            "metadata": {"namespace": "shop", "name": "gone"},
            "spec": {"serviceAccountName": "sa", "secretName": "gone-tls"},
        }
    ]
    for body in vanished:
        identities.on_identity_event("DELETED", body)
    assert sorted(identities.store) == [("other", "elsewhere"), ("shop", "kept")]
    # A cluster-wide list that returned nothing: everything held is gone.
    assert len(identities.vanished(None, set())) == 2


def test_admission_reads_a_snapshot_of_the_policy_stores() -> None:
    policies = _controller()
    state = ControllerAdmissionState(policies)
    assert state.current().policies is None  # not every policy read yet: 503
    body = {
        "metadata": {"name": "strict", "namespace": "shop", "uid": "u1", "generation": 1},
        "spec": {"mode": "STRICT"},
    }
    policies.on_policy_event("ADDED", body, enqueue=False)
    policies.on_identity_event("ADDED", _identity("web-id", "web", "2026-11-29T00:00:00Z"))
    state.policies_listed = True
    first = state.current()
    assert first.policies is not None
    assert [spec.ref for spec in first.policies.all()] == [PolicyRef("shop", "strict")]
    [record] = first.identities.of_account("shop", "web")
    assert record.name == "web-id"
    # Nothing changed: the same state, no PolicySet built again.
    assert state.current() is first
    # What discovery found decides the default delivery admission mounts.
    policies.apis = ServedApis(pod_certificate_requests="certificates.k8s.io/v1beta1")
    served = state.current()
    assert served.apis == policies.apis
    assert served.delivery is policies.default_delivery
    assert served.policies is first.policies
