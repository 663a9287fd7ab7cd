"""The policy controller as the admission webhooks see it (meshless.admission.server's
AdmissionState): answered from memory on every request, no API calls.

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
from collections.abc import Mapping, Sequence
from typing import Any

from meshless.admission.inject import IdentityRef
from meshless.admission.validate import AdmissionRecord, IdentitySecret, identity_secrets_of
from meshless.api import API_VERSION, Kind, Reason
from meshless.delivery import PodCertificateMount
from meshless.kube import POLICIES
from meshless.pki.names import DnsNamePolicy
from meshless.pki.spiffe import spiffe_id
from meshless.policy.controller import POLICY_WORK, PolicyController
from meshless.policy.model import PodResolution, PolicyRef
from meshless.policy.resolve import PolicySet
from meshless.status import involved_object

MAX_RECORDED = 20  # pod names kept per policy (status lists are bounded)


class ControllerAdmissionState:
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

    def policies(self) -> PolicySet | None:
        """None until every policy has been read once (by the leader's priming or by
        `read_policies`): pods in labelled namespaces are refused (503) until then."""
        ready = self.controller.primed or self.policies_listed
        return self.controller.policy_set() if ready else None

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

    def identity_for(self, namespace: str, service_account: str) -> IdentityRef:
        ref = self.controller.identity_ref_for(namespace, service_account)
        return IdentityRef(secret_name=ref.secret_name, spiffe_id=ref.spiffe_id)

    def identity_secrets(
        self, namespace: str, secrets: Sequence[str]
    ) -> Mapping[str, Sequence[IdentitySecret]] | None:
        """From the controller's records of WorkloadIdentities, fed by the identity watch on
        every replica; None until it has listed them all once."""
        if not (self.identities_listed or self.controller.primed):
            return None
        trust_domain = self.controller.settings.trust_domain
        claimed: dict[str, list[IdentitySecret]] = {}
        for secret in secrets:
            for record in self.controller.identities_with_secret(namespace, secret):
                if not record.service_account:
                    continue  # an invalid spec: nothing is ever issued for it
                if record.unusable == Reason.SECRET_CONFLICT:
                    continue  # the Secret is not its: it never holds that identity
                try:
                    sid = spiffe_id(trust_domain, namespace, record.service_account)
                except ValueError:
                    sid = f"(ServiceAccount {record.service_account!r})"
                claimed.setdefault(secret, []).append(
                    IdentitySecret(secret, record.service_account, record.name, sid)
                )
        return identity_secrets_of(namespace, secrets, claimed, trust_domain)

    def dns_name_policy(self) -> DnsNamePolicy:
        return self.controller.settings.dns_name_policy

    def pod_certificate_for(self, resolution: PodResolution) -> PodCertificateMount | None:
        return self.controller.pod_certificate_for(resolution)

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
