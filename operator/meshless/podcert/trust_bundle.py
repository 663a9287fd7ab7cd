"""The ClusterTrustBundle for our signer (shell): `meshless.dev:spiffe:primary`, spec.signerName
`meshless.dev/spiffe`, holding the CA's trusted roots: both during a root rotation, the old
one gone at Finish (it is the CA store's bundle, the same the per-namespace ConfigMaps get).
A pod mounts it with a `clusterTrustBundle` projection by signer name. Written with
server-side apply (our field manager, forced) whenever the bundle changes, and again at every
resync, so an edit by anyone else does not last. Writing one for a signer needs the verb
`attest` on `signers` named for it (the chart's ClusterRole grants it)."""

from __future__ import annotations

import logging

from meshless.budget import WriteBudget
from meshless.kube import Json, Kube, Resource
from meshless.podcert.request import SIGNER_NAME

log = logging.getLogger(__name__)

TRUST_BUNDLE_NAME = SIGNER_NAME.replace("/", ":") + ":primary"


def trust_bundle_object(resource: Resource, bundle: bytes) -> Json:
    return {
        "apiVersion": resource.api_version,
        "kind": "ClusterTrustBundle",
        "metadata": {
            "name": TRUST_BUNDLE_NAME,
            "labels": {"app.kubernetes.io/managed-by": "meshless"},
        },
        "spec": {"signerName": SIGNER_NAME, "trustBundle": bundle.decode()},
    }


class ClusterTrustBundlePublisher:
    def __init__(self, kube: Kube, resource: Resource, budget: WriteBudget) -> None:
        self.kube = kube
        self.resource = resource
        self.budget = budget
        self.written: bytes | None = None

    async def publish(self, bundle: bytes | None, *, force: bool = False) -> bool:
        """Apply `bundle` unless it is what we last wrote (`force`: apply anyway, a resync).
        True when written."""
        if bundle is None or (bundle == self.written and not force):
            return False
        await self.budget.acquire()
        await self.kube.apply(self.resource, trust_bundle_object(self.resource, bundle))
        if bundle != self.written:
            log.info("ClusterTrustBundle %s holds the CA's roots now", TRUST_BUNDLE_NAME)
        self.written = bundle
        return True
