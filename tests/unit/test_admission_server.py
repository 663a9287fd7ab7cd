"""The admission shell's edges: which reviews are answered how, the serving certificate and
its keeper, the configurations the operator applies, and the pure core's imports."""

from __future__ import annotations

import ast
import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshless.admission.admit import admit
from meshless.admission.configuration_writes import applied_configuration, webhook_endpoint
from meshless.admission.configurations import (
    Endpoint,
    mutating_configuration,
    validating_configuration,
)
from meshless.admission.keeper import ServingCertificateKeeper
from meshless.admission.review import parse_review, refusal, review_problem
from meshless.admission.serving import issue_serving_certificate, service_dns_names
from meshless.pki.ca import bootstrap_self_signed
from tests.unit.test_admission_admit import READY

ADMISSION = Path(__file__).resolve().parents[2] / "operator" / "meshless" / "admission"
PURE = (
    "pods.py",
    "inject.py",
    "validate.py",
    "configurations.py",
    "serving.py",
    "admit.py",
    "review.py",
)
IMPURE = ("kopf", "aiohttp", "meshless.kube")


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_imports_no_kopf_aiohttp_or_kube(module: str) -> None:
    tree = ast.parse((ADMISSION / module).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in IMPURE or m.startswith(IMPURE)}


def review(**request: Any) -> dict[str, Any]:
    payload = {
        "uid": "u-1",
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "userInfo": {"username": "alice"},
        "object": {"metadata": {"name": "p"}},
        **request,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": payload}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "the body is not a JSON object"),
        ({"kind": "Pod"}, "kind 'Pod' is not AdmissionReview"),
        (
            {**review(), "apiVersion": "admission.k8s.io/v1beta1"},
            "AdmissionReview version 'admission.k8s.io/v1beta1' is not supported",
        ),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "has no request"),
        (review(uid=""), "has no uid"),
        (review(resource=None), "names no resource"),
        (review(userInfo=None), "has no userInfo"),
        (review(object=None), "carries no object"),
    ],
)
def test_malformed_reviews_are_named(body: Any, problem: str) -> None:
    found = review_problem(body)
    assert found is not None and problem in found


def test_a_good_review_has_no_problem_and_a_refusal_echoes_its_uid() -> None:
    assert review_problem(review()) is None
    assert review_problem(review(object=None, oldObject={"metadata": {}})) is None
    assert refusal(review(), "no", 404) == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": False, "status": {"code": 404, "message": "no"}},
    }


def test_serving_certificate_names_the_loopback_ip_and_the_service() -> None:
    now = datetime.now(UTC)
    ca, _ = bootstrap_self_signed("cluster.local", now)
    hosts = ["127.0.0.1", *service_dns_names("meshless-webhook", "meshless-system")]
    served = issue_serving_certificate(ca, hosts, now, ttl=timedelta(hours=1))
    leaf, issuer = x509.load_pem_x509_certificates(served.chain_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == [
        "meshless-webhook",
        "meshless-webhook.meshless-system",
        "meshless-webhook.meshless-system.svc",
    ]
    assert leaf.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    ).value == x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(issuer)
    assert issuer == ca.issuer_cert
    assert served.not_after - served.not_before == timedelta(hours=1, minutes=1)
    assert (
        served.renewal_time() == served.not_before + (served.not_after - served.not_before) * 2 / 3
    )
    assert b"PRIVATE KEY" not in repr(served).encode()
    again = issue_serving_certificate(ca, hosts, now)
    assert again.private_key_pem != served.private_key_pem  # a new key every time


def test_the_keeper_renews_at_two_thirds_and_on_a_new_issuer() -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    ca, _ = bootstrap_self_signed("cluster.local", now[0])
    current = [ca]
    keeper = ServingCertificateKeeper(
        ca=lambda: current[0], hosts=("127.0.0.1",), clock=lambda: now[0], ttl=timedelta(hours=3)
    )
    served, bundle = keeper.issue()
    assert bundle.startswith(b"-----BEGIN CERTIFICATE-----")
    assert not keeper.due(served)
    now[0] += timedelta(hours=1, minutes=59)
    assert not keeper.due(served)
    now[0] += timedelta(minutes=2)
    assert keeper.due(served)
    now[0] = datetime(2026, 1, 1, tzinfo=UTC)
    current[0], _ = bootstrap_self_signed("cluster.local", now[0])
    assert keeper.due(served)


def test_webhook_endpoint_by_url_or_service() -> None:
    endpoint, hosts = webhook_endpoint("https://127.0.0.1:9443", "meshless-webhook", "ops")
    assert endpoint.url == "https://127.0.0.1:9443" and hosts == ("127.0.0.1",)
    endpoint, hosts = webhook_endpoint(None, "meshless-webhook", "ops")
    assert endpoint.service is not None and endpoint.service.namespace == "ops"
    assert hosts == ("meshless-webhook", "meshless-webhook.ops", "meshless-webhook.ops.svc")
    with pytest.raises(ValueError, match="must be https"):
        webhook_endpoint("http://127.0.0.1:9443", "x", "ops")


