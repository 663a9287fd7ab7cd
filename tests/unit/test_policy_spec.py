"""MtlsPolicy objects into PolicySpecs (errors name the field), and Pods into slim PodInfos."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from meshless import api
from meshless.api import AdmissionAction, Mode
from meshless.policy.model import IdentityDefaults, PodInfo
from meshless.policy.spec import PolicySpecError, parse_policy, pod_info
from meshless.selectors import parse_selector

METADATA = {
    "name": "payments-strict",
    "namespace": "shop",
    "uid": "0b7c5e1a-7c43-4bd0-9a0e-2f0b7d9c1e11",
    "creationTimestamp": "2030-01-01T00:00:00Z",
    "generation": 3,
    "resourceVersion": "12345",
}

FULL_SPEC: dict[str, Any] = {
    "selector": {
        "matchLabels": {"app": "payments"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}],
    },
    "mode": "STRICT",
    "portLevelMtls": {"9090": {"mode": "DISABLE"}, "65535": {"mode": "PERMISSIVE"}},
    "identity": {"ttl": "12h", "privateKey": {"algorithm": "ECDSAP384"}},
    "enforcement": {"admission": "Warn", "networkPolicy": False},
}


def policy(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "MtlsPolicy",
        "metadata": {**METADATA, **meta},
        "spec": spec,
    }


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(FULL_SPEC)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


# --------------------------------------------------------------------------------------------
# parse_policy


def test_full_policy() -> None:
    parsed = parse_policy(policy(FULL_SPEC))
    assert parsed.namespace == "shop"
    assert parsed.name == "payments-strict"
    assert parsed.uid == METADATA["uid"]
    assert parsed.creation_timestamp == "2030-01-01T00:00:00Z"
    assert parsed.generation == 3
    assert parsed.selector == parse_selector(FULL_SPEC["selector"])
    assert parsed.selector is not None
    assert parsed.selector.matches({"app": "payments", "tier": "backend"})
    assert not parsed.selector.matches({"app": "payments"})
    assert parsed.mode is Mode.STRICT
    assert dict(parsed.port_modes) == {9090: Mode.DISABLE, 65535: Mode.PERMISSIVE}
    assert parsed.identity == IdentityDefaults(ttl="12h", algorithm="ECDSAP384")
    assert parsed.admission is AdmissionAction.WARN
    assert parsed.network_policy is False


def test_minimal_policy_gets_the_crd_defaults() -> None:
    parsed = parse_policy(policy({}))
    assert parsed.selector is None
    assert parsed.mode is Mode.UNSET
    assert dict(parsed.port_modes) == {}
    assert parsed.identity == IdentityDefaults()
    assert parsed.admission is AdmissionAction.ENFORCE
    assert parsed.network_policy is True


def test_policy_as_the_api_returns_it_after_defaulting() -> None:
    spec = {"mode": "UNSET", "enforcement": {"admission": "Enforce", "networkPolicy": True}}
    assert parse_policy(policy(spec)) == parse_policy(policy({}))


def test_missing_spec_and_metadata_fields_do_not_crash() -> None:
    parsed = parse_policy({"metadata": {"name": "p", "namespace": "shop"}})
    assert (parsed.uid, parsed.creation_timestamp, parsed.generation) == ("", "", 0)
    assert parsed.mode is Mode.UNSET


@pytest.mark.parametrize(
    "selector",
    [
        pytest.param({}, id="empty"),
        pytest.param({"matchLabels": {}, "matchExpressions": []}, id="empty parts"),
    ],
)
def test_empty_selector_is_no_selector(selector: dict[str, Any]) -> None:
    parsed = parse_policy(policy({"selector": selector, "mode": "STRICT"}))
    assert parsed.selector is None


@pytest.mark.parametrize("mode", list(Mode))
def test_every_mode(mode: Mode) -> None:
    assert parse_policy(policy({"mode": mode.value})).mode is mode


@pytest.mark.parametrize("action", list(AdmissionAction))
def test_every_admission_action(action: AdmissionAction) -> None:
    parsed = parse_policy(policy({"enforcement": {"admission": action.value}}))
    assert parsed.admission is action
    assert parsed.network_policy is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        pytest.param(
            {"mode": "STRICTT"},
            "spec.mode 'STRICTT' is not one of STRICT, PERMISSIVE, DISABLE, UNSET",
            id="mode typo",
        ),
        pytest.param({"mode": "strict"}, "spec.mode 'strict'", id="mode lowercase"),
        pytest.param({"mode": ""}, "spec.mode ''", id="mode empty"),
        pytest.param(
            {"selector": None},
            "spec.portLevelMtls requires a non-empty spec.selector",
            id="portLevelMtls without selector",
        ),
        pytest.param(
            {"selector": {}},
            "spec.portLevelMtls requires a non-empty spec.selector",
            id="portLevelMtls with an empty selector",
        ),
        pytest.param(
            {"portLevelMtls": {"0": {"mode": "STRICT"}}},
            "spec.portLevelMtls key '0' is not a port 1..65535",
            id="port 0",
        ),
        pytest.param(
            {"portLevelMtls": {"70000": {"mode": "STRICT"}}},
            "spec.portLevelMtls key '70000' is not a port 1..65535",
            id="port 70000",
        ),
        pytest.param(
            {"portLevelMtls": {"65536": {"mode": "STRICT"}}},
            "spec.portLevelMtls key '65536'",
            id="port 65536",
        ),
        pytest.param(
            {"portLevelMtls": {"abc": {"mode": "STRICT"}}},
            "spec.portLevelMtls key 'abc' is not a port 1..65535",
            id="port name",
        ),
        pytest.param(
            {"portLevelMtls": {"-1": {"mode": "STRICT"}}},
            "spec.portLevelMtls key '-1'",
            id="port negative",
        ),
        pytest.param(
            {"portLevelMtls": {"080": {"mode": "STRICT"}}},
            "spec.portLevelMtls key '080'",
            id="port leading zero",
        ),
        pytest.param(
            {"portLevelMtls": {"٣": {"mode": "STRICT"}}},
            "spec.portLevelMtls key '٣'",
            id="port non-ASCII digit",
        ),
        pytest.param(
            {"portLevelMtls": {"9090": {"mode": "OFF"}}},
            "spec.portLevelMtls.9090.mode 'OFF' is not one of",
            id="port mode unknown",
        ),
        pytest.param(
            {"portLevelMtls": {"9090": {}}},
            "spec.portLevelMtls.9090.mode is required",
            id="port mode missing",
        ),
        pytest.param(
            {"portLevelMtls": ["9090"]},
            "spec.portLevelMtls must be a map",
            id="portLevelMtls not a map",
        ),
        pytest.param(
            {"selector": "app=payments"},
            "spec.selector must be a LabelSelector object",
            id="selector not an object",
        ),
        pytest.param(
            {"selector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]}},
            "spec.selector.matchExpressions[0].operator 'Equals' is not one of",
            id="selector operator Equals",
        ),
        pytest.param(
            {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
            "spec.selector.matchExpressions[0]: operator In needs values",
            id="selector In without values",
        ),
        pytest.param(
            {"enforcement": {"admission": "Deny"}},
            "spec.enforcement.admission 'Deny' is not one of Enforce, Warn, Audit",
            id="admission unknown",
        ),
        pytest.param(
            {"enforcement": {"networkPolicy": "yes"}},
            "spec.enforcement.networkPolicy 'yes' is not a boolean",
            id="networkPolicy not a boolean",
        ),
        pytest.param(
            {"enforcement": "strict"},
            "spec.enforcement must be an object",
            id="enforcement not an object",
        ),
        pytest.param(
            {"identity": {"ttl": "1.5h"}},
            "spec.identity.ttl: invalid duration '1.5h'",
            id="identity ttl format",
        ),
        pytest.param(
            {"identity": {"ttl": "30s"}},
            "spec.identity.ttl '30s' must be between 1m and 30d",
            id="identity ttl below 1m",
        ),
        pytest.param(
            {"identity": {"ttl": "31d"}},
            "spec.identity.ttl '31d' must be between 1m and 30d",
            id="identity ttl above 30d",
        ),
        pytest.param(
            {"identity": {"privateKey": {"algorithm": "DSA"}}},
            "spec.identity.privateKey.algorithm 'DSA' is not one of ECDSAP256, ECDSAP384",
            id="identity algorithm unknown",
        ),
        pytest.param(
            {"identity": {"privateKey": "RSA2048"}},
            "spec.identity.privateKey must be an object",
            id="identity privateKey not an object",
        ),
    ],
)
def test_errors_name_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicySpecError) as caught:
        parse_policy(policy(with_changes(changes)))
    assert message in str(caught.value)


def test_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"^spec\.mode"):
        parse_policy(policy({"mode": "MUTUAL"}))


def test_identity_defaults_only_what_is_set() -> None:
    parsed = parse_policy(policy({"identity": {"ttl": "1d12h"}}))
    assert parsed.identity == IdentityDefaults(ttl="1d12h", algorithm=None)
    parsed = parse_policy(policy({"identity": {"privateKey": {"algorithm": "Ed25519"}}}))
    assert parsed.identity == IdentityDefaults(ttl=None, algorithm="Ed25519")


def test_parsed_policies_compare_equal() -> None:
    # The controller skips work when a re-parsed policy equals the one it holds.
    assert parse_policy(policy(FULL_SPEC)) == parse_policy(policy(copy.deepcopy(FULL_SPEC)))
    assert parse_policy(policy(FULL_SPEC)) != parse_policy(policy(FULL_SPEC, generation=4))


# --------------------------------------------------------------------------------------------
# pod_info

IDENTITY_VOLUME = {
    "name": api.IDENTITY_VOLUME,
    "secret": {"secretName": "payments-mtls", "defaultMode": 420},
}
IDENTITY_MOUNT = {
    "name": api.IDENTITY_VOLUME,
    "mountPath": api.IDENTITY_MOUNT_PATH,
    "readOnly": True,
}
TOKEN_MOUNT = {
    "name": "kube-api-access-x7k2p",
    "readOnly": True,
    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
}


def running_pod() -> dict[str, Any]:
    """A pod as `kubectl get pod -o json` shows it: injected, running, ready (a fresh copy)."""
    return copy.deepcopy(_RUNNING_POD)


_RUNNING_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "payments-7d9f8b6c5-x2x4q",
        "namespace": "shop",
        "uid": "6f1e4c2a-0d1b-4c8e-9a55-3b2f1e0c9d77",
        "generateName": "payments-7d9f8b6c5-",
        "labels": {
            "app": "payments",
            "pod-template-hash": "7d9f8b6c5",
            api.IDENTITY_LABEL: "payments",
        },
        "annotations": {"kubectl.kubernetes.io/restartedAt": "2030-01-01T00:00:00Z"},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "payments-7d9f8b6c5",
                "uid": "1d2c3b4a-0000-4000-8000-000000000001",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
        "creationTimestamp": "2030-01-01T00:00:00Z",
        "resourceVersion": "4242",
    },
    "spec": {
        "serviceAccountName": "payments",
        "serviceAccount": "payments",
        "nodeName": "node-1",
        "restartPolicy": "Always",
        "initContainers": [
            {
                "name": "migrate",
                "image": "registry.example/payments-migrate:1.4",
                "volumeMounts": [IDENTITY_MOUNT, TOKEN_MOUNT],
            },
            {
                "name": "metrics-sidecar",
                "image": "registry.example/exporter:0.9",
                "restartPolicy": "Always",
                "ports": [{"name": "metrics", "containerPort": 9102, "protocol": "TCP"}],
                "volumeMounts": [IDENTITY_MOUNT, TOKEN_MOUNT],
            },
        ],
        "containers": [
            {
                "name": "app",
                "image": "registry.example/payments:1.4",
                "ports": [
                    {"name": "https", "containerPort": 8443, "protocol": "TCP"},
                    {"name": "admin", "containerPort": 9090},  # protocol defaults to TCP
                    {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                    {"name": "sctp", "containerPort": 3868, "protocol": "SCTP"},
                ],
                "env": [{"name": api.ENV_SPIFFE_ID, "value": "spiffe://x"}],
                "volumeMounts": [TOKEN_MOUNT, IDENTITY_MOUNT],
            },
            {
                "name": "log-shipper",
                "image": "registry.example/shipper:2.0",
                "volumeMounts": [{**IDENTITY_MOUNT, "mountPath": "/var/run/secrets/meshless"}],
            },
        ],
        "volumes": [
            {"name": "kube-api-access-x7k2p", "projected": {"sources": []}},
            IDENTITY_VOLUME,
        ],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.244.1.17",
        "podIPs": [{"ip": "10.244.1.17"}],
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "PodScheduled", "status": "True"},
        ],
    },
}


def test_running_injected_pod() -> None:
    info = pod_info(running_pod())
    assert info == PodInfo(
        namespace="shop",
        name="payments-7d9f8b6c5-x2x4q",
        uid="6f1e4c2a-0d1b-4c8e-9a55-3b2f1e0c9d77",
        labels={
            "app": "payments",
            "pod-template-hash": "7d9f8b6c5",
            api.IDENTITY_LABEL: "payments",
        },
        service_account="payments",
        ports=frozenset({8443, 9090, 9102}),  # UDP and SCTP left out; sidecar init port in
        identity_mounted=True,
        ip="10.244.1.17",
        running=True,
        deleting=False,
        pod_certificate=False,
        node="node-1",
        created="2030-01-01T00:00:00Z",
    )


def test_pod_info_holds_no_reference_to_the_body() -> None:
    body = running_pod()
    info = pod_info(body)
    body["metadata"]["labels"]["app"] = "changed"
    assert info.labels["app"] == "payments"


def test_pending_pod_as_created() -> None:
    """A bare pod right after create: no status, no service account, no volumes."""
    body = {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]},
    }
    info = pod_info(body)
    assert info.service_account == "default"
    assert info.labels == {}
    assert info.ports == frozenset()
    assert info.identity_mounted is False
    assert (info.ip, info.running, info.deleting, info.uid) == ("", False, False, "")


def test_same_port_in_two_containers_counts_once() -> None:
    body = running_pod()
    body["spec"]["containers"][1]["ports"] = [{"containerPort": 8443}]
    assert pod_info(body).ports == frozenset({8443, 9090, 9102})


def test_empty_service_account_name_is_default() -> None:
    body = running_pod()
    # The API server mirrors serviceAccountName into the deprecated serviceAccount: a pod
    # that names no account has neither.
    body["spec"]["serviceAccountName"] = ""
    body["spec"]["serviceAccount"] = ""
    assert pod_info(body).service_account == "default"


def test_pod_info_is_the_same_for_admission_and_the_controller() -> None:
    """One builder: a pod under admission (the request's namespace, no status yet) resolves as
    the same pod does once stored, but for what only a stored pod has."""
    stored = running_pod()
    under_admission = copy.deepcopy(stored)
    del under_admission["status"]
    del under_admission["metadata"]["namespace"]
    admitted = pod_info(under_admission, "shop")
    assert admitted == replace(pod_info(stored), ip="", running=False)


@pytest.mark.parametrize(
    ("phase", "ready", "running"),
    [
        pytest.param("Running", "True", True, id="running and ready"),
        pytest.param("Running", "False", False, id="running not ready"),
        pytest.param("Running", None, False, id="running without Ready condition"),
        pytest.param("Pending", "True", False, id="pending"),
        pytest.param("Succeeded", "False", False, id="succeeded"),
    ],
)
def test_running_needs_phase_and_ready(phase: str, ready: str | None, running: bool) -> None:
    body = running_pod()
    body["status"]["phase"] = phase
    conditions = [c for c in body["status"]["conditions"] if c["type"] != "Ready"]
    if ready is not None:
        conditions.append({"type": "Ready", "status": ready})
    body["status"]["conditions"] = conditions
    assert pod_info(body).running is running


def test_deleting_pod() -> None:
    body = running_pod()
    body["metadata"]["deletionTimestamp"] = "2030-01-01T01:00:00Z"
    body["metadata"]["deletionGracePeriodSeconds"] = 30
    assert pod_info(body).deleting is True


def _without_mount(container: dict[str, Any]) -> None:
    container["volumeMounts"] = [
        m for m in container["volumeMounts"] if m["name"] != api.IDENTITY_VOLUME
    ]


def _set_volume(body: dict[str, Any], volume: dict[str, Any] | None) -> None:
    volumes = [v for v in body["spec"]["volumes"] if v["name"] != api.IDENTITY_VOLUME]
    body["spec"]["volumes"] = volumes if volume is None else [*volumes, volume]


def _no_volume(body: dict[str, Any]) -> None:
    _set_volume(body, None)


def _not_a_secret_volume(body: dict[str, Any]) -> None:
    _set_volume(body, {"name": api.IDENTITY_VOLUME, "emptyDir": {}})


def _one_container_unmounted(body: dict[str, Any]) -> None:
    _without_mount(body["spec"]["containers"][1])


def _no_container_mounts(body: dict[str, Any]) -> None:
    for container in body["spec"]["containers"]:
        _without_mount(container)


def _wrong_path(body: dict[str, Any]) -> None:
    body["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = "/etc/tls"


def _sub_path(body: dict[str, Any]) -> None:
    body["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] = "/var/run/secrets/meshless/x"


def _other_volume_at_the_path(body: dict[str, Any]) -> None:
    body["spec"]["containers"][0]["volumeMounts"][1]["name"] = "kube-api-access-x7k2p"


def _init_container_unmounted(body: dict[str, Any]) -> None:
    _without_mount(body["spec"]["initContainers"][1])


def _no_volumes_key(body: dict[str, Any]) -> None:
    del body["spec"]["volumes"]


@pytest.mark.parametrize(
    ("change", "mounted"),
    [
        pytest.param(None, True, id="every container mounts it (with and without slash)"),
        pytest.param(_no_volume, False, id="no identity volume"),
        pytest.param(_no_volumes_key, False, id="no volumes at all"),
        pytest.param(_not_a_secret_volume, False, id="identity volume is not a secret"),
        pytest.param(_one_container_unmounted, False, id="partial: one container lacks it"),
        pytest.param(_no_container_mounts, False, id="volume present, mounted nowhere"),
        pytest.param(_wrong_path, False, id="mounted at another path"),
        pytest.param(_sub_path, False, id="mounted below the identity path"),
        pytest.param(_other_volume_at_the_path, False, id="another volume at the identity path"),
        pytest.param(
            _init_container_unmounted, False, id="init containers too (the injector mounts all)"
        ),
    ],
)
def test_identity_mount_detection(change: Any, mounted: bool) -> None:
    body = running_pod()
    if change is not None:
        change(body)
    assert pod_info(body).identity_mounted is mounted
