"""`meshless status` and `meshless describe pod` from live objects (pure).

The commands list MtlsPolicies, WorkloadIdentities and Pods; everything here resolves them with
the operator's own core (policy.spec, policy.resolve, policy.provision), so the CLI answers
with the same rules the operator enforces, not a copy of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meshless.api import IDENTITY_LABEL, PROVISIONED_LABEL, ConditionType, Mode, Reason
from meshless.commands.output import (
    NONE,
    condition,
    condition_summary,
    fields,
    human_duration,
    parse_time,
    table,
)
from meshless.pki.spiffe import spiffe_id
from meshless.podcert.current import certificate_line
from meshless.podcert.request import SIGNER_NAME
from meshless.policy.model import PodInfo, PodResolution, PolicyRef, PolicySpec
from meshless.policy.provision import IdentityRecord, identity_for, identity_record
from meshless.policy.resolve import PolicySet, scope_of
from meshless.policy.spec import PolicySpecError, parse_policy, pod_info

Json = Mapping[str, Any]


@dataclass
class Resolved:
    """Every policy parsed and indexed, and the pods resolved against them."""

    policy_set: PolicySet
    bodies: dict[PolicyRef, Json]
    invalid: dict[PolicyRef, str]
    pods: list[tuple[PodInfo, PodResolution | None]] = field(default_factory=list)

    def conflicts(self) -> tuple[dict[PolicyRef, set[PolicyRef]], dict[PolicyRef, set[PolicyRef]]]:
        """(loser -> the policies it lost to, winner -> the policies it beat), from the scope
        rules and every resolved pod."""
        lost: dict[PolicyRef, set[PolicyRef]] = {}
        beat: dict[PolicyRef, set[PolicyRef]] = {}
        pairs = list(self.policy_set.shadowed().items())
        for _, resolution in self.pods:
            if resolution is not None:
                pairs += list(resolution.ignored.items())
        for loser, winner in pairs:
            lost.setdefault(loser, set()).add(winner)
            beat.setdefault(winner, set()).add(loser)
        return lost, beat


def resolve(policies: Iterable[Json], pods: Iterable[Json], root_namespace: str) -> Resolved:
    specs: list[PolicySpec] = []
    bodies: dict[PolicyRef, Json] = {}
    invalid: dict[PolicyRef, str] = {}
    for body in policies:
        meta = body["metadata"]
        ref = PolicyRef(meta["namespace"], meta["name"])
        bodies[ref] = body
        try:
            specs.append(parse_policy(body))
        except PolicySpecError as exc:
            invalid[ref] = str(exc)
    policy_set = PolicySet.build(specs, root_namespace)
    resolved = Resolved(policy_set, bodies, invalid)
    for pod in pods:
        info = pod_info(pod)
        resolved.pods.append((info, policy_set.resolve(info)))
    return resolved


def _ref(text: PolicyRef | None) -> str:
    return str(text) if text is not None else NONE


# --- meshless status ----------------------------------------------------------------------


def _proven(status: Json) -> str | None:
    """ "proven/probed" STRICT ports from status.enforcement, None when absent."""
    enforcement = status.get("enforcement")
    if not isinstance(enforcement, Mapping):
        return None
    strict = enforcement.get("strict") or {}
    if not isinstance(strict, Mapping):
        return None
    proven = int(strict.get("proven") or 0)
    probed = proven + int(strict.get("failing") or 0) + int(strict.get("unreachable") or 0)
    return f"{proven}/{probed}"


def policy_rows(resolved: Resolved, namespaces: set[str] | None) -> list[dict[str, Any]]:
    lost, beat = resolved.conflicts()
    specs = {spec.ref: spec for spec in resolved.policy_set.all()}
    rows = []
    for ref in sorted(resolved.bodies):
        if namespaces is not None and ref.namespace not in namespaces:
            continue
        body = resolved.bodies[ref]
        status = body.get("status") or {}
        spec = specs.get(ref)
        scope = (
            scope_of(spec, resolved.policy_set.root_namespace).value
            if spec
            else status.get("scope")
        )
        ready = condition(body, ConditionType.READY)
        rows.append(
            {
                "namespace": ref.namespace,
                "name": ref.name,
                "mode": (spec.mode.value if spec else (body.get("spec") or {}).get("mode"))
                or Mode.UNSET.value,
                "portModes": {str(p): m.value for p, m in sorted(spec.port_modes.items())}
                if spec
                else {},
                "scope": scope,
                "ready": condition_summary(body, ConditionType.READY),
                "readyMessage": (ready or {}).get("message"),
                "invalid": resolved.invalid.get(ref),
                "ignoredInFavourOf": sorted(str(w) for w in lost.get(ref, ())),
                "winsOver": sorted(str(w) for w in beat.get(ref, ())),
                "conflicted": condition_summary(body, ConditionType.CONFLICTED),
                "selectedPods": status.get("selectedPods"),
                "injectedPods": status.get("injectedPods"),
                "identities": status.get("identities"),
                "strictPortsProven": _proven(status),
                "enforced": condition_summary(body, ConditionType.ENFORCED),
            }
        )
    return rows


def _users_of_identities(
    resolved: Resolved, records: Sequence[IdentityRecord], trust_domain: str
) -> dict[tuple[str, str], set[str]]:
    """(namespace, identity) -> the policies governing pods that the identity serves."""
    users: dict[tuple[str, str], set[str]] = {}
    for pod, resolution in resolved.pods:
        if resolution is None or not resolution.needs_identity():
            continue
        ref = identity_for(pod.namespace, pod.service_account, records, trust_domain)
        users.setdefault((ref.namespace, ref.name), set()).add(str(resolution.governing))
    return users


def identity_rows(
    identities: Iterable[Json],
    resolved: Resolved,
    trust_domain: str,
    now: datetime,
    namespaces: set[str] | None,
) -> list[dict[str, Any]]:
    bodies = sorted(identities, key=lambda b: (b["metadata"]["namespace"], b["metadata"]["name"]))
    records = [identity_record(b) for b in bodies]
    users = _users_of_identities(resolved, records, trust_domain)
    rows = []
    for body in bodies:
        meta = body["metadata"]
        if namespaces is not None and meta["namespace"] not in namespaces:
            continue
        status = body.get("status") or {}
        not_after = parse_time(status.get("notAfter"))
        rows.append(
            {
                "namespace": meta["namespace"],
                "name": meta["name"],
                "serviceAccount": (body.get("spec") or {}).get("serviceAccountName"),
                "provisioned": (meta.get("labels") or {}).get(PROVISIONED_LABEL) == "true",
                "ready": condition_summary(body, ConditionType.READY),
                "spiffeID": status.get("spiffeID"),
                "serialNumber": status.get("serialNumber"),
                "notAfter": status.get("notAfter"),
                "expiresIn": human_duration(not_after - now) if not_after else None,
                "renewalTime": status.get("renewalTime"),
                "usedBy": sorted(users.get((meta["namespace"], meta["name"]), ())),
            }
        )
    return rows


def conflicts_text(row: Mapping[str, Any]) -> str:
    if row["invalid"]:
        return "invalid spec"
    parts = []
    if row["ignoredInFavourOf"]:
        parts.append("ignored for " + ",".join(row["ignoredInFavourOf"]))
    if row["winsOver"]:
        parts.append("wins over " + ",".join(row["winsOver"]))
    return "; ".join(parts) or NONE


POLICY_HEADERS = (
    "NAMESPACE",
    "POLICY",
    "MODE",
    "SCOPE",
    "READY",
    "CONFLICTS",
    "SELECTED",  # pods the policy governs, whatever their phase
    "RUNNING INJECTED",  # of those, Running with their identity mounted (status.injectedPods)
    "PROVEN",
)
IDENTITY_HEADERS = (
    "NAMESPACE",
    "IDENTITY",
    "SERVICE ACCOUNT",
    "READY",
    "SERIAL",
    "EXPIRES",
    "IN",
    "USED BY",
)


def policy_table_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    return [
        [
            r["namespace"],
            r["name"],
            r["mode"]
            + (
                " (" + ",".join(f"{p}:{m}" for p, m in r["portModes"].items()) + ")"
                if r["portModes"]
                else ""
            ),
            r["scope"],
            r["ready"],
            conflicts_text(r),
            r["selectedPods"],
            r["injectedPods"],
            r["strictPortsProven"],
        ]
        for r in rows
    ]


def identity_table_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[object]]:
    return [
        [
            r["namespace"],
            r["name"],
            r["serviceAccount"],
            r["ready"],
            r["serialNumber"],
            r["notAfter"],
            r["expiresIn"],
            ",".join(r["usedBy"]),
        ]
        for r in rows
    ]


# --- meshless describe pod ----------------------------------------------------------------


def _probe_findings(
    resolved: Resolved, pod: PodInfo, governing: PolicyRef | None
) -> dict[str, Any]:
    """What the governing policy's status says about this pod's probed ports."""
    if governing is None or governing not in resolved.bodies:
        return {"state": "none", "failing": [], "lastProven": None}
    status = resolved.bodies[governing].get("status") or {}
    enforcement = status.get("enforcement")
    if not isinstance(enforcement, Mapping):
        return {"state": "not reported", "failing": [], "lastProven": None}
    name = f"{pod.namespace}/{pod.name}"
    failing = [
        {"port": f.get("port"), "observed": f.get("observed")}
        for f in enforcement.get("failing") or ()
        if isinstance(f, Mapping) and f.get("pod") == name
    ]
    enforced = condition(resolved.bodies[governing], ConditionType.ENFORCED) or {}
    if failing:
        state = "failing"
    elif not pod.running or not pod.ip:
        state = "not probed (the pod is not running)"
    elif enforced.get("status") == "True" and enforced.get("reason") == Reason.PROVEN:
        state = "proven"
    else:
        state = "not named as failing"
    return {"state": state, "failing": failing, "lastProven": enforcement.get("lastProven")}


def describe_pod(
    pod: Json,
    resolved: Resolved,
    identities: Iterable[Json],
    trust_domain: str,
) -> dict[str, Any]:
    info = pod_info(pod)
    resolution = resolved.policy_set.resolve(info)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    report: dict[str, Any] = {
        "pod": f"{info.namespace}/{info.name}",
        "serviceAccount": info.service_account,
        "phase": (pod.get("status") or {}).get("phase"),
        "managed": resolution is not None,
    }
    scopes = {
        spec.ref: scope_of(spec, resolved.policy_set.root_namespace).value
        for spec in resolved.policy_set.all()
    }
    if resolution is None:
        report.update(mode=None, decidedBy=None, ports=[], applied=[], ignored=[])
    else:
        report.update(
            mode=resolution.mode.value,
            decidedBy=str(resolution.decided_by) if resolution.decided_by else None,
            ports=[
                {
                    "port": port,
                    "mode": pm.mode.value,
                    "decidedBy": str(pm.decided_by) if pm.decided_by else None,
                    "declared": port in info.ports,
                }
                for port, pm in sorted(resolution.ports.items())
            ],
            applied=[{"policy": str(ref), "scope": scopes.get(ref)} for ref in resolution.applied],
            ignored=[
                {"policy": str(loser), "inFavourOf": str(winner)}
                for loser, winner in sorted(resolution.ignored.items())
            ],
        )
    bodies = list(identities)
    needs = resolution is not None and resolution.needs_identity()
    identity: dict[str, Any] | None = None
    if needs and info.pod_certificate:
        identity = {
            "delivery": "PodCertificate",
            "signer": SIGNER_NAME,
            "spiffeID": spiffe_id(trust_domain, info.namespace, info.service_account),
        }
    elif needs:
        records = [identity_record(b) for b in bodies]
        ref = identity_for(info.namespace, info.service_account, records, trust_domain)
        body = next(
            (
                b
                for b in bodies
                if b["metadata"]["namespace"] == ref.namespace and b["metadata"]["name"] == ref.name
            ),
            None,
        )
        status = (body or {}).get("status") or {}
        identity = {
            "delivery": "Secret",
            "name": ref.name,
            "secret": ref.secret_name,
            "provisioned": ref.provisioned,
            "exists": body is not None,
            "spiffeID": status.get("spiffeID") or ref.spiffe_id,
            "ready": condition_summary(body, ConditionType.READY) if body else None,
            "notAfter": status.get("notAfter"),
        }
    report["identity"] = identity
    report["invalidPolicies"] = [
        {"policy": str(ref), "error": error}
        for ref, error in sorted(resolved.invalid.items())
        if ref.namespace in (info.namespace, resolved.policy_set.root_namespace)
    ]
    report["injected"] = {
        "identityMounted": info.identity_mounted,
        "identityLabel": labels.get(IDENTITY_LABEL),
    }
    report["probe"] = _probe_findings(
        resolved, info, resolution.governing if resolution is not None else None
    )
    return report


def describe_lines(report: Mapping[str, Any]) -> str:
    head: list[tuple[str, object]] = [
        ("Pod", report["pod"]),
        ("ServiceAccount", report["serviceAccount"]),
        ("Phase", report["phase"]),
    ]
    invalid: list[tuple[str, object]] = [
        ("Invalid", f"{i['policy']} (not applied: {i['error']})")
        for i in report.get("invalidPolicies", ())
    ]
    if not report["managed"]:
        head.append(("mTLS", "no MtlsPolicy applies: meshless leaves this pod alone"))
        return fields(head + invalid)
    head.append(
        ("Mode", f"{report['mode']} (decided by {report['decidedBy'] or 'default: nothing wider'})")
    )
    head.append(("Applied", ", ".join(f"{a['policy']} ({a['scope']})" for a in report["applied"])))
    head.append(
        (
            "Ignored",
            ", ".join(f"{i['policy']} (in favour of {i['inFavourOf']})" for i in report["ignored"])
            or NONE,
        )
    )
    identity = report["identity"]
    if identity is None:
        head.append(("Identity", "none needed (no STRICT or PERMISSIVE port)"))
    elif identity["delivery"] == "PodCertificate":
        # its current certificate: the "Pod certificate" line below (podcert.current)
        head.append(("Identity", f"pod certificate from {identity['signer']} (no Secret)"))
        head.append(("SPIFFE ID", identity["spiffeID"]))
    else:
        made = "provisioned by meshless" if identity["provisioned"] else "user-made"
        state = (
            f"Ready {identity['ready']}, expires {identity['notAfter'] or NONE}"
            if identity["exists"]
            else "does not exist yet"
        )
        head.append(
            (
                "Identity",
                f"{identity['name']} ({made}; Secret {identity['secret']}; {state})",
            )
        )
        head.append(("SPIFFE ID", identity["spiffeID"]))
    if "podCertificate" in report:
        head.append(("Pod certificate", certificate_line(report["podCertificate"])))
    injected = report["injected"]
    head.append(
        (
            "Injected",
            ("yes" if injected["identityMounted"] else "no")
            + f" (identity volume mounted: {'yes' if injected['identityMounted'] else 'no'}; "
            f"label {IDENTITY_LABEL}={injected['identityLabel'] or NONE}; the policy counts "
            "it as RUNNING INJECTED once it is Running)",
        )
    )
    probe = report["probe"]
    probe_text = probe["state"]
    if probe["failing"]:
        probe_text += ": " + "; ".join(
            f"port {f['port']}: {f['observed']}" for f in probe["failing"]
        )
    if probe["lastProven"]:
        probe_text += f" (STRICT ports last proven {probe['lastProven']})"
    head.append(("Last probe", probe_text))
    head += invalid
    ports = table(
        ("PORT", "MODE", "DECIDED BY", "DECLARED"),
        [
            [p["port"], p["mode"], p["decidedBy"] or "default", "yes" if p["declared"] else "no"]
            for p in report["ports"]
        ],
    )
    return fields(head) + "\nPorts:\n" + "\n".join("  " + line for line in ports.splitlines())
