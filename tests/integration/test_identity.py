"""WorkloadIdentity end to end against the local control plane, with the operator running as
users run it, and real TLS peers."""

from __future__ import annotations

import base64
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes import client

from meshless.pki.ca import CertificateAuthority, bootstrap_self_signed, ca_from_secret_data
from meshless.pki.keys import (
    KeyAlgorithm,
    key_matches_certificate,
    load_private_key,
    private_key_to_pem,
)
from meshless.pki.svid import SvidRequest, issue_svid, parse_certificate_chain

from .conftest import OperatorFactory, OperatorProcess
from .kubehelpers import (
    condition,
    create_identity,
    is_ready,
    ready_with_reason,
    wait_event,
    wait_identity,
    wait_secret,
)
from .tlspeers import MtlsServer, connect, write_identity


def secret_data(secret: client.V1Secret) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}


def read_secret(api: client.ApiClient, namespace: str, name: str) -> client.V1Secret:
    return client.CoreV1Api(api).read_namespaced_secret(name, namespace)


def uri_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def dns_sans(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def expired_certificate(ca: CertificateAuthority, spiffe_id: str) -> tuple[bytes, bytes]:
    """A client certificate signed by the real issuing CA that expired a second after the CA
    itself became valid (issue_svid refuses to back-date past its issuer, rightly)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = ca.issuer_cert.not_valid_before_utc
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(seconds=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.issuer_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    chain = cert.public_bytes(serialization.Encoding.PEM) + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in ca.intermediates
    )
    return chain, private_key_to_pem(key)


def ready_identity(api: client.ApiClient, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    create_identity(api, namespace, name, **spec)
    return wait_identity(api, namespace, name, is_ready, timeout=30, what="Ready=True")


def test_identity_becomes_a_valid_svid_in_a_secret(
    meshless_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    wid = ready_identity(
        api_client,
        namespace,
        "payments",
        serviceAccountName="payments-sa",
        dnsNames=["payments.shop.svc", "payments.shop.svc.cluster.local"],
    )
    secret = read_secret(api_client, namespace, "payments-mtls")
    data = secret_data(secret)
    assert secret.type == "kubernetes.io/tls"
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    assert secret.metadata.labels["meshless.dev/identity"] == "payments"
    (owner,) = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == (
        "WorkloadIdentity",
        "payments",
        wid["metadata"]["uid"],
    )

    chain = parse_certificate_chain(data["tls.crt"])
    leaf = chain[0]
    spiffe = f"spiffe://cluster.local/ns/{namespace}/sa/payments-sa"
    assert uri_sans(leaf) == [spiffe]
    assert sorted(dns_sans(leaf)) == ["payments.shop.svc", "payments.shop.svc.cluster.local"]
    roots = parse_certificate_chain(data["ca.crt"])
    assert all(c.subject != c.issuer for c in chain), "tls.crt must never carry the root"
    assert all(r.subject == r.issuer for r in roots)
    assert key_matches_certificate(load_private_key(data["tls.key"]), leaf)
    assert data["tls.key"].startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8

    # openssl agrees that the leaf chains to ca.crt through the intermediates in tls.crt.
    files = write_identity(tmp_path / "id", data)
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "chain.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[1:])
    )
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(files.ca),
            "-untrusted",
            str(tmp_path / "chain.pem"),
            "-purpose",
            "sslclient",
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.strip().endswith(": OK")
    # Python's ssl loads the pair (it checks that key and certificate belong together).
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)

    status = wid["status"]
    assert status["spiffeID"] == spiffe
    assert status["serialNumber"] == format(leaf.serial_number, "x")
    assert status["secretName"] == "payments-mtls"
    assert status["notAfter"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status["renewalTime"] < status["notAfter"]
    assert condition(wid, "Issuing")["status"] == "False"  # type: ignore[index]

    bundle = client.CoreV1Api(api_client).read_namespaced_config_map(
        "meshless-trust-bundle", namespace
    )
    assert bundle.data["ca.crt"].encode() == data["ca.crt"]
    # A first certificate is recorded by the status, not by an Event (docs/decisions.md);
    # the Events are for what changes a running workload's certificate. Once the Event of a
    # repair (posted after anything the first issuance could have posted) is there, it is
    # the identity's only one.
    core = client.CoreV1Api(api_client)
    core.delete_namespaced_secret("payments-mtls", namespace)
    reissued = wait_event(api_client, namespace, "payments", "Reissued")
    assert "(SecretMissing: " in reissued.message
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=payments")
    assert [e.reason for e in events.items] == ["Reissued"]


def test_two_identities_complete_mutual_tls_and_bad_clients_are_refused(
    meshless_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
    tmp_path: Path,
) -> None:
    ready_identity(api_client, namespace, "server", dnsNames=[f"server.{namespace}.svc"])
    ready_identity(api_client, namespace, "client", privateKey={"algorithm": "RSA2048"})
    server_files = write_identity(
        tmp_path / "server", secret_data(read_secret(api_client, namespace, "server-mtls"))
    )
    client_files = write_identity(
        tmp_path / "client", secret_data(read_secret(api_client, namespace, "client-mtls"))
    )
    server = MtlsServer(server_files)
    try:
        greeting = connect(
            server.port,
            client_files.ca,
            client_files.cert,
            client_files.key,
            server_name=f"server.{namespace}.svc",
        )
        client_id = f"spiffe://cluster.local/ns/{namespace}/sa/client"
        assert greeting == f"hello {client_id}"
        assert server.peers == [client_id]

        # No client certificate: refused under STRICT.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            connect(server.port, client_files.ca)

        # A certificate from another CA: refused.
        other_ca, _ = bootstrap_self_signed("cluster.local", datetime.now(UTC))
        foreign = issue_svid(
            other_ca,
            SvidRequest(client_id, (), timedelta(hours=1), KeyAlgorithm.ECDSAP256),
            datetime.now(UTC),
        )
        foreign_files = write_identity(
            tmp_path / "foreign",
            {
                "tls.crt": foreign.chain_pem,
                "tls.key": foreign.private_key_pem,
                "ca.crt": client_files.ca.read_bytes(),
            },
        )
        with pytest.raises((ssl.SSLError, ConnectionError)):
            connect(server.port, client_files.ca, foreign_files.cert, foreign_files.key)

        # An expired certificate from the real CA: refused.
        ca_secret = read_secret(api_client, meshless_operator.namespace, "meshless-ca")
        real_ca = ca_from_secret_data(secret_data(ca_secret), datetime.now(UTC))
        expired = expired_certificate(real_ca, client_id)
        expired_files = write_identity(
            tmp_path / "expired",
            {
                "tls.crt": expired[0],
                "tls.key": expired[1],
                "ca.crt": client_files.ca.read_bytes(),
            },
        )
        with pytest.raises((ssl.SSLError, ConnectionError)):
            connect(server.port, client_files.ca, expired_files.cert, expired_files.key)
        server.wait_handled(4)
        assert len(server.errors) == 3
        assert any("expired" in e for e in server.errors)
        assert server.peers == [client_id]
    finally:
        server.close()

    # And openssl as the client, presenting the real identity.
    server = MtlsServer(server_files)
    try:
        proc = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-CAfile",
                str(client_files.ca),
                "-cert",
                str(client_files.cert),
                "-key",
                str(client_files.key),
                # -cert sends the leaf only; the intermediate in tls.crt must go too
                "-cert_chain",
                str(client_files.cert),
                "-verify_return_error",
                "-quiet",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert f"hello spiffe://cluster.local/ns/{namespace}/sa/client" in proc.stdout
    finally:
        server.close()


def test_rotation_before_expiry_with_a_new_key(
    meshless_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    first = ready_identity(api_client, namespace, "rotating", ttl="2m", renewBefore="90s")
    first_key = secret_data(read_secret(api_client, namespace, "rotating-mtls"))["tls.key"]
    serial = first["status"]["serialNumber"]
    renewed = wait_identity(
        api_client,
        namespace,
        "rotating",
        lambda o: is_ready(o) and o["status"]["serialNumber"] != serial,
        timeout=60,
        what="a renewed certificate",
    )
    assert renewed["status"]["renewalTime"] > first["status"]["renewalTime"]
    assert renewed["status"]["notAfter"] > first["status"]["notAfter"]
    assert first["status"]["notAfter"] > datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), (
        "renewed before the old certificate expired"
    )
    data = secret_data(read_secret(api_client, namespace, "rotating-mtls"))
    leaf = parse_certificate_chain(data["tls.crt"])[0]
    assert format(leaf.serial_number, "x") == renewed["status"]["serialNumber"]
    assert data["tls.key"] != first_key
    assert key_matches_certificate(load_private_key(data["tls.key"]), leaf)
    assert wait_event(api_client, namespace, "rotating", "Renewed").type == "Normal"


def test_deleted_and_corrupted_secrets_are_repaired(
    meshless_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    ready_identity(api_client, namespace, "fragile")
    core = client.CoreV1Api(api_client)
    old_uid = read_secret(api_client, namespace, "fragile-mtls").metadata.uid
    core.delete_namespaced_secret("fragile-mtls", namespace)
    repaired = wait_secret(
        api_client, namespace, "fragile-mtls", lambda s: s.metadata.uid != old_uid, timeout=30
    )
    leaf = parse_certificate_chain(secret_data(repaired)["tls.crt"])[0]
    assert uri_sans(leaf) == [f"spiffe://cluster.local/ns/{namespace}/sa/fragile"]

    core.patch_namespaced_secret(
        "fragile-mtls",
        namespace,
        {"data": {"tls.crt": base64.b64encode(b"not a certificate").decode()}},
    )
    fixed = wait_secret(
        api_client,
        namespace,
        "fragile-mtls",
        lambda s: secret_data(s)["tls.crt"].startswith(b"-----BEGIN CERTIFICATE-----"),
        timeout=30,
    )
    data = secret_data(fixed)
    new_leaf = parse_certificate_chain(data["tls.crt"])[0]
    assert key_matches_certificate(load_private_key(data["tls.key"]), new_leaf)
    # The Secret is written before the status that describes it.
    wait_identity(
        api_client,
        namespace,
        "fragile",
        lambda o: (
            (o.get("status") or {}).get("serialNumber") == format(new_leaf.serial_number, "x")
        ),
        what="status naming the repaired certificate",
    )


def test_a_secret_we_do_not_own_is_left_byte_for_byte(
    meshless_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    core = client.CoreV1Api(api_client)
    theirs = core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "taken-mtls", "labels": {"owner": "someone-else"}},
            "type": "Opaque",
            "data": {"tls.crt": base64.b64encode(b"their bytes").decode()},
        },
    )
    create_identity(api_client, namespace, "taken")
    wid = wait_identity(api_client, namespace, "taken", ready_with_reason("SecretConflict"))
    assert "taken-mtls" in condition(wid, "Ready")["message"]  # type: ignore[index]
    after = read_secret(api_client, namespace, "taken-mtls")
    assert after.metadata.resource_version == theirs.metadata.resource_version
    assert after.data == theirs.data
    assert after.metadata.labels == {"owner": "someone-else"}
    conflict = wait_event(api_client, namespace, "taken", "SecretConflict")
    assert conflict.type == "Warning" and "taken-mtls" in conflict.message


def test_ttl_below_the_operator_floor_is_not_ready_with_a_reason(
    meshless_operator: OperatorProcess,
    api_client: client.ApiClient,
    namespace: str,
) -> None:
    create_identity(api_client, namespace, "short", ttl="1m")  # the floor here is 2m
    wid = wait_identity(api_client, namespace, "short", ready_with_reason("InvalidSpec"))
    message = condition(wid, "Ready")["message"]  # type: ignore[index]
    assert "spec.ttl" in message and "floor" in message
    assert "spec.ttl" in wait_event(api_client, namespace, "short", "InvalidSpec").message
    with pytest.raises(client.ApiException) as missing:
        read_secret(api_client, namespace, "short-mtls")
    assert missing.value.status == 404


def test_a_spec_change_reissues_with_the_new_sans_and_algorithm(
    meshless_operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    first = ready_identity(api_client, namespace, "changing", dnsNames=["old.example"])
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        "meshless.dev",
        "v1alpha1",
        namespace,
        "workloadidentities",
        "changing",
        {
            "spec": {
                "dnsNames": ["new.example", "also.example"],
                "privateKey": {"algorithm": "Ed25519"},
            }
        },
    )
    changed = wait_identity(
        api_client,
        namespace,
        "changing",
        lambda o: (
            is_ready(o)
            and o["status"]["serialNumber"] != first["status"]["serialNumber"]
            and o["status"].get("observedGeneration") == o["metadata"]["generation"]
        ),
        what="a certificate for the new spec",
    )
    data = secret_data(read_secret(api_client, namespace, "changing-mtls"))
    leaf = parse_certificate_chain(data["tls.crt"])[0]
    assert format(leaf.serial_number, "x") == changed["status"]["serialNumber"]
    assert sorted(dns_sans(leaf)) == ["also.example", "new.example"]
    assert leaf.public_key().__class__.__name__ == "Ed25519PublicKey"
    assert key_matches_certificate(load_private_key(data["tls.key"]), leaf)
    reissued = wait_event(api_client, namespace, "changing", "Reissued")
    assert "SpecChanged" in reissued.message


def test_a_secret_the_api_refuses_is_not_ready_and_others_keep_working(
    meshless_operator: OperatorProcess, api_client: client.ApiClient, namespace: str
) -> None:
    # Passes the schema (annotation values are free text) but exceeds the 256 KiB that
    # Kubernetes allows for a Secret's annotations: only the write can tell.
    create_identity(
        api_client,
        namespace,
        "oversized",
        secretTemplate={"annotations": {"example.com/blob": "x" * (300 * 1024)}},
    )
    create_identity(api_client, namespace, "neighbour")
    failed = wait_identity(api_client, namespace, "oversized", ready_with_reason("IssuingFailed"))
    message = condition(failed, "Ready")["message"]  # type: ignore[index]
    assert "annotations" in message and "PRIVATE KEY" not in message
    assert wait_event(api_client, namespace, "oversized", "IssuingFailed").type == "Warning"
    assert is_ready(wait_identity(api_client, namespace, "neighbour", is_ready))
    assert meshless_operator.proc is not None and meshless_operator.proc.poll() is None


def test_a_refused_secret_is_not_signed_again_on_every_retry(
    operator_factory: OperatorFactory, api_client: client.ApiClient, namespace: str
) -> None:
    op = operator_factory()
    op.wait_for_metrics(lambda text: "meshless_work_queue_depth" in text, timeout=30)
    before = op.counter("meshless_certificates_signed_total")
    create_identity(
        api_client,
        namespace,
        "refused",
        secretTemplate={"annotations": {"example.com/blob": "x" * (300 * 1024)}},
    )
    wait_identity(api_client, namespace, "refused", ready_with_reason("IssuingFailed"))
    op.wait_for_log("(attempt 3)", timeout=30)  # the work queue retried with backoff
    signed = op.counter("meshless_certificates_signed_total") - before
    assert signed == 1, f"signed {signed} times for one identity the API keeps refusing"
