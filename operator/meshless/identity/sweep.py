"""A new term's check of every identity (shell): the labelled Secrets listed a page at a time
as metadata only, and what that metadata vouches for kept until each identity's reconcile.

A tenant's Secret carrying an identity's label costs its metadata, never its data. An
identity's own Secret whose metadata vouches for it (identity/checked.py) is checked from the
identity's status, with no read: after a restart with 50,000 identities a read each was
50,000 GETs. The rest read their own Secret by name when reconciled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshless.api import IDENTITY_LABEL
from meshless.identity.checked import CHECKED_ANNOTATION, data_written_only_by, is_own_secret
from meshless.identity.held import HeldIdentity, Key
from meshless.identity.render import metadata_drift
from meshless.identity.spec import SpecError, parse_identity
from meshless.kube import FIELD_MANAGER, SECRETS, Kube
from meshless.runtime.store import Store
from meshless.settings import Settings
from meshless.watch import METADATA_ONLY_LIST
from meshless.workqueue import WorkQueue

SWEEP_BACKLOG = 1000  # identities a sweep keeps queued (with what it vouched for) at most
Vouched = tuple[str, str]  # the Secret's resourceVersion, its checkmark


class Sweep:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        identities: Store[Key, HeldIdentity],
        queue: WorkQueue[Key],
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.identities = identities
        self.queue = queue
        # By Secret (namespace, name): what this term's sweep learnt from its metadata.
        self.vouched: Store[Key, Vouched] = Store()
        self.done = False  # this term's sweep has queued every identity it holds

    def take(self, secret: Key) -> Vouched | None:
        """What the sweep vouched for, once (a reconcile uses it or reads the Secret)."""
        return self.vouched.pop(secret)

    def reset(self) -> None:
        """The end of a term: the next term's sweep looks again."""
        self.vouched.clear()
        self.done = False

    async def run(self, namespaces: tuple[str, ...] | None = None) -> int:
        """Queue every identity, those whose Secret was listed first; the next page is
        listed only once the queue has room. `namespaces` None: cluster-wide. Returns how
        many Secrets were vouched for."""
        covered: set[Key] = set()
        vouched = 0
        scopes: tuple[str | None, ...] = (None,) if namespaces is None else namespaces
        for namespace in scopes:
            async for page in self.kube.pages(
                SECRETS, namespace, label_selector=IDENTITY_LABEL, accept=METADATA_ONLY_LIST
            ):
                for secret in page:
                    meta = secret["metadata"]
                    key = (meta["namespace"], (meta.get("labels") or {}).get(IDENTITY_LABEL, ""))
                    held = self.identities.get(key)
                    if held is None or not is_own_secret(
                        meta, key[1], held.uid, held.secret_name(key[1])
                    ):
                        continue  # not the identity's own Secret: ignored
                    mark = self._mark(key, held, meta)
                    secret_key = (meta["namespace"], meta["name"])
                    if mark is not None:
                        self.vouched.put(secret_key, mark)
                        vouched += 1
                    else:
                        self.vouched.pop(secret_key)
                    self.queue.add(key, background=True)
                    covered.add(key)
                del page
                await self.queue.wait_below(SWEEP_BACKLOG)
        for key in list(self.identities):
            if key not in covered:
                self.queue.add(key, background=True)
        self.done = True  # no await since the pass above: nothing listed slipped between
        return vouched

    def _mark(self, key: Key, held: HeldIdentity, meta: Mapping[str, Any]) -> Vouched | None:
        """(resourceVersion, checkmark) when the metadata of the identity's own Secret says
        its data is as we wrote it (only our field manager touched it) with the labels,
        annotations and owner we set; None: the reconcile reads the Secret."""
        mark = (meta.get("annotations") or {}).get(CHECKED_ANNOTATION)
        version = meta.get("resourceVersion")
        if not mark or not version:
            return None
        if not data_written_only_by(meta, FIELD_MANAGER):
            return None
        body = held.body(*key)
        try:
            spec = parse_identity(key[0], key[1], body.get("spec") or {}, self.settings)
        except SpecError:
            return None
        if metadata_drift(spec, meta, body["metadata"]["uid"]):
            return None
        return (version, mark)


__all__ = ["SWEEP_BACKLOG", "Sweep"]
