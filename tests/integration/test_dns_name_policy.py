"""The name policy as the operator applies it before it signs, against the local control plane
with the operator running as users run it: names outside the identity's namespace are never
signed (DNSNameNotAllowed), a certificate issued under a wider setting is not renewed once the
setting is gone (and does not hold up a root rotation), and a user-made identity that cannot be
issued is never mounted into a pod.

The refused identities are created before the operator starts: that is how they reach it past
an apply-time check (an upgrade, or an object written before the check existed), which is
exactly the case the operator's own check is for.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from kubernetes import client, watch

from meshless.api import IDENTITY_LABEL
from meshless.pki.bundle import fingerprint, parse_pem_certificates
from meshless.pki.rotation import RotationState
from meshless.pki.svid import parse_certificate_chain

from .conftest import OperatorFactory, OperatorProcess, bound_token
from .kubehelpers import (
    condition,
    create_identity,
    get_identity,
    is_ready,
    ready_with_reason,
    wait_event,
    wait_identity,
    wait_secret,
)
from .policyhelpers import create_pod, create_policy, status_is, wait_admission_label, wait_policy

REFUSED = "DNSNameNotAllowed"
TIMEOUT = 30


def _leaf(api: client.ApiClient, namespace: str, secret: str) -> x509.Certificate:
    data = client.CoreV1Api(api).read_namespaced_secret(secret, namespace).data
    return parse_certificate_chain(base64.b64decode(data["tls.crt"]))[0]


def _dns_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName))


def _secret_events(
    api: client.ApiClient, namespace: str, since: str, until_name: str
) -> list[tuple[str, str]]:
    """Every (event type, Secret name) in `namespace` since resourceVersion `since`, read
    until the Secret `until_name` has been seen (bounded by a timeout)."""
    seen: list[tuple[str, str]] = []
    stream = watch.Watch()
    for event in stream.stream(
        client.CoreV1Api(api).list_namespaced_secret,
        namespace,
        resource_version=since,
        timeout_seconds=TIMEOUT,
    ):
        name = event["object"].metadata.name
        seen.append((event["type"], name))
        if name == until_name:
            stream.stop()
    return seen


def _refused_message(wid: dict[str, Any]) -> str:
    ready = condition(wid, "Ready")
    assert ready is not None and ready["reason"] == REFUSED, ready
    return str(ready["message"])


def test_names_outside_the_namespace_are_never_signed_and_its_own_are(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace  # the tenant's namespace
    operator_ns = f"meshless-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    since = core.list_namespaced_secret(ns).metadata.resource_version
    refused = {
        "other-service": "payments.shop.svc",
        "other-wildcard": "*.shop.svc",
        "api-server": "kubernetes.default.svc",
        "webhook": f"meshless-webhook.{operator_ns}.svc",
        "public": "example.com",
        "own-wildcard": f"*.{ns}.svc",
        "two-labels": f"a.b.{ns}.svc",
    }
    for identity, name in refused.items():
        create_identity(api_client, ns, identity, dnsNames=[name])
    # One good name and one refused: only the refused one is named, and nothing is signed.
    create_identity(api_client, ns, "mixed", dnsNames=[f"ok.{ns}.svc", "payments.shop.svc"])

    operator_factory(namespace=operator_ns)
    for identity, name in {**refused, "mixed": "payments.shop.svc"}.items():
        wid = wait_identity(api_client, ns, identity, ready_with_reason(REFUSED), TIMEOUT)
        message = _refused_message(wid)
        assert repr(name) in message and "rule:" in message, message
        assert "wildcard" in message if "*" in name else f"namespace {ns!r}" in message
        assert "serial" not in message  # nothing was ever issued for it
        assert (wid["status"].get("serialNumber"), wid["status"].get("notAfter")) == (None, None)
        event = wait_event(api_client, ns, identity, REFUSED)
        assert event.type == "Warning" and repr(name) in event.message
    assert repr(f"ok.{ns}.svc") not in _refused_message(get_identity(api_client, ns, "mixed"))

    own = [f"api.{ns}.svc", f"api.{ns}.svc.cluster.local"]
    create_identity(api_client, ns, "api", dnsNames=own)
    wait_identity(api_client, ns, "api", is_ready, TIMEOUT)
    assert _dns_sans(_leaf(api_client, ns, "api-mtls")) == sorted(own)
    # From before the operator started until the good identity's Secret: that Secret is the
    # only one ever written in the namespace.
    assert _secret_events(api_client, ns, since, until_name="api-mtls") == [("ADDED", "api-mtls")]
    assert [s.metadata.name for s in core.list_namespaced_secret(ns).items] == ["api-mtls"]


def test_a_certificate_issued_under_a_wider_setting_is_not_renewed_without_it(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    core = client.CoreV1Api(api_client)
    pattern = "*.{namespace}.example.com"
    name = f"www.{ns}.example.com"
    wider = operator_factory(allowed_dns_names=pattern)
    # A renewal 18-30 s after issuance (ttl 2m, renewBefore 90s, up to 12 s of jitter).
    create_identity(api_client, ns, "www", dnsNames=[name], ttl="2m", renewBefore="90s")
    issued = wait_identity(api_client, ns, "www", is_ready, TIMEOUT)
    assert _dns_sans(_leaf(api_client, ns, "www-mtls")) == [name]
    before = core.read_namespaced_secret("www-mtls", ns)
    assert wider.stop() == 0

    # The administrator takes the pattern out again (same CA; a resync every 2 s).
    narrow = operator_factory(namespace=wider.namespace, resync_interval="2s")
    wid = wait_identity(api_client, ns, "www", ready_with_reason(REFUSED), TIMEOUT)
    message = _refused_message(wid)
    assert repr(name) in message
    assert "not renewed" in message and issued["status"]["notAfter"] in message
    assert wait_event(api_client, ns, "www", REFUSED).type == "Warning"
    reported = wid["metadata"]["resourceVersion"]

    # Past its renewal time and several resyncs: the Secret is never written.
    renewal = datetime.fromisoformat(issued["status"]["renewalTime"].replace("Z", "+00:00"))
    wait_s = max(0.0, (renewal - datetime.now(UTC)).total_seconds()) + 6
    writes = [
        event["type"]
        for event in watch.Watch().stream(
            core.list_namespaced_secret,
            ns,
            field_selector="metadata.name=www-mtls",
            resource_version=before.metadata.resource_version,
            timeout_seconds=int(wait_s) + 1,
        )
    ]
    assert writes == []
    after = core.read_namespaced_secret("www-mtls", ns)
    assert after.data == before.data
    assert after.metadata.resource_version == before.metadata.resource_version
    assert datetime.now(UTC) > renewal
    # No loop either: the identity was not written again, one Event, nothing signed.
    assert get_identity(api_client, ns, "www")["metadata"]["resourceVersion"] == reported
    events = core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name=www,reason={REFUSED}"
    )
    assert len(events.items) == 1 and (events.items[0].count or 1) == 1
    assert narrow.counter("meshless_certificates_signed_total") == 0
    # Its trust bundle is still kept (a root rotation must not wait for it for ever), and only
    # that: a ca.crt edited away is put back, certificate and key untouched, nothing signed.
    core.patch_namespaced_secret(
        "www-mtls", ns, {"data": {"ca.crt": base64.b64encode(b"edited").decode()}}
    )
    repaired = wait_secret(api_client, ns, "www-mtls", lambda s: s.data == before.data)
    assert repaired.metadata.resource_version != before.metadata.resource_version
    assert narrow.counter("meshless_certificates_signed_total") == 0
    assert narrow.stop() == 0

    # The pattern back: the identity is valid again and renewed at once (its time has come).
    operator_factory(namespace=wider.namespace, allowed_dns_names=pattern)
    renewed = wait_identity(
        api_client,
        ns,
        "www",
        lambda o: is_ready(o) and o["status"]["serialNumber"] != issued["status"]["serialNumber"],
        TIMEOUT,
        what="a renewed certificate",
    )
    leaf = _leaf(api_client, ns, "www-mtls")
    assert format(leaf.serial_number, "x") == renewed["status"]["serialNumber"]
    assert _dns_sans(leaf) == [name]


@contextlib.contextmanager
def _tenant_client(api: client.ApiClient, namespace: str) -> Iterator[client.ApiClient]:
    """A user holding the `admin` ClusterRole in `namespace` only, with a real token. `admin`
    is aggregated by kube-controller-manager, which this control plane does not run: the
    ClusterRoles it aggregates are bound too (the same rules)."""
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    aggregated = ("admin", "edit", "view")
    for role in ("admin", *(f"system:aggregate-to-{r}" for r in aggregated)):
        client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": f"tenant-{role.replace(':', '-')}"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role,
                },
                "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}],
            },
        )
    configuration = client.Configuration()
    configuration.host = api.configuration.host
    configuration.ssl_ca_cert = api.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": bound_token(core, namespace, "tenant", "tenant-1")}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    tenant = client.ApiClient(configuration)
    try:
        yield tenant
    finally:
        tenant.close()


def test_an_unusable_user_identity_is_never_mounted_the_provisioned_one_is(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    ns = namespace
    # The tenant's own identity for ServiceAccount web, with another namespace's name.
    create_identity(api_client, ns, "mine", serviceAccountName="web", dnsNames=["pay.shop.svc"])
    op: OperatorProcess = operator_factory()
    wait_identity(api_client, ns, "mine", ready_with_reason(REFUSED), TIMEOUT)
    create_policy(api_client, ns, "strict", "STRICT")
    wait_admission_label(api_client, ns)
    with _tenant_client(api_client, ns) as tenant:
        pod = create_pod(tenant, ns, "web-1", {"app": "web"}, service_account="web")
    assert pod["metadata"]["labels"][IDENTITY_LABEL] == "web"  # injected
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "meshless-identity"]
    assert volume["secret"]["secretName"] == "meshless-web-mtls"
    # The provisioned identity exists and is issued; the user's has no Secret.
    provisioned = wait_identity(api_client, ns, "meshless-web", is_ready, TIMEOUT)
    assert provisioned["spec"]["serviceAccountName"] == "web"
    web = f"spiffe://cluster.local/ns/{ns}/sa/web"
    leaf = _leaf(api_client, ns, "meshless-web-mtls")
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [web]
    names = [s.metadata.name for s in client.CoreV1Api(api_client).list_namespaced_secret(ns).items]
    assert "mine-mtls" not in names
    # The policy names the unusable identity and what its pods get instead.
    status = wait_policy(
        api_client,
        ns,
        "strict",
        lambda o: status_is(Ready="True")(o) and bool(o["status"].get("unusableIdentities")),
    )["status"]
    assert status["unusableIdentities"] == [
        {"namespace": ns, "name": "mine", "reason": REFUSED, "usedInstead": "meshless-web"}
    ]
    ready = condition({"status": status}, "Ready")
    assert ready is not None and f"{ns}/mine ({REFUSED}" in ready["message"]
    assert op.proc is not None and op.proc.poll() is None

    # Its owner fixes it: it serves new pods of web again, and the policy stops naming it.
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        "meshless.dev",
        "v1alpha1",
        ns,
        "workloadidentities",
        "mine",
        {"spec": {"dnsNames": [f"web.{ns}.svc"]}},
    )
    wait_identity(api_client, ns, "mine", is_ready, TIMEOUT)
    wait_policy(
        api_client,
        ns,
        "strict",
        lambda o: status_is(Ready="True")(o) and "unusableIdentities" not in o["status"],
    )
    second = create_pod(api_client, ns, "web-2", {"app": "web"}, service_account="web")
    [volume] = [v for v in second["spec"]["volumes"] if v["name"] == "meshless-identity"]
    assert volume["secret"]["secretName"] == "mine-mtls"


def _ca_data(core: client.CoreV1Api, namespace: str) -> dict[str, bytes]:
    secret = core.read_namespaced_secret("meshless-ca", namespace)
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def test_a_root_rotation_does_not_wait_for_a_certificate_that_is_never_renewed(
    operator_factory: OperatorFactory,
    api_client: client.ApiClient,
    namespace: str,
    kubeconfig: str,
) -> None:
    """Without the name policy's exception, Prepare would wait for ever for the refused
    identity's ca.crt and Switch until its certificate's notAfter (24 h here)."""
    ns = namespace
    core = client.CoreV1Api(api_client)
    pattern = "*.{namespace}.example.com"
    rotation = {"ca_settle_time": "4s", "ca_rotation_window": "6s"}
    wider = operator_factory(allowed_dns_names=pattern, **rotation)
    create_identity(api_client, ns, "www", dnsNames=[f"www.{ns}.example.com"])
    wait_identity(api_client, ns, "www", is_ready, TIMEOUT)
    before = core.read_namespaced_secret("www-mtls", ns)
    assert wider.stop() == 0
    narrow = operator_factory(namespace=wider.namespace, **rotation)
    wait_identity(api_client, ns, "www", ready_with_reason(REFUSED), TIMEOUT)

    rotate = subprocess.run(
        [sys.executable, "-m", "meshless", "ca", "--namespace", narrow.namespace, "rotate"],
        env={**os.environ, "KUBECONFIG": kubeconfig},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rotate.returncode == 0, rotate.stderr
    deadline = time.monotonic() + 90
    while (
        RotationState.from_json(
            _ca_data(core, narrow.namespace).get("rotation.json")
        ).last_root_rotation
        is None
    ):
        assert time.monotonic() < deadline, "the root rotation did not complete within 90s"
        time.sleep(0.2)

    [new_root] = parse_pem_certificates(_ca_data(core, narrow.namespace)["ca.crt"])
    after = core.read_namespaced_secret("www-mtls", ns)
    data = {k: base64.b64decode(v) for k, v in after.data.items()}
    # Certificate and key untouched (never signed again), the bundle the new root alone.
    assert after.data["tls.crt"] == before.data["tls.crt"]
    assert after.data["tls.key"] == before.data["tls.key"]
    assert [fingerprint(r) for r in parse_pem_certificates(data["ca.crt"])] == [
        fingerprint(new_root)
    ]
    assert narrow.counter("meshless_certificates_signed_total") == 0
    assert condition(get_identity(api_client, ns, "www"), "Ready")["reason"] == REFUSED  # type: ignore[index]
