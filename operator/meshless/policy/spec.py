"""MtlsPolicy objects and Pods into the policy core's data (pure).

`parse_policy` repeats the CRD's schema and CEL checks for objects that reached the operator
without them (an older CRD, a direct etcd write): the controller reports a PolicySpecError as
Ready=False InvalidSpec. `pod_info`, the few fields of a Pod the operator needs, is defined in
meshless.admission.pods (admission builds the same PodInfo) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeVar

from meshless.admission.pods import pod_info as pod_info
from meshless.api import AdmissionAction, Mode
from meshless.delivery import Delivery, pod_key_type
from meshless.durations import parse_duration
from meshless.pki.keys import KeyAlgorithm
from meshless.policy.model import IdentityDefaults, PolicySpec
from meshless.selectors import SelectorError, parse_selector

MIN_PORT, MAX_PORT = 1, 65535
# spec.identity.ttl bounds, as in the CRD (and WorkloadIdentity spec.ttl).
MIN_TTL, MAX_TTL = timedelta(minutes=1), timedelta(days=30)


E = TypeVar("E", Mode, AdmissionAction, KeyAlgorithm, Delivery)


class PolicySpecError(ValueError):
    """An MtlsPolicy the CRD would refuse; the message names the field."""


def parse_policy(body: Mapping[str, Any]) -> PolicySpec:
    """A PolicySpec from an MtlsPolicy object as the API returns it."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise PolicySpecError("spec must be an object")

    raw_selector = spec.get("selector")
    if raw_selector is not None and not isinstance(raw_selector, Mapping):
        raise PolicySpecError("spec.selector must be a LabelSelector object")
    try:
        selector = parse_selector(raw_selector, "spec.selector")
    except SelectorError as exc:
        raise PolicySpecError(str(exc)) from None
    port_modes = _port_modes(spec.get("portLevelMtls"))
    if port_modes and selector.empty:
        raise PolicySpecError("spec.portLevelMtls requires a non-empty spec.selector")

    enforcement = spec.get("enforcement") or {}
    if not isinstance(enforcement, Mapping):
        raise PolicySpecError("spec.enforcement must be an object")
    network_policy = enforcement.get("networkPolicy", True)
    if not isinstance(network_policy, bool):
        raise PolicySpecError(f"spec.enforcement.networkPolicy {network_policy!r} is not a boolean")

    return PolicySpec(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        creation_timestamp=str(meta.get("creationTimestamp") or ""),
        generation=int(meta.get("generation") or 0),
        selector=None if selector.empty else selector,
        mode=_mode(spec.get("mode"), "spec.mode"),
        port_modes=port_modes,
        identity=_identity_defaults(spec.get("identity")),
        admission=_enum(
            AdmissionAction,
            enforcement.get("admission"),
            "spec.enforcement.admission",
            AdmissionAction.ENFORCE,
        ),
        network_policy=network_policy,
    )


def _enum(kind: type[E], raw: Any, where: str, default: E) -> E:
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise PolicySpecError(f"{where} {raw!r} is not one of {allowed}") from None


def _mode(raw: Any, where: str) -> Mode:
    return _enum(Mode, raw, where, Mode.UNSET)


def _port_modes(raw: Any) -> dict[int, Mode]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise PolicySpecError("spec.portLevelMtls must be a map of port number to {mode}")
    out: dict[int, Mode] = {}
    for key, entry in raw.items():
        port = _port_key(key)
        where = f"spec.portLevelMtls.{key}"
        if not isinstance(entry, Mapping) or "mode" not in entry:
            raise PolicySpecError(f"{where}.mode is required")
        out[port] = _mode(entry["mode"], f"{where}.mode")
    return out


def _port_key(key: Any) -> int:
    text = str(key)
    # As the CRD: decimal digits, no sign, no leading zero ("080" would be ambiguous).
    if text.isascii() and text.isdigit() and not text.startswith("0"):
        port = int(text)
        if MIN_PORT <= port <= MAX_PORT:
            return port
    raise PolicySpecError(f"spec.portLevelMtls key {text!r} is not a port {MIN_PORT}..{MAX_PORT}")


def _identity_defaults(raw: Any) -> IdentityDefaults:
    if not raw:
        return IdentityDefaults()
    if not isinstance(raw, Mapping):
        raise PolicySpecError("spec.identity must be an object")
    ttl = raw.get("ttl") or None
    if ttl is not None:
        try:
            lifetime = parse_duration(str(ttl))
        except ValueError as exc:
            raise PolicySpecError(f"spec.identity.ttl: {exc}") from None
        if not MIN_TTL <= lifetime <= MAX_TTL:
            raise PolicySpecError(f"spec.identity.ttl {ttl!r} must be between 1m and 30d (720h)")
    private_key = raw.get("privateKey") or {}
    if not isinstance(private_key, Mapping):
        raise PolicySpecError("spec.identity.privateKey must be an object")
    algorithm = private_key.get("algorithm") or None
    if algorithm is not None:
        algorithm = _enum(
            KeyAlgorithm, algorithm, "spec.identity.privateKey.algorithm", KeyAlgorithm.ECDSAP256
        ).value
    delivery = raw.get("delivery") or None
    if delivery is not None:
        delivery = _enum(Delivery, delivery, "spec.identity.delivery", Delivery.SECRET).value
        if delivery == Delivery.POD_CERTIFICATE and algorithm is not None:
            try:
                pod_key_type(algorithm)
            except ValueError as exc:
                raise PolicySpecError(str(exc)) from None
    return IdentityDefaults(
        ttl=None if ttl is None else str(ttl), algorithm=algorithm, delivery=delivery
    )
