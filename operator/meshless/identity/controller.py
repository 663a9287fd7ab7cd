"""The WorkloadIdentity controller (shell): watch events in, level-based reconciles out.

A reconcile reads the identity's own Secret by name (unless a new term's sweep vouched for it
by its metadata: identity.checked; no other Secret's data is ever read), runs the pure
reissue chain, and writes only what differs: a Secret (through the write budget), one status
patch, an Event when a running workload's certificate changes or a failure's reason does (a
first certificate is recorded by the status alone). Our own writes come back as watch
events; they are recognised by resourceVersion and not reconciled again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from meshless import metrics
from meshless.api import (
    API_VERSION,
    IDENTITY_LABEL,
    ConditionType,
    Kind,
)
from meshless.api import Reason as R
from meshless.budget import WriteBudget
from meshless.ca_store import CAStore
from meshless.conditions import find_condition
from meshless.identity.checked import (
    CHECKED_ANNOTATION,
    checkmark,
    data_written_only_by,
    is_own_secret,
    summary_from_status,
)
from meshless.identity.render import (
    certificate_status,
    decode_secret_data,
    identity_secret,
    is_owned_by,
    metadata_drift,
)
from meshless.identity.rotation_marks import rotation_annotations
from meshless.identity.spec import IdentitySpec, SpecError, default_secret_name, parse_identity
from meshless.identity.trust_bundles import TrustBundles
from meshless.kube import FIELD_MANAGER, IDENTITIES, SECRETS, ApiError, Json, Kube, transient
from meshless.pki.ca import CertificateAuthority
from meshless.pki.reissue import (
    CertificateSummary,
    ObservedSecret,
    ReissueCause,
    reissue_reason,
    renewal_time_for,
    summarize,
)
from meshless.pki.rotation import retired_issuer_deadline
from meshless.pki.svid import (
    IssuedSvid,
    SvidRequest,
    issuance_is_slow,
    issue_svid,
    parse_certificate_chain,
)
from meshless.settings import Settings
from meshless.status import (
    ConditionChange,
    EventRecorder,
    StatusWriter,
    conditions_with,
    involved_object,
)
from meshless.timestamps import rfc3339
from meshless.watch import METADATA_ONLY_LIST
from meshless.workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, name
CA_RETRY_S = 15.0
CONFLICT_RETRY_S = 30.0
ISSUING_NOTICE_S = 1.0
UNWRITTEN_MAX_AGE = timedelta(minutes=5)
SWEEP_BACKLOG = 1000  # identities a sweep keeps queued (with what it vouched for) at most
# report Issuing=True only when the write budget makes us wait
FIRST_ISSUE = ReissueCause(R.SECRET_MISSING, "the Secret does not exist")
READY = ConditionType.READY.value
ISSUING = ConditionType.ISSUING.value


class IdentityController:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        ca: CAStore,
        budget: WriteBudget,
        clock: Callable[[], datetime],
        events: EventRecorder,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.ca = ca
        self.budget = budget
        self.clock = clock
        self.store: dict[Key, HeldIdentity] = {}
        self.queue: WorkQueue[Key] = WorkQueue(self.reconcile, workers=settings.runtime.workers)
        self.issued = 0
        self.events = events
        self.on_issued: Callable[[str, str], None] | None = None  # (namespace, SPIFFE ID)
        self.status = StatusWriter(kube, IDENTITIES, on_raced=self.queue.add)
        # The resourceVersion of each identity Secret as we last wrote or read it: an event
        # carrying it again (our own write's echo, a re-list) changes nothing.
        self._known_secret_rv: dict[Key, str] = {}
        self.swept = False  # this term's sweep has queued every identity it holds
        self._secret_writes: dict[Key, list[str | None]] = {}  # in flight: events meanwhile
        # (Secret resourceVersion, checkmark) of the identity Secrets whose metadata the
        # sweep vouched for (identity.checked): their reconcile trusts the status, read once.
        self._vouched: dict[Key, tuple[str, str]] = {}
        self.bundles = TrustBundles(
            kube,
            budget,
            events,
            desired=lambda: self.ca.bundle,
            leading=lambda: self.queue.running,
            holds_identities=lambda ns: (
                ns in self.bundle_namespaces or any(key[0] == ns for key in self.store)
            ),
        )
        # Namespaces whose pods read ca.crt from the ConfigMap next to a pod certificate (no
        # ClusterTrustBundles served): the policy controller adds them.
        self.bundle_namespaces: set[str] = set()
        # Identities not issued (a refused spec) whose Secret holds this trust bundle.
        self._bundle_only: dict[Key, bytes] = {}
        # Signed but not yet stored (the API refused the write): reused on the retry.
        self._unwritten: dict[Key, tuple[SvidRequest, CertificateAuthority, IssuedSvid]] = {}
        self.certificates = metrics.CERTIFICATES
        metrics.IDENTITIES.labels("ready").set_function(lambda: self.certificates.ready_count)
        metrics.IDENTITIES.labels("not_ready").set_function(
            lambda: len(self.store) - self.certificates.ready_count
        )

    # --- watch events -----------------------------------------------------------------------
    def on_identity_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED":
            self.store.pop(key, None)
            spec = body.get("spec") or {}
            secret_name = spec.get("secretName") or default_secret_name(meta["name"])
            self._vouched.pop((meta["namespace"], secret_name), None)
            self._known_secret_rv.pop((meta["namespace"], secret_name), None)
            self.status.forget(key)
            self.queue.forget(key)
            self._unwritten.pop(key, None)
            self._bundle_only.pop(key, None)
            self.certificates.forget(*key)
            return
        before = self.store.get(key)
        version = meta.get("resourceVersion")
        if before is not None and version is not None and before.resource_version == version:
            return  # held already: our write's echo after its answer, or a re-list
        self.store[key] = HeldIdentity.of(body)
        if self.status.is_echo(body):
            return  # the echo of our own status patch
        if not self.queue.running:
            return  # a standby holds the identity; a new term checks them all
        listed = event_type is None  # a list, at start or after a watch expired
        if listed and not self.swept:
            return  # the sweep in progress checks every identity held
        self.queue.add(key, background=listed)

    def remember(self, body: Mapping[str, Any]) -> None:
        """An identity from a list (the leader's priming list): held, not queued."""
        meta = body["metadata"]
        # A watch event may already have brought a newer version than the list's.
        self.store.setdefault((meta["namespace"], meta["name"]), HeldIdentity.of(body))

    def vanished(self, namespace: str | None, listed: set[Key]) -> list[Json]:
        """After a (re-)list of identities in `namespace` (None: all): the held identities it
        did not return, as the DELETED events a watch would have brought had it been
        running when they went."""
        gone = [
            key
            for key in self.store
            if key not in listed and (namespace is None or key[0] == namespace)
        ]
        return [
            {
                "metadata": {"namespace": ns, "name": name},
                "spec": json.loads(self.store[ns, name].spec),
            }
            for ns, name in gone
        ]

    def on_secret_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Secrets are watched through the label selector on our identity label, as metadata
        only: an event says which identity to look at; the reconcile reads the Secret. A
        labelled Secret not named as the identity's secretName is not the identity's: it
        queues nothing (anyone who may write Secrets in the namespace can label one)."""
        meta = body["metadata"]
        secret_key = (meta["namespace"], meta["name"])
        during = self._secret_writes.get(secret_key)
        if during is not None:  # decided when our write's answer comes
            during.append(None if event_type == "DELETED" else meta.get("resourceVersion"))
            return
        if event_type != "DELETED" and meta.get("resourceVersion") == self._known_secret_rv.get(
            secret_key
        ):
            return
        identity = (meta.get("labels") or {}).get(IDENTITY_LABEL)
        listed = event_type is None
        if not self.queue.running or (listed and not self.swept):
            return  # the sweep of a new term reads every Secret itself, a page at a time
        held = self.store.get((meta["namespace"], identity or ""))
        if held is not None and held.secret_name(identity or "") == meta["name"]:
            self._vouched.pop(secret_key, None)  # what the sweep vouched for is stale now
            self._bundle_only.pop((meta["namespace"], identity or ""), None)
            self.queue.add((meta["namespace"], identity or ""), background=listed)

    async def stop(self) -> None:
        """The end of a term: no more reconciles; the next term sweeps again."""
        await self.queue.stop()
        await self.bundles.stop()
        self._vouched.clear()  # what this term's sweep saw; the next one looks again
        self.swept = False

    def enqueue_not_ready(self) -> int:
        """A new term's first work: every identity whose status is not Ready (new ones, the
        failing), ahead of the sweep that checks all the others. Returns how many."""
        keys = [key for key, held in self.store.items() if not held.ready]
        for key in keys:
            self.queue.add(key)
        return len(keys)

    def enqueue_all(self) -> None:
        """Every identity, behind anything an event queued (a resync, a new CA)."""
        for key in list(self.store):
            self.queue.add(key, background=True)

    async def sweep(self, namespaces: tuple[str, ...] | None = None) -> int:
        """A new term's check of every identity. The labelled Secrets are listed a page at a
        time as metadata only (a tenant's Secret carrying an identity's label costs its
        metadata, never its data); an identity's own Secret whose metadata vouches for it
        (identity.checked) is checked from the identity's status, with no read: after a
        restart with 50,000 identities a read each was 50,000 GETs. The rest read their own
        Secret by name when reconciled. The next page is listed only once the queue has
        room. Then every identity whose Secret was not among them. `namespaces` None:
        cluster-wide. Returns how many Secrets were vouched for."""
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
                    held = self.store.get(key)
                    if held is None or not is_own_secret(
                        meta, key[1], held.uid, held.secret_name(key[1])
                    ):
                        continue  # not the identity's own Secret: ignored
                    mark = self._vouched_mark(key, meta)
                    if mark is not None:
                        self._vouched[(meta["namespace"], meta["name"])] = mark
                        vouched += 1
                    else:
                        self._vouched.pop((meta["namespace"], meta["name"]), None)
                    self.queue.add(key, background=True)
                    covered.add(key)
                del page
                await self.queue.wait_below(SWEEP_BACKLOG)
        for key in list(self.store):
            if key not in covered:
                self.queue.add(key, background=True)
        self.swept = True  # no await since the pass above: nothing listed slipped between
        return vouched

    def _vouched_mark(self, key: Key, meta: Mapping[str, Any]) -> tuple[str, str] | None:
        """(resourceVersion, checkmark) when the metadata of the identity's own Secret says
        its data is as we wrote it (only our field manager touched it) with the labels,
        annotations and owner we set; None: the reconcile reads the Secret."""
        mark = (meta.get("annotations") or {}).get(CHECKED_ANNOTATION)
        version = meta.get("resourceVersion")
        body = self.body(key)
        if not mark or not version or body is None:
            return None
        if not data_written_only_by(meta, FIELD_MANAGER):
            return None
        try:
            spec = parse_identity(key[0], key[1], body.get("spec") or {}, self.settings)
        except SpecError:
            return None
        if metadata_drift(spec, meta, body["metadata"]["uid"]):
            return None
        return (version, mark)

    # --- reconcile --------------------------------------------------------------------------
    async def reconcile(self, key: Key) -> float | None:
        try:
            return await self._reconcile(key)
        except ApiError as exc:
            if exc.status == 403 and "being terminated" in exc.message:
                # The namespace is going away; its objects will go with it.
                log.debug("%s/%s: namespace is terminating; not reconciled", *key)
                return None
            await self._report_failure(key, exc)
            raise
        except Exception as exc:  # one bad object must not stop the others: report, retry
            await self._report_failure(key, exc)
            raise

    async def _report_failure(self, key: Key, exc: Exception) -> None:
        """Ready=False with the error (our errors never carry key material), best effort: the
        API may be what failed. The work queue retries with backoff."""
        body = self.body(key)
        if body is None or transient(exc):
            return
        try:
            await self._not_ready(body, R.ISSUING_FAILED, f"{type(exc).__name__}: {exc}"[:512])
        except Exception as report_exc:
            log.debug("%s/%s: could not report the failure: %s", *key, report_exc)

    def body(self, key: Key) -> Json | None:
        """The identity as the last event or our last write left it (what a reconcile
        needs of it: see HeldIdentity)."""
        held = self.store.get(key)
        return None if held is None else held.body(*key)

    async def _reconcile(self, key: Key) -> float | None:
        body = self.body(key)
        if body is None:
            return None
        namespace, name = key
        try:
            spec = parse_identity(namespace, name, body.get("spec") or {}, self.settings)
        except SpecError as exc:
            # Nothing is signed: a certificate already in the Secret (issued before the name
            # policy refused its names) stays until its notAfter, only its ca.crt kept
            # current. No retry either: a change of the spec (a watch event), of the settings
            # (a restart), of the CA or the periodic resync brings the identity back.
            self._unwritten.pop(key, None)
            await self._not_ready(body, exc.reason, unusable_message(body, exc))
            return await self._keep_bundle_only(key, body)
        self._bundle_only.pop(key, None)
        ca = self.ca.current
        if ca is None:
            return await self._without_ca(body)
        bundle = self.ca.bundle or b""
        await self.bundles.ensure(namespace, bundle)

        if self._never_issued(body, spec):
            # Never issued: try to create the Secret straight away, saving a read per new
            # identity. If something already holds the name, the normal path below decides.
            issued = await self._issue(body, spec, None, FIRST_ISSUE, bundle)
            if issued is not None:
                return issued
        vouched = self._vouched.pop((namespace, spec.secret_name), None)
        if vouched is not None:
            next_check = await self._check_vouched(body, spec, vouched, bundle)
            if next_check is not None:
                return next_check
        secret = await self.kube.get(SECRETS, namespace, spec.secret_name)
        if secret is not None and "resourceVersion" in secret["metadata"]:
            self._known_secret_rv[(namespace, spec.secret_name)] = secret["metadata"][
                "resourceVersion"
            ]
        if secret is not None and not is_owned_by(secret["metadata"], name):
            await self._not_ready(
                body,
                R.SECRET_CONFLICT,
                f"Secret {namespace}/{spec.secret_name} exists and is not owned by "
                f"WorkloadIdentity {name}; it is left untouched. Delete it or set "
                "spec.secretName to another name.",
            )
            return CONFLICT_RETRY_S
        data = decode_secret_data(secret.get("data")) if secret is not None else None
        now = self.clock()
        observed = ObservedSecret(data)
        # Cheap for every algorithm: an RSA key is checked arithmetically when loaded, not by
        # OpenSSL's primality tests (0.26 s for RSA4096 while holding the GIL; see pki.keys).
        reason = reissue_reason(observed, spec.desired, ca, now)
        keep_until: datetime | None = None
        if reason is not None and reason.code == R.ISSUER_RETIRED and data is not None:
            # A CA rotation: the leaf stays (its bundle kept current) until its place in the
            # rotation window or its own renewal, whichever comes first.
            keep_until = self._retired_issuer_deadline(spec, data, now)
            if keep_until is None or keep_until <= now:
                keep_until = None
            else:
                reason = None
        if (
            secret is not None
            and data is not None
            and (reason is None or reason.code == R.BUNDLE_STALE)
        ):
            # Good as it is, or only ca.crt is behind: the same certificate and key are
            # rewritten with the current bundle (a new key buys nothing here).
            leaf = parse_certificate_chain(data["tls.crt"])[0]
            bundle_behind = data.get("ca.crt") != bundle
            summary = summarize(leaf, spec.desired)
            # Verified against the current CA and spec: a write checkmarks it for the next
            # sweep (not a leaf kept through a CA rotation: that one the next sweep reads). A
            # stale or missing checkmark alone is no reason to write: the next sweep reads
            # that Secret, and its next write (renewal at the latest) checkmarks it.
            mark = None if keep_until is not None else self._checkmark(spec, ca, bundle, summary)
            if bundle_behind or metadata_drift(spec, secret["metadata"], body["metadata"]["uid"]):
                await self._write_secret(
                    spec, body, secret, data["tls.crt"], data["tls.key"], bundle, mark
                )
                if bundle_behind:
                    metrics.BUNDLE_UPDATES.labels("Secret").inc()
            await self._ready(body, spec, summary)
            next_check = self._next_check(summary, now)
            if keep_until is not None:
                next_check = min(next_check, max(0.5, (keep_until - now).total_seconds()))
            return next_check
        assert reason is not None
        return await self._issue(body, spec, secret, reason, bundle)

    async def _keep_bundle_only(self, key: Key, body: Json) -> float | None:
        """An identity the operator will not issue that still has a Secret of ours (issued
        before the name policy or the setting refused it): its certificate and key stay as
        they are until notAfter, but its ca.crt follows the trust bundle, or a root rotation
        would wait for that Secret for ever and the workload would stop trusting its peers'
        renewed certificates. Nothing is signed. Read only when the bundle changed since it
        was last confirmed there, or the Secret did (on_secret_event forgets it)."""
        namespace, name = key
        raw = body.get("spec") or {}
        secret_name = str(raw.get("secretName") or default_secret_name(name))
        bundle = self.ca.bundle
        if self.ca.current is None or not bundle or self._bundle_only.get(key) == bundle:
            return None
        secret = await self.kube.get(SECRETS, namespace, secret_name)
        if secret is None or not is_owned_by(secret["metadata"], name):
            return None
        data = decode_secret_data(secret.get("data"))
        if data.get("ca.crt") != bundle:
            waited = await self.budget.acquire()
            metrics.WRITE_BUDGET_WAIT.observe(waited)
            # A replace, as every Secret write here (the chart grants update, not patch),
            # carrying the resourceVersion read: certificate and key are the bytes read.
            meta = {
                **secret["metadata"],
                # What a rotation's count reads of it: the chain kept, the bundle written.
                "annotations": {
                    **(secret["metadata"].get("annotations") or {}),
                    **rotation_annotations(data.get("tls.crt"), bundle),
                },
            }
            manifest = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    k: meta[k]
                    for k in (
                        "name",
                        "namespace",
                        "resourceVersion",
                        "labels",
                        "annotations",
                        "ownerReferences",
                    )
                    if k in meta
                },
                "type": secret.get("type") or "kubernetes.io/tls",
                "data": {**(secret.get("data") or {}), "ca.crt": base64.b64encode(bundle).decode()},
            }
            try:
                written = await self.kube.replace(SECRETS, manifest)
            except ApiError as exc:
                if transient(exc):
                    raise  # retried with backoff; the status stays as reported
                if exc.status in (404, 409):
                    return 0.2  # raced with another write: look again
                log.warning("%s/%s: could not update the trust bundle: %s", *key, exc)
                return None
            self._known_secret_rv[(namespace, secret_name)] = written["metadata"]["resourceVersion"]
            metrics.BUNDLE_UPDATES.labels("Secret").inc()
            log.info("%s/%s: not issued; the trust bundle in its Secret updated", *key)
        self._bundle_only[key] = bundle
        return None

    async def _check_vouched(
        self, body: Json, spec: IdentitySpec, vouched: tuple[str, str], bundle: bytes
    ) -> float | None:
        """The sweep vouched for the Secret's metadata: when its checkmark matches the CA,
        spec and status as they are now, the status describes the Secret's certificate, so a
        Ready identity not yet due for renewal is checked without reading the Secret. None:
        read it."""
        version, mark = vouched
        ca = self.ca.current
        status = body.get("status") or {}
        ready = find_condition(status.get("conditions") or [], READY) or {}
        if ca is None or ready.get("status") != "True":
            return None
        if mark != checkmark(spec.desired, ca, bundle, status):
            return None
        summary = summary_from_status(status, spec.desired)
        now = self.clock()
        if summary is None or now >= summary.renewal_time:
            return None
        self._known_secret_rv[(spec.namespace, spec.secret_name)] = version
        await self._ready(body, spec, summary)
        return self._next_check(summary, now)

    def _checkmark(
        self,
        spec: IdentitySpec,
        ca: CertificateAuthority,
        bundle: bytes,
        summary: CertificateSummary,
    ) -> str:
        return checkmark(spec.desired, ca, bundle, certificate_status(summary, spec.secret_name))

    def _retired_issuer_deadline(
        self, spec: IdentitySpec, data: Mapping[str, bytes], now: datetime
    ) -> datetime | None:
        ca = self.ca.current
        assert ca is not None
        try:
            chain = parse_certificate_chain(data["tls.crt"])
        except (KeyError, ValueError):
            return None
        return retired_issuer_deadline(
            chain,
            trusted_roots=ca.roots,
            renewal_at=renewal_time_for(chain[0], spec.desired),
            namespace=spec.namespace,
            name=spec.name,
            state=self.ca.rotation,
            window=self.settings.ca.rotation_window,
            now=now,
        )

    def _never_issued(self, body: Json, spec: IdentitySpec) -> bool:
        status = body.get("status") or {}
        ready = find_condition(status.get("conditions") or [], READY) or {}
        return (
            not status.get("serialNumber")
            and ready.get("reason") != R.SECRET_CONFLICT
            and (spec.namespace, spec.secret_name) not in self._known_secret_rv
        )

    async def _issue(
        self,
        body: Json,
        spec: IdentitySpec,
        secret: Json | None,
        reason: ReissueCause,
        bundle: bytes,
    ) -> float | None:
        ca = self.ca.current
        assert ca is not None
        if self.budget.expected_wait() > ISSUING_NOTICE_S:
            await self._patch_status(body, self._issuing_status(body, reason))
        key = (spec.namespace, spec.name)
        svid = self._unwritten_svid(key, spec, ca)
        if svid is None:
            request = spec.desired.request
            if issuance_is_slow(ca, request):
                # In a thread (OpenSSL releases the GIL while generating an RSA key): it would
                # stall watches, /healthz and webhooks (decisions.md, "Slow crypto off the
                # event loop").
                svid = await asyncio.to_thread(issue_svid, ca, request, self.clock())
            else:
                svid = issue_svid(ca, request, self.clock())
            metrics.CERTIFICATES_SIGNED.inc()
            self._unwritten[key] = (spec.desired.request, ca, svid)
        summary = summarize(svid.certificate, spec.desired)
        try:
            await self._write_secret(
                spec,
                body,
                secret,
                svid.chain_pem,
                svid.private_key_pem,
                bundle,
                self._checkmark(spec, ca, bundle, summary),
            )
            self._unwritten.pop(key, None)
        except ApiError as exc:
            if exc.status == 409 and secret is None and reason is FIRST_ISSUE:
                return None  # the name is taken: the caller reads the Secret and decides
            if exc.status in (404, 409):  # raced with someone else's write: look again
                return 0.2
            raise
        self.issued += 1
        if self.on_issued is not None:
            self.on_issued(spec.namespace, spec.desired.request.spiffe_id)
        metrics.CERTIFICATES_ISSUED.labels(reason.code).inc()
        first = not (body.get("status") or {}).get("serialNumber")
        await self._ready(body, spec, summary)
        if not first:
            # A new identity's first certificate gets no Event: its status records it
            # (Ready since lastTransitionTime, the serial, the validity), and an Event per new
            # identity was a fifth of the CPU an issuance costs the API server and us
            # (docs/decisions.md). What changes a running workload's certificate is an Event.
            self._event(
                body,
                "Normal",
                R.RENEWED if reason.code == R.RENEWAL_DUE else R.REISSUED,
                f"Issued certificate {summary.serial_number} for {summary.spiffe_id} into "
                f"Secret {spec.secret_name}, valid until {rfc3339(summary.not_after)} "
                f"({reason.code}: {reason.message})",
            )
        log.info(
            "%s/%s: issued %s (%s)", spec.namespace, spec.name, summary.serial_number, reason.code
        )
        return self._next_check(summary, self.clock())

    def _unwritten_svid(
        self, key: Key, spec: IdentitySpec, ca: CertificateAuthority
    ) -> IssuedSvid | None:
        """A certificate signed for this identity that the API refused to store, reused on
        the retry (not signed again on every backoff) while the request and CA are the same
        and it is young: a retry is seconds to a minute away."""
        kept = self._unwritten.get(key)
        if kept is None:
            return None
        request, kept_ca, svid = kept
        age = self.clock() - svid.certificate.not_valid_before_utc
        if request != spec.desired.request or kept_ca is not ca or age > UNWRITTEN_MAX_AGE:
            del self._unwritten[key]
            return None
        return svid

    async def _write_secret(
        self,
        spec: IdentitySpec,
        body: Json,
        existing: Json | None,
        chain_pem: bytes,
        key_pem: bytes,
        bundle: bytes,
        checked: str | None,
    ) -> None:
        manifest = identity_secret(
            spec,
            body["metadata"]["uid"],
            chain_pem=chain_pem,
            private_key_pem=key_pem,
            bundle_pem=bundle,
            resource_version=existing["metadata"]["resourceVersion"] if existing else None,
            checked=checked,
        )
        waited = await self.budget.acquire()
        metrics.WRITE_BUDGET_WAIT.observe(waited)
        secret_key = (spec.namespace, spec.secret_name)
        # The write's watch echo may come before its answer: events meanwhile wait for it.
        self._secret_writes[secret_key] = []
        own: str | None = None
        try:
            if existing is None:
                written = await self.kube.create(SECRETS, manifest)
            else:
                written = await self.kube.replace(SECRETS, manifest)
            own = written["metadata"]["resourceVersion"]
            self._known_secret_rv[secret_key] = own
        finally:
            if any(rv != own for rv in self._secret_writes.pop(secret_key, [])):
                self.queue.add((spec.namespace, spec.name))  # somebody else's change too

    def _next_check(self, summary: CertificateSummary, now: datetime) -> float:
        until_renewal = (summary.renewal_time - now).total_seconds()
        return max(1.0, min(until_renewal, self.settings.identity.resync_interval.total_seconds()))

    async def _without_ca(self, body: Json) -> float:
        """No usable CA: identities with a valid certificate keep it and stay Ready; the rest
        report why they cannot be issued."""
        status = body.get("status") or {}
        ready = find_condition(status.get("conditions") or [], READY)
        not_after = status.get("notAfter")
        if (
            ready
            and ready.get("status") == "True"
            and not_after
            and not_after > rfc3339(self.clock())
        ):
            return CA_RETRY_S
        error = self.ca.error
        reason = error.reason if error else R.CA_UNAVAILABLE
        message = str(error) if error else "the issuing CA is not loaded yet"
        await self._not_ready(body, reason, f"cannot issue: {message}")
        return CA_RETRY_S

    # --- trust bundle -----------------------------------------------------------------------
    async def refresh_trust_bundles(self) -> None:
        bundle = self.ca.bundle
        if bundle is None:
            return
        for namespace in sorted({ns for ns, _ in self.store} | self.bundle_namespaces):
            await self.bundles.ensure(namespace, bundle)

    async def keep_bundle_in(self, namespace: str) -> None:
        """The trust bundle ConfigMap in `namespace` from now on (pods with pod certificates
        read their ca.crt from it)."""
        self.bundle_namespaces.add(namespace)
        bundle = self.ca.bundle
        if bundle is not None:
            await self.bundles.ensure(namespace, bundle)

    # --- status -----------------------------------------------------------------------------
    async def _ready(self, body: Json, spec: IdentitySpec, summary: CertificateSummary) -> None:
        generation = body["metadata"].get("generation")
        conditions = self._conditions(
            body,
            ConditionChange(
                READY, True, R.READY, f"Certificate is valid until {rfc3339(summary.not_after)}"
            ),
            ConditionChange(
                ISSUING, False, R.UP_TO_DATE, f"Renews at {rfc3339(summary.renewal_time)}"
            ),
        )
        wanted = {
            **certificate_status(summary, spec.secret_name),
            "conditions": conditions,
            "observedGeneration": generation,
        }
        await self._patch_status(body, wanted)
        if (spec.namespace, spec.name) in self.store:
            self.certificates.ready(
                spec.namespace,
                spec.name,
                summary.not_after.timestamp(),
                summary.renewal_time.timestamp(),
            )

    def _conditions(self, body: Json, *changes: ConditionChange) -> list[dict[str, Any]]:
        return conditions_with(body, changes, self.clock())

    def _issuing_status(self, body: Json, reason: ReissueCause) -> Json:
        message = f"Waiting for the write budget to issue a certificate: {reason.message}"
        change = ConditionChange(ISSUING, True, reason.code, message)
        return {"conditions": self._conditions(body, change)}

    async def _not_ready(self, body: Json, reason: str, message: str) -> None:
        status = body.get("status") or {}
        generation = body["metadata"].get("generation")
        before = find_condition(status.get("conditions") or [], READY)
        conditions = self._conditions(
            body,
            ConditionChange(READY, False, reason, message),
            ConditionChange(ISSUING, False, reason, message),
        )
        changed = await self._patch_status(
            body, {"conditions": conditions, "observedGeneration": generation}
        )
        meta = body["metadata"]
        if (meta["namespace"], meta["name"]) in self.store:
            self.certificates.not_ready(meta["namespace"], meta["name"])
        if changed and (
            before is None or before.get("reason") != reason or before.get("message") != message
        ):
            metrics.CERTIFICATE_FAILURES.labels(reason).inc()
            self._event(body, "Warning", reason, message)

    async def _patch_status(self, body: Json, wanted: Json) -> bool:
        """Merge-patch the fields of `wanted` that differ. Returns True if it wrote."""
        updated = await self.status.patch(body, wanted)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        raced = self.status.take_raced(key)  # then the store holds the newer event's copy
        if updated is None:
            return False
        if key in self.store and not raced:
            self.store[key] = HeldIdentity.of(updated)
        return True

    def _event(self, body: Json, type: str, reason: str, message: str) -> None:
        self.events.post(
            involved_object(body, API_VERSION, Kind.WORKLOAD_IDENTITY), type, reason, message
        )


@dataclass(slots=True, frozen=True)
class HeldIdentity:
    """What the controller holds of each identity between reconciles: the metadata a write
    needs (uid for owner references, resourceVersion for echo detection, generation for
    observedGeneration) and spec and status as compact JSON, decoded when a reconcile runs.

    Held as parsed JSON, an identity's status (two conditions, serial, times, messages) was
    about 2 KB of dicts and strings; as bytes it is about 0.7 KB, and decoding it costs some
    10 microseconds per reconcile (docs/decisions/scale.md)."""

    uid: str
    generation: int | None
    resource_version: str | None
    spec: bytes
    status: bytes
    ready: bool  # status says Ready=True (a new term checks the others first)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> HeldIdentity:
        meta = body["metadata"]
        status = body.get("status") or {}
        condition = find_condition(status.get("conditions") or [], READY) or {}
        return cls(
            uid=meta.get("uid", ""),
            generation=meta.get("generation"),
            resource_version=meta.get("resourceVersion"),
            spec=_compact(body.get("spec")),
            status=_compact(status),
            ready=condition.get("status") == "True",
        )

    def secret_name(self, name: str) -> str:
        """The name of the identity's own Secret (spec.secretName or the default)."""
        secret_name = json.loads(self.spec).get("secretName")
        return secret_name if isinstance(secret_name, str) else default_secret_name(name)

    def body(self, namespace: str, name: str) -> Json:
        meta: Json = {"name": name, "namespace": namespace, "uid": self.uid}
        if self.generation is not None:
            meta["generation"] = self.generation
        if self.resource_version is not None:
            meta["resourceVersion"] = self.resource_version
        return {"metadata": meta, "spec": json.loads(self.spec), "status": json.loads(self.status)}


def unusable_message(body: Mapping[str, Any], error: SpecError) -> str:
    """The condition and Event message for a spec that cannot be honoured; for names the
    policy refuses, what becomes of a certificate issued before (a name policy that makes an
    identity invalid is reported, never a silent revocation)."""
    message = str(error)
    if error.reason != R.DNS_NAME_NOT_ALLOWED:
        return message
    status = body.get("status") or {}
    if status.get("serialNumber") and status.get("notAfter"):
        message += (
            f". The certificate issued before (serial {status['serialNumber']}, Secret "
            f"{status.get('secretName') or '?'}) is not renewed: it stays valid until "
            f"{status['notAfter']}, then the workload has none"
        )
    return message


def _compact(value: Any) -> bytes:
    return json.dumps(dict(value or {}), separators=(",", ":")).encode()


__all__ = ["HeldIdentity", "IdentityController", "Key"]
