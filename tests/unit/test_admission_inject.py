"""Injection: the JSON patch that gives a pod its identity, judged by applying it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshless.admission import pods
from meshless.admission.inject import (
    InjectionConflict,
    injection_patch,
)
from meshless.api import Mode
from meshless.identity.spec import IdentityRef, provisioned_identity_ref
from meshless.policy.model import PodResolution
from meshless.policy.resolve import PolicySet
from tests.unit.admission_helpers import apply_patch, pod, policy, policy_set

IDENTITY = provisioned_identity_ref("cluster.local", "shop", "payments")
STRICT_SHOP = policy_set(policy("shop", "strict"))
MOUNT = {"name": "meshless-identity", "mountPath": "/var/run/secrets/meshless/", "readOnly": True}


def resolve(body: dict[str, Any], policies: PolicySet = STRICT_SHOP) -> PodResolution | None:
    return policies.resolve(pods.pod_info(body, body["metadata"]["namespace"]))


def inject(body: dict[str, Any], policies: PolicySet = STRICT_SHOP) -> list[dict[str, Any]]:
    return injection_patch(body, resolve(body, policies), IDENTITY)


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_strict_pod_gets_volume_mounts_env_and_label_everywhere() -> None:
    body = pod()
    ops = inject(body)
    out = apply_patch(body, ops)

    assert out["metadata"]["labels"] == {"meshless.dev/identity": "payments"}
    assert out["spec"]["volumes"] == [
        {"name": "meshless-identity", "secret": {"secretName": "meshless-payments-mtls"}}
    ]
    for container in (*out["spec"]["initContainers"], *out["spec"]["containers"]):
        assert container["volumeMounts"] == [MOUNT]
        assert env_of(container) == {
            "MESHLESS_SPIFFE_ID": "spiffe://cluster.local/ns/shop/sa/payments",
            "MESHLESS_MTLS_MODE": "STRICT",
            "MESHLESS_MTLS_PORTS": '{"8443":"STRICT"}',
        }
    assert pods.identity_mounted(out, "meshless-payments-mtls")


def test_absent_lists_are_created_and_present_ones_appended_to() -> None:
    body = pod(labels={"app": "web"})
    body["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    app = body["spec"]["containers"][0]
    app["env"] = [{"name": "LOG", "value": "debug"}]
    app["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    ops = inject(body)

    paths = {op["path"] for op in ops}
    assert "/metadata/labels/meshless.dev~1identity" in paths  # "/" escaped as "~1"
    assert "/spec/volumes/-" in paths
    assert "/spec/containers/0/env/-" in paths
    assert "/spec/containers/0/volumeMounts/-" in paths
    assert "/spec/initContainers/0/env" in paths  # the init container had no env at all
    out = apply_patch(body, ops)
    assert out["metadata"]["labels"] == {"app": "web", "meshless.dev/identity": "payments"}
    assert [v["name"] for v in out["spec"]["volumes"]] == ["data", "meshless-identity"]
    assert out["spec"]["containers"][0]["env"][0] == {"name": "LOG", "value": "debug"}
    assert out["spec"]["containers"][0]["volumeMounts"][1] == MOUNT


def test_a_second_invocation_changes_nothing() -> None:
    body = pod(labels={"app": "web"})
    once = apply_patch(body, inject(body))
    assert inject(once) == []


def test_api_server_defaults_do_not_make_our_volume_a_conflict() -> None:
    once = apply_patch(pod(), inject(pod()))
    once["spec"]["volumes"][0]["secret"]["defaultMode"] = 420  # what the API server stores
    once["spec"]["volumes"][0]["secret"]["optional"] = False
    assert inject(once) == []


def test_reinvocation_after_another_webhook_added_a_sidecar_covers_only_the_sidecar() -> None:
    once = apply_patch(pod(), inject(pod()))
    once["spec"]["containers"].append({"name": "sidecar", "image": "envoy"})
    ops = inject(once)
    assert {op["path"] for op in ops} == {
        "/spec/containers/1/volumeMounts",
        "/spec/containers/1/env",
    }
    twice = apply_patch(once, ops)
    assert twice["spec"]["containers"][1]["volumeMounts"] == [MOUNT]
    assert pods.identity_mounted(twice)


def test_ports_are_a_sorted_json_object_of_modes() -> None:
    policies = policy_set(
        policy("shop", "ns", Mode.PERMISSIVE),
        policy("shop", "w", Mode.STRICT, selector={"app": "web"}, ports={9090: Mode.DISABLE}),
    )
    body = pod(labels={"app": "web"}, ports=(8443, 80, 10000))
    out = apply_patch(body, inject(body, policies))
    env = env_of(out["spec"]["containers"][0])
    assert env["MESHLESS_MTLS_MODE"] == "STRICT"
    assert env["MESHLESS_MTLS_PORTS"] == (
        '{"80":"STRICT","8443":"STRICT","9090":"DISABLE","10000":"STRICT"}'
    )
    assert list(json.loads(env["MESHLESS_MTLS_PORTS"])) == ["80", "8443", "9090", "10000"]


def test_permissive_pod_is_injected_with_its_mode() -> None:
    body = pod()
    out = apply_patch(body, inject(body, policy_set(policy("shop", "p", Mode.PERMISSIVE))))
    assert env_of(out["spec"]["containers"][0])["MESHLESS_MTLS_MODE"] == "PERMISSIVE"


def test_disable_only_a_port_still_needs_an_identity_for_the_others() -> None:
    policies = policy_set(
        policy("shop", "w", Mode.DISABLE, selector={"app": "web"}, ports={8443: Mode.STRICT})
    )
    body = pod(labels={"app": "web"}, ports=(8443, 80))
    out = apply_patch(body, inject(body, policies))
    env = env_of(out["spec"]["containers"][0])
    assert env["MESHLESS_MTLS_MODE"] == "DISABLE"
    assert env["MESHLESS_MTLS_PORTS"] == '{"80":"DISABLE","8443":"STRICT"}'


@pytest.mark.parametrize(
    "policies",
    [
        policy_set(policy("shop", "off", Mode.DISABLE)),
        policy_set(policy("elsewhere", "strict")),  # no policy reaches the pod
        policy_set(),
    ],
    ids=["disable", "other-namespace", "no-policy"],
)
def test_pods_that_need_no_identity_get_no_ops(policies: PolicySet) -> None:
    assert inject(pod(), policies) == []


@pytest.mark.parametrize("value", ["false", "False", " FALSE "])
def test_opt_out_annotation_means_no_ops(value: str) -> None:
    assert inject(pod(annotations={"meshless.dev/inject": value})) == []


def test_inject_annotation_true_is_not_an_opt_out() -> None:
    assert inject(pod(annotations={"meshless.dev/inject": "true"})) != []


def test_default_service_account_and_identity() -> None:
    body = pod(sa=None)
    ref = provisioned_identity_ref("example.org", "shop", pods.service_account(body))
    assert ref == IdentityRef(
        "shop",
        "meshless-default",
        "meshless-default-mtls",
        "spiffe://example.org/ns/shop/sa/default",
        True,
    )
    out = apply_patch(body, injection_patch(body, resolve(body), ref))
    assert out["metadata"]["labels"]["meshless.dev/identity"] == "default"


# --- conflicts: a denial that names the container and the item ------------------------------
def conflict(body: dict[str, Any]) -> str:
    with pytest.raises(InjectionConflict) as caught:
        inject(body)
    return str(caught.value)


def test_a_different_volume_with_our_name_is_a_conflict() -> None:
    body = pod()
    body["spec"]["volumes"] = [{"name": "meshless-identity", "emptyDir": {}}]
    message = conflict(body)
    assert "volume 'meshless-identity' already exists" in message


def test_our_volume_name_with_another_secret_is_a_conflict() -> None:
    body = pod()
    body["spec"]["volumes"] = [{"name": "meshless-identity", "secret": {"secretName": "stolen"}}]
    assert "meshless-payments-mtls" in conflict(body)


def test_something_else_mounted_at_our_path_is_a_conflict_naming_the_container() -> None:
    body = pod()
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "certs", "mountPath": "/var/run/secrets/meshless"}
    ]
    message = conflict(body)
    assert "container 'app'" in message
    assert "'certs'" in message
    assert "/var/run/secrets/meshless" in message


def test_a_mount_below_our_path_is_a_conflict() -> None:
    body = pod()
    body["spec"]["initContainers"][0]["volumeMounts"] = [
        {"name": "extra", "mountPath": "/var/run/secrets/meshless/extra"}
    ]
    assert "init container 'setup'" in conflict(body)


def test_a_writable_mount_of_our_volume_is_a_conflict() -> None:
    body = apply_patch(pod(), inject(pod()))
    body["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = False
    assert "container 'app'" in conflict(body)


@pytest.mark.parametrize(
    "env",
    [
        {"name": "MESHLESS_SPIFFE_ID", "value": "spiffe://cluster.local/ns/shop/sa/admin"},
        {"name": "MESHLESS_MTLS_MODE", "value": "DISABLE"},
        {"name": "MESHLESS_DEBUG", "value": "1"},
        {
            "name": "MESHLESS_MTLS_PORTS",
            "valueFrom": {"configMapKeyRef": {"name": "x", "key": "y"}},
        },
    ],
    ids=["spiffe-id", "mode", "other", "value-from"],
)
def test_meshless_env_set_by_the_user_is_a_conflict(env: dict[str, Any]) -> None:
    body = pod()
    body["spec"]["containers"][0]["env"] = [env]
    message = conflict(body)
    assert "container 'app'" in message
    assert env["name"] in message


def test_an_identity_label_with_another_name_is_a_conflict() -> None:
    message = conflict(pod(labels={"meshless.dev/identity": "admin"}))
    assert "meshless.dev/identity='admin'" in message
    assert "'payments'" in message


def test_the_patch_leaves_unrelated_fields_alone() -> None:
    body = pod(labels={"app": "web"}, annotations={"note": "x"})
    body["spec"]["nodeName"] = "n1"
    out = apply_patch(body, inject(body))
    assert out["metadata"]["annotations"] == {"note": "x"}
    assert out["spec"]["nodeName"] == "n1"
    assert all(op["op"] == "add" for op in inject(body))


def test_a_service_account_too_long_for_a_label_value_is_a_conflict() -> None:
    body = pod(sa="a" * 64)
    with pytest.raises(InjectionConflict, match="longer than 63 characters"):
        injection_patch(body, resolve(body), IDENTITY)
    assert injection_patch(pod(sa="a" * 63), resolve(pod(sa="a" * 63)), IDENTITY) != []


def test_mirror_pods_are_not_injected() -> None:
    assert inject(pod(annotations={"kubernetes.io/config.mirror": "abc"})) == []
