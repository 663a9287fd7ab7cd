"""Admission's state in the child process (pure): a mirror of what the operator's stores hold,
rebuilt from the messages the operator sends down the pipe (admission/process.py sends them,
admission/child.py applies them).

The operator sends, in this order on one pipe, so that the child never knows more flags
than records:
- `StateMessage`: its `AdmissionState` without the identities (policies as one `PolicySet`,
  None until every MtlsPolicy has been read; whether every WorkloadIdentity has been listed;
  trust domain, name policy, delivery and the APIs served), whenever that value changes;
- `IdentityDeltas`: WorkloadIdentity records put (a record) or deleted (None), keyed by
  (namespace, name), only those that changed: never every record per change. After a child
  (re)starts, every record once, in batches, before any `StateMessage` that says they have
  been listed;
- `CertificateMessage`: the serving certificate, at start and at each renewal.

Until the first `StateMessage` the mirror's state is one before priming: pods sent to the
injecting and the STRICT webhooks are refused (503), the binding webhook admits unchecked
(fails open), exactly as the operator answers before it has read the policies and listed the
identities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from meshless.admission.admit import NO_IDENTITIES, AdmissionState
from meshless.admission.serving import ServingCertificate
from meshless.policy.provision import IdentityRecord
from meshless.runtime.store import Store

Key = tuple[str, str]  # namespace, name


@dataclass(frozen=True, slots=True)
class StateMessage:
    """The operator's admission state; its `identities` are not sent (NO_IDENTITIES)."""

    state: AdmissionState


@dataclass(frozen=True, slots=True)
class IdentityDeltas:
    """Records to put (a record) or delete (None), applied in order."""

    changes: tuple[tuple[Key, IdentityRecord | None], ...]


@dataclass(frozen=True, slots=True)
class CertificateMessage:
    certificate: ServingCertificate


Message = StateMessage | IdentityDeltas | CertificateMessage


def without_identities(state: AdmissionState) -> StateMessage:
    """What of `state` the pipe carries (the identities go as deltas)."""
    return StateMessage(replace(state, identities=NO_IDENTITIES))


def _account(key: Key, record: IdentityRecord) -> tuple[Key]:
    return ((key[0], record.service_account),)


def _secret(key: Key, record: IdentityRecord) -> tuple[Key]:
    return ((key[0], record.secret_name),)


class MirroredIdentities:
    """admit.Identities over a store of the records the operator sent, indexed as the
    operator's own store is (policy/held.py): by ServiceAccount and by Secret."""

    def __init__(self) -> None:
        self.store: Store[Key, IdentityRecord] = Store({"account": _account, "secret": _secret})

    def apply(self, changes: Iterable[tuple[Key, IdentityRecord | None]]) -> None:
        for key, record in changes:
            if record is None:
                self.store.pop(key)
            else:
                self.store.put(key, record)

    def of_account(self, namespace: str, service_account: str) -> Sequence[IdentityRecord]:
        return list(self.store.indexed("account", (namespace, service_account)).values())

    def naming_secret(self, namespace: str, secret: str) -> Sequence[IdentityRecord]:
        return list(self.store.indexed("secret", (namespace, secret)).values())

    def __len__(self) -> int:
        return len(self.store)


class AdmissionMirror:
    """The child's admission state: `apply` each message as it arrives, `current()` for each
    request (one value, as the operator's `current()` gives)."""

    def __init__(self) -> None:
        self.identities = MirroredIdentities()
        self.certificate: ServingCertificate | None = None
        # Before the operator's first state: refused as before priming (policies None,
        # identities not listed); the trust domain is not needed to refuse.
        self._state = AdmissionState(trust_domain="", identities=self.identities)

    @property
    def synced(self) -> bool:
        """The operator's first state has arrived."""
        return bool(self._state.trust_domain)

    def apply(self, message: Message) -> None:
        if isinstance(message, IdentityDeltas):
            self.identities.apply(message.changes)
        elif isinstance(message, StateMessage):
            self._state = replace(message.state, identities=self.identities)
        elif isinstance(message, CertificateMessage):
            self.certificate = message.certificate
        else:  # pragma: no cover - both ends are this module's version
            raise TypeError(f"unknown admission message {type(message).__name__}")

    def current(self) -> AdmissionState:
        return self._state
