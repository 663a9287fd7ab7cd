"""What the API server serves in certificates.k8s.io (shell): PodCertificateRequests and
ClusterTrustBundles, found by discovery (not by version number), one call per served version
of the group. meshless.delivery decides from the answer."""

from __future__ import annotations

import logging

from meshless.delivery import CERTIFICATES_GROUP, ServedApis, served_apis
from meshless.kube import ApiError, Kube

log = logging.getLogger(__name__)


async def served_certificate_apis(kube: Kube) -> ServedApis:
    """ServedApis() (nothing) when the group itself is not served."""
    try:
        group = await kube.request("GET", f"/apis/{CERTIFICATES_GROUP}")
    except ApiError as exc:
        if exc.status == 404:
            return ServedApis()
        raise
    resources: dict[str, list[str]] = {}
    for version in group.get("versions") or []:
        group_version = str(version.get("groupVersion") or "")
        if not group_version:
            continue
        try:
            listed = await kube.request("GET", f"/apis/{group_version}")
        except ApiError as exc:
            if exc.status == 404:  # removed between the two calls
                continue
            raise
        resources[group_version] = [str(r.get("name")) for r in listed.get("resources") or []]
    found = served_apis(resources)
    log.info(
        "certificates.k8s.io: PodCertificateRequests %s, ClusterTrustBundles %s",
        found.pod_certificate_requests or "not served",
        found.cluster_trust_bundles or "not served",
    )
    return found
