"""The MtlsPolicy controller (shell): policies, pods, namespaces, NetworkPolicies and
identities in; per-namespace reconciles and per-policy status out.

Watch events only update slim in-memory copies and queue keys. A namespace reconcile
resolves every pod of the namespace (pure resolver), then writes only what differs: the
NetworkPolicies rendered from the per-pod answers, and the provisioned WorkloadIdentities. A
policy reconcile writes the policy's status from counts the namespace reconciles keep.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp

from meshless import api, metrics
from meshless.admission.configurations import admission_namespaces, identity_namespaces
from meshless.api import ConditionType, Kind, exempt_namespaces
from meshless.conditions import ConditionChange, find_condition
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
from meshless.durations import format_duration, parse_duration
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
from meshless.policy.model import (
    IdentityDefaults,
    PodInfo,
    PodResolution,
    PolicyRef,
    PolicySpec,
    Scope,
)
from meshless.policy.pod_certificates import pod_certificate_waits, unrequested_message
from meshless.policy.provision import (
    IdentityRecord,
    identity_for,
    identity_record,
    plan_identities,
    spec_is_current,
    unusable_identities,
    uses_pod_certificate,
)
from meshless.policy.render import (
    foreign_open_ports,
    is_managed,
    label_value,
    needs_write,
    render_network_policies,
)
from meshless.policy.report import (
    PolicyTally,
    policy_conditions,
    policy_status_fields,
)
from meshless.policy.resolve import PolicySet, scope_of
from meshless.policy.spec import PolicySpecError, parse_policy, pod_info
from meshless.settings import Settings
from meshless.status import EventRecorder, StatusWriter, conditions_with, involved_object
from meshless.workqueue import WorkQueue

log = logging.getLogger(__name__)
_K = TypeVar("_K")

Key = tuple[str, str]  # namespace, name
# Work items: ("ns", namespace, "") reconciles a namespace; ("policy", ns, name) a status.
Work = tuple[str, str, str]
AdmissionStatus = Callable[[PolicyRef, Mapping[str, Any] | None], tuple[Json | None, int]]
NAMESPACE_WORK = "ns"
POD_EVENT_DELAY_S = 0.3
YIELD_EVERY_PODS = 200
LABELS_WORK = "labels"  # ("labels", "", ""): the admission label on every namespace
POLICY_WORK = "policy"
POD_CERTIFICATE_RECHECK_S = 30.0


@dataclass(frozen=True)
class NamespaceInfo:
    labels: Mapping[str, str]
    terminating: bool


def slim_policy(body: Mapping[str, Any]) -> Json:
    meta = body["metadata"]
    return {
        "metadata": {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "generation",
                "resourceVersion",
                "creationTimestamp",
            )
            if k in meta
        },
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    }


def _drop(index: dict[_K, dict[str, IdentityRecord]], outer: _K, name: str) -> None:
    held = index.get(outer)
    if held is not None:
        held.pop(name, None)
        if not held:
            del index[outer]


def slim_network_policy(body: Mapping[str, Any]) -> Json:
    meta = body["metadata"]
    return {
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "labels", "ownerReferences", "resourceVersion")
            if k in meta
        },
        "spec": dict(body.get("spec") or {}),
    }


class PolicyController:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        clock: Callable[[], datetime],
        events: EventRecorder,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.events = events
        self.status = StatusWriter(kube, POLICIES)
        self.queue: WorkQueue[Work] = WorkQueue(self.reconcile, workers=settings.runtime.workers)
        self.root_namespace = settings.effective_root_namespace

        self.policies: dict[Key, Json] = {}
        self.specs: dict[Key, PolicySpec] = {}
        self.spec_errors: dict[Key, str] = {}
        self._policy_set: PolicySet | None = None
        self.pods: dict[Key, PodInfo] = {}
        self.pods_by_namespace: dict[str, set[str]] = defaultdict(set)
        self.namespaces: dict[str, NamespaceInfo] = {}
        self.network_policies: dict[Key, Json] = {}
        self.identities: dict[Key, IdentityRecord] = {}
        # The same records by namespace, and the ServiceAccounts of each namespace's pods:
        # with tens of thousands of identities, nothing may scan them all per event.
        self._identities_by_ns: dict[str, dict[str, IdentityRecord]] = defaultdict(dict)
        self._by_account: dict[tuple[str, str], dict[str, IdentityRecord]] = defaultdict(dict)
        # And by the Secret they name: admission asks whose identity a Secret holds.
        self._by_secret: dict[tuple[str, str], dict[str, IdentityRecord]] = defaultdict(dict)
        self._pod_accounts: dict[str, Counter[str]] = defaultdict(Counter)
        self._identity_spec: dict[Key, Json] = {}  # spec of each provisioned identity

        # What the last reconcile of each namespace decided.
        self.resolutions: dict[Key, PodResolution] = {}
        self.governed: dict[PolicyRef, set[Key]] = defaultdict(set)
        self.network_open: dict[str, list[tuple[PolicyRef, str]]] = {}
        self.primed = False
        # Set by the admission state: status.admission for a policy (see admission_state.py).
        self.admission_status: AdmissionStatus | None = None
        self.admission_written: Callable[[PolicyRef, int], None] | None = None
        # Set by the operator: the prober learns each namespace's ports after a reconcile,
        # and gives each policy's status.enforcement and Enforced condition.
        self.on_resolved: (
            Callable[[str, list[tuple[PodInfo, PodResolution | None]]], None] | None
        ) = None
        self.enforcement: Callable[[PolicyRef], tuple[Json, ConditionChange]] | None = None
        # Identity delivery (meshless.delivery): what discovery found (set by the operator),
        # and, where pods read the trust bundle from the ConfigMap (no ClusterTrustBundles),
        # the hook that keeps it in their namespace.
        self.apis = ServedApis()
        self.bundle_needed: Callable[[str], Awaitable[None]] | None = None
        metrics.POLICY_PODS.labels("resolved").set_function(lambda: len(self.resolutions))
        metrics.POLICY_PODS.labels("held").set_function(lambda: len(self.pods))

    # --- startup ------------------------------------------------------------------------
    def _watched(self, namespace: str) -> bool:
        patterns = self.settings.runtime.watch_namespaces
        return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    async def prime(self, on_identity: Callable[[Mapping[str, Any]], None] | None = None) -> None:
        """Fill the caches from one list of each kind before the first reconcile: a
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
        self.queue.add((LABELS_WORK, "", ""))
        for namespace in self._known_namespaces():
            self.queue.add((NAMESPACE_WORK, namespace, ""))
        for namespace, name in list(self.policies):
            self.queue.add((POLICY_WORK, namespace, name))

    def _known_namespaces(self) -> set[str]:
        names = set(self.pods_by_namespace) | {ns for ns, _ in self.policies}
        names |= {ns for ns, _ in self.network_policies}
        names |= set(self._identities_by_ns)
        return {n for n in names if self._watched(n)}

    # --- watch events -------------------------------------------------------------------
    def on_policy_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        before = self.specs.get(key)
        if event_type == "DELETED":
            self.policies.pop(key, None)
            self.specs.pop(key, None)
            self.spec_errors.pop(key, None)
            self.status.forget(key)
            self.queue.forget((POLICY_WORK, *key))
        else:
            self.policies[key] = slim_policy(body)
            if self.status.is_echo(body):
                return
            try:
                self.specs[key] = self._checked(parse_policy(body))
                self.spec_errors.pop(key, None)
            except PolicySpecError as exc:
                self.specs.pop(key, None)
                self.spec_errors[key] = str(exc)
        after = self.specs.get(key)
        if before == after and event_type != "DELETED" and key in self.policies:
            if enqueue:
                self.queue.add((POLICY_WORK, *key))
            return
        self._policy_set = None
        if not enqueue:
            return
        self.queue.add((LABELS_WORK, "", ""))
        wide = any(
            p is not None and scope_of(p, self.root_namespace) is Scope.ROOT
            for p in (before, after)
        )
        if wide:
            for namespace in self._known_namespaces():
                self.queue.add((NAMESPACE_WORK, namespace, ""))
        else:
            self.queue.add((NAMESPACE_WORK, key[0], ""))
        if event_type != "DELETED":
            self.queue.add((POLICY_WORK, *key))

    def on_pod_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            gone = self.pods.pop(key, None)
            if gone is None:
                return
            self._count_account(key[0], gone.service_account, -1)
            self.pods_by_namespace[key[0]].discard(key[1])
            if not self.pods_by_namespace[key[0]]:
                del self.pods_by_namespace[key[0]]
        else:
            info = pod_info(body)
            before = self.pods.get(key)
            if before == info:
                return
            if before is not None:
                self._count_account(key[0], before.service_account, -1)
            self._count_account(key[0], info.service_account, 1)
            self.pods[key] = info
            self.pods_by_namespace[key[0]].add(key[1])
        if enqueue:
            # Pods come in bursts (a rollout, a scale-up): one reconcile of the namespace
            # shortly after the first event serves the whole burst.
            self.queue.add_after((NAMESPACE_WORK, key[0], ""), POD_EVENT_DELAY_S)

    def on_namespace_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        name = meta["name"]
        if event_type == "DELETED":
            self.namespaces.pop(name, None)
        else:
            info = NamespaceInfo(
                labels=dict(meta.get("labels") or {}),
                terminating=bool(meta.get("deletionTimestamp"))
                or (body.get("status") or {}).get("phase") == "Terminating",
            )
            if self.namespaces.get(name) == info:
                return
            self.namespaces[name] = info
        if enqueue:
            self.queue.add((LABELS_WORK, "", ""))
            # Namespace labels decide namespaceSelectors of NetworkPolicies anywhere.
            for namespace in self._known_namespaces():
                self.queue.add((NAMESPACE_WORK, namespace, ""))

    def on_network_policy_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.network_policies.pop(key, None)
        else:
            slim = slim_network_policy(body)
            if self.network_policies.get(key) == slim:
                return
            self.network_policies[key] = slim
        if enqueue:
            self.queue.add((NAMESPACE_WORK, key[0], ""))

    def on_identity_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        before = self.identities.get(key)
        held_any = key[0] in self._identities_by_ns
        if event_type == "DELETED":
            self._identity_spec.pop(key, None)
            if before is None:
                return
            self._forget_identity(key)
            after = None
        else:
            after = identity_record(body, self.settings)
            if after.provisioned:
                self._identity_spec[key] = dict(body.get("spec") or {})
            if before == after:
                return
            self._remember_identity(after)
        if enqueue and held_any != (key[0] in self._identities_by_ns):
            # The namespace gained its first or lost its last identity: its label changes.
            self.queue.add((LABELS_WORK, "", ""))
        if enqueue and any(self._identity_matters(r) for r in (before, after) if r is not None):
            self.queue.add((NAMESPACE_WORK, key[0], ""))

    def _identity_matters(self, record: IdentityRecord) -> bool:
        """Whether a namespace reconcile could decide differently for this identity: it is
        one we provisioned, or a pod there runs as its ServiceAccount. A storm of identities
        no pod uses costs no reconciles."""
        accounts = self._pod_accounts.get(record.namespace)
        return record.provisioned or (accounts is not None and record.service_account in accounts)

    def _remember_identity(self, record: IdentityRecord) -> None:
        key = (record.namespace, record.name)
        self._forget_identity(key)
        self.identities[key] = record
        self._identities_by_ns[record.namespace][record.name] = record
        self._by_account[(record.namespace, record.service_account)][record.name] = record
        self._by_secret[(record.namespace, record.secret_name)][record.name] = record

    def _forget_identity(self, key: Key) -> None:
        gone = self.identities.pop(key, None)
        if gone is None:
            return
        _drop(self._identities_by_ns, key[0], key[1])
        _drop(self._by_account, (key[0], gone.service_account), key[1])
        _drop(self._by_secret, (key[0], gone.secret_name), key[1])

    def _count_account(self, namespace: str, account: str, delta: int) -> None:
        counts = self._pod_accounts[namespace]
        counts[account] += delta
        if counts[account] <= 0:
            del counts[account]
            if not counts:
                del self._pod_accounts[namespace]

    def _checked(self, spec: PolicySpec) -> PolicySpec:
        """What the schema cannot know: the operator's own limits."""
        if spec.identity.ttl:
            ttl = parse_duration(spec.identity.ttl)
            if ttl < self.settings.identity.ttl_floor:
                raise PolicySpecError(
                    f"spec.identity.ttl {spec.identity.ttl} is below the operator's ttl floor "
                    f"{format_duration(self.settings.identity.ttl_floor)}"
                )
        return spec

    # --- delivery ----------------------------------------------------------------------
    @property
    def default_delivery(self) -> Delivery:
        return default_delivery(DeliverySetting(self.settings.identity.delivery), self.apis)

    def delivery_of(self, ref: PolicyRef) -> Delivery:
        spec = self.specs.get((ref.namespace, ref.name))
        identity = spec.identity if spec is not None else IdentityDefaults()
        return delivery_for(identity.delivery, identity.algorithm, self.default_delivery)

    def pod_certificate_for(self, resolution: PodResolution) -> PodCertificateMount | None:
        """The podCertificate volume for a pod so resolved, None for Secret delivery; raises
        DeliveryUnavailable when its policy wants pod certificates the API does not serve."""
        ref = resolution.governing
        spec = self.specs.get((ref.namespace, ref.name))
        identity = spec.identity if spec is not None else IdentityDefaults()
        return pod_certificate_mount(identity, self.default_delivery, self.apis, str(ref))

    # --- what admission asks ------------------------------------------------------------
    def policy_set(self) -> PolicySet:
        if self._policy_set is None:
            self._policy_set = PolicySet.build(self.specs.values(), self.root_namespace)
        return self._policy_set

    def policy_specs(self) -> dict[PolicyRef, PolicySpec]:
        return {spec.ref: spec for spec in self.specs.values()}

    def identities_with_secret(self, namespace: str, secret: str) -> list[IdentityRecord]:
        """The WorkloadIdentities of `namespace` that name the Secret `secret`."""
        return list(self._by_secret.get((namespace, secret), {}).values())

    def identities_of_account(self, namespace: str, service_account: str) -> list[IdentityRecord]:
        """The WorkloadIdentities of `namespace` that name this ServiceAccount."""
        return list(self._by_account.get((namespace, service_account), {}).values())

    def identity_ref_for(self, namespace: str, service_account: str) -> IdentityRef:
        return identity_for(
            namespace,
            service_account,
            self._by_account.get((namespace, service_account), {}).values(),
            self.settings.identity.trust_domain,
        )

    # --- reconcile ----------------------------------------------------------------------
    async def reconcile(self, work: Work) -> float | None:
        kind, namespace, name = work
        try:
            if kind == NAMESPACE_WORK:
                await self._reconcile_namespace(namespace)
            elif kind == LABELS_WORK:
                await self._reconcile_namespace_labels()
            else:
                await self._reconcile_policy(namespace, name)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in exc.message:
                log.debug("%s: namespace is terminating; not reconciled", namespace)
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
        policies = self.policy_set()
        specs = self.policy_specs()
        enforced = self.enforced(namespace)
        everyone: list[tuple[PodInfo, PodResolution | None]] = []
        resolved: list[tuple[PodInfo, PodResolution]] = []
        touched: set[PolicyRef] = set()
        for index, pod_name in enumerate(sorted(self.pods_by_namespace.get(namespace, ()))):
            if index and index % YIELD_EVERY_PODS == 0:
                await asyncio.sleep(0)  # a big namespace must not hold up webhooks and watches
            key = (namespace, pod_name)
            pod = self.pods[key]
            before = self.resolutions.get(key)
            resolution = policies.resolve(pod) if enforced else None
            if before is not None:
                touched.update(before.applied)
                touched.update(before.ignored)
                self.governed[before.governing].discard(key)
            everyone.append((pod, resolution))
            if resolution is None:
                self.resolutions.pop(key, None)
                continue
            self.resolutions[key] = resolution
            self.governed[resolution.governing].add(key)
            touched.update(resolution.applied)
            touched.update(resolution.ignored)
            resolved.append((pod, resolution))
        # Pods that are gone.
        for key in [k for k in self.resolutions if k[0] == namespace and k not in self.pods]:
            gone = self.resolutions.pop(key)
            self.governed[gone.governing].discard(key)
            touched.update(gone.applied)

        if self.on_resolved is not None:
            self.on_resolved(namespace, everyone)
        foreign = [
            body
            for (ns, _), body in self.network_policies.items()
            if ns == namespace and not is_managed(body)
        ]
        ns_info = self.namespaces.get(namespace)
        terminating = ns_info is not None and ns_info.terminating
        if not terminating and self._watched(namespace):
            await self._sync_network_policies(namespace, everyone, specs, foreign)
            await self._sync_identities(namespace, resolved, specs)
        before_open = {ref for ref, _ in self.network_open.get(namespace, ())}
        found = foreign_open_ports(foreign, everyone, specs) if foreign else []
        self.network_open[namespace] = [
            (o.policy, f"NetworkPolicy {o.network_policy} opens port {o.port} of pod {o.pod}")
            for o in found
        ]
        if not self.network_open[namespace]:
            del self.network_open[namespace]
        touched |= before_open | {o.policy for o in found}
        touched.update(PolicyRef(ns, n) for ns, n in self.policies if ns == namespace)
        for ref in touched:
            if (ref.namespace, ref.name) in self.policies:
                self.queue.add((POLICY_WORK, ref.namespace, ref.name))

    async def _sync_network_policies(
        self,
        namespace: str,
        pods: list[tuple[PodInfo, PodResolution | None]],
        specs: Mapping[PolicyRef, PolicySpec],
        foreign: list[Json],
    ) -> None:
        desired = {m["metadata"]["name"]: m for m in render_network_policies(pods, specs, foreign)}
        stored = {
            name: body
            for (ns, name), body in self.network_policies.items()
            if ns == namespace and is_managed(body)
        }
        for name, manifest in sorted(desired.items()):
            if not needs_write(manifest, stored.get(name)):
                continue
            written = await self.kube.apply(NETWORK_POLICIES, manifest)
            self.network_policies[(namespace, name)] = slim_network_policy(written)
            log.info("%s/%s: NetworkPolicy written", namespace, name)
        for name in sorted(set(stored) - set(desired)):
            uid = stored[name]["metadata"].get("uid")
            await self.kube.delete(NETWORK_POLICIES, namespace, name, uid=uid)
            self.network_policies.pop((namespace, name), None)
            log.info("%s/%s: NetworkPolicy deleted (no pod needs it)", namespace, name)

    async def _sync_identities(
        self,
        namespace: str,
        resolved: list[tuple[PodInfo, PodResolution]],
        specs: Mapping[PolicyRef, PolicySpec],
    ) -> None:
        records = list(self._identities_by_ns.get(namespace, {}).values())
        plan = plan_identities(namespace, resolved, specs, records, self.delivery_of)
        if (
            self.bundle_needed is not None
            and not self.apis.trust_bundles
            and any(uses_pod_certificate(p, r, self.delivery_of) for p, r in resolved)
        ):
            await self.bundle_needed(namespace)  # their ca.crt comes from the ConfigMap
        for manifest in plan.create_or_update:
            name = manifest["metadata"]["name"]
            current = self._identity_spec.get((namespace, name))
            if current is not None and spec_is_current(current, manifest["spec"]):
                continue
            written = await self.kube.apply(IDENTITIES, manifest)
            self._identity_spec[(namespace, name)] = dict(written.get("spec") or {})
            self._remember_identity(identity_record(written, self.settings))
            log.info("%s/%s: WorkloadIdentity provisioned", namespace, name)
        for name in plan.delete:
            await self.kube.delete(IDENTITIES, namespace, name)
            self._forget_identity((namespace, name))
            self._identity_spec.pop((namespace, name), None)
            log.info("%s/%s: provisioned WorkloadIdentity deleted (not needed)", namespace, name)

    async def _reconcile_namespace_labels(self) -> None:
        """`meshless.dev/mtls=enabled` on exactly the namespaces some policy may ask an
        identity in: the webhooks (failurePolicy Fail) select them, so with the operator down
        only pods there are refused. `meshless.dev/identities=true` on exactly the namespaces
        that hold a WorkloadIdentity: the binding webhook (failurePolicy Ignore) selects
        them."""
        labels = (
            (
                api.ADMISSION_NAMESPACE_LABEL,
                api.ADMISSION_NAMESPACE_VALUE,
                admission_namespaces(
                    self.policy_set(), self.namespaces, self.settings.runtime.namespace
                ),
            ),
            (
                api.IDENTITIES_NAMESPACE_LABEL,
                api.IDENTITIES_NAMESPACE_VALUE,
                identity_namespaces(
                    self._identities_by_ns, self.namespaces, self.settings.runtime.namespace
                ),
            ),
        )
        for name, info in sorted(self.namespaces.items()):
            if info.terminating or not self._watched(name):
                continue
            changes: dict[str, str | None] = {}
            for label, value, wanted in labels:
                if (name in wanted) != (info.labels.get(label) == value):
                    changes[label] = value if name in wanted else None
            if not changes:
                continue
            patch = {"metadata": {"labels": changes}}
            try:
                await self.kube.patch(NAMESPACES, None, name, patch)
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            for label, change in changes.items():
                log.info("namespace %s: %s %s", name, "labelled" if change else "unlabelled", label)

    async def _reconcile_policy(self, namespace: str, name: str) -> None:
        body = self.policies.get((namespace, name))
        if body is None:
            return
        ref = PolicyRef(namespace, name)
        spec = self.specs.get((namespace, name))
        scope = scope_of(spec, self.root_namespace) if spec else None
        tally = self._tally(ref, spec)
        if spec is not None:
            await self._delivery_tally(ref, spec, tally)
        ns_info = self.namespaces.get(namespace)
        changes = policy_conditions(
            scope,
            tally,
            spec_error=self.spec_errors.get((namespace, name)),
            namespace_terminating=ns_info is not None and ns_info.terminating,
        )
        enforcement: Json | None = None
        if self.enforcement is not None and spec is not None:
            enforcement, enforced = self.enforcement(ref)
            changes.append(enforced)
        before = {
            c.type: find_condition((body.get("status") or {}).get("conditions") or [], c.type)
            for c in changes
        }
        wanted: Json = {
            **policy_status_fields(scope, tally),
            "conditions": conditions_with(body, changes, self.clock()),
            "observedGeneration": body["metadata"].get("generation"),
        }
        if enforcement is not None:
            wanted["enforcement"] = enforcement
        included = 0
        if self.admission_status is not None:
            stored = (body.get("status") or {}).get("admission")
            admission, included = self.admission_status(ref, stored)
            if admission is not None:
                wanted["admission"] = admission
        written = await self.status.patch(body, wanted)
        if included and self.admission_written is not None:
            self.admission_written(ref, included)
        if written is None:
            return
        for change in changes:
            old = before.get(change.type) or {}
            turned_bad = (
                change.type in (ConditionType.READY, ConditionType.ENFORCED) and not change.status
            ) or (change.type == ConditionType.CONFLICTED and change.status)
            if turned_bad and (
                old.get("reason") != change.reason or old.get("message") != change.message
            ):
                self.events.post(
                    involved_object(body, api.API_VERSION, Kind.MTLS_POLICY),
                    "Warning",
                    change.reason,
                    change.message,
                )

    async def _delivery_tally(self, ref: PolicyRef, spec: PolicySpec, tally: PolicyTally) -> None:
        """How the policy's pods get their identity, and what keeps pod certificates away:
        an API server without them, or pods whose kubelet asked for none within a minute."""
        delivery = self.delivery_of(ref)
        tally.delivery = delivery.value
        if delivery is not Delivery.POD_CERTIFICATE:
            return
        if not self.apis.pod_certificates:
            tally.delivery_unavailable = missing_api_message(str(ref))
            return
        governed = [self.pods[k] for k in self.governed.get(ref, ()) if k in self.pods]
        waits = pod_certificate_waits(governed, None, self.clock())
        if waits.recheck_after is not None:
            self.queue.add_after((POLICY_WORK, ref.namespace, ref.name), waits.recheck_after + 1)
        if not waits.candidates:
            return
        requested: set[str] = set()
        for namespace in sorted({p.namespace for p in waits.candidates}):
            requested |= await self._requested_pod_uids(namespace)
        unrequested = pod_certificate_waits(waits.candidates, frozenset(requested), self.clock())
        tally.unrequested = unrequested_message(unrequested.unrequested)
        # Until the pods run: a kubelet may be given the gate and restarted.
        self.queue.add_after((POLICY_WORK, ref.namespace, ref.name), POD_CERTIFICATE_RECHECK_S)

    async def _requested_pod_uids(self, namespace: str) -> set[str]:
        """The pod UIDs of the namespace's PodCertificateRequests for our signer."""
        path = f"/apis/{self.apis.pod_certificate_requests}/namespaces/{namespace}/"
        listed = await self.kube.request("GET", path + POD_CERTIFICATE_REQUESTS)
        return {
            str((item.get("spec") or {}).get("podUID") or "")
            for item in listed.get("items") or []
            if (item.get("spec") or {}).get("signerName") == SIGNER_NAME
        }

    def _tally(self, ref: PolicyRef, spec: PolicySpec | None) -> PolicyTally:
        tally = PolicyTally()
        policies = self.policy_set()
        if spec is not None:
            shadow = policies.shadowed().get(ref)
            if shadow is not None:
                tally.beaten_by.add(shadow)
        for key in self.governed.get(ref, ()):
            pod = self.pods.get(key)
            resolution = self.resolutions.get(key)
            if pod is None or resolution is None:
                continue
            tally.selected += 1
            if pod.identity_mounted and pod.running:
                tally.injected += 1
            if resolution.needs_identity() and not uses_pod_certificate(
                pod, resolution, self.delivery_of
            ):
                identity = self.identity_ref_for(pod.namespace, pod.service_account)
                tally.identities.add((identity.namespace, identity.name))
                account = (pod.namespace, pod.service_account)
                held = self._by_account.get(account, {}).values()
                for record in unusable_identities(*account, held):
                    tally.unusable[(record.namespace, record.name)] = (
                        record.unusable,
                        identity.name,
                    )
        if spec is not None and scope_of(spec, self.root_namespace) is Scope.WORKLOAD:
            for key in self._pods_in(ref.namespace):
                resolution = self.resolutions.get(key)
                if resolution is not None and ref in resolution.ignored:
                    tally.beaten_by.add(resolution.ignored[ref])
        tally.network_policies = sum(
            1
            for (ns, _), body in self.network_policies.items()
            if is_managed(body)
            and (body["metadata"].get("labels") or {}).get(api.POLICY_LABEL)
            == label_value(ref.name)
            and (body["metadata"].get("labels") or {}).get(api.POLICY_NAMESPACE_LABEL)
            == ref.namespace
        )
        for entries in self.network_open.values():
            tally.network_open.extend(e for owner, e in entries if owner == ref)
        tally.network_open.sort()
        return tally

    def _pods_in(self, namespace: str) -> Iterable[Key]:
        return ((namespace, name) for name in self.pods_by_namespace.get(namespace, ()))


__all__ = ["PolicyController"]
