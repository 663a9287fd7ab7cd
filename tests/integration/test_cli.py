"""The user commands (`meshless inspect`, `status`, `describe pod`, `renew`) as a user runs
them: `python -m meshless ...` in its own process against the local control plane, with the
operator running. Every assertion compares the CLI's answer with the real objects (serials
read from the Secret's certificate, SANs, modes decided by the operator's status)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client

from meshless.pki.keys import key_matches_certificate, load_private_key
from tests.integration.conftest import OperatorFactory, OperatorProcess
from tests.integration.kubehelpers import create_identity, get_identity, is_ready, wait_identity
from tests.integration.policyhelpers import (
    after_creation_second,
    create_pod,
    create_policy,
    status_is,
    wait_policy,
)

FORMATS = ("table", "json", "yaml")
TIMEOUT = 30


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def data(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def operator(operator_factory: OperatorFactory) -> Iterator[OperatorProcess]:
    yield operator_factory()


@pytest.fixture
def meshless(kubeconfig: str, crds_applied: None) -> Any:
    def run(*args: str) -> Ran:
        proc = subprocess.run(
            [sys.executable, "-m", "meshless", *args],
            env={**os.environ, "KUBECONFIG": kubeconfig},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Ran(proc.returncode, proc.stdout, proc.stderr)

    return run


def _secret(api: client.ApiClient, namespace: str, name: str) -> dict[str, bytes]:
    secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def _leaf(data: dict[str, bytes]) -> x509.Certificate:
    return x509.load_pem_x509_certificates(data["tls.crt"])[0]


def _parsed(ran: Ran, fmt: str) -> Any:
    assert ran.code == 0, ran.err
    return json.loads(ran.out) if fmt == "json" else yaml.safe_load(ran.out)


def _field(text: str, label: str) -> str:
    """The value of a `Label:  value` line of the table output."""
    for line in text.splitlines():
        if line.startswith(label + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {label!r} line in:\n{text}")


def test_inspect_reports_the_certificate_in_the_secret(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str, meshless: Any
) -> None:
    dns = f"payments.{namespace}.svc"
    create_identity(api_client, namespace, "payments", dnsNames=[dns], ttl="1h")
    identity = wait_identity(api_client, namespace, "payments", is_ready, TIMEOUT)
    leaf = _leaf(_secret(api_client, namespace, "payments-mtls"))
    serial = format(leaf.serial_number, "x")
    spiffe = f"spiffe://cluster.local/ns/{namespace}/sa/payments"
    assert identity["status"]["serialNumber"] == serial

    text = meshless("inspect", "payments", "-n", namespace)
    assert text.code == 0, text.err
    assert _field(text.out, "Serial") == serial
    assert _field(text.out, "SPIFFE ID") == spiffe
    assert _field(text.out, "DNS SANs") == dns
    assert _field(text.out, "Issuer") == leaf.issuer.rfc4514_string()
    assert _field(text.out, "Chain").startswith("VALID: chains to root CN=meshless root CA")
    assert _field(text.out, "Renews at").startswith(identity["status"]["renewalTime"])

    for fmt in ("json", "yaml"):
        report = _parsed(meshless("inspect", "payments", "-n", namespace, "-o", fmt), fmt)
        cert = report["certificate"]
        assert cert["serialNumber"] == serial
        assert cert["spiffeID"] == spiffe
        assert cert["uriSANs"] == [spiffe]
        assert cert["dnsNames"] == [dns]
        assert cert["notAfter"] == identity["status"]["notAfter"]
        assert cert["chain"]["verdict"] == "VALID"
        assert cert["keyAlgorithm"] == "ECDSAP256"
        assert 3500 < cert["timeLeftSeconds"] <= 3600
        assert report["renewalTime"] == identity["status"]["renewalTime"]
        assert report["ready"]["status"] == "True"
        assert report["statusMatchesSecret"] is True

    missing = meshless("inspect", "nothing-here", "-n", namespace)
    assert missing.code == 1
    assert missing.err.strip() == (
        f"meshless inspect: WorkloadIdentity {namespace}/nothing-here not found"
    )
    assert meshless("inspect").code == 2  # usage: the name is required
    assert meshless("inspect", "payments", "-n", namespace, "-o", "xml").code == 2


def test_renew_issues_a_new_key_and_certificate_now(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str, meshless: Any
) -> None:
    create_identity(api_client, namespace, "orders", ttl="2h")
    before = wait_identity(api_client, namespace, "orders", is_ready, TIMEOUT)
    old = _secret(api_client, namespace, "orders-mtls")

    ran = meshless("renew", "orders", "-n", namespace, "-o", "json")
    assert ran.code == 0, ran.err
    result = ran.data()
    new = _secret(api_client, namespace, "orders-mtls")
    new_serial = format(_leaf(new).serial_number, "x")
    assert result["previousSerialNumber"] == before["status"]["serialNumber"]
    assert result["serialNumber"] == new_serial != result["previousSerialNumber"]
    assert get_identity(api_client, namespace, "orders")["status"]["serialNumber"] == new_serial
    assert new["tls.key"] != old["tls.key"]  # a new private key, and it fits the certificate
    assert key_matches_certificate(load_private_key(new["tls.key"]), _leaf(new))
    assert new["ca.crt"] == old["ca.crt"]

    for fmt in ("table", "yaml"):
        previous = get_identity(api_client, namespace, "orders")["status"]["serialNumber"]
        ran = meshless("renew", "orders", "-n", namespace, "-o", fmt)
        assert ran.code == 0, ran.err
        current = get_identity(api_client, namespace, "orders")["status"]["serialNumber"]
        assert current != previous
        if fmt == "table":
            assert ran.out.startswith(
                f"renewed {namespace}/orders: serial {previous} -> {current}, new key"
            )
        else:
            assert yaml.safe_load(ran.out)["serialNumber"] == current


def test_renew_never_touches_a_secret_it_does_not_own(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str, meshless: Any
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "legacy-mtls"}, "stringData": {"tls.key": "theirs"}},
    )
    create_identity(api_client, namespace, "legacy")
    wait_identity(
        api_client,
        namespace,
        "legacy",
        lambda o: any(
            c["reason"] == "SecretConflict" for c in (o.get("status") or {}).get("conditions", [])
        ),
        TIMEOUT,
    )
    ran = meshless("renew", "legacy", "-n", namespace)
    assert ran.code == 1
    assert "is not owned by WorkloadIdentity legacy; meshless never modifies it" in ran.err
    assert len(ran.err.strip().splitlines()) == 1
    assert _secret(api_client, namespace, "legacy-mtls") == {"tls.key": b"theirs"}


def test_status_and_describe_pod_against_resolved_policies(
    operator: OperatorProcess, api_client: client.ApiClient, namespace: str, meshless: Any
) -> None:
    ns, root = namespace, operator.namespace
    create_pod(api_client, ns, "web-1", {"app": "web"}, (8443, 9090), service_account="web")
    create_pod(api_client, ns, "api-1", {"app": "api"}, (8080,), service_account="api")
    policy_flags = ("--root-namespace", root)

    alone = meshless("describe", "pod", "web-1", "-n", ns, "-o", "json", *policy_flags)
    assert _parsed(alone, "json")["managed"] is False
    text = meshless("describe", "pod", "web-1", "-n", ns, *policy_flags)
    assert "no MtlsPolicy applies: meshless leaves this pod alone" in text.out

    create_policy(api_client, ns, "ns-default", "PERMISSIVE")
    older = create_policy(
        api_client,
        ns,
        "web-strict",
        "STRICT",
        selector={"matchLabels": {"app": "web"}},
        portLevelMtls={"9090": {"mode": "DISABLE"}},
    )
    after_creation_second(older)
    create_policy(api_client, ns, "web-newer", "DISABLE", selector={"matchLabels": {"app": "web"}})
    wait_policy(api_client, ns, "web-newer", status_is(Conflicted="True"), TIMEOUT)
    wait_policy(api_client, ns, "web-strict", status_is(selectedPods=1), TIMEOUT)
    wait_policy(api_client, ns, "ns-default", status_is(selectedPods=1), TIMEOUT)
    web_id = wait_identity(api_client, ns, "meshless-web", is_ready, TIMEOUT)
    api_id = wait_identity(api_client, ns, "meshless-api", is_ready, TIMEOUT)

    # --- status, data -----------------------------------------------------------------------
    outputs = {fmt: meshless("status", "-n", ns, *policy_flags, "-o", fmt) for fmt in FORMATS}
    for fmt in ("json", "yaml"):
        data = _parsed(outputs[fmt], fmt)
        policies = {p["name"]: p for p in data["policies"]}
        assert set(policies) == {"ns-default", "web-strict", "web-newer"}
        strict = policies["web-strict"]
        assert (strict["mode"], strict["scope"], strict["portModes"]) == (
            "STRICT",
            "Workload",
            {"9090": "DISABLE"},
        )
        assert strict["winsOver"] == [f"{ns}/web-newer"]
        assert (strict["selectedPods"], strict["injectedPods"]) == (1, 0)
        assert strict["strictPortsProven"] == "0/0"  # no running pod: nothing probed
        assert policies["web-newer"]["ignoredInFavourOf"] == [f"{ns}/web-strict"]
        assert policies["web-newer"]["conflicted"] == "True"
        assert policies["web-newer"]["ready"] == "False (Conflict)"
        assert (policies["ns-default"]["mode"], policies["ns-default"]["scope"]) == (
            "PERMISSIVE",
            "Namespace",
        )
        identities = {i["name"]: i for i in data["identities"]}
        assert set(identities) == {"meshless-web", "meshless-api"}
        web = identities["meshless-web"]
        assert web["serialNumber"] == web_id["status"]["serialNumber"]
        assert web["notAfter"] == web_id["status"]["notAfter"]
        assert web["spiffeID"] == f"spiffe://cluster.local/ns/{ns}/sa/web"
        assert (web["ready"], web["provisioned"]) == ("True", True)
        assert web["usedBy"] == [f"{ns}/web-strict"]
        assert identities["meshless-api"]["usedBy"] == [f"{ns}/ns-default"]
        assert identities["meshless-api"]["serialNumber"] == api_id["status"]["serialNumber"]

    # --- status, table ----------------------------------------------------------------------
    table = outputs["table"]
    assert table.code == 0, table.err
    rows = {line.split()[1]: line for line in table.out.splitlines() if line.startswith(ns)}
    assert "STRICT (9090:DISABLE)" in rows["web-strict"]
    assert f"wins over {ns}/web-newer" in rows["web-strict"]
    assert f"ignored for {ns}/web-strict" in rows["web-newer"]
    assert rows["web-strict"].split()[-1] == "0/0"  # PROVEN: nothing running to probe
    assert web_id["status"]["serialNumber"] in rows["meshless-web"]
    assert rows["meshless-web"].split()[-1] == f"{ns}/web-strict"
    everywhere = meshless("status", "-A", *policy_flags, "-o", "json")
    assert {(p["namespace"], p["name"]) for p in _parsed(everywhere, "json")["policies"]} >= {
        (ns, "web-strict"),
        (ns, "web-newer"),
        (ns, "ns-default"),
    }

    # --- describe pod -----------------------------------------------------------------------
    for fmt in ("json", "yaml"):
        pod = _parsed(meshless("describe", "pod", "web-1", "-n", ns, *policy_flags, "-o", fmt), fmt)
        assert (pod["mode"], pod["decidedBy"]) == ("STRICT", f"{ns}/web-strict")
        assert pod["ports"] == [
            {"port": 8443, "mode": "STRICT", "decidedBy": f"{ns}/web-strict", "declared": True},
            {"port": 9090, "mode": "DISABLE", "decidedBy": f"{ns}/web-strict", "declared": True},
        ]
        assert pod["applied"] == [
            {"policy": f"{ns}/web-strict", "scope": "Workload"},
            {"policy": f"{ns}/ns-default", "scope": "Namespace"},
        ]
        assert pod["ignored"] == [{"policy": f"{ns}/web-newer", "inFavourOf": f"{ns}/web-strict"}]
        assert pod["identity"]["name"] == "meshless-web"
        assert pod["identity"]["secret"] == "meshless-web-mtls"
        assert pod["identity"]["spiffeID"] == web_id["status"]["spiffeID"]
        assert (pod["identity"]["provisioned"], pod["identity"]["ready"]) == (True, "True")
        assert pod["injected"] == {"identityMounted": False, "identityLabel": None}
        assert pod["probe"]["state"] == "not probed (the pod is not running)"
    text = meshless("describe", "pod", "api-1", "-n", ns, *policy_flags)
    assert text.code == 0, text.err
    assert _field(text.out, "Mode") == f"PERMISSIVE (decided by {ns}/ns-default)"
    assert _field(text.out, "Identity").startswith("meshless-api (provisioned by meshless")
    assert "  8080   PERMISSIVE   " + f"{ns}/ns-default" in text.out
    gone = meshless("describe", "pod", "nothing", "-n", ns)
    assert (gone.code, gone.err.strip()) == (1, f"meshless describe: Pod {ns}/nothing not found")
