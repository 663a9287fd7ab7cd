"""What meshless reads from a raw Pod body (pure): admission, and `pod_info`, the one builder
of the slim PodInfo that admission and the policy controller both resolve policies for.

Admission sees pods before they are stored: on CREATE the name may still be empty
(generateName) and the namespace comes from the request, so `pod_info` takes the namespace as
an argument there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from meshless.api import IDENTITY_MOUNT_PATH, IDENTITY_VOLUME, INJECT_ANNOTATION
from meshless.delivery import is_pod_certificate_source
from meshless.policy.model import PodInfo

Json = Mapping[str, Any]

DEFAULT_SERVICE_ACCOUNT = "default"
CONTAINER_LISTS = ("initContainers", "containers")
# Every list of containers a pod spec holds; ephemeral containers are added through the
# pods/ephemeralcontainers subresource and may read Secrets through env and envFrom too.
ALL_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")


def _mapping(value: Any) -> Json:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def metadata(pod: Json) -> Json:
    return _mapping(pod.get("metadata"))


def spec(pod: Json) -> Json:
    return _mapping(pod.get("spec"))


def labels_of(pod: Json) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(metadata(pod).get("labels")).items()}


def annotations_of(pod: Json) -> dict[str, str]:
    return {str(k): str(v) for k, v in _mapping(metadata(pod).get("annotations")).items()}


def service_account(pod: Json) -> str:
    """spec.serviceAccountName (or the deprecated spec.serviceAccount), else "default"."""
    s = spec(pod)
    return str(s.get("serviceAccountName") or s.get("serviceAccount") or DEFAULT_SERVICE_ACCOUNT)


def opted_out(pod: Json) -> bool:
    """The annotation meshless.dev/inject: "false" (case-insensitive) opts out of injection."""
    return annotations_of(pod).get(INJECT_ANNOTATION, "").strip().lower() == "false"


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


def is_mirror(pod: Json) -> bool:
    """A static pod's reflection in the API: the kubelet runs it from a file, so admission
    cannot change what runs, and the node may not reference Secrets in it."""
    return MIRROR_ANNOTATION in annotations_of(pod)


def display_name(pod: Json, namespace: str) -> str:
    """ns/name, or ns/<generateName>* for a pod whose name the API server has yet to pick."""
    meta = metadata(pod)
    name = meta.get("name") or (f"{meta['generateName']}*" if meta.get("generateName") else "")
    return f"{namespace}/{name or '<unnamed>'}"


def containers(pod: Json) -> Iterator[tuple[str, int, Json]]:
    """(list name, index, container) for init containers, then containers."""
    s = spec(pod)
    for list_name in CONTAINER_LISTS:
        for index, container in enumerate(_list(s.get(list_name))):
            yield list_name, index, _mapping(container)


def container_label(list_name: str, container: Json) -> str:
    kind = "init container" if list_name == "initContainers" else "container"
    return f"{kind} {container.get('name') or '<unnamed>'!r}"


def tcp_ports(pod: Json) -> frozenset[int]:
    ports: set[int] = set()
    for _, _, container in containers(pod):
        for port in _list(container.get("ports")):
            port = _mapping(port)
            if str(port.get("protocol") or "TCP").upper() != "TCP":
                continue
            number = port.get("containerPort")
            if isinstance(number, int) and not isinstance(number, bool):
                ports.add(number)
    return frozenset(ports)


def normalize_path(path: str) -> str:
    return "/" + "/".join(part for part in str(path).split("/") if part)


IDENTITY_PATH = normalize_path(IDENTITY_MOUNT_PATH)


def identity_volume(pod: Json) -> Json | None:
    for volume in _list(spec(pod).get("volumes")):
        volume = _mapping(volume)
        if volume.get("name") == IDENTITY_VOLUME:
            return volume
    return None


def mounts_identity(container: Json) -> bool:
    """The container mounts our volume read-only at our path."""
    return any(
        _mapping(m).get("name") == IDENTITY_VOLUME
        and normalize_path(str(_mapping(m).get("mountPath", ""))) == IDENTITY_PATH
        and _mapping(m).get("readOnly") is True
        and not _mapping(m).get("subPath")
        and not _mapping(m).get("subPathExpr")
        for m in _list(container.get("volumeMounts"))
    )


def pod_certificate_volume(volume: Json) -> bool:
    """A projected volume whose first source is our signer's podCertificate: the kubelet
    requests the certificate for this very pod, so it can carry no other pod's identity."""
    sources = _list(_mapping(volume.get("projected")).get("sources"))
    return bool(sources) and is_pod_certificate_source(sources[0])


def mounts_pod_certificate(pod: Json) -> bool:
    """The identity volume is a podCertificate projection (PodCertificate delivery)."""
    volume = identity_volume(pod)
    return volume is not None and pod_certificate_volume(volume)


