"""How a pod gets its identity (pure): a Secret the operator issues, or a pod certificate the
kubelet requests from the signer `meshless.dev/spiffe` (KEP-4317, PodCertificateRequests).

- `default_delivery`: the operator setting `--identity-delivery` (auto | Secret |
  PodCertificate) and what the API server serves (found by discovery) -> the delivery of
  policies that do not say.
- `delivery_for`: a policy's own `spec.identity.delivery`, else that default. A policy whose
  key algorithm the kubelet cannot make (RSA2048) and that does not ask for PodCertificate
  itself gets Secret (the CRD refuses RSA2048 together with an explicit PodCertificate).
- `pod_certificate_volume`: the projected volume the injector mounts for PodCertificate: the
  kubelet's key and chain as tls.key and tls.crt, the trust bundle as ca.crt (a
  ClusterTrustBundle projection by signer name where the API serves ClusterTrustBundles, else
  the ConfigMap). The files are those of the Secret delivery, at the same path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meshless.api import TRUST_BUNDLE_KEY, TRUST_BUNDLE_NAME
from meshless.pki.keys import KeyAlgorithm
from meshless.podcert.decide import SUPPORTED_KEY_TYPES, kubelet_key_type
from meshless.podcert.request import GROUP, PLURAL, SIGNER_NAME
from meshless.policy.model import IdentityDefaults

POD_CERTIFICATE_REQUESTS = PLURAL
KEY_PATH = "tls.key"
CHAIN_PATH = "tls.crt"


class Delivery(StrEnum):
    """spec.identity.delivery of an MtlsPolicy."""

    SECRET = "Secret"
    POD_CERTIFICATE = "PodCertificate"


class DeliverySetting(StrEnum):
    """The operator setting --identity-delivery: the delivery of policies that do not say."""

    AUTO = "auto"
    SECRET = "Secret"
    POD_CERTIFICATE = "PodCertificate"


@dataclass(frozen=True)
class ServedApis:
    """What discovery found in certificates.k8s.io (meshless.podcert.discovery): the group
    version serving each resource, "" when it is not served."""

    pod_certificate_requests: str = ""
    cluster_trust_bundles: str = ""

    @property
    def pod_certificates(self) -> bool:
        return bool(self.pod_certificate_requests)

    @property
    def trust_bundles(self) -> bool:
        return bool(self.cluster_trust_bundles)


def default_delivery(setting: DeliverySetting, apis: ServedApis) -> Delivery:
    """`auto`: PodCertificate where the API server serves PodCertificateRequests, Secret
    elsewhere. A forced PodCertificate stays PodCertificate (the policy then reports that the
    API is missing)."""
    if setting is DeliverySetting.AUTO:
        return Delivery.POD_CERTIFICATE if apis.pod_certificates else Delivery.SECRET
    return Delivery(setting.value)


def delivery_for(explicit: str | None, algorithm: str | None, default: Delivery) -> Delivery:
    """A policy's delivery: its own spec.identity.delivery, else `default`, except that a
    policy asking for RSA2048 (which the kubelet cannot make) without asking for
    PodCertificate itself keeps Secret."""
    if explicit:
        return Delivery(explicit)
    if (
        default is Delivery.POD_CERTIFICATE
        and algorithm is not None
        and kubelet_key_type(KeyAlgorithm(algorithm)) is None
    ):
        return Delivery.SECRET
    return default


DEFAULT_KEY_TYPE = "ECDSAP256"


def pod_key_type(algorithm: str | None) -> str:
    """The kubelet's keyType for a policy's algorithm (ECDSAP256 when it names none; the
    mapping is the signer's, podcert.decide). Raises ValueError for RSA2048, which the
    kubelet cannot make, naming the fields."""
    if algorithm is None:
        return DEFAULT_KEY_TYPE
    key_type = kubelet_key_type(KeyAlgorithm(algorithm))
    if key_type is None:
        raise ValueError(
            f"spec.identity.privateKey.algorithm {algorithm} cannot be used with "
            f"spec.identity.delivery {Delivery.POD_CERTIFICATE.value}: the kubelet makes "
            f"{', '.join(SUPPORTED_KEY_TYPES)} keys"
        )
    return key_type


@dataclass(frozen=True)
class PodCertificateMount:
    """What the podCertificate volume holds: the key type, and where ca.crt comes from."""

    key_type: str = DEFAULT_KEY_TYPE
    cluster_trust_bundle: bool = False  # else the ConfigMap meshless-trust-bundle


def pod_certificate_sources(mount: PodCertificateMount) -> list[dict[str, Any]]:
    """The projected volume's sources: the pod certificate, then the trust bundle."""
    bundle: dict[str, Any]
    if mount.cluster_trust_bundle:
        bundle = {
            "clusterTrustBundle": {
                "signerName": SIGNER_NAME,
                "labelSelector": {},  # every bundle of the signer (unset would match none)
                "path": TRUST_BUNDLE_KEY,
            }
        }
    else:
        bundle = {
            "configMap": {
                "name": TRUST_BUNDLE_NAME,
                "items": [{"key": TRUST_BUNDLE_KEY, "path": TRUST_BUNDLE_KEY}],
            }
        }
    return [
        {
            "podCertificate": {
                "signerName": SIGNER_NAME,
                "keyType": mount.key_type,
                "keyPath": KEY_PATH,
                "certificateChainPath": CHAIN_PATH,
            }
        },
        bundle,
    ]


def is_pod_certificate_source(source: Any) -> bool:
    """A projected source that is our signer's pod certificate."""
    if not isinstance(source, Mapping):
        return False
    pod_certificate = source.get("podCertificate")
    return isinstance(pod_certificate, Mapping) and pod_certificate.get("signerName") == SIGNER_NAME


class DeliveryUnavailable(ValueError):
    """PodCertificate delivery is asked of an API server that does not serve
    PodCertificateRequests; the message names the missing API and the way out."""


def missing_api_message(policy: str) -> str:
    return (
        f"MtlsPolicy {policy} asks for spec.identity.delivery {Delivery.POD_CERTIFICATE.value}, "
        f"but the API server does not serve {PLURAL}.{GROUP} "
        "(Kubernetes 1.35+ with the PodCertificateRequest feature gate and runtime-config); "
        f"set spec.identity.delivery: {Delivery.SECRET.value} or turn the API on"
    )


def pod_certificate_mount(
    identity: IdentityDefaults, default: Delivery, apis: ServedApis, policy: str
) -> PodCertificateMount | None:
    """The podCertificate volume for a pod governed by a policy with `identity` defaults, or
    None for Secret delivery. Raises DeliveryUnavailable when the policy's delivery is
    PodCertificate and the API server serves no PodCertificateRequests."""
    if delivery_for(identity.delivery, identity.algorithm, default) is not Delivery.POD_CERTIFICATE:
        return None
    if not apis.pod_certificates:
        raise DeliveryUnavailable(missing_api_message(policy))
    return PodCertificateMount(
        key_type=pod_key_type(identity.algorithm),
        cluster_trust_bundle=apis.trust_bundles,
    )
