"""PodCertificateRequests as a kubelet makes them: a fresh key of the kubelet's key type, a
stub PKCS#10 request signed by it (1.36; empty unless DNS names are asked for), or 1.35's
pkixPublicKey plus proofOfPossession (the key's signature over the ASCII pod UID)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from meshless.podcert.request import SIGNER_NAME

KubeletKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
API_VERSION = "certificates.k8s.io/v1beta1"


def kubelet_key(key_type: str) -> KubeletKey:
    """A key as the kubelet makes one for a podCertificate keyType."""
    if key_type == "ED25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type.startswith("ECDSAP"):
        curve = {"256": ec.SECP256R1(), "384": ec.SECP384R1(), "521": ec.SECP521R1()}
        return ec.generate_private_key(curve[key_type.removeprefix("ECDSAP")])
    if key_type.startswith("RSA"):
        return rsa.generate_private_key(65537, int(key_type.removeprefix("RSA")))
    raise ValueError(key_type)


def stub_request(key: KubeletKey, dns_names: tuple[str, ...] = ()) -> bytes:
    """DER PKCS#10, empty subject (the kubelet's), signed by `key`."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if dns_names:
        san = x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names])
        builder = builder.add_extension(san, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def proof_of_possession(key: KubeletKey, pod_uid: str) -> bytes:
    data = pod_uid.encode()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    digest = hashlib.sha256(data).digest()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    return key.sign(digest, pss, Prehashed(hashes.SHA256()))


def spki(key: KubeletKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def pcr_body(
    *,
    namespace: str,
    pod: str,
    pod_uid: str,
    service_account: str = "default",
    service_account_uid: str = "sa-uid",
    node: str = "node-1",
    node_uid: str = "node-uid",
    key: KubeletKey,
    signer: str = SIGNER_NAME,
    max_expiration_seconds: int | None = 86400,
    legacy: bool = False,
    dns_names: tuple[str, ...] = (),
    name: str | None = None,
    user_annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A PodCertificateRequest body; `legacy`: 1.35's pkixPublicKey + proofOfPossession."""
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    spec: dict[str, Any] = {
        "signerName": signer,
        "podName": pod,
        "podUID": pod_uid,
        "serviceAccountName": service_account,
        "serviceAccountUID": service_account_uid,
        "nodeName": node,
        "nodeUID": node_uid,
    }
    if max_expiration_seconds is not None:
        spec["maxExpirationSeconds"] = max_expiration_seconds
    if legacy:
        spec["pkixPublicKey"] = b64(spki(key))
        spec["proofOfPossession"] = b64(proof_of_possession(key, pod_uid))
    else:
        spec["stubPKCS10Request"] = b64(stub_request(key, dns_names))
    if user_annotations:
        spec["unverifiedUserAnnotations"] = user_annotations
    meta: dict[str, Any] = {"namespace": namespace}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = f"{pod}-"
    return {
        "apiVersion": API_VERSION,
        "kind": "PodCertificateRequest",
        "metadata": meta,
        "spec": spec,
    }