def identity_mounted(pod: Json, secret_name: str | None = None) -> bool:
    """The pod mounts the identity volume (a Secret volume, `secret_name` when given, or a
    podCertificate projection of our signer) read-only at the identity path in every
    container and init container."""
    volume = identity_volume(pod)
    if volume is None:
        return False
    if not pod_certificate_volume(volume):
        secret = _mapping(volume.get("secret"))
        if not secret.get("secretName"):
            return False
        if secret_name is not None and secret.get("secretName") != secret_name:
            return False
    all_containers = [c for _, _, c in containers(pod)]
    return bool(all_containers) and all(mounts_identity(c) for c in all_containers)


def pod_info(pod: Json, namespace: str | None = None) -> PodInfo:
    """The slim copy of a Pod: what resolution, rendering and status need, nothing more (it
    runs for every pod event in the cluster, so it reads only what it returns). `namespace`:
    the request's, for a pod under admission (else the pod's own)."""
    meta = metadata(pod)
    status = _mapping(pod.get("status"))
    return PodInfo(
        namespace=str(meta.get("namespace") or "") if namespace is None else namespace,
        name=str(meta.get("name") or meta.get("generateName") or ""),
        labels=labels_of(pod),
        service_account=service_account(pod),
        ports=tcp_ports(pod),
        identity_mounted=identity_mounted(pod),
        uid=str(meta.get("uid") or ""),
        ip=str(status.get("podIP") or ""),
        running=status.get("phase") == "Running" and _ready(_list(status.get("conditions"))),
        deleting=bool(meta.get("deletionTimestamp")),
        pod_certificate=mounts_pod_certificate(pod),
        node=str(spec(pod).get("nodeName") or ""),
        created=str(meta.get("creationTimestamp") or ""),
    )


def _ready(conditions: list[Any]) -> bool:
    return any(
        _mapping(c).get("type") == "Ready" and _mapping(c).get("status") == "True"
        for c in conditions
    )


# --- which Secrets a pod uses ---------------------------------------------------------------
@dataclass(frozen=True)
class SecretReference:
    """One place where a pod uses a Secret: a `secret` volume, a `projected` volume's
    `secret` source, an `env[].valueFrom.secretKeyRef` or an `envFrom[].secretRef`."""

    secret: str
    where: str  # e.g. "volume 'certs'", "env 'KEY' of container 'app'"
    optional: bool = False
    items: bool = False  # the reference selects keys (volume items) instead of all of them


def _container_kind(list_name: str) -> str:
    return {
        "initContainers": "init container",
        "ephemeralContainers": "ephemeral container",
    }.get(list_name, "container")


def secret_references(pod: Json) -> list[SecretReference]:
    """Every reference of the pod to a Secret, in every volume and every container (init,
    regular and ephemeral). References without a Secret name are left out (the API server
    refuses them)."""
    found: list[SecretReference] = []
    for volume in _list(spec(pod).get("volumes")):
        volume = _mapping(volume)
        label = f"volume {volume.get('name') or '<unnamed>'!r}"
        secret = _mapping(volume.get("secret"))
        if secret.get("secretName"):
            found.append(
                SecretReference(
                    str(secret["secretName"]),
                    label,
                    optional=secret.get("optional") is True,
                    items=bool(_list(secret.get("items"))),
                )
            )
        sources = _list(_mapping(volume.get("projected")).get("sources"))
        for index, source in enumerate(sources):
            projected = _mapping(_mapping(source).get("secret"))
            if projected.get("name"):
                found.append(
                    SecretReference(
                        str(projected["name"]),
                        f"projected {label} (source {index})",
                        optional=projected.get("optional") is True,
                        items=bool(_list(projected.get("items"))),
                    )
                )
    s = spec(pod)
    for list_name in ALL_CONTAINER_LISTS:
        for container in _list(s.get(list_name)):
            container = _mapping(container)
            owner = f"{_container_kind(list_name)} {container.get('name') or '<unnamed>'!r}"
            for env in _list(container.get("env")):
                env = _mapping(env)
                ref = _mapping(_mapping(env.get("valueFrom")).get("secretKeyRef"))
                if ref.get("name"):
                    found.append(
                        SecretReference(
                            str(ref["name"]),
                            f"env {env.get('name') or '<unnamed>'!r} of {owner}",
                            optional=ref.get("optional") is True,
                        )
                    )
            for index, source in enumerate(_list(container.get("envFrom"))):
                ref = _mapping(_mapping(source).get("secretRef"))
                if ref.get("name"):
                    found.append(
                        SecretReference(
                            str(ref["name"]),
                            f"envFrom (entry {index}) of {owner}",
                            optional=ref.get("optional") is True,
                        )
                    )
    return found