@pytest.mark.parametrize("build", [mutating_configuration, validating_configuration])
def test_the_applied_configuration_is_the_webhooks_and_labels_only_on_our_own_object(
    build: Any,
) -> None:
    """On the chart's object (Helm's release annotation) only `webhooks` is applied, whatever
    it holds; on an object the operator creates or created, its labels too."""
    configuration = build(Endpoint(url="https://127.0.0.1:9443"), b"bundle", "ops")
    helm_owned = {"metadata": {"annotations": {"meta.helm.sh/release-name": "meshless"}}}
    applied = applied_configuration(configuration, helm_owned)
    assert applied == {
        "apiVersion": configuration["apiVersion"],
        "kind": configuration["kind"],
        "metadata": {"name": "meshless"},
        "webhooks": configuration["webhooks"],
    }
    for existing in (None, {"metadata": {"labels": {"app.kubernetes.io/managed-by": "meshless"}}}):
        applied = applied_configuration(configuration, existing)
        assert applied["metadata"] == configuration["metadata"]
        assert applied["webhooks"] == configuration["webhooks"]
    more = {**configuration, "webhooks": [*configuration["webhooks"], {"name": "x.meshless.dev"}]}
    assert applied_configuration(more, helm_owned)["webhooks"] == more["webhooks"]


def _review(group: str, version: str, resource: str, subresource: str = "") -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": "u-1",
        "resource": {"group": group, "version": version, "resource": resource},
        "operation": "UPDATE",
        "userInfo": {"username": "x"},
        "object": {"metadata": {"name": "p"}},
    }
    if subresource:
        request["subResource"] = subresource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


SERVES = [
    ("meshless-identity-label", ("", "v1", "pods", "status"), True),
    ("meshless-strict", ("", "v1", "pods", "status"), True),
    ("meshless-strict", ("", "v1", "pods", "ephemeralcontainers"), True),
    ("meshless-binding", ("", "v1", "pods", "ephemeralcontainers"), True),
    ("meshless-binding", ("", "v1", "pods", "status"), False),
    ("meshless-inject", ("", "v1", "pods", "status"), False),
    ("meshless-dns-names", ("meshless.dev", "v1alpha1", "workloadidentities", ""), True),
    ("meshless-dns-names", ("", "v1", "pods", ""), False),
    ("meshless-strict", ("meshless.dev", "v1alpha1", "workloadidentities", ""), False),
]


@pytest.mark.parametrize(("webhook", "resource", "passed"), SERVES)
def test_each_webhook_reviews_only_what_it_serves(
    webhook: str, resource: tuple[str, str, str, str], passed: bool
) -> None:
    answer = admit(parse_review(_review(*resource), webhook), READY)
    refused_as_unserved = not answer.allowed and (
        f"meshless admission at /{webhook} reviews" in answer.message
    )
    assert refused_as_unserved is not passed


def test_the_handler_hands_over_records_and_answers_a_crash_with_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dataclasses import replace

    from meshless.admission.admit import AdmissionRequest
    from meshless.admission.handler import AdmissionHandler
    from meshless.api import AdmissionAction
    from tests.unit.admission_helpers import pod, policy, policy_set

    warn = replace(READY, policies=policy_set(policy("shop", "w", admission=AdmissionAction.WARN)))
    records: list[Any] = []
    opted_out = pod(annotations={"meshless.dev/inject": "false"})
    request = AdmissionRequest(
        "meshless-strict", "u-1", "CREATE", ("", "v1", "pods", ""), "shop", opted_out
    )
    answer = AdmissionHandler(lambda: warn, records.append)(request)
    assert answer.allowed and [str(r.policy) for r in records] == ["shop/w"]

    def broken() -> Any:
        raise RuntimeError("a bug")

    with caplog.at_level("ERROR"):
        crashed = AdmissionHandler(broken, records.append)(request)
    assert not crashed.allowed and crashed.code == 500
    assert crashed.message.startswith("meshless admission at /meshless-strict failed")
    assert "a bug" in caplog.text and len(records) == 1


def test_the_server_thread_retries_a_busy_port_answers_over_tls_and_stops() -> None:
    """A port still held (a previous start, another process) fails start() with the OS error
    and leaves it callable again; once listening, a real TLS client gets admit's answer, and
    a body that is not JSON gets HTTP 400 with the reason."""
    import asyncio
    import json
    import socket
    import ssl
    import urllib.error
    import urllib.request

    from meshless.admission.handler import AdmissionHandler
    from meshless.admission.server import AdmissionServer, ServerThread
    from meshless.pki.bundle import bundle_pem
    from meshless.pki.webhook_ca import new_webhook_ca_data, webhook_ca_from_secret_data

    now = datetime.now(UTC)
    ca = webhook_ca_from_secret_data(new_webhook_ca_data(now), now).authority
    certificate = issue_serving_certificate(ca, ["127.0.0.1"], now)
    client = ssl.create_default_context(cadata=bundle_pem(ca.roots).decode())

    def post(port: int, body: bytes) -> tuple[int, bytes]:
        url = f"https://127.0.0.1:{port}/meshless-strict"
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, context=client, timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def scenario() -> None:
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        served = ServerThread(
            AdmissionServer(AdmissionHandler(lambda: READY), certificate, port=port)
        )
        with pytest.raises(OSError):
            await served.start()
        holder.close()
        await served.start()
        try:
            status, body = await asyncio.to_thread(
                post, port, json.dumps(_review("", "v1", "configmaps")).encode()
            )
            assert status == 200
            answer = json.loads(body)["response"]
            assert answer["uid"] == "u-1" and answer["allowed"] is False
            assert "reviews v1 pods" in answer["status"]["message"]
            status, body = await asyncio.to_thread(post, port, b"{not json")
            assert status == 400 and b"the body is not JSON" in body
        finally:
            await served.stop()
        with pytest.raises(OSError):
            await asyncio.to_thread(post, port, b"{}")

    asyncio.run(scenario())
