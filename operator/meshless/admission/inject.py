"""Injection (pure): a pod and its effective mTLS modes -> the JSON patch that gives it its
identity.

For a pod whose effective mode is STRICT or PERMISSIVE on any port, the patch adds a Secret
volume with the ServiceAccount's identity (or, with PodCertificate delivery, a projected volume
with the kubelet's pod certificate and the trust bundle: the same files), mounts it read-only
at the identity path in every init container and container, sets MESHLESS_SPIFFE_ID,
MESHLESS_MTLS_MODE and MESHLESS_MTLS_PORTS, and labels the pod
meshless.dev/identity=<serviceAccount>.

The patch only adds what is missing, so a second invocation (reinvocationPolicy IfNeeded, or a
pod spec copied from an injected pod) yields no operations. Anything of ours that is already
there but different is a conflict: the webhook denies the pod with the message rather than
store a pod spec that half works.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from meshless.admission import pods
from meshless.api import (
    ENV_MTLS_MODE,
    ENV_MTLS_PORTS,
    ENV_PREFIX,
    ENV_SPIFFE_ID,
    IDENTITY_LABEL,
    IDENTITY_MOUNT_PATH,
    IDENTITY_VOLUME,
)
from meshless.delivery import PodCertificateMount, pod_certificate_sources
from meshless.identity.spec import IdentityRef
from meshless.podcert.request import SIGNER_NAME
from meshless.policy.model import PodResolution

JSONPatchOp = dict[str, Any]


class InjectionConflict(ValueError):
    """The pod already has something where injection would put its own; the message names
    the container (when there is one) and the conflicting item."""


def escape(segment: str) -> str:
    """A JSON-pointer path segment (RFC 6901): "~" -> "~0", "/" -> "~1"."""
    return segment.replace("~", "~0").replace("/", "~1")


def ports_env_value(resolution: PodResolution) -> str:
    """MESHLESS_MTLS_PORTS: a JSON object port -> mode, ports in numeric order."""
    ordered = {str(port): resolution.ports[port].mode.value for port in sorted(resolution.ports)}
    return json.dumps(ordered, separators=(",", ":"))


def identity_env(resolution: PodResolution, identity: IdentityRef) -> list[dict[str, str]]:
    return [
        {"name": ENV_SPIFFE_ID, "value": identity.spiffe_id},
        {"name": ENV_MTLS_MODE, "value": resolution.mode.value},
        {"name": ENV_MTLS_PORTS, "value": ports_env_value(resolution)},
    ]


def identity_volume(
    identity: IdentityRef, pod_certificate: PodCertificateMount | None = None
) -> dict[str, Any]:
    """The identity Secret's volume, or with `pod_certificate` (PodCertificate delivery) a
    projected volume of the kubelet's pod certificate and the trust bundle: the same files."""
    if pod_certificate is not None:
        sources = pod_certificate_sources(pod_certificate)
        return {"name": IDENTITY_VOLUME, "projected": {"sources": sources}}
    return {"name": IDENTITY_VOLUME, "secret": {"secretName": identity.secret_name}}


def identity_mount() -> dict[str, Any]:
    return {"name": IDENTITY_VOLUME, "mountPath": IDENTITY_MOUNT_PATH, "readOnly": True}


def _is_our_volume(
    volume: Mapping[str, Any], identity: IdentityRef, pod_certificate: PodCertificateMount | None
) -> bool:
    """Ours, allowing for what the API server defaults (defaultMode, optional: false)."""
    if pod_certificate is not None:
        projected = volume.get("projected")
        if not isinstance(projected, Mapping) or set(volume) - {"name", "projected"}:
            return False
        sources = projected.get("sources")
        wanted = pod_certificate_sources(pod_certificate)
        return (
            isinstance(sources, list)
            and len(sources) == len(wanted)
            and all(
                isinstance(have, Mapping) and _covers(have, want)
                for have, want in zip(sources, wanted, strict=True)
            )
        )
    secret = volume.get("secret")
    if not isinstance(secret, Mapping) or set(volume) - {"name", "secret"}:
        return False
    return (
        secret.get("secretName") == identity.secret_name
        and not secret.get("items")
        and secret.get("optional") in (None, False)
    )


