"""A pod's current pod certificate, from its PodCertificateRequests (pure): the newest request
for our signer for that pod (UID included: a re-created pod of the same name is another pod).
The kubelet makes a new request at each refresh and mounts what the newest one was issued;
the controller-manager deletes old requests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509

from meshless.podcert.request import SIGNER_NAME, terminal_condition


def current_certificate(
    requests: Iterable[Mapping[str, Any]], pod_uid: str
) -> dict[str, Any] | None:
    """{request, state (Issued/Denied/Failed/Pending), serial, notBefore, beginRefreshAt,
    notAfter, reason, message} of the newest request for the pod, or None without one."""
    mine = [
        r
        for r in requests
        if (r.get("spec") or {}).get("signerName") == SIGNER_NAME
        and (r.get("spec") or {}).get("podUID") == pod_uid
    ]
    if not mine:
        return None
    newest = max(
        mine,
        key=lambda r: (r["metadata"].get("creationTimestamp") or "", r["metadata"]["name"]),
    )
    status = newest.get("status") or {}
    state = terminal_condition(newest) or "Pending"
    found: dict[str, Any] = {
        "request": newest["metadata"]["name"],
        "state": state,
        "serial": None,
        "notBefore": status.get("notBefore"),
        "beginRefreshAt": status.get("beginRefreshAt"),
        "notAfter": status.get("notAfter"),
        "reason": None,
        "message": None,
    }
    for cond in status.get("conditions") or ():
        if cond.get("type") == state:
            found["reason"], found["message"] = cond.get("reason"), cond.get("message")
    chain = status.get("certificateChain")
    if chain:
        try:
            leaf = x509.load_pem_x509_certificates(chain.encode())[0]
            found["serial"] = f"{leaf.serial_number:x}"
        except ValueError:
            found["serial"] = None
    return found


def newest_issued_chains(requests: Iterable[Mapping[str, Any]]) -> list[bytes]:
    """The certificate chain of each pod's newest Issued request for our signer (a pod: its
    namespace and UID): what its kubelet mounted last, as far as the requests that still
    exist tell."""
    newest: dict[tuple[str, str], tuple[str, str, bytes]] = {}
    for r in requests:
        spec, meta = r.get("spec") or {}, r.get("metadata") or {}
        chain = (r.get("status") or {}).get("certificateChain")
        if spec.get("signerName") != SIGNER_NAME or not chain or terminal_condition(r) != "Issued":
            continue
        pod = (str(meta.get("namespace") or ""), str(spec.get("podUID") or ""))
        order = (str(meta.get("creationTimestamp") or ""), str(meta.get("name") or ""))
        if pod not in newest or newest[pod][:2] < order:
            newest[pod] = (*order, chain.encode())
    return [chain for _, _, chain in newest.values()]


def certificate_line(found: Mapping[str, Any] | None) -> str:
    if found is None:
        return "no PodCertificateRequest for meshless.dev/spiffe"
    if found["state"] == "Issued":
        return (
            f"serial {found['serial']}, expires {found['notAfter']}, refresh from "
            f"{found['beginRefreshAt']} (request {found['request']})"
        )
    if found["state"] == "Pending":
        return f"request {found['request']} not answered yet"
    return f"{found['state']} {found['reason']}: {found['message']} (request {found['request']})"
