"""The pod-certificate parts of the operator, behind one small hook in operator.py: enabled
when discovery finds the API (podcertificaterequests served), the signer watches on every
replica and answers on the leader; the ClusterTrustBundle follows the CA where that kind is
served."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from meshless.budget import WriteBudget
from meshless.ca_store import CAStore
from meshless.kube import Kube
from meshless.pki.rotation import Phase, Progress, RotationState, count_progress
from meshless.podcert.decide import PodView, SignerSettings
from meshless.podcert.discovery import PodCertificateAPI, discover
from meshless.podcert.signer import PodCertificateSigner, PodLookup
from meshless.podcert.trust_bundle import ClusterTrustBundlePublisher
from meshless.settings import Settings
from meshless.status import EventRecorder

log = logging.getLogger(__name__)


def signer_settings(settings: Settings) -> SignerSettings:
    refresh = settings.pod_certificate_refresh_after
    return SignerSettings(
        trust_domain=settings.trust_domain,
        max_ttl=settings.pod_certificate_max_ttl,
        jitter=settings.jitter,
        refresh_after=refresh if refresh.total_seconds() > 0 else None,
        names=settings.dns_name_policy,
    )


class PodCertificates:
    def __init__(
        self,
        api: PodCertificateAPI,
        kube: Kube,
        settings: Settings,
        ca: CAStore,
        budget: WriteBudget,
        events: EventRecorder,
        clock: Callable[[], datetime],
        cached_pod: PodLookup,
    ) -> None:
        self.api = api
        self.ca = ca
        self.signer: PodCertificateSigner | None = None
        self.bundle: ClusterTrustBundlePublisher | None = None
        if api.requests is not None:
            self.signer = PodCertificateSigner(
                kube,
                api.requests,
                signer_settings(settings),
                ca,
                budget,
                events,
                clock,
                cached_pod=cached_pod,
                refresh_by=lambda: refresh_by_during_rotation(ca, clock),
                workers=settings.workers,
                namespaces=settings.watch_namespaces or (None,),
            )
        if api.trust_bundles is not None:
            self.bundle = ClusterTrustBundlePublisher(kube, api.trust_bundles, budget)

    @classmethod
    async def discover(
        cls,
        kube: Kube,
        settings: Settings,
        ca: CAStore,
        budget: WriteBudget,
        events: EventRecorder,
        clock: Callable[[], datetime],
        cached_pod: PodLookup,
    ) -> PodCertificates | None:
        """None when the API server serves neither PodCertificateRequests nor
        ClusterTrustBundles (or discovery fails: logged, and pods keep Secrets)."""
        try:
            api = await discover(kube)
        except Exception:
            log.exception("discovering the Pod Certificates API failed; no pod certificates")
            return None
        if api.requests is None and api.trust_bundles is None:
            log.info("the API server serves no PodCertificateRequests: signer off")
            return None
        log.info(
            "Pod Certificates: podcertificaterequests %s, clustertrustbundles %s",
            api.requests.version if api.requests else "not served",
            api.trust_bundles.version if api.trust_bundles else "not served",
        )
        return cls(api, kube, settings, ca, budget, events, clock, cached_pod)

    def watch_tasks(self) -> list[asyncio.Task[None]]:
        watches = self.signer.watches if self.signer is not None else []
        return [asyncio.create_task(w.run()) for w in watches]

    async def lead(self) -> None:
        if self.signer is not None:
            self.signer.start()
        await self.ca_changed(force=True)

    async def stop_leading(self) -> None:
        if self.signer is not None:
            await self.signer.stop()

    def rotation_progress(self, state: RotationState, now: datetime) -> Progress:
        """What a root rotation waits for here: the ClusterTrustBundle as one more bundle
        (Prepare ends once it carries the new root), and every pod's current certificate as
        a leaf (Finish waits until none chains to a leaving root)."""
        progress = Progress()
        if self.bundle is not None:
            progress += count_progress([self.bundle.written], [], state, [], now)
        if self.signer is not None:
            progress += self.signer.rotation_progress(state, now)
        return progress

    async def ca_changed(self, *, force: bool = False) -> None:
        """The leader keeps the ClusterTrustBundle equal to the CA's bundle."""
        if self.bundle is None:
            return
        try:
            await self.bundle.publish(self.ca.bundle, force=force)
        except Exception:
            log.exception("writing the ClusterTrustBundle failed; the next CA poll retries")
            self.bundle.written = None


def refresh_by_during_rotation(ca: CAStore, clock: Callable[[], datetime]) -> datetime | None:
    """During a root rotation's Prepare the issuer still chains to the old root, and
    beginRefreshAt cannot change once written: what is signed then asks to be refreshed as
    early as the API allows (10 minutes after notBefore), so the kubelet replaces it under the
    new root soon after Switch and Finish does not wait a whole lifetime for it."""
    return clock() if ca.rotation.phase is Phase.PREPARE else None


def pod_from_cache(pods: dict[tuple[str, str], object]) -> PodLookup:
    """A lookup in the policy controller's pod cache (PodInfo: uid and ServiceAccount)."""

    def lookup(namespace: str, name: str) -> PodView | None:
        info = pods.get((namespace, name))
        if info is None:
            return None
        return PodView(
            namespace=namespace,
            name=name,
            uid=str(getattr(info, "uid", "")),
            service_account=str(getattr(info, "service_account", "")),
        )

    return lookup