def _covers(have: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    """`have` holds everything `want` does (and may hold what the API server defaults)."""
    for key, value in want.items():
        if isinstance(value, Mapping):
            inner = have.get(key)
            if not isinstance(inner, Mapping) or not _covers(inner, value):
                return False
        elif have.get(key) != value:
            return False
    return True


def _under_identity_path(path: Any) -> bool:
    normalized = pods.normalize_path(str(path))
    return normalized == pods.IDENTITY_PATH or normalized.startswith(pods.IDENTITY_PATH + "/")


MAX_LABEL_VALUE = 63


def _label_ops(pod: Mapping[str, Any], service_account: str) -> list[JSONPatchOp]:
    if len(service_account) > MAX_LABEL_VALUE:
        raise InjectionConflict(
            f"ServiceAccount name {service_account!r} is longer than {MAX_LABEL_VALUE} "
            f"characters and cannot be the value of the label {IDENTITY_LABEL}"
        )
    labels = pods.metadata(pod).get("labels")
    if not isinstance(labels, Mapping):
        return [
            {"op": "add", "path": "/metadata/labels", "value": {IDENTITY_LABEL: service_account}}
        ]
    current = labels.get(IDENTITY_LABEL)
    if current is None:
        path = f"/metadata/labels/{escape(IDENTITY_LABEL)}"
        return [{"op": "add", "path": path, "value": service_account}]
    if current != service_account:
        raise InjectionConflict(
            f"label {IDENTITY_LABEL}={current!r} is already set, but the pod runs as "
            f"ServiceAccount {service_account!r}; only the injector sets this label"
        )
    return []


def _volume_ops(
    pod: Mapping[str, Any], identity: IdentityRef, pod_certificate: PodCertificateMount | None
) -> list[JSONPatchOp]:
    volume = identity_volume(identity, pod_certificate)
    volumes = pods.spec(pod).get("volumes")
    if not isinstance(volumes, list):
        return [{"op": "add", "path": "/spec/volumes", "value": [volume]}]
    existing = pods.identity_volume(pod)
    if existing is None:
        return [{"op": "add", "path": "/spec/volumes/-", "value": volume}]
    if not _is_our_volume(existing, identity, pod_certificate):
        what = (
            f"the pod certificate of signer {SIGNER_NAME}"
            if pod_certificate is not None
            else f"the identity Secret {identity.secret_name!r}"
        )
        raise InjectionConflict(
            f"volume {IDENTITY_VOLUME!r} already exists and is not {what}; rename the volume"
        )
    return []


def _mount_ops(where: str, label: str, container: Mapping[str, Any]) -> list[JSONPatchOp]:
    mounts = container.get("volumeMounts")
    if not isinstance(mounts, list):
        return [{"op": "add", "path": f"{where}/volumeMounts", "value": [identity_mount()]}]
    ours = False
    for mount in mounts:
        mount = mount if isinstance(mount, Mapping) else {}
        if not _under_identity_path(mount.get("mountPath", "")):
            continue
        if pods.mounts_identity({"volumeMounts": [mount]}) and set(mount) <= {
            "name",
            "mountPath",
            "readOnly",
            "mountPropagation",
            "recursiveReadOnly",
        }:
            ours = True
            continue
        raise InjectionConflict(
            f"{label} already mounts volume {mount.get('name')!r} at "
            f"{mount.get('mountPath')!r}, where the identity goes ({IDENTITY_MOUNT_PATH})"
        )
    if ours:
        return []
    return [{"op": "add", "path": f"{where}/volumeMounts/-", "value": identity_mount()}]


def _env_ops(
    where: str, label: str, container: Mapping[str, Any], wanted: list[dict[str, str]]
) -> list[JSONPatchOp]:
    env = container.get("env")
    if not isinstance(env, list):
        return [{"op": "add", "path": f"{where}/env", "value": wanted}]
    present: set[str] = set()
    by_name = {item["name"]: item for item in wanted}
    for item in env:
        item = item if isinstance(item, Mapping) else {}
        name = str(item.get("name", ""))
        if not name.startswith(ENV_PREFIX):
            continue
        if name in by_name and dict(item) == by_name[name]:
            present.add(name)
            continue
        shown = item.get("value") if "value" in item else "valueFrom"
        raise InjectionConflict(
            f"{label} sets {name}={shown!r} itself; {ENV_PREFIX}* variables are set by the injector"
        )
    return [
        {"op": "add", "path": f"{where}/env/-", "value": item}
        for item in wanted
        if item["name"] not in present
    ]


def injection_patch(
    pod: Mapping[str, Any],
    resolution: PodResolution | None,
    identity: IdentityRef,
    pod_certificate: PodCertificateMount | None = None,
) -> list[JSONPatchOp]:
    """The JSON-patch operations that inject `identity` into `pod` (from its Secret, or with
    `pod_certificate` from the kubelet's pod certificate); [] when the pod is opted out, not
    under any policy, needs no identity, or already has everything. Raises InjectionConflict
    naming what stands in the way."""
    if resolution is None or not resolution.needs_identity():
        return []
    if pods.opted_out(pod) or pods.is_mirror(pod):
        return []
    ops = _label_ops(pod, pods.service_account(pod))
    ops += _volume_ops(pod, identity, pod_certificate)
    wanted = identity_env(resolution, identity)
    for list_name, index, container in pods.containers(pod):
        where = f"/spec/{list_name}/{index}"
        label = pods.container_label(list_name, container)
        ops += _mount_ops(where, label, container)
        ops += _env_ops(where, label, container, wanted)
    return ops
