"""The policy controller as the admission webhooks see it: the `admit.AdmissionState` every
request reads, from memory, no API calls.

What it reads of the controller, and all a store layer would have to give instead: the
policy specs (`specs`, with `primed` and `root_namespace`), the WorkloadIdentities by
ServiceAccount and by Secret (`identities_of_account`, `identities_with_secret`) and the
settings' trust domain and name policy. `current()` runs in the webhook server's thread, so it
only reads, each read taken at once (a dict's values copied in one call).

Every replica answers, the leader and the standbys: the policies come from Kopf's watch on
every replica, once `read_policies` has read them all (Kopf does not say when its first list
is done); the identities from the identity watch every replica runs.

Pods admitted under Warn or Audit that Enforce would have denied are counted into the policy's
status (`status.admission`) as deltas on what the status already holds, so a restart loses no
count. Every replica serves webhooks but only the leader writes status: a standby's records
also go out as an Event on the policy, so none is lost while it is not leading.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from meshless.admission.admit import AdmissionState
from meshless.admission.validate import AdmissionRecord
from meshless.api import API_VERSION, Kind, Reason
from meshless.kube import POLICIES
from meshless.policy.controller import POLICY_WORK, PolicyController
from meshless.policy.model import PolicyRef, PolicySpec
from meshless.policy.provision import IdentityRecord
from meshless.policy.resolve import PolicySet
from meshless.status import involved_object

MAX_RECORDED = 20  # pod names kept per policy (status lists are bounded)


class ControllerIdentities:
    """admit.Identities read from the policy controller's records of WorkloadIdentities, fed
    by the identity watch on every replica."""

    def __init__(self, controller: PolicyController) -> None:
        self.controller = controller

    def of_account(self, namespace: str, service_account: str) -> Iterable[IdentityRecord]:
        return self.controller.identities_of_account(namespace, service_account)

    def naming_secret(self, namespace: str, secret: str) -> Iterable[IdentityRecord]:
        return self.controller.identities_with_secret(namespace, secret)


class ControllerAdmissionState:
    """Feeds admission from the policy controller: `current()` is the state `admit` reads,
    `record_admission` takes the Warn and Audit admissions into the policy's status."""

    def __init__(self, controller: PolicyController, *, leading: bool = True) -> None:
        self.controller = controller
        self.leading = leading
        self._pending: dict[PolicyRef, list[str]] = defaultdict(list)
        # Set by the operator once every WorkloadIdentity has been listed (its watch of them
        # runs on every replica, the leader's and the standbys').
        self.identities_listed = False
        self.policies_listed = False  # read_policies has read every MtlsPolicy once
        controller.admission_status = self.status_for
        controller.admission_written = self.written
        self._state = AdmissionState(
            trust_domain=controller.settings.identity.trust_domain,
            dns_names=controller.settings.names.policy,
            identities=ControllerIdentities(controller),
        )
        self._specs: tuple[PolicySpec, ...] | None = None  # those self._state was built from

    def current(self) -> AdmissionState:
        """What admission knows now, as one value (admit.AdmissionState). Called for every
        admission request, in the webhook server's thread: it only reads the controller (a
        snapshot of its policy specs, taken at once) and builds a new PolicySet only when
        they changed. The policies are None until every policy has been read once (by the
        leader's priming or by `read_policies`): pods in labelled namespaces are refused
        (503) until then."""
        controller = self.controller
        ready = controller.primed or self.policies_listed
        listed = self.identities_listed or controller.primed
        state = self._state
        specs = tuple(controller.specs.values()) if ready else None
        if specs != self._specs or state.identities_listed != listed:
            policies = None if specs is None else PolicySet.build(specs, controller.root_namespace)
            state = self._state = replace(state, policies=policies, identities_listed=listed)
            self._specs = specs
        delivery, apis = controller.default_delivery, controller.apis
        if state.delivery is not delivery or state.apis != apis:
            state = self._state = replace(state, delivery=delivery, apis=apis)
        return state

    async def read_policies(self) -> None:
        """Read every MtlsPolicy once, so that a standby answers admission too (the leader's
        priming does the same for the leader). Policies Kopf's watch has delivered already are
        left as Kopf has them: its stream is the newer or the same, and goes on."""
        async for page in self.controller.kube.pages(POLICIES):
            for body in page:
                meta = body["metadata"]
                if (meta["namespace"], meta["name"]) not in self.controller.policies:
                    self.controller.on_policy_event("ADDED", body, enqueue=False)
        self.policies_listed = True

    def record_admission(self, record: AdmissionRecord) -> None:
        self._pending[record.policy].append(record.pod)
        self.controller.queue.add((POLICY_WORK, record.policy.namespace, record.policy.name))
        if not self.leading:
            body = self.controller.policies.get((record.policy.namespace, record.policy.name))
            if body is not None:
                self.controller.events.post(
                    involved_object(body, API_VERSION, Kind.MTLS_POLICY),
                    "Warning",
                    Reason.ADMISSION_AUDITED,
                    f"{record.action}: admitted {record.pod}: {record.message}",
                )

    def status_for(
        self, policy: PolicyRef, stored: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any] | None, int]:
        """The status.admission to write (stored counts plus what is pending), and how many
        pending records it includes (to drop once written)."""
        pending = self._pending.get(policy) or []
        if not pending and not stored:
            return None, 0
        stored = stored or {}
        pods = [p for p in stored.get("pods") or [] if p not in pending] + pending
        return {
            "wouldDeny": int(stored.get("wouldDeny") or 0) + len(pending),
            "pods": pods[-MAX_RECORDED:],
        }, len(pending)

    def written(self, policy: PolicyRef, count: int) -> None:
        pending = self._pending.get(policy)
        if pending:
            del pending[:count]
            if not pending:
                del self._pending[policy]
