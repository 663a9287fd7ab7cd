"""`meshless describe pod`'s pod certificate: the newest request for our signer and this pod."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from meshless.pki.ca import bootstrap_self_signed
from meshless.pki.svid import sign_leaf
from meshless.podcert.current import (
    certificate_line,
    current_certificate,
    newest_issued_chains,
)
from tests.pcrs import kubelet_key

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def request(name: str, created: str, *, uid: str = "u1", signer: str = "meshless.dev/spiffe",
            status: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"signerName": signer, "podUID": uid},
        "status": status or {},
    }


def test_the_newest_request_of_this_pod_for_our_signer() -> None:
    ca = bootstrap_self_signed("cluster.local", NOW)[0]
    key = kubelet_key("ECDSAP256")
    leaf = sign_leaf(ca, key.public_key(), "spiffe://cluster.local/ns/a/sa/b", (), NOW,
                     NOW + timedelta(hours=1))  # fmt: skip
    from cryptography.hazmat.primitives import serialization

    issued = {
        "conditions": [{"type": "Issued", "status": "True", "reason": "Issued", "message": "ok"}],
        "certificateChain": leaf.public_bytes(serialization.Encoding.PEM).decode(),
        "notAfter": "2026-03-01T13:00:00Z",
        "beginRefreshAt": "2026-03-01T12:40:00Z",
    }
    found = current_certificate(
        [
            request("old", "2026-03-01T10:00:00Z", status={"conditions": []}),
            request("new", "2026-03-01T11:00:00Z", status=issued),
            request("other-pod", "2026-03-01T11:30:00Z", uid="u2"),
            request("other-signer", "2026-03-01T11:45:00Z", signer="example.com/x"),
        ],
        "u1",
    )
    assert found is not None
    assert (found["request"], found["state"], found["serial"]) == (
        "new",
        "Issued",
        f"{leaf.serial_number:x}",
    )
    assert "expires 2026-03-01T13:00:00Z" in certificate_line(found)


def test_pending_denied_and_none() -> None:
    assert current_certificate([], "u1") is None
    assert "no PodCertificateRequest" in certificate_line(None)
    pending = current_certificate([request("r", "2026-03-01T10:00:00Z")], "u1")
    assert pending is not None and pending["state"] == "Pending"
    denied_status = {
        "conditions": [
            {"type": "Denied", "status": "True", "reason": "PodUIDMismatch", "message": "gone"}
        ]
    }
    denied = current_certificate([request("r", "2026-03-01T10:00:00Z", status=denied_status)], "u1")
    assert certificate_line(denied) == "Denied PodUIDMismatch: gone (request r)"


def test_newest_issued_chain_per_pod() -> None:
    issued = {"conditions": [{"type": "Issued", "status": "True"}], "certificateChain": "A"}
    newer = {**issued, "certificateChain": "B"}
    requests = [
        request("a1", "2026-03-01T10:00:00Z", status=issued),
        request("a2", "2026-03-01T11:00:00Z", status=newer),
        request("a3", "2026-03-01T12:00:00Z"),  # pending: not mounted yet
        request("b1", "2026-03-01T09:00:00Z", uid="u2", status=issued),
        request("x", "2026-03-01T13:00:00Z", signer="example.com/x", status=newer),
    ]
    for r in requests:
        r["metadata"]["namespace"] = "shop"
    assert sorted(newest_issued_chains(requests)) == [b"A", b"B"]
