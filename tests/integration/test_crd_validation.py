"""The CRDs' schemas and CEL rules, checked by a real kube-apiserver.

Every bad input must be refused at apply time with a message that names the offending field, so
a user (or Argo CD / Flux) sees the mistake before the operator ever does.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helmtool import helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "meshless"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
Manifest = dict[str, Any]

API_VERSION = "meshless.dev/v1alpha1"


def workload_identity(spec: dict[str, Any], name: str = "payments") -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "WorkloadIdentity",
        "metadata": {"name": name},
        "spec": spec,
    }


def mtls_policy(spec: dict[str, Any], name: str = "payments-strict") -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": "MtlsPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(kubectl: Kubectl, namespace: str, manifest: Manifest) -> subprocess.CompletedProcess[str]:
    # JSON, not YAML: YAML would turn a key such as "080" into a number on the way.
    return kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)


def get(kubectl: Kubectl, namespace: str, resource: str, name: str) -> Manifest:
    out = kubectl("get", "-n", namespace, resource, name, "-o", "json").stdout
    result: Manifest = json.loads(out)
    return result


def patch_status(
    kubectl: Kubectl, namespace: str, ref: str, body: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    args = ["--subresource=status", "--type=merge", "-p", json.dumps(body), *extra]
    return kubectl("patch", "-n", namespace, ref, *args, check=False)


def with_changes(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of base with the top-level keys of changes set; a value of None removes the key."""
    spec = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def assert_refused(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0, f"expected the apiserver to refuse, got: {proc.stdout}"
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in stderr:\n{proc.stderr}"


# --------------------------------------------------------------------------------------------
# WorkloadIdentity

VALID_WID_SPEC: dict[str, Any] = {
    "serviceAccountName": "payments",
    "dnsNames": ["payments.shop.svc", "*.payments.example.com"],
    "ttl": "24h",
    "renewBefore": "8h",
}


def test_valid_workload_identity_reads_back_with_defaults(kubectl: Kubectl, namespace: str) -> None:
    proc = apply(kubectl, namespace, workload_identity(VALID_WID_SPEC))
    assert proc.returncode == 0, proc.stderr

    spec = get(kubectl, namespace, "workloadidentity", "payments")["spec"]
    assert spec["privateKey"] == {"algorithm": "ECDSAP256"}
    assert spec["serviceAccountName"] == "payments"
    assert spec["dnsNames"] == VALID_WID_SPEC["dnsNames"]
    assert spec["ttl"] == "24h"
    assert spec["renewBefore"] == "8h"
    # The default Secret name depends on metadata.name, so the operator applies it, not the
    # schema: an omitted secretName stays omitted.
    assert "secretName" not in spec


def test_minimal_workload_identity(kubectl: Kubectl, namespace: str) -> None:
    proc = apply(kubectl, namespace, workload_identity({"serviceAccountName": "default"}))
    assert proc.returncode == 0, proc.stderr
    spec = get(kubectl, namespace, "wid", "payments")["spec"]
    assert spec == {"serviceAccountName": "default", "privateKey": {"algorithm": "ECDSAP256"}}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"ttl": "1m", "renewBefore": "30s"}, id="ttl-floor-1m"),
        pytest.param({"ttl": "60s", "renewBefore": None}, id="ttl-60s"),
        pytest.param({"ttl": "90m", "renewBefore": "30m"}, id="ttl-90m"),
        pytest.param({"ttl": "1h30m", "renewBefore": "29m59s"}, id="ttl-1h30m"),
        pytest.param({"ttl": "1d12h", "renewBefore": "12h"}, id="ttl-days-and-hours"),
        pytest.param({"ttl": "30d", "renewBefore": "10d"}, id="ttl-30d"),
        pytest.param({"ttl": "720h", "renewBefore": "719h59m59s"}, id="ttl-720h"),
        pytest.param({"ttl": "2592000s", "renewBefore": "1d"}, id="ttl-30d-in-seconds"),
        pytest.param({"ttl": None, "renewBefore": "8h"}, id="renewBefore-without-ttl"),
        pytest.param({"secretName": "payments-tls.v2"}, id="secretName-subdomain"),
        pytest.param({"dnsNames": ["a", "x-1.example", "*.example"]}, id="dnsNames"),
        pytest.param({"privateKey": {"algorithm": "Ed25519"}}, id="algorithm-Ed25519"),
        pytest.param({"privateKey": {"algorithm": "RSA4096"}}, id="algorithm-RSA4096"),
        pytest.param(
            {"secretTemplate": {"labels": {"team": "shop"}, "annotations": {"x/y": "any thing"}}},
            id="secretTemplate",
        ),
    ],
)
def test_workload_identity_accepts(
    kubectl: Kubectl, namespace: str, changes: dict[str, Any]
) -> None:
    proc = apply(kubectl, namespace, workload_identity(with_changes(VALID_WID_SPEC, changes)))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        # ttl: bounds 1m..30d, checked in CEL after the format pattern.
        pytest.param(
            {"ttl": "0s", "renewBefore": None}, ["spec.ttl", "between 1m and 30d"], id="ttl-0s"
        ),
        pytest.param(
            {"ttl": "30s", "renewBefore": None}, ["spec.ttl", "between 1m and 30d"], id="ttl-30s"
        ),
        pytest.param(
            {"ttl": "59s", "renewBefore": None}, ["spec.ttl", "between 1m and 30d"], id="ttl-59s"
        ),
        pytest.param({"ttl": "31d"}, ["spec.ttl", "between 1m and 30d"], id="ttl-31d"),
        pytest.param({"ttl": "800h"}, ["spec.ttl", "between 1m and 30d"], id="ttl-800h"),
        pytest.param({"ttl": "720h1s"}, ["spec.ttl", "between 1m and 30d"], id="ttl-720h1s"),
        pytest.param({"ttl": "30d1m"}, ["spec.ttl", "between 1m and 30d"], id="ttl-30d1m"),
        pytest.param({"ttl": "9999999h"}, ["spec.ttl", "between 1m and 30d"], id="ttl-huge"),
        # ttl: format.
        pytest.param({"ttl": "1.5h"}, ["spec.ttl", "should match"], id="ttl-fraction"),
        pytest.param({"ttl": "24H"}, ["spec.ttl", "should match"], id="ttl-uppercase"),
        pytest.param({"ttl": "-1h"}, ["spec.ttl", "should match"], id="ttl-negative"),
        pytest.param({"ttl": "30m1h"}, ["spec.ttl", "should match"], id="ttl-units-out-of-order"),
        pytest.param({"ttl": "1w"}, ["spec.ttl", "should match"], id="ttl-weeks"),
        pytest.param({"ttl": "24"}, ["spec.ttl", "should match"], id="ttl-no-unit"),
        pytest.param({"ttl": ""}, ["spec.ttl"], id="ttl-empty"),
        # renewBefore.
        pytest.param(
            {"ttl": "1h", "renewBefore": "60m"},
            ["spec.renewBefore", "shorter than spec.ttl"],
            id="renewBefore-equals-ttl",
        ),
        pytest.param(
            {"ttl": "1h", "renewBefore": "2h"},
            ["spec.renewBefore", "shorter than spec.ttl"],
            id="renewBefore-longer-than-ttl",
        ),
        pytest.param(
            {"ttl": "1d", "renewBefore": "1d"},
            ["spec.renewBefore", "shorter than spec.ttl"],
            id="renewBefore-equals-ttl-days",
        ),
        pytest.param(
            {"renewBefore": "0s"}, ["spec.renewBefore", "longer than 0s"], id="renewBefore-0s"
        ),
        pytest.param(
            {"renewBefore": "8 h"}, ["spec.renewBefore", "should match"], id="renewBefore-format"
        ),
        # dnsNames.
        pytest.param({"dnsNames": ["Bad_Name"]}, ["spec.dnsNames[0]"], id="dns-Bad_Name"),
        pytest.param(
            {"dnsNames": ["ok.example", "-x.example"]}, ["spec.dnsNames[1]"], id="dns-leading-dash"
        ),
        pytest.param({"dnsNames": ["a..example"]}, ["spec.dnsNames[0]"], id="dns-empty-label"),
        pytest.param({"dnsNames": ["x-.example"]}, ["spec.dnsNames[0]"], id="dns-trailing-dash"),
        pytest.param({"dnsNames": ["*.*.example"]}, ["spec.dnsNames[0]"], id="dns-double-wildcard"),
        pytest.param({"dnsNames": ["a.*.example"]}, ["spec.dnsNames[0]"], id="dns-inner-wildcard"),
        pytest.param({"dnsNames": ["*"]}, ["spec.dnsNames[0]"], id="dns-bare-wildcard"),
        pytest.param(
            {"dnsNames": ["a" * 64 + ".example"]}, ["spec.dnsNames[0]"], id="dns-label-64"
        ),
        pytest.param(
            {"dnsNames": ["a.example", "a.example"]},
            ["spec.dnsNames[1]", "Duplicate value"],
            id="dns-duplicate",
        ),
        pytest.param(
            {"dnsNames": [f"n{i}.example" for i in range(33)]},
            ["spec.dnsNames", "32"],
            id="dns-too-many",
        ),
        # privateKey.
        pytest.param(
            {"privateKey": {"algorithm": "RSA1024"}},
            ["spec.privateKey.algorithm", "Unsupported value"],
            id="algorithm-unknown",
        ),
        pytest.param(
            {"privateKey": {"algorithm": "ecdsap256"}},
            ["spec.privateKey.algorithm", "Unsupported value"],
            id="algorithm-case",
        ),
        # secretName.
        pytest.param({"secretName": "Bad/Name"}, ["spec.secretName"], id="secretName-slash"),
        pytest.param({"secretName": "Payments"}, ["spec.secretName"], id="secretName-uppercase"),
        pytest.param(
            {"secretName": "a" * 254}, ["spec.secretName", "253"], id="secretName-too-long"
        ),
        # serviceAccountName.
        pytest.param(
            {"serviceAccountName": None},
            ["spec.serviceAccountName", "Required value"],
            id="serviceAccountName-missing",
        ),
        pytest.param(
            {"serviceAccountName": "Pay_ments"},
            ["spec.serviceAccountName"],
            id="serviceAccountName-bad",
        ),
        # secretTemplate.
        pytest.param(
            {"secretTemplate": {"labels": {"meshless.dev/identity": "other"}}},
            ["spec.secretTemplate.labels", "meshless.dev/identity"],
            id="secretTemplate-reserved-label",
        ),
        pytest.param(
            {"secretTemplate": {"labels": {"bad key": "v"}}},
            ["spec.secretTemplate.labels", "qualified names"],
            id="secretTemplate-bad-label-key",
        ),
        pytest.param(
            {"secretTemplate": {"annotations": {"example.com/ok": "v", "not a key!": "v"}}},
            ["spec.secretTemplate.annotations", "qualified names"],
            id="secretTemplate-bad-annotation-key",
        ),
        pytest.param(
            {"secretTemplate": {"labels": {"team": "not a label value"}}},
            ["spec.secretTemplate.labels.team"],
            id="secretTemplate-bad-label-value",
        ),
    ],
)
def test_workload_identity_refuses(
    kubectl: Kubectl, namespace: str, changes: dict[str, Any], fragments: list[str]
) -> None:
    proc = apply(kubectl, namespace, workload_identity(with_changes(VALID_WID_SPEC, changes)))
    assert_refused(proc, *fragments)


