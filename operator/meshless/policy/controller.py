"""The MtlsPolicy controller (shell): policies, pods, namespaces, NetworkPolicies and
identities into stores (policy/held.py); per-namespace reconciles and per-policy status out.

Watch events only update the stores and queue work. A namespace reconcile resolves every pod
of the namespace (pure resolver), makes one plan (policy/plan.py) and writes only what
differs: the NetworkPolicies rendered from the per-pod answers, and the provisioned
WorkloadIdentities. A policy reconcile writes the policy's status from what the namespace
reconciles decided, with how its pods get their identity (status.delivery) and, for pod
certificates, what keeps them away (an API server without them, pods whose kubelet asked
for none within a minute: the one API read a policy reconcile makes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp

from meshless import api, metrics
from meshless.admission.configurations import admission_namespaces, identity_namespaces
from meshless.api import Kind, exempt_namespaces
from meshless.conditions import ConditionChange
from meshless.delivery import (
    POD_CERTIFICATE_REQUESTS,
    Delivery,
    DeliverySetting,
    PodCertificateMount,
    ServedApis,
    default_delivery,
    delivery_for,
    missing_api_message,
    pod_certificate_mount,
)
from meshless.identity.spec import IdentityRef
from meshless.kube import (
    IDENTITIES,
    NAMESPACES,
    NETWORK_POLICIES,
    PODS,
    POLICIES,
    ApiError,
    Json,
    Kube,
)
from meshless.podcert.request import SIGNER_NAME
from meshless.policy import plan
from meshless.policy.audit import AdmissionAudit
from meshless.policy.feeds import LABELS, PolicyFeeds
from meshless.policy.held import (
    LabelsWork,
    NamespaceWork,
    PolicyStores,
    PolicyWork,
    Work,
    slim_network_policy,
)
from meshless.policy.model import PodInfo, PodResolution, PolicyRef
from meshless.policy.pod_certificates import pod_certificate_waits, unrequested_message
from meshless.policy.provision import IdentityRecord, identity_record
from meshless.policy.report import PolicyTally
from meshless.policy.resolve import PolicySet
from meshless.runtime.writes import OwnWrites
from meshless.settings import Settings
from meshless.status import EventRecorder, StatusWriter, involved_object
from meshless.workqueue import WorkQueue

log = logging.getLogger(__name__)

YIELD_EVERY_PODS = 200
POD_CERTIFICATE_RECHECK_S = 30.0
# The prober: told each namespace's ports after a reconcile, and gives each policy's
# status.enforcement and Enforced condition.
ResolvedHook = Callable[[str, list[tuple[PodInfo, PodResolution | None]]], None]
Enforcement = Callable[[PolicyRef], tuple[Json, ConditionChange]]
# The identity controller: keep the trust bundle ConfigMap in a namespace whose pods read
# ca.crt from it next to a pod certificate (no ClusterTrustBundles served).
BundleNeeded = Callable[[str], Awaitable[None]]
# Returns once the webhooks answer from what the stores hold now (AdmissionProcess.caught_up).
AdmissionCaughtUp = Callable[[], Awaitable[object]]


class PolicyController:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        clock: Callable[[], datetime],
        events: EventRecorder,
        writes: OwnWrites,
        *,
        on_resolved: ResolvedHook | None = None,
        enforcement: Enforcement | None = None,
        bundle_needed: BundleNeeded | None = None,
        admission_caught_up: AdmissionCaughtUp | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.events = events
        self.audit = AdmissionAudit()  # admission's records for status.admission
        self.on_resolved = on_resolved
        self.enforcement = enforcement
        self.bundle_needed = bundle_needed
        self.admission_caught_up = admission_caught_up
        self.apis = ServedApis()  # what discovery found (set by the operator at start)
        self.status = StatusWriter(kube, POLICIES, writes)
        self.queue: WorkQueue[Work] = WorkQueue(self.reconcile, workers=settings.runtime.workers)
        self.root_namespace = settings.effective_root_namespace
        self.stores = PolicyStores(self.root_namespace, settings.identity.trust_domain)
        self.feeds = PolicyFeeds(self.stores, self.queue, self.status, settings)
        # What feeds the stores (Kopf's handlers, our identity watch, the priming lists).
        self.on_policy_event = self.feeds.on_policy_event
        self.on_pod_event = self.feeds.on_pod_event
        self.on_namespace_event = self.feeds.on_namespace_event
        self.on_network_policy_event = self.feeds.on_network_policy_event
        self.on_identity_event = self.feeds.on_identity_event
        self.primed = False
        metrics.POLICY_PODS.labels("resolved").set_function(lambda: len(self.stores.resolutions))
        metrics.POLICY_PODS.labels("held").set_function(lambda: len(self.stores.pods))

    # --- startup ------------------------------------------------------------------------
    async def prime(self, on_identity: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        """Fill the stores from one list of each kind before the first reconcile: a
        reconcile that ran before the policies were known would delete what they made."""
        feeds = (
            (NAMESPACES, self.on_namespace_event),
            (POLICIES, self.on_policy_event),
            (IDENTITIES, self.on_identity_event),
            (NETWORK_POLICIES, self.on_network_policy_event),
            (PODS, self.on_pod_event),
        )
        for resource, feed in feeds:
            async for page in self.kube.pages(resource):  # a page at a time: 50k identities
                for body in page:
                    feed("ADDED", body, enqueue=False)
                    if resource is IDENTITIES and on_identity is not None:
                        on_identity(body)  # one list of identities serves both controllers
        self.primed = True
        self.enqueue_all()

    def enqueue_all(self) -> None:
        self.queue.add(LABELS)
        for namespace in self.feeds.known_namespaces():
            self.queue.add(NamespaceWork(namespace))
        for namespace, name in list(self.stores.policies):
            self.queue.add(PolicyWork(namespace, name))

    def request_status(self, ref: PolicyRef) -> None:
        """The policy's status may have changed (a probe result, an admission record)."""
        self.queue.add(PolicyWork(ref.namespace, ref.name))

    # --- delivery (meshless.delivery) ---------------------------------------------------
    @property
    def default_delivery(self) -> Delivery:
        return default_delivery(DeliverySetting(self.settings.identity.delivery), self.apis)

    def delivery_of(self, ref: PolicyRef) -> Delivery:
        identity = self.stores.identity_defaults(ref)
        return delivery_for(identity.delivery, identity.algorithm, self.default_delivery)

    def pod_certificate_for(self, resolution: PodResolution) -> PodCertificateMount | None:
        """The podCertificate volume for a pod so resolved, None for Secret delivery; raises
        DeliveryUnavailable when its policy wants pod certificates the API does not serve."""
        ref = resolution.governing
        identity = self.stores.identity_defaults(ref)
        return pod_certificate_mount(identity, self.default_delivery, self.apis, str(ref))

    # --- what admission asks ------------------------------------------------------------
    def policy_set(self) -> PolicySet:
        return self.stores.policy_set()

    def identities_with_secret(self, namespace: str, secret: str) -> list[IdentityRecord]:
        return self.stores.identities_with_secret(namespace, secret)

    def identities_of_account(self, namespace: str, service_account: str) -> list[IdentityRecord]:
        """The WorkloadIdentities of `namespace` that name this ServiceAccount."""
        return self.stores.identities_of(namespace, service_account)

    def identity_ref_for(self, namespace: str, service_account: str) -> IdentityRef:
        return self.stores.identity_ref_for(namespace, service_account)

    # --- reconcile ----------------------------------------------------------------------
    async def reconcile(self, work: Work) -> float | None:
        try:
            if isinstance(work, NamespaceWork):
                await self._reconcile_namespace(work.namespace)
            elif isinstance(work, LabelsWork):
                await self._reconcile_namespace_labels()
            else:
                await self._reconcile_policy(work.namespace, work.name)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in exc.message:
                log.debug("%s: namespace is terminating; not reconciled", work)
                return None
            raise
        except (aiohttp.ClientError, TimeoutError):
            raise
        return None

    def enforced(self, namespace: str) -> bool:
        """System namespaces and the operator's own are never enforced (admission does not
        intercept them either): a cluster-wide STRICT policy must not cut off CoreDNS."""
        return namespace not in exempt_namespaces(self.settings.runtime.namespace)

    async def _reconcile_namespace(self, namespace: str) -> None:
        stores = self.stores
        policies = self.policy_set()
        specs = stores.policy_specs()
        enforced = self.enforced(namespace)
        everyone: list[tuple[PodInfo, PodResolution | None]] = []
        for index, key in enumerate(sorted(stores.pods.indexed("namespace", namespace))):
            if index and index % YIELD_EVERY_PODS == 0:
                await asyncio.sleep(0)  # a big namespace must not hold up webhooks and watches
            pod = stores.pods[key]
            everyone.append((pod, policies.resolve(pod) if enforced else None))
        before = dict(stores.resolutions.indexed("namespace", namespace))
        info = stores.namespaces.get(namespace)
        decided = plan.plan_namespace(
            namespace,
            everyone,
            before,
            specs,
            list(stores.network_policies.indexed("namespace", namespace).values()),
            list(stores.identities.indexed("namespace", namespace).values()),
            stores.provisioned_in(namespace),
            stores.network_open.get(namespace) or (),
            write=not (info is not None and info.terminating) and self.feeds.watched(namespace),
            delivery_of=self.delivery_of,
        )
        for key in before:
            if key not in decided.resolutions:
                stores.resolutions.pop(key)
        for key, resolution in decided.resolutions.items():
            stores.resolutions.put(key, resolution)
        if self.on_resolved is not None:
            self.on_resolved(namespace, everyone)
        await self._write_namespace(namespace, decided)
        if decided.network_open:
            stores.network_open.put(namespace, decided.network_open)
        else:
            stores.network_open.pop(namespace)
        touched = decided.touched | {
            PolicyRef(*k) for k in stores.policies.indexed("namespace", namespace)
        }
        for ref in touched:
            if (ref.namespace, ref.name) in stores.policies:
                self.queue.add(PolicyWork(ref.namespace, ref.name))

    async def _write_namespace(self, namespace: str, decided: plan.NamespacePlan) -> None:
        stores = self.stores
        if decided.bundle_needed and self.bundle_needed is not None:
            await self.bundle_needed(namespace)  # their ca.crt comes from the ConfigMap
        for manifest in decided.apply_network_policies:
            name = manifest["metadata"]["name"]
            written = await self.kube.apply(NETWORK_POLICIES, manifest)
            stores.network_policies.put((namespace, name), slim_network_policy(written))
            log.info("%s/%s: NetworkPolicy written", namespace, name)
        for name, uid in decided.delete_network_policies:
            await self.kube.delete(NETWORK_POLICIES, namespace, name, uid=uid)
            stores.network_policies.pop((namespace, name))
            log.info("%s/%s: NetworkPolicy deleted (no pod needs it)", namespace, name)
        for manifest in decided.apply_identities:
            name = manifest["metadata"]["name"]
            written = await self.kube.apply(IDENTITIES, manifest)
            stores.provisioned.put((namespace, name), dict(written.get("spec") or {}))
            stores.identities.put((namespace, name), identity_record(written, self.settings))
            log.info("%s/%s: WorkloadIdentity provisioned", namespace, name)
        for name in decided.delete_identities:
            await self.kube.delete(IDENTITIES, namespace, name)
            stores.identities.pop((namespace, name))
            stores.provisioned.pop((namespace, name))
            log.info("%s/%s: provisioned WorkloadIdentity deleted (not needed)", namespace, name)

    async def _reconcile_namespace_labels(self) -> None:
        """`meshless.dev/mtls=enabled` on exactly the namespaces some policy may ask an
        identity in: the webhooks (failurePolicy Fail) select them, so with the operator down
        only pods there are refused. `meshless.dev/identities=true` on exactly the namespaces
        that hold a WorkloadIdentity: the binding webhook (failurePolicy Ignore) selects
        them."""
        namespaces = self.stores.namespaces
        operator_namespace = self.settings.runtime.namespace
        holding = (str(ns) for ns in self.stores.identities.index_values("namespace"))
        wanted = (
            (
                api.ADMISSION_NAMESPACE_LABEL,
                api.ADMISSION_NAMESPACE_VALUE,
                admission_namespaces(self.policy_set(), namespaces.keys(), operator_namespace),
            ),
            (
                api.IDENTITIES_NAMESPACE_LABEL,
                api.IDENTITIES_NAMESPACE_VALUE,
                identity_namespaces(holding, namespaces.keys(), operator_namespace),
            ),
        )
        candidates = (
            (name, info)
            for name, info in sorted(namespaces.items())
            if not info.terminating and self.feeds.watched(name)
        )
        changed = plan.label_changes(candidates, wanted)
        if changed and self.admission_caught_up is not None:
            await self.admission_caught_up()  # a label sends pods: answer them from this state
        for name, changes in changed:
            try:
                await self.kube.patch(NAMESPACES, None, name, {"metadata": {"labels": changes}})
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            for label, change in changes.items():
                log.info("namespace %s: %s %s", name, "labelled" if change else "unlabelled", label)

    async def _reconcile_policy(self, namespace: str, name: str) -> None:
        held = self.stores.policies.get((namespace, name))
        if held is None:
            return
        ref = PolicyRef(namespace, name)
        tally = plan.tally_policy(
            ref,
            held.spec,
            self.stores.policy_set(),
            self.stores.governed(ref),
            self.stores.resolutions_in(namespace),
            self.stores.identity_ref_for,
            self.stores.identities_of,
            self.stores.network_policies.values(),
            (entry for entries in self.stores.network_open.values() for entry in entries),
            self.delivery_of,
        )
        if held.spec is not None:
            await self._pod_certificate_tally(ref, tally)
        ns_info = self.stores.namespaces.get(namespace)
        stored = (held.body.get("status") or {}).get("admission")
        admission, included = self.audit.status_for(ref, stored)
        wanted, warnings = plan.policy_status(
            held,
            tally,
            self.root_namespace,
            namespace_terminating=ns_info is not None and ns_info.terminating,
            enforcement=self.enforcement(ref) if self.enforcement and held.spec else None,
            admission=admission,
            now=self.clock(),
        )
        patched = await self.status.patch(held.body, wanted)
        if included:
            self.audit.written(ref, included)
        if patched is None:
            return
        for change in warnings:
            self.events.post(
                involved_object(held.body, api.API_VERSION, Kind.MTLS_POLICY),
                "Warning",
                change.reason,
                change.message,
            )

    async def _pod_certificate_tally(self, ref: PolicyRef, tally: PolicyTally) -> None:
        """What keeps pod certificates from the policy's pods: an API server without them,
        or pods whose kubelet asked for none within a minute (policy/pod_certificates.py)."""
        if self.delivery_of(ref) is not Delivery.POD_CERTIFICATE:
            return
        if not self.apis.pod_certificates:
            tally.delivery_unavailable = missing_api_message(str(ref))
            return
        work = PolicyWork(ref.namespace, ref.name)
        governed = [pod for pod, _ in self.stores.governed(ref)]
        waits = pod_certificate_waits(governed, None, self.clock())
        if waits.recheck_after is not None:
            self.queue.add_after(work, waits.recheck_after + 1)
        if not waits.candidates:
            return
        requested: set[str] = set()
        for namespace in sorted({p.namespace for p in waits.candidates}):
            requested |= await self._requested_pod_uids(namespace)
        unrequested = pod_certificate_waits(waits.candidates, frozenset(requested), self.clock())
        tally.unrequested = unrequested_message(unrequested.unrequested)
        # Until the pods run: a kubelet may be given the gate and restarted.
        self.queue.add_after(work, POD_CERTIFICATE_RECHECK_S)

    async def _requested_pod_uids(self, namespace: str) -> set[str]:
        """The pod UIDs of the namespace's PodCertificateRequests for our signer."""
        path = f"/apis/{self.apis.pod_certificate_requests}/namespaces/{namespace}/"
        listed = await self.kube.request("GET", path + POD_CERTIFICATE_REQUESTS)
        return {
            str((item.get("spec") or {}).get("podUID") or "")
            for item in listed.get("items") or []
            if (item.get("spec") or {}).get("signerName") == SIGNER_NAME
        }


__all__ = ["PolicyController"]
