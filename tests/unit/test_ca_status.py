"""`meshless ca status`: the document and its text rendering (no cluster needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from meshless.ca_cli import render_status
from meshless.ca_rotation import status_document
from meshless.pki import rotation as r
from meshless.pki.ca import bootstrap_self_signed, ca_from_secret_data, ca_to_secret_data
from meshless.pki.constraints import report
from meshless.pki.keys import KeyAlgorithm, generate_private_key, private_key_to_pem
from meshless.pki.rotation import Progress, RotationState
from meshless.pki.svid import SvidRequest, issue_svid

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def test_idle_status_names_the_expiry_dates_and_no_progress() -> None:
    ca, _ = bootstrap_self_signed("cluster.local", NOW)
    doc = status_document(ca, RotationState(), None, {})
    doc["secret"] = "meshless-system/meshless-ca"
    assert doc["phase"] == "Idle" and doc["progress"] is None
    assert doc["issuer"]["notAfter"] == ca.issuer_cert.not_valid_after_utc.isoformat()
    assert [x["role"] for x in doc["roots"]] == ["current"]
    text = render_status(doc)
    assert "phase:      Idle\n" in text
    assert "last root rotation:         never" in text
    json.dumps(doc)  # -o json must serialise
    assert "PRIVATE" not in json.dumps(doc)


def test_switch_status_shows_roots_roles_and_counts() -> None:
    ca0, root_key = bootstrap_self_signed("cluster.local", NOW)
    new_ca, new_key = bootstrap_self_signed("cluster.local", NOW)
    data = r.start_root_rotation(
        ca_to_secret_data(ca0, root_key),
        ca0,
        RotationState(),
        new_ca=new_ca,
        new_root_key=new_key,
        reason="Requested",
        request=None,
        now=NOW,
    )
    later = NOW + timedelta(minutes=3)
    data = r.switch(data, r.state_from_secret_data(data), later)
    ca = ca_from_secret_data(data, later)
    progress = Progress(
        bundles_total=12,
        bundles_with_new_root=12,
        bundles_with_old_root=12,
        leaves_total=10,
        leaves_on_old_root=4,
    )
    doc = status_document(
        ca, r.state_from_secret_data(data), progress, {"meshless.dev/rotate": "root:2"}
    )
    doc["secret"] = "ns/meshless-ca"
    assert sorted(x["role"] for x in doc["roots"]) == ["incoming", "leaving"]
    assert doc["pendingRequest"] == "root:2"
    assert doc["progress"]["leavesReissued"] == 6
    text = render_status(doc)
    assert "phase:      Switch since" in text
    assert "bundles:    12/12 carry the new root, 12 still carry the old root" in text
    assert "leaves:     4 on the old chain, 6/10 reissued" in text
    assert "requested:  root:2 (not acted on yet)" in text


def _identity(reason: str, status: str = "False", observed: int = 1) -> dict:  # type: ignore[type-arg]
    return {
        "metadata": {"namespace": "shop", "name": "x", "generation": 1},
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": status, "reason": reason}],
        },
    }


def test_leaves_of_refused_identities_do_not_hold_up_a_root_rotation() -> None:
    """The operator never reissues them, so the Switch must not wait for their notAfter."""
    from meshless.ca_rotation import refused_spec

    assert refused_spec(_identity("DNSNameNotAllowed"))
    assert refused_spec(_identity("InvalidSpec"))
    assert not refused_spec(_identity("DNSNameNotAllowed", observed=0))  # an earlier spec
    assert not refused_spec(_identity("SecretConflict"))  # not our Secret: never counted
    assert not refused_spec(_identity("CAUnavailable"))
    assert not refused_spec(_identity("Ready", status="True"))
    assert not refused_spec({"metadata": {"namespace": "shop", "name": "new"}})


def test_the_webhook_ca_shows_its_phase_and_roots_without_key_material() -> None:
    from meshless.pki.webhook_ca import new_webhook_ca_data, status_summary

    ca, _ = bootstrap_self_signed("cluster.local", NOW)
    doc = status_document(ca, RotationState(), None, {})
    doc["secret"] = "meshless-system/meshless-ca"
    data = new_webhook_ca_data(NOW)
    doc["webhookCA"] = {
        "secret": "meshless-system/meshless-webhook-ca",
        **status_summary(data, NOW),
    }
    text = render_status(doc)
    assert "webhook CA: meshless-system/meshless-webhook-ca" in text
    assert "  phase Idle since 2026-01-15T12:00:00+00:00" in text
    assert text.count("(signs)") == 1
    assert "PRIVATE" not in json.dumps(doc)
    broken = status_summary({"tls.crt": b"junk", "tls.key": b"junk"}, NOW)
    assert broken["error"].startswith("CAInvalidPEM")  # type: ignore[union-attr]
    doc["webhookCA"] = {"secret": "s", **broken}
    assert "  unusable: CAInvalidPEM" in render_status(doc)


def test_status_shows_the_issuers_name_constraints() -> None:
    ca, _ = bootstrap_self_signed("cluster.local", NOW)
    doc = status_document(ca, RotationState(), None, {}, report(ca.issuer_cert, None))
    doc["secret"] = "meshless-system/meshless-ca"
    assert doc["nameConstraints"]["constrained"] is True
    assert doc["nameConstraints"]["permitted"] == [
        "URI:cluster.local",
        "DNS:svc",
        "DNS:svc.cluster.local",
    ]
    assert doc["conditions"] == [
        {
            "type": "NameConstrained",
            "status": "True",
            "reason": "NameConstrained",
            "message": "the issuing intermediate 'CN=meshless intermediate CA,O=meshless' is "
            "name-constrained",
        }
    ]
    text = render_status(doc)
    assert "constraints: permitted URI:cluster.local, DNS:svc, DNS:svc.cluster.local\n" in text
    assert "             excluded IP:0.0.0.0/0, IP:::/0\n" in text
    json.dumps(doc)


def test_a_user_ca_without_constraints_is_reported_not_refused() -> None:
    """A user's intermediate with no NameConstraints loads and issues; its status says so."""
    key = generate_private_key(KeyAlgorithm.ECDSAP256)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corp issuing CA")])
    issuer = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    data = {
        "tls.crt": issuer.public_bytes(serialization.Encoding.PEM),
        "tls.key": private_key_to_pem(key),
    }
    ca = ca_from_secret_data(data, NOW)  # loads: never refused for lack of constraints
    issue_svid(
        ca,
        SvidRequest(
            "spiffe://cluster.local/ns/a/sa/b", (), timedelta(hours=1), KeyAlgorithm.ECDSAP256
        ),
        NOW,
    )
    doc = status_document(ca, RotationState(), None, {}, report(ca.issuer_cert, None))
    doc["secret"] = "meshless-system/corp-ca"
    assert doc["nameConstraints"]["constrained"] is False
    (condition,) = doc["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "NameConstrained",
        "False",
        "NotNameConstrained",
    )
    assert "'CN=corp issuing CA' carries no NameConstraints" in condition["message"]
    text = render_status(doc)
    assert (
        "constraints: NONE (NotNameConstrained): the issuing intermediate 'CN=corp issuing CA'"
        in text
    )
