"""Identity delivery against a real kube-apiserver without the Pod Certificates API (the
default local control plane): `auto` falls back to Secrets, a policy that insists on
PodCertificate says which API is missing and its pods are refused with the same words, and
RSA2048 with PodCertificate is refused when applied."""

from __future__ import annotations

import json

import pytest
from kubernetes import client

from tests.conftest import Kubectl
from tests.integration.conftest import OperatorFactory
from tests.integration.kubehelpers import condition, is_ready, wait_identity
from tests.integration.policyhelpers import (
    create_pod,
    create_policy,
    status_is,
    wait_admission_label,
    wait_policy,
)

pytestmark = pytest.mark.integration


def _serves_pod_certificates(kubectl: Kubectl) -> bool:
    """Discovery, as the operator does it: any served version of certificates.k8s.io with
    podcertificaterequests."""
    group = json.loads(kubectl("get", "--raw", "/apis/certificates.k8s.io").stdout)
    for version in group["versions"]:
        listed = json.loads(kubectl("get", "--raw", f"/apis/{version['groupVersion']}").stdout)
        if any(r["name"] == "podcertificaterequests" for r in listed["resources"]):
            return True
    return False


@pytest.fixture
def without_pod_certificates(kubectl: Kubectl) -> None:
    assert not _serves_pod_certificates(kubectl), (
        "this control plane serves PodCertificateRequests (a node started on it turns them on); "
        "run these tests on a fresh one"
    )


def test_auto_without_the_api_falls_back_to_secrets(
    without_pod_certificates: None,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    operator_factory(identity_delivery="auto")
    create_policy(api_client, namespace, "strict", "STRICT")
    wait_admission_label(api_client, namespace)
    created = create_pod(api_client, namespace, "web", service_account="default")
    volume = next(v for v in created["spec"]["volumes"] if v["name"] == "meshless-identity")
    assert volume == {
        "name": "meshless-identity",
        "secret": {"secretName": "meshless-default-mtls", "defaultMode": 420},
    }
    wait_identity(api_client, namespace, "meshless-default", is_ready)
    policy = wait_policy(
        api_client, namespace, "strict", status_is(Ready="True"), what="Ready=True"
    )
    assert policy["status"]["delivery"] == "Secret"


def test_forced_pod_certificates_without_the_api_name_it(
    without_pod_certificates: None,
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    operator_factory(identity_delivery="auto")
    create_policy(
        api_client, namespace, "strict", "STRICT", identity={"delivery": "PodCertificate"}
    )
    policy = wait_policy(
        api_client,
        namespace,
        "strict",
        lambda o: (condition(o, "Ready") or {}).get("reason") == "PodCertificateAPIUnavailable",
        what="Ready=False PodCertificateAPIUnavailable",
    )
    ready = condition(policy, "Ready")
    assert ready is not None and ready["status"] == "False"
    assert "podcertificaterequests.certificates.k8s.io" in ready["message"]
    assert policy["status"]["delivery"] == "PodCertificate"
    wait_admission_label(api_client, namespace)
    with pytest.raises(client.ApiException) as refused:
        create_pod(api_client, namespace, "web")
    assert refused.value.status == 400
    assert "podcertificaterequests.certificates.k8s.io" in str(refused.value.body)
    assert "spec.identity.delivery: Secret" in str(refused.value.body)
    # Pods are never left hanging, and nothing is provisioned for them.
    assert client.CoreV1Api(api_client).list_namespaced_pod(namespace).items == []


def test_rsa2048_with_pod_certificates_is_refused_at_apply(
    api_client: client.ApiClient, namespace: str
) -> None:
    with pytest.raises(client.ApiException) as refused:
        create_policy(
            api_client,
            namespace,
            "rsa",
            "STRICT",
            identity={"delivery": "PodCertificate", "privateKey": {"algorithm": "RSA2048"}},
        )
    assert refused.value.status == 422
    assert "spec.identity.privateKey.algorithm" in str(refused.value.body)
    assert "RSA2048 cannot be used with" in str(refused.value.body)
