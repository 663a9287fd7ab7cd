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
- `CertificateMessage`: the serving certificate, at start and at each renewal;
- `SyncMessage`: a marker the child answers (`pipe.Synced`) once it has applied everything
  sent before it: the operator waits for it before it labels a namespace for the webhooks.

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


@dataclass(frozen=True, slots=True)
class SyncMessage:
    seq: int


Message = StateMessage | IdentityDeltas | CertificateMessage | SyncMessage


def without_identities(state: AdmissionState) -> StateMessage:
    """What of `state` the pipe carries (the identities go as deltas)."""
    return StateMessage(replace(state, identities=NO_IDENTITIES))


class MirroredIdentities:
    """admit.Identities over the records the operator sent, looked up as the operator's own
    store is (policy/held.py): by ServiceAccount and by Secret.

    Leaner than the operator's `runtime.store.Store` (measured with 50,000 records, about a
    third of the child's memory is the indexes): an index value maps to the tuple of the keys
    under it (almost always one) instead of a dict per value, and a record's key is made of
    its own strings (the key that came with it is dropped)."""

    def __init__(self) -> None:
        self._records: dict[Key, IdentityRecord] = {}
        self._by_account: dict[Key, tuple[Key, ...]] = {}
        self._by_secret: dict[Key, tuple[Key, ...]] = {}

    def apply(self, changes: Iterable[tuple[Key, IdentityRecord | None]]) -> None:
        for key, record in changes:
            before = self._records.pop(key, None)
            if before is not None:
                _unindex(self._by_account, (before.namespace, before.service_account), key)
                _unindex(self._by_secret, (before.namespace, before.secret_name), key)
            if record is None:
                continue
            key = (record.namespace, record.name)
            self._records[key] = record
            _index(self._by_account, (record.namespace, record.service_account), key)
            _index(self._by_secret, (record.namespace, record.secret_name), key)

    def of_account(self, namespace: str, service_account: str) -> Sequence[IdentityRecord]:
        return [self._records[k] for k in self._by_account.get((namespace, service_account), ())]

    def naming_secret(self, namespace: str, secret: str) -> Sequence[IdentityRecord]:
        return [self._records[k] for k in self._by_secret.get((namespace, secret), ())]

    def __len__(self) -> int:
        return len(self._records)


def _index(index: dict[Key, tuple[Key, ...]], value: Key, key: Key) -> None:
    index[value] = (*index.get(value, ()), key)


def _unindex(index: dict[Key, tuple[Key, ...]], value: Key, key: Key) -> None:
    left = tuple(k for k in index.get(value, ()) if k != key)
    if left:
        index[value] = left
    else:
        index.pop(value, None)


class AdmissionMirror:
    """The child's admission state: `apply` each message as it arrives, `current()` for each
    request (one value, as the operator's `current()` gives)."""

    def __init__(self) -> None:
        self.identities = MirroredIdentities()
        self.certificate: ServingCertificate | None = None
        # Before the operator's first state: refused as before priming (policies None,
        # identities not listed); the trust domain is not needed to refuse.
        self._state = AdmissionState(trust_domain="", identities=self.identities)

    def apply(self, message: Message) -> None:
        if isinstance(message, IdentityDeltas):
            self.identities.apply(message.changes)
        elif isinstance(message, StateMessage):
            self._state = replace(message.state, identities=self.identities)
        elif isinstance(message, CertificateMessage):
            self.certificate = message.certificate
        elif isinstance(message, SyncMessage):
            pass  # nothing to hold: the child answers it
        else:  # pragma: no cover - both ends are this module's version
            raise TypeError(f"unknown admission message {type(message).__name__}")

    def current(self) -> AdmissionState:
        return self._state