def test_workload_identity_needs_a_spec(kubectl: Kubectl, namespace: str) -> None:
    manifest = workload_identity({})
    del manifest["spec"]
    assert_refused(apply(kubectl, namespace, manifest), "spec")


def test_long_name_needs_an_explicit_secret_name(kubectl: Kubectl, namespace: str) -> None:
    name = "a" * 249  # <name>-mtls would be 254 characters
    proc = apply(kubectl, namespace, workload_identity({"serviceAccountName": "default"}, name))
    assert_refused(proc, "metadata.name", "spec.secretName")

    spec = {"serviceAccountName": "default", "secretName": "short"}
    proc = apply(kubectl, namespace, workload_identity(spec, name))
    assert proc.returncode == 0, proc.stderr


def test_status_subresource_and_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    assert apply(kubectl, namespace, workload_identity(VALID_WID_SPEC)).returncode == 0
    status = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "observedGeneration": 1,
                    "lastTransitionTime": "2030-01-01T00:00:00Z",
                    "reason": "Issued",
                    "message": "certificate issued",
                }
            ],
            "spiffeID": f"spiffe://cluster.local/ns/{namespace}/sa/payments",
            "serialNumber": "0a1b2c",
            "notBefore": "2030-01-01T00:00:00Z",
            "notAfter": "2030-01-02T00:00:00Z",
            "renewalTime": "2030-01-01T16:00:00Z",
            "secretName": "payments-mtls",
            "observedGeneration": 1,
        }
    }
    # The operator may run against the same cluster during the suite and write this status
    # too, so check the object the patch itself returned, and retry the table a few times.
    proc = patch_status(kubectl, namespace, "wid/payments", status, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    stored = json.loads(proc.stdout)["status"]
    for key, value in status["status"].items():
        assert stored[key] == value, key

    expected = [
        "True",
        f"spiffe://cluster.local/ns/{namespace}/sa/payments",
        "2030-01-02T00:00:00Z",
        "2030-01-01T16:00:00Z",
    ]
    for _ in range(5):
        table = kubectl("get", "-n", namespace, "wid", "payments").stdout.splitlines()
        header, row = table[0], table[1]
        if all(cell in row for cell in expected):
            break
        patch_status(kubectl, namespace, "wid/payments", status)
    for column in ("READY", "SPIFFE ID", "EXPIRES", "RENEWS", "AGE"):
        assert column in header
    for cell in expected:
        assert cell in row, f"{cell!r} not in {row!r}"

    # A status with a malformed condition is refused too: the operator's writes are checked.
    bad = {"status": {"conditions": [{"type": "Ready", "status": "yes"}]}}
    proc = patch_status(kubectl, namespace, "wid/payments", bad)
    assert_refused(proc, "status.conditions[0].status")


def test_short_names_and_category(kubectl: Kubectl, namespace: str) -> None:
    assert apply(kubectl, namespace, workload_identity(VALID_WID_SPEC)).returncode == 0
    assert apply(kubectl, namespace, mtls_policy({"mode": "STRICT"})).returncode == 0
    names = kubectl("get", "-n", namespace, "meshless", "-o", "name").stdout.split()
    assert sorted(names) == [
        "mtlspolicy.meshless.dev/payments-strict",
        "workloadidentity.meshless.dev/payments",
    ]
    assert kubectl("get", "-n", namespace, "wid,mtlspol", "-o", "name").stdout.split()


# --------------------------------------------------------------------------------------------
# MtlsPolicy

VALID_POLICY_SPEC: dict[str, Any] = {
    "selector": {
        "matchLabels": {"app": "payments"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}],
    },
    "mode": "STRICT",
    "portLevelMtls": {"9090": {"mode": "DISABLE"}, "65535": {"mode": "PERMISSIVE"}},
    "identity": {"ttl": "12h", "privateKey": {"algorithm": "ECDSAP384"}},
    "enforcement": {"admission": "Warn", "networkPolicy": False},
}


