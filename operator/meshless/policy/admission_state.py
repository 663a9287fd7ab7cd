"""The policy controller as the admission webhooks see it: the `admit.AdmissionState` every
request reads, from memory, no API calls.

What it reads of the controller's stores (policy/held.py) and settings: the policies
(`stores.policies`, with `primed` and `root_namespace`), the WorkloadIdentities by
ServiceAccount and by Secret (the stores' indexes), the settings' trust domain and name
policy, and the default delivery with the APIs discovery found. `current()` runs on the
operator's loop: admission/process.py replicates what it returns to the admission child
process, with the identity records as deltas.

Every replica answers, the leader and the standbys: the policies come from Kopf's watch on
every replica, once `read_policies` has read them all (Kopf does not say when its first list
is done); the identities from the identity watch every replica runs.

Pods admitted under Warn or Audit that Enforce would have denied are counted into the policy's
status (`status.admission`, policy/audit.py). Every replica serves webhooks but only the
leader writes status: a standby's records also go out as an Event on the policy, so none is
lost while it is not leading.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from meshless.admission.admit import AdmissionState
from meshless.admission.validate import AdmissionRecord
from meshless.api import API_VERSION, Kind, Reason
from meshless.kube import POLICIES
from meshless.policy.controller import PolicyController
from meshless.policy.model import PolicySpec
from meshless.policy.provision import IdentityRecord
from meshless.policy.resolve import PolicySet
from meshless.status import involved_object


class ControllerIdentities:
    """admit.Identities read from the policy controller's identity store (indexed by
    ServiceAccount and by Secret), fed by the identity watch on every replica."""

    def __init__(self, controller: PolicyController) -> None:
        self.stores = controller.stores

    def of_account(self, namespace: str, service_account: str) -> Iterable[IdentityRecord]:
        return self.stores.identities_of(namespace, service_account)

    def naming_secret(self, namespace: str, secret: str) -> Iterable[IdentityRecord]:
        return self.stores.identities_with_secret(namespace, secret)


class ControllerAdmissionState:
    """Feeds admission from the policy controller: `current()` is the state `admit` reads,
    `record_admission` takes the Warn and Audit admissions into the policy's status."""

    def __init__(self, controller: PolicyController, *, leading: bool = True) -> None:
        self.controller = controller
        self.leading = leading
        # Set by the operator once every WorkloadIdentity has been listed (its watch of them
        # runs on every replica, the leader's and the standbys').
        self.identities_listed = False
        self.policies_listed = False  # read_policies has read every MtlsPolicy once
        self._state = AdmissionState(
            trust_domain=controller.settings.identity.trust_domain,
            dns_names=controller.settings.names.policy,
            identities=ControllerIdentities(controller),
        )
        self._specs: tuple[PolicySpec, ...] | None = None  # those self._state was built from

    def current(self) -> AdmissionState:
        """What admission knows now, as one value (admit.AdmissionState). Called by the
        replication to the admission child (admission/process.py, on the operator's loop): it
        only reads the controller and builds a new value (a new PolicySet) only when
        something changed, so an unchanged state is the same object. The policies are None
        until every policy has been read once (by the leader's priming or by
        `read_policies`): pods in labelled namespaces are refused (503) until then."""
        controller = self.controller
        ready = controller.primed or self.policies_listed
        listed = self.identities_listed or controller.primed
        state = self._state
        specs = None
        if ready:
            held = tuple(controller.stores.policies.values())  # one call: a consistent copy
            specs = tuple(h.spec for h in held if h.spec is not None)
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
                if (meta["namespace"], meta["name"]) not in self.controller.stores.policies:
                    self.controller.on_policy_event("ADDED", body, enqueue=False)
        self.policies_listed = True

    def record_admission(self, record: AdmissionRecord) -> None:
        self.controller.audit.record(record.policy, record.pod)
        self.controller.request_status(record.policy)
        if not self.leading:
            held = self.controller.stores.policies.get(
                (record.policy.namespace, record.policy.name)
            )
            if held is not None:
                self.controller.events.post(
                    involved_object(held.body, API_VERSION, Kind.MTLS_POLICY),
                    "Warning",
                    Reason.ADMISSION_AUDITED,
                    f"{record.action}: admitted {record.pod}: {record.message}",
                )
