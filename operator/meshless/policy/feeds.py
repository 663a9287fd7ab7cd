"""The policy controller's feeds (shell): Kopf's events of policies, pods, namespaces and
NetworkPolicies, and our watch's WorkloadIdentities, into the stores (policy/held.py), and the
work each change queues: a namespace reconcile (after a short delay for pods, which come in
bursts), a policy's status, the namespaces' admission labels."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from meshless.durations import format_duration, parse_duration
from meshless.policy.held import (
    HeldPolicy,
    LabelsWork,
    NamespaceWork,
    PolicyStores,
    PolicyWork,
    Work,
    namespace_info,
    slim_network_policy,
    slim_policy,
)
from meshless.policy.model import PolicySpec, Scope
from meshless.policy.provision import IdentityRecord, identity_record
from meshless.policy.resolve import scope_of
from meshless.policy.spec import PolicySpecError, parse_policy, pod_info
from meshless.settings import Settings
from meshless.status import StatusWriter
from meshless.workqueue import WorkQueue

POD_EVENT_DELAY_S = 0.3
LABELS = LabelsWork()


class PolicyFeeds:
    def __init__(
        self,
        stores: PolicyStores,
        queue: WorkQueue[Work],
        status: StatusWriter,
        settings: Settings,
    ) -> None:
        self.stores = stores
        self.queue = queue
        self.status = status  # recognises the echoes of our own status writes
        self.settings = settings
        self.root_namespace = settings.effective_root_namespace

    def watched(self, namespace: str) -> bool:
        patterns = self.settings.runtime.watch_namespaces
        return not patterns or any(fnmatch.fnmatchcase(namespace, p) for p in patterns)

    def known_namespaces(self) -> set[str]:
        return {n for n in self.stores.known_namespaces() if self.watched(n)}

    def on_policy_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        held = self.stores.policies.get(key)
        before = held.spec if held is not None else None
        if event_type == "DELETED":
            self.stores.policies.pop(key)
            self.status.forget(key)
            self.queue.forget(PolicyWork(*key))
            after = None
        elif self.status.is_echo(body):
            spec, error = (held.spec, held.error) if held is not None else (None, None)
            self.stores.policies.put(key, HeldPolicy(slim_policy(body), spec, error))
            return
        else:
            try:
                spec, error = self._checked(parse_policy(body)), None
            except PolicySpecError as exc:
                spec, error = None, str(exc)
            self.stores.policies.put(key, HeldPolicy(slim_policy(body), spec, error))
            after = spec
        if before == after and event_type != "DELETED":
            if enqueue:
                self.queue.add(PolicyWork(*key))
            return
        self.stores.specs_changed()
        if not enqueue:
            return
        self.queue.add(LABELS)
        wide = any(
            p is not None and scope_of(p, self.root_namespace) is Scope.ROOT
            for p in (before, after)
        )
        for namespace in self.known_namespaces() if wide else (key[0],):
            self.queue.add(NamespaceWork(namespace))
        if event_type != "DELETED":
            self.queue.add(PolicyWork(*key))

    def on_pod_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            if self.stores.pods.pop(key) is None:
                return
        else:
            info = pod_info(body)
            if self.stores.pods.get(key) == info:
                return
            self.stores.pods.put(key, info)
        if enqueue:
            # Pods come in bursts (a rollout, a scale-up): one reconcile of the namespace
            # shortly after the first event serves the whole burst.
            self.queue.add_after(NamespaceWork(key[0]), POD_EVENT_DELAY_S)

    def on_namespace_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        name = body["metadata"]["name"]
        if event_type == "DELETED":
            self.stores.namespaces.pop(name)
        else:
            info = namespace_info(body)
            if self.stores.namespaces.get(name) == info:
                return
            self.stores.namespaces.put(name, info)
        if enqueue:
            self.queue.add(LABELS)
            # Namespace labels decide namespaceSelectors of NetworkPolicies anywhere.
            for namespace in self.known_namespaces():
                self.queue.add(NamespaceWork(namespace))

    def on_network_policy_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.stores.network_policies.pop(key)
        else:
            slim = slim_network_policy(body)
            if self.stores.network_policies.get(key) == slim:
                return
            self.stores.network_policies.put(key, slim)
        if enqueue:
            self.queue.add(NamespaceWork(key[0]))

    def on_identity_event(
        self, event_type: str | None, body: Mapping[str, Any], *, enqueue: bool = True
    ) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        identities = self.stores.identities
        before = identities.get(key)
        held_any = identities.has("namespace", key[0])
        if event_type == "DELETED":
            self.stores.provisioned.pop(key)
            if identities.pop(key) is None:
                return
            after = None
        else:
            after = identity_record(body, self.settings)
            if after.provisioned:
                self.stores.provisioned.put(key, dict(body.get("spec") or {}))
            if before == after:
                return
            identities.put(key, after)
        if enqueue and held_any != identities.has("namespace", key[0]):
            # The namespace gained its first or lost its last identity: its label changes.
            self.queue.add(LABELS)
        if enqueue and any(self._identity_matters(r) for r in (before, after) if r is not None):
            self.queue.add(NamespaceWork(key[0]))

    def _identity_matters(self, record: IdentityRecord) -> bool:
        """Whether a namespace reconcile could decide differently for this identity: it is
        one we provisioned, or a pod there runs as its ServiceAccount. A storm of identities
        no pod uses costs no reconciles."""
        account = (record.namespace, record.service_account)
        return record.provisioned or self.stores.pods.count("account", account) > 0

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


__all__ = ["LABELS", "POD_EVENT_DELAY_S", "PolicyFeeds"]
