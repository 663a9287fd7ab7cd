"""The signer `meshless.dev/spiffe` (shell): watches PodCertificateRequests, answers ours.

Every replica watches (a field selector on spec.signerName: requests for other signers never
reach us) and holds the requests not yet answered; only the leader answers them, through a
work queue. For each: the pod is looked up in the operator's pod cache, and read from the API
when the cache does not hold a pod that matches (so a Deny is always decided on the pod as
the API server has it); `decide` answers (pure); an Issue is signed with the CA's issuer
(pki/svid.sign_leaf, under the same name constraints as every identity); the status is
written through the /status subresource after a token from the write budget. A Denied or
Failed request gets a Warning Event on its pod.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from meshless import metrics
from meshless.budget import WriteBudget
from meshless.ca_store import CAStore
from meshless.kube import FIELD_MANAGER, PODS, ApiError, Json, Kube, Resource
from meshless.pki.bundle import fingerprint, parse_pem_certificates
from meshless.pki.ca import CertificateAuthority
from meshless.pki.rotation import Progress, RotationState, anchor_of
from meshless.pki.svid import sign_leaf
from meshless.podcert.answer import issued_status, refused_status
from meshless.podcert.decide import Deny, Fail, Issue, PodView, SignerSettings, decide
from meshless.podcert.request import (
    ISSUED,
    SIGNER_NAME,
    RequestError,
    is_ours,
    parse_request,
    terminal_condition,
)
from meshless.status import EventRecorder
from meshless.watch import Key, Watch
from meshless.workqueue import WorkQueue

log = logging.getLogger(__name__)

CA_WAIT_S = 2.0  # no CA loaded yet: look again (never answer Failed for a transient state)
REMEMBERED_PODS = 100_000  # what the signer last signed per pod, for `meshless describe`

PodLookup = Callable[[str, str], PodView | None]


@dataclass(frozen=True)
class Signed:
    """What the signer last signed for a pod (or saw issued for it, after a restart)."""

    request: str  # the PodCertificateRequest's name
    pod_uid: str
    serial: int
    not_before: datetime
    not_after: datetime
    anchor: str  # hex SHA-256 of the root its chain ends at ("" when none of ours)


def pod_view(body: Json) -> PodView:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return PodView(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        service_account=str(spec.get("serviceAccountName") or "default"),
        node_name=str(spec.get("nodeName") or ""),
    )


class PodCertificateSigner:
    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        settings: SignerSettings,
        ca: CAStore,
        budget: WriteBudget,
        events: EventRecorder,
        clock: Callable[[], datetime],
        *,
        cached_pod: PodLookup = lambda namespace, name: None,
        refresh_by: Callable[[], datetime | None] = lambda: None,
        workers: int = 16,
        namespaces: tuple[str | None, ...] = (None,),
    ) -> None:
        self.kube = kube
        self.resource = resource
        self.settings = settings
        self.ca = ca
        self.budget = budget
        self.events = events
        self.clock = clock
        self.cached_pod = cached_pod
        self.refresh_by = refresh_by
        self.pending: dict[Key, tuple[Json, float]] = {}  # unanswered: body, first seen
        self.signed: OrderedDict[Key, Signed] = OrderedDict()  # (namespace, pod) -> last
        self._anchors: dict[str, str] = {}  # intermediate fingerprint -> its root's
        self._issuing_anchor: tuple[CertificateAuthority | None, str] = (None, "")
        self._writing: set[Key] = set()  # answers being written: their events are ours
        self.queue: WorkQueue[Key] = WorkQueue(self._handle, workers=workers)
        self.watches = [
            Watch(
                kube,
                resource,
                namespace,
                self.on_event,
                on_listed=self._listed,
                field_selector=f"spec.signerName={SIGNER_NAME}",
            )
            for namespace in namespaces
        ]

    # --- every replica ----------------------------------------------------------------------
    def on_event(self, event_type: str | None, body: Json) -> None:
        if not is_ours(body):  # the field selector already keeps them away
            return
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED" or terminal_condition(body):
            self.pending.pop(key, None)
            if event_type != "DELETED" and terminal_condition(body) == ISSUED:
                self._learn(body)
            return
        first_seen = self.pending.get(key, (None, time.monotonic()))[1]
        self.pending[key] = (body, first_seen)
        if self.queue.running:
            self.queue.add(key)

    def _listed(self, namespace: str | None, listed: set[Key]) -> None:
        for key in [k for k in self.pending if namespace in (None, k[0]) and k not in listed]:
            del self.pending[key]

    # --- the leader -------------------------------------------------------------------------
    def start(self) -> None:
        """A new term: answer what waits."""
        self.queue.start()
        for key in list(self.pending):
            self.queue.add(key)

    async def stop(self) -> None:
        await self.queue.stop()

    async def _handle(self, key: Key) -> float | None:
        entry = self.pending.get(key)
        if entry is None:
            return None
        body, first_seen = entry
        ca = self.ca.current
        if ca is None:
            return CA_WAIT_S
        # The token first: a certificate is dated when it is signed, and the API server wants
        # its notBefore within 5 minutes of the write, however long the budget made us wait.
        await self.budget.acquire()
        now = self.clock()
        pod: PodView | None = None
        try:
            request = parse_request(body)
        except RequestError as exc:
            decision: Issue | Deny | Fail = Deny("InvalidRequest", str(exc))
        else:
            pod = await self._pod(
                request.namespace, request.pod_name, request.pod_uid, request.service_account
            )
            decision = decide(
                request,
                pod,
                self.settings,
                issuer_validity=ca.validity,
                now=now,
                jitter=random.random(),
                refresh_by=self.refresh_by(),
            )
        leaf: x509.Certificate | None = None
        if isinstance(decision, Issue):
            leaf = await self._sign(ca, decision)
            status = issued_status(decision, leaf, ca.intermediates_pem, now)
        else:
            status = refused_status(decision, now)
        self._writing.add(key)
        try:
            written = await self._write(body, status)
        finally:
            self._writing.discard(key)
        if self.pending.get(key, (None, 0.0))[0] is body:  # not a newer version meanwhile
            del self.pending[key]
        if not written:
            return None
        result = {Issue: "issued", Deny: "denied", Fail: "failed"}[type(decision)]
        metrics.POD_CERTIFICATES_SIGNED.labels(result).inc()
        metrics.POD_CERTIFICATE_SIGNING_SECONDS.observe(time.monotonic() - first_seen)
        if isinstance(decision, Issue) and leaf is not None:
            self._remember(body, leaf, self._anchor_of_issuer(ca))
        elif not isinstance(decision, Issue):
            self._report(body, pod, decision)
        return None

    @staticmethod
    async def _sign(ca: CertificateAuthority, issue: Issue) -> x509.Certificate:
        def sign() -> x509.Certificate:
            return sign_leaf(
                ca,
                issue.public_key,
                issue.spiffe_id,
                issue.dns_names,
                issue.not_before,
                issue.not_after,
            )

        # An RSA issuer's signature takes milliseconds: off the event loop.
        if isinstance(ca.issuer_key, rsa.RSAPrivateKey):
            return await asyncio.to_thread(sign)
        return sign()

    async def _pod(self, namespace: str, name: str, uid: str, account: str) -> PodView | None:
        """The cache's pod when it matches the request; otherwise the API's answer."""
        cached = self.cached_pod(namespace, name)
        if cached is not None and cached.uid == uid and cached.service_account == account:
            return cached
        found = await self.kube.get(PODS, namespace, name)
        return pod_view(found) if found is not None else None

    async def _write(self, body: Json, status: Json) -> bool:
        """PUT /status at the resourceVersion read. False when the request is gone or changed
        since (409): nothing was written."""
        meta = body["metadata"]
        update = {**body, "status": status}
        path = self.resource.path(meta["namespace"], meta["name"], "status")
        try:
            await self.kube.request("PUT", path, update, query=[("fieldManager", FIELD_MANAGER)])
        except ApiError as exc:
            if exc.status == 404:
                return False
            if exc.status == 409:
                # Changed since we read it (answered by a former leader?): the watch brings
                # the newer version, which is queued again unless it is answered.
                return False
            if exc.status == 422 and status.get("certificateChain"):
                # The API refused what we signed: say so on the request, never retry forever.
                log.error(
                    "the API refused the certificate for %s/%s: %s",
                    meta["namespace"],
                    meta["name"],
                    exc,
                )
                await self.budget.acquire()
                return await self._write(
                    body, refused_status(Fail("SignerError", str(exc)[:1000]), self.clock())
                )
            raise
        return True

    def _remember(self, body: Json, leaf: x509.Certificate, anchor: str) -> None:
        spec = body["spec"]
        key = (body["metadata"]["namespace"], spec["podName"])
        known = self.signed.get(key)
        if known is not None and known.not_before > leaf.not_valid_before_utc:
            return  # a newer one is known already
        self.signed.pop(key, None)
        self.signed[key] = Signed(
            request=body["metadata"]["name"],
            pod_uid=str(spec.get("podUID") or ""),
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            anchor=anchor,
        )
        while len(self.signed) > REMEMBERED_PODS:
            self.signed.popitem(last=False)

    def _learn(self, body: Json) -> None:
        """An Issued request seen on the watch (ours just written, or listed after a
        restart): remembered as the pod's certificate unless a newer one is known."""
        meta = body["metadata"]
        if (meta["namespace"], meta["name"]) in self._writing:
            return  # our own answer: remembered once its write returns
        known = self.signed.get((meta["namespace"], body["spec"].get("podName", "")))
        if known is not None and known.request == meta["name"]:
            return  # what we signed
        try:
            chain = parse_pem_certificates(body["status"]["certificateChain"].encode())
        except (KeyError, ValueError):
            return
        self._remember(body, chain[0], self._anchor_of(tuple(chain[1:]) or (chain[0],)))

    def _anchor_of_issuer(self, ca: CertificateAuthority) -> str:
        """The root the CA's issuing chain ends at, computed once per CA."""
        if self._issuing_anchor[0] is not ca:
            self._issuing_anchor = (ca, self._anchor_of(ca.intermediates or (ca.issuer_cert,)))
        return self._issuing_anchor[1]

    def _anchor_of(self, intermediates: tuple[x509.Certificate, ...]) -> str:
        """The root (of the CA's trusted ones) an issuing chain ends at, computed once per
        intermediate."""
        ca = self.ca.current
        if ca is None or not intermediates:
            return ""
        top = fingerprint(intermediates[-1]).hex()
        if top not in self._anchors:
            root = anchor_of(list(intermediates), ca.roots)
            if root is None and intermediates[-1] in ca.roots:
                root = intermediates[-1]  # the issuer is itself a trust anchor
            self._anchors[top] = fingerprint(root).hex() if root is not None else ""
        return self._anchors[top]

    def rotation_progress(self, state: RotationState, now: datetime) -> Progress:
        """The pods' current certificates, as leaves for a root rotation: one per pod still
        held (the same UID), on the old root while it chains to a leaving root and is
        valid. Finish waits until none is: beginRefreshAt cannot be moved, so the kubelets'
        own refreshes (or expiry) end the wait."""
        old = set(state.old_roots)
        total = on_old = 0
        for (namespace, name), known in self.signed.items():
            pod = self.cached_pod(namespace, name)
            if pod is None or pod.uid != known.pod_uid:
                continue
            total += 1
            on_old += known.anchor in old and now < known.not_after
        return Progress(leaves_total=total, leaves_on_old_root=on_old)

    def _report(self, body: Json, pod: PodView | None, decision: Deny | Fail) -> None:
        meta = body["metadata"]
        kind = "denied" if isinstance(decision, Deny) else "failed"
        message = f"{SIGNER_NAME} {kind} PodCertificateRequest {meta['name']}: {decision.message}"
        if pod is not None and pod.uid == (body.get("spec") or {}).get("podUID"):
            involved: Json = {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            }
        else:
            involved = {
                "apiVersion": self.resource.api_version,
                "kind": "PodCertificateRequest",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            }
        log.warning("%s", message)
        self.events.post(involved, "Warning", decision.reason, message)