def test_valid_mtls_policy(kubectl: Kubectl, namespace: str) -> None:
    proc = apply(kubectl, namespace, mtls_policy(VALID_POLICY_SPEC))
    assert proc.returncode == 0, proc.stderr
    assert get(kubectl, namespace, "mtlspolicy", "payments-strict")["spec"] == VALID_POLICY_SPEC


def test_minimal_mtls_policy_reads_back_with_defaults(kubectl: Kubectl, namespace: str) -> None:
    proc = apply(kubectl, namespace, mtls_policy({}))
    assert proc.returncode == 0, proc.stderr
    spec = get(kubectl, namespace, "mtlspol", "payments-strict")["spec"]
    assert spec == {"mode": "UNSET", "enforcement": {"admission": "Enforce", "networkPolicy": True}}

    table = kubectl("get", "-n", namespace, "mtlspol").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "MODE", "SCOPE", "SELECTED", "INJECTED", "CONFLICTED", "ENFORCED", "AGE"
    ]  # fmt: skip
    assert table[1].split()[:2] == ["payments-strict", "UNSET"]


def test_full_mtls_policy_gets_the_defaults_it_omits(kubectl: Kubectl, namespace: str) -> None:
    spec = with_changes(VALID_POLICY_SPEC, {"mode": None, "enforcement": None})
    proc = apply(kubectl, namespace, mtls_policy(spec))
    assert proc.returncode == 0, proc.stderr
    stored = get(kubectl, namespace, "mtlspol", "payments-strict")["spec"]
    assert stored == {
        **spec,
        "mode": "UNSET",
        "enforcement": {"admission": "Enforce", "networkPolicy": True},
    }

    # Half an enforcement block: the other half still gets its default.
    spec = with_changes(VALID_POLICY_SPEC, {"enforcement": {"networkPolicy": False}})
    proc = apply(kubectl, namespace, mtls_policy(spec, name="half"))
    assert proc.returncode == 0, proc.stderr
    stored = get(kubectl, namespace, "mtlspol", "half")["spec"]
    assert stored["enforcement"] == {"admission": "Enforce", "networkPolicy": False}


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        pytest.param(
            {"selector": None},
            ["spec.portLevelMtls", "requires a non-empty spec.selector"],
            id="portLevelMtls-without-selector",
        ),
        pytest.param(
            {"selector": {}},
            ["spec.portLevelMtls", "requires a non-empty spec.selector"],
            id="portLevelMtls-with-empty-selector",
        ),
        pytest.param(
            {"selector": {"matchLabels": {}, "matchExpressions": []}},
            ["spec.portLevelMtls", "requires a non-empty spec.selector"],
            id="portLevelMtls-with-empty-selector-parts",
        ),
        pytest.param({"mode": "strict"}, ["spec.mode", "Unsupported value"], id="mode-lowercase"),
        pytest.param({"mode": "MUTUAL"}, ["spec.mode", "Unsupported value"], id="mode-unknown"),
        pytest.param({"mode": "STRICTT"}, ["spec.mode", "Unsupported value"], id="mode-typo"),
        pytest.param(
            {"portLevelMtls": {"9090": {"mode": "OFF"}}},
            ["spec.portLevelMtls.9090.mode", "Unsupported value"],
            id="port-mode-unknown",
        ),
        pytest.param(
            {"portLevelMtls": {"9090": {}}},
            ["spec.portLevelMtls.9090.mode", "Required value"],
            id="port-mode-missing",
        ),
        pytest.param(
            {"portLevelMtls": {"0": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-0",
        ),
        pytest.param(
            {"portLevelMtls": {"65536": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-65536",
        ),
        pytest.param(
            {"portLevelMtls": {"70000": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-70000",
        ),
        pytest.param(
            {"portLevelMtls": {"abc": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-abc",
        ),
        pytest.param(
            {"portLevelMtls": {"9090": {"mode": "STRICT"}, "-1": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-negative-beside-a-good-one",
        ),
        pytest.param(
            {"portLevelMtls": {"http": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-name",
        ),
        pytest.param(
            {"portLevelMtls": {"080": {"mode": "STRICT"}}},
            ["spec.portLevelMtls", "1 to 65535"],
            id="port-leading-zero",
        ),
        pytest.param(
            {"enforcement": {"admission": "Deny"}},
            ["spec.enforcement.admission", "Unsupported value"],
            id="admission-unknown",
        ),
        pytest.param(
            {"enforcement": {"networkPolicy": "yes"}},
            ["spec.enforcement.networkPolicy"],
            id="networkPolicy-not-bool",
        ),
        pytest.param(
            {"identity": {"ttl": "31d"}},
            ["spec.identity.ttl", "between 1m and 30d"],
            id="identity-ttl-31d",
        ),
        pytest.param(
            {"identity": {"ttl": "30s"}},
            ["spec.identity.ttl", "between 1m and 30d"],
            id="identity-ttl-30s",
        ),
        pytest.param(
            {"identity": {"privateKey": {"algorithm": "DSA"}}},
            ["spec.identity.privateKey.algorithm", "Unsupported value"],
            id="identity-algorithm",
        ),
        pytest.param(
            {"selector": {"matchExpressions": [{"key": "app", "operator": "In"}]}},
            ["spec.selector.matchExpressions[0]", "need values"],
            id="selector-In-without-values",
        ),
        pytest.param(
            {
                "selector": {
                    "matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]
                }
            },
            ["spec.selector.matchExpressions[0]", "take none"],
            id="selector-Exists-with-values",
        ),
        pytest.param(
            {
                "selector": {
                    "matchExpressions": [{"key": "app", "operator": "Matches", "values": ["x"]}]
                }
            },
            ["spec.selector.matchExpressions[0].operator", "Unsupported value"],
            id="selector-unknown-operator",
        ),
        pytest.param(
            {
                "selector": {
                    "matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]
                }
            },
            ["spec.selector.matchExpressions[0].operator", "Unsupported value"],
            id="selector-operator-Equals",
        ),
        pytest.param(
            {
                "selector": {
                    "matchLabels": {"app": "payments"},
                    "matchExpressions": [
                        {"key": "tier", "operator": "Exists"},
                        {"key": "app", "operator": "NotIn", "values": []},
                    ],
                }
            },
            ["spec.selector.matchExpressions[1]", "need values"],
            id="selector-NotIn-with-empty-values",
        ),
    ],
)
def test_mtls_policy_refuses(
    kubectl: Kubectl, namespace: str, changes: dict[str, Any], fragments: list[str]
) -> None:
    proc = apply(kubectl, namespace, mtls_policy(with_changes(VALID_POLICY_SPEC, changes)))
    assert_refused(proc, *fragments)


def test_namespace_wide_policy_without_port_overrides(kubectl: Kubectl, namespace: str) -> None:
    spec = with_changes(VALID_POLICY_SPEC, {"selector": None, "portLevelMtls": None})
    proc = apply(kubectl, namespace, mtls_policy(spec))
    assert proc.returncode == 0, proc.stderr


POLICY_STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "observedGeneration": 1,
            "lastTransitionTime": "2030-01-01T00:00:00Z",
            "reason": "InEffect",
            "message": "governs 7 pods",
        },
        {
            "type": "Conflicted",
            "status": "True",
            "observedGeneration": 1,
            "lastTransitionTime": "2030-01-01T00:00:00Z",
            "reason": "Conflict",
            "message": "ignored for 2 pods in favour of shop/older",
        },
        {
            "type": "Enforced",
            "status": "False",
            "observedGeneration": 1,
            "lastTransitionTime": "2030-01-01T00:00:00Z",
            "reason": "Failing",
            "message": "1 STRICT port accepts clients without a certificate",
        },
    ],
    "scope": "Workload",
    "selectedPods": 7,
    "injectedPods": 5,
    "identities": 2,
    "networkPolicies": 1,
    "admission": {"wouldDeny": 2, "pods": ["shop/payments-0", "shop/payments-1"]},
    "enforcement": {
        "strict": {"proven": 9, "failing": 1, "unreachable": 0},
        "permissive": {"proven": 3, "failing": 0, "unreachable": 1},
        "failing": [
            {"pod": "shop/payments-2", "port": 8443, "observed": "accepted a client without a cert"}
        ],
        "lastProven": "2030-01-01T00:05:00Z",
    },
}


def test_mtls_policy_status_and_printer_columns(kubectl: Kubectl, namespace: str) -> None:
    assert apply(kubectl, namespace, mtls_policy(VALID_POLICY_SPEC)).returncode == 0
    status = {"status": POLICY_STATUS}
    # The operator may run against the same cluster during the suite and write this status
    # too, so check the object the patch itself returned, and retry the table a few times.
    proc = patch_status(kubectl, namespace, "mtlspol/payments-strict", status, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == POLICY_STATUS

    expected = ["payments-strict", "STRICT", "Workload", "7", "5", "True", "False"]
    for _ in range(5):
        table = kubectl("get", "-n", namespace, "mtlspol").stdout.splitlines()
        header, row = table[0].split(), table[1].split()
        if row[:7] == expected:
            break
        patch_status(kubectl, namespace, "mtlspol/payments-strict", status)
    assert header == [
        "NAME",
        "MODE",
        "SCOPE",
        "SELECTED",
        "INJECTED",
        "CONFLICTED",
        "ENFORCED",
        "AGE",
    ]
    assert row[:7] == expected

    wide = kubectl("get", "-n", namespace, "mtlspol", "-o", "wide").stdout.splitlines()
    assert "READY" in wide[0].split()


@pytest.mark.parametrize(
    ("status", "fragments"),
    [
        pytest.param({"scope": "Cluster"}, ["status.scope", "Unsupported value"], id="scope"),
        pytest.param({"selectedPods": -1}, ["status.selectedPods"], id="selectedPods-negative"),
        pytest.param(
            {"admission": {"pods": [f"shop/p-{i}" for i in range(21)]}},
            ["status.admission.pods", "20"],
            id="admission-pods-too-many",
        ),
        pytest.param(
            {"enforcement": {"failing": [{"pod": "shop/p", "port": 0}]}},
            ["status.enforcement.failing[0].port"],
            id="failing-port-0",
        ),
        pytest.param(
            {"enforcement": {"lastProven": "yesterday"}},
            ["status.enforcement.lastProven"],
            id="lastProven-not-a-time",
        ),
        pytest.param(
            {"conditions": [{"type": "Conflicted", "status": "yes"}]},
            ["status.conditions[0].status"],
            id="condition-status",
        ),
    ],
)
def test_mtls_policy_status_refuses(
    kubectl: Kubectl, namespace: str, status: dict[str, Any], fragments: list[str]
) -> None:
    assert apply(kubectl, namespace, mtls_policy(VALID_POLICY_SPEC)).returncode == 0
    proc = patch_status(kubectl, namespace, "mtlspol/payments-strict", {"status": status})
    assert_refused(proc, *fragments)


# --------------------------------------------------------------------------------------------
# The chart ships the same CRDs.


@pytest.mark.parametrize("name", ["workloadidentities.yaml", "mtlspolicies.yaml"])
def test_chart_crds_match(name: str) -> None:
    chart_copy = ROOT / "charts" / "meshless" / "crds" / name
    assert chart_copy.read_bytes() == (ROOT / "crds" / name).read_bytes(), (
        "charts/meshless/crds/ is out of date: run hack/sync-chart-crds.sh"
    )


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="defaults"),
        pytest.param(
            [
                "--set", "settings.watchNamespaces={shop,billing}",
                "--set", "serviceAccount.create=false,serviceAccount.name=existing",
                "--set", "rbac.create=false,fullnameOverride=mtls,settings.logFormat=text",
                "--set", "extraEnv[0].name=PYTHONFAULTHANDLER",
                "--set-string", "extraEnv[0].value=1",
                "--set", "metrics.serviceMonitor.enabled=false,podDisruptionBudget.enabled=false",
                "--set", "replicaCount=1,settings.leaderElection=false",
            ],
            id="overrides",
        ),
    ],
)  # fmt: skip
def test_chart_renders_objects_the_apiserver_accepts(
    kubectl: Kubectl, namespace: str, values: list[str]
) -> None:
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    lint = helm("lint", "--strict", str(CHART), *values, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = helm(
        "template", "meshless", str(CHART), "-n", namespace, "--kube-version", server, *values
    ).stdout
    proc = kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", "-",
        input=rendered, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "deployment.apps/" in proc.stdout
