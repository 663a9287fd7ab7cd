"""Whether the API server serves Pod Certificates, found by discovery (never by version
number): the served version of certificates.k8s.io that has podcertificaterequests (v1 first,
as upstream moves the API there), and the one that has clustertrustbundles."""

from __future__ import annotations

from dataclasses import dataclass

from meshless.kube import ApiError, Kube, Resource
from meshless.podcert.request import GROUP, PLURAL

TRUST_BUNDLES_PLURAL = "clustertrustbundles"


@dataclass(frozen=True)
class PodCertificateAPI:
    requests: Resource | None  # podcertificaterequests, in the version served
    trust_bundles: Resource | None  # clustertrustbundles (cluster-scoped)

    @property
    def served(self) -> bool:
        return self.requests is not None


async def discover(kube: Kube) -> PodCertificateAPI:
    try:
        group = await kube.request("GET", f"/apis/{GROUP}")
    except ApiError as exc:
        if exc.status == 404:
            return PodCertificateAPI(None, None)
        raise
    versions = [str(v["version"]) for v in group.get("versions") or ()]
    versions.sort(key=lambda v: v != "v1")  # v1 first, then the server's order
    requests: Resource | None = None
    bundles: Resource | None = None
    for version in versions:
        listing = await kube.request("GET", f"/apis/{GROUP}/{version}")
        names = {r.get("name") for r in listing.get("resources") or ()}
        if requests is None and PLURAL in names:
            requests = Resource(GROUP, version, PLURAL)
        if bundles is None and TRUST_BUNDLES_PLURAL in names:
            bundles = Resource(GROUP, version, TRUST_BUNDLES_PLURAL, namespaced=False)
    return PodCertificateAPI(requests, bundles)
