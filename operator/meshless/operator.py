"""The Kopf operator: wiring only. Watches come in through Kopf, except identities and their
Secrets (meshless.watch); the work is done by the controllers, which call the pure core.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
from kopf._core.reactor.inventory import ResourceMemories
from prometheus_client import start_http_server

from meshless import metrics
from meshless.admission.configuration_writes import (
    ConfigurationMissing,
    apply_configurations,
    webhook_endpoint,
)
from meshless.admission.keeper import ServingCertificateKeeper
from meshless.admission.process import AdmissionProcess
from meshless.api import (
    GROUP,
    IDENTITY_LABEL,
    TRUST_BUNDLE_NAME,
    VERSION,
    WEBHOOK_CONFIGURATION,
    Plural,
)
from meshless.budget import WriteBudget
from meshless.ca_rotation import CARotation
from meshless.ca_store import CAStore
from meshless.delivery import ServedApis
from meshless.health import HealthServer
from meshless.identity.controller import IdentityController
from meshless.kube import CONFIGMAPS, IDENTITIES, SECRETS, ApiError, Json, Kube, load_configuration
from meshless.leader import LeaderElector, default_identity
from meshless.loopwatch import LoopWatch
from meshless.podcert.wiring import PodCertificates, pod_from_cache
from meshless.policy.admission_state import ControllerAdmissionState
from meshless.policy.controller import PolicyController
from meshless.probe.runner import EnforcementProber
from meshless.runtime.writes import OwnWrites
from meshless.settings import Settings, SettingsError, check_listen_ports
from meshless.startup import StartupState, next_delay
from meshless.status import EventRecorder
from meshless.watch import Key, Watch
from meshless.webhook_ca_store import WebhookCAStore

log = logging.getLogger(__name__)
WEBHOOKS_SERVED_WAIT_S = 30.0  # how long start-up waits for the admission child to listen


def utcnow() -> datetime:
    return datetime.now(UTC)


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """We register no change-detecting handlers, only event handlers that feed our own work
    queue, so Kopf needs no "last handled" essence; building one deep-copies every event's
    body (Secrets included) for nothing."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class EventOnlyMemories(ResourceMemories):
    """Kopf keeps a "memory" per object it has seen (five small objects: a memo copy, an
    error throttler, indexing and daemon state) until the object is deleted: about 1 KB per
    identity and per Secret at 50,000 identities. They serve change-detecting handlers,
    daemons, timers and indexes, none of which we register (only event handlers feeding our
    work queues), so every memory is ephemeral: made for the event, then dropped. Kopf's
    public `kopf.operator(memories=...)` takes the container; the class itself is not
    exported, hence the private import (checked against kopf 1.45)."""

    async def recall(
        self,
        raw_body: kopf.RawBody,
        *,
        memobase: Any = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> Any:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )


class Operator:
    """Holds the running parts; Kopf's handlers reach it through `memo`."""

    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.ca = CAStore(kube, settings, utcnow)
        self.rotation = CARotation(kube, settings, self.ca, utcnow)
        # The webhooks' own CA: the configurations' caBundle, never a workload root.
        self.webhook_ca = WebhookCAStore(
            kube, settings.runtime.namespace, utcnow, settings.ca.settle_time, WEBHOOK_CONFIGURATION
        )
        self.budget = WriteBudget(settings.writes.budget_qps, settings.writes.budget_burst)
        self.events = EventRecorder(kube)
        self.writes = OwnWrites()  # our own writes, for every controller's watch echoes
        self.prober = EnforcementProber(
            kube,
            settings,
            self.events,
            utcnow,
            time.monotonic,
            on_policy_changed=lambda ref: self.policies.request_status(ref),
        )
        self.identities = IdentityController(
            kube,
            settings,
            self.ca,
            self.budget,
            utcnow,
            self.events,
            self.writes,
            on_issued=self.prober.certificate_rotated,
        )
        self.policies = PolicyController(
            kube,
            settings,
            utcnow,
            self.events,
            self.writes,
            on_resolved=self.prober.update_namespace,
            enforcement=self.prober.status_for,
            bundle_needed=self.identities.keep_bundle_in,
            admission_caught_up=lambda: self.webhook_server.caught_up(),
        )
        self.admission_state = ControllerAdmissionState(self.policies, leading=False)
        # The admission webhooks' child process (admission/process.py), fed from the policy
        # controller's stores; started first thing, serving once it has a certificate.
        self.webhook_server = AdmissionProcess(
            self.admission_state.current,
            self.policies.stores.identities,
            self.policies.stores.policies,
            self.admission_state.record_admission,
            host=settings.webhook.host,
            port=settings.webhook.port,
            log_format=settings.runtime.log_format,
        )
        self.webhook_endpoint, self.webhook_hosts = webhook_endpoint(
            settings.webhook.url or None, settings.webhook.service, settings.runtime.namespace
        )
        scopes: tuple[str | None, ...] = settings.runtime.watch_namespaces or (None,)
        self.watches = [
            watch
            for namespace in scopes
            for watch in (
                Watch(
                    kube,
                    IDENTITIES,
                    namespace,
                    self._identity_event,
                    on_listed=self._identities_listed,
                ),
                Watch(
                    kube,
                    SECRETS,
                    namespace,
                    self.identities.on_secret_event,
                    label_selector=IDENTITY_LABEL,  # only our Secrets, never all of them
                    metadata_only=True,
                ),
                Watch(  # the trust bundles, by name (a label could be taken off), repaired
                    kube,
                    CONFIGMAPS,
                    namespace,
                    self.identities.bundles.on_event,
                    field_selector=f"metadata.name={TRUST_BUNDLE_NAME}",
                    metadata_only=True,
                ),
            )
        ]
        self._identity_scopes = set(scopes)
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_tasks: list[asyncio.Task[None]] = []
        self.leading = False
        self.elector: LeaderElector | None = None
        self._configurations_stale = False
        self._configurations_missing = ""
        self.webhooks_served = False
        self.health: HealthServer | None = None
        self.loopwatch = LoopWatch()
        self.startup = StartupState()
        self.pod_certificates: PodCertificates | None = None  # when the API serves them
        metrics.WORK_QUEUE_DEPTH.labels("identity").set_function(lambda: len(self.identities.queue))
        metrics.WORK_QUEUE_DEPTH.labels("policy").set_function(lambda: len(self.policies.queue))

    async def start(self) -> None:
        """Every replica loads the CA and watches; only the leader reconciles and writes.
        The first API call is retried until the API server answers (startup.py); nothing
        before it binds a port or starts a task, so start-up can always run again."""
        if self._tasks:  # started by an earlier run of start-up
            return
        await self.webhook_server.start()  # its imports overlap ours; it binds nothing yet
        await self._load_ca_until_it_answers()
        self._note_ca()
        self._tasks.append(asyncio.create_task(self._poll_ca()))
        self._tasks.append(asyncio.create_task(self._read_policies_for_admission()))
        try:
            await self.webhook_ca.load()
        except Exception:  # the poll tries again; the webhooks wait for it
            log.exception("loading the webhook CA failed")
        self._tasks.append(asyncio.create_task(self._poll_webhook_ca()))
        self._tasks.append(asyncio.create_task(self._serve_webhooks()))
        self._tasks.extend(asyncio.create_task(watch.run()) for watch in self.watches)
        await self._start_pod_certificates()
        if self.settings.runtime.leader_election:
            self.elector = LeaderElector(
                self.kube,
                self.settings.runtime.namespace,
                default_identity(),
                on_started=self._start_leading,
                on_stopped=self._stop_leading,
            )
            self._tasks.append(asyncio.create_task(self.elector.run()))
        else:
            await self._start_leading()
        await self._wait_webhooks_served()
        log.info("operator started")

    async def _start_pod_certificates(self) -> None:
        """The signer meshless.dev/spiffe and the ClusterTrustBundle, where served (podcert/)."""
        self.pod_certificates = await PodCertificates.discover(
            self.kube,
            self.settings,
            self.ca,
            self.budget,
            self.events,
            utcnow,
            pod_from_cache(self.policies.stores.pods),  # type: ignore[arg-type]
        )
        if self.pod_certificates is not None:
            self._tasks.extend(self.pod_certificates.watch_tasks())
            self.rotation.more_progress = self.pod_certificates.rotation_progress
        self._note_delivery()

    async def _load_ca_until_it_answers(self) -> None:
        delay = 0.0
        while True:
            try:
                await self.ca.load()
            except Exception as exc:  # classified: only a persistent non-API error is "stuck"
                self.startup.failed(exc)
                delay = next_delay(delay)
                log.warning(
                    "start-up: cannot read the CA yet (%s); retrying in %.1fs",
                    self.startup.last_error,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self.startup.succeeded()
            return

    def _note_delivery(self) -> None:
        """What discovery found decides `auto` delivery and where pod certificates' ca.crt
        comes from (read at start: a restart picks up an API turned on later)."""
        api = self.pod_certificates.api if self.pod_certificates is not None else None
        self.policies.apis = ServedApis(
            pod_certificate_requests=api.requests.api_version if api and api.requests else "",
            cluster_trust_bundles=(
                api.trust_bundles.api_version if api and api.trust_bundles else ""
            ),
        )
        log.info("identity delivery by default: %s", self.policies.default_delivery.value)

    async def _read_policies_for_admission(self) -> None:
        """Every replica answers admission: a standby, which does not prime, reads the
        policies once (until then it refuses pods in labelled namespaces with 503)."""
        while True:
            try:
                await self.admission_state.read_policies()
                return
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("reading the MtlsPolicies for admission failed (%s); retrying", exc)
                await asyncio.sleep(2)

    def _identity_event(self, event_type: str | None, body: Json) -> None:
        self.identities.on_identity_event(event_type, body)
        self.policies.on_identity_event(event_type, body)

    def _identities_listed(self, namespace: str | None, listed: set[Key]) -> None:
        for body in self.identities.vanished(namespace, listed):
            self._identity_event("DELETED", body)
        # Admission knows whose identity each Secret holds once every scope was listed.
        self._identity_scopes.discard(namespace)
        if not self._identity_scopes:
            self.admission_state.identities_listed = True

    async def start_health(self) -> None:
        """Once per process: a start-up that runs again finds the port already served."""
        if self.health is not None:
            return
        self.health = HealthServer(
            self.settings.endpoints.health_port,
            details=lambda: {
                "issued": self.identities.issued,
                "identities_ready": self.identities.certificates.ready_count,
                "leading": self.leading,
            },
            webhook=self._webhook_address,
            startup=self.startup,
        )
        await self.health.start()

    async def _wait_webhooks_served(self) -> None:
        """Start-up finishes with the webhooks served, as it did with the server in a thread
        (bound at once): the child may take a second or two to import and listen. Not
        waited for without a webhook CA (its poll serves them later), nor beyond 30 s (the
        child's own restarts go on, and /readyz says the webhooks are not served)."""
        if self.webhook_ca.authority is None:
            return
        try:
            await asyncio.wait_for(self.webhook_server.wait_listening(), WEBHOOKS_SERVED_WAIT_S)
        except TimeoutError:
            log.warning("the admission webhooks are not served yet; start-up goes on")
            return
        self.webhooks_served = True

    def _webhook_address(self) -> tuple[str, int] | None:
        if not self.webhooks_served:
            return None
        host = self.settings.webhook.host
        return ("127.0.0.1" if host in ("0.0.0.0", "", "::") else host, self.settings.webhook.port)

    async def _serve_webhooks(self) -> None:
        """Every replica serves the admission webhooks (admission/server.py, in a child
        process, admission/process.py, answered by admit.admit from a mirror of the policy
        controller's state), with a serving certificate from the webhook CA that is renewed
        at 2/3 of its life or when that CA's signing root changes. Without a usable webhook
        CA yet, the server starts once one is loaded."""
        poll = self.settings.ca.poll_interval.total_seconds()
        while self.webhook_ca.authority is None:
            log.warning("admission webhooks wait for a usable webhook CA (see the log)")
            await asyncio.sleep(poll)
        keeper = ServingCertificateKeeper(
            ca=lambda: self.webhook_ca.authority, hosts=self.webhook_hosts, clock=utcnow
        )
        certificate, _ = keeper.issue()
        server = self.webhook_server
        server.load_certificate(certificate)
        await server.wait_listening()  # a child that dies is started again (process.py)
        self.webhooks_served = True
        await keeper.run(server, check_every=poll)

    async def _apply_webhook_configurations(self) -> None:
        """The leader keeps the configurations and their caBundle in step with the webhook CA."""
        bundle = self.webhook_ca.bundle
        if bundle is None:
            return
        try:
            await apply_configurations(
                self.kube, self.webhook_endpoint, bundle, self.settings.runtime.namespace
            )
        except ConfigurationMissing as exc:
            # One line while it stays missing (the next CA polls retry quietly).
            if str(exc) != self._configurations_missing:
                log.error("%s", exc)
            self._configurations_missing = str(exc)
            self._configurations_stale = True
        except Exception:
            log.exception("writing the webhook configurations failed; the next CA poll retries")
            self._configurations_stale = True
        else:
            self._configurations_stale = False
            self._configurations_missing = ""

    async def _start_leading(self) -> None:
        """Called by the elector, which must get back to renewing the Lease: the work of a new
        term (priming, the sweep of every identity) runs in a task of the term."""
        self.leading = True
        self.admission_state.leading = True
        self._leader_tasks.append(asyncio.create_task(self._lead()))

    async def _lead(self) -> None:
        await self._align_name_constraints()  # before anything is issued in this term
        self.identities.queue.start()  # events queue from here; the sweep covers the rest
        # Identities a standby saw made (or failing) first: they wait for nothing else.
        urgent = self.identities.enqueue_not_ready()
        await self._apply_webhook_configurations()
        await self.policies.prime(on_identity=self.identities.remember)
        self.policies.queue.start()
        self.prober.start()
        if self.pod_certificates is not None:
            await self.pod_certificates.lead()
        self._leader_tasks.append(asyncio.create_task(self._resync()))
        log.info("reconciling as leader (%d identities not Ready went first)", urgent)
        await self._sweep()

    async def _align_name_constraints(self) -> None:
        """A self-signed intermediate whose NameConstraints the settings no longer match (a
        restart with other --allowed-dns-names) is replaced before the term issues anything;
        if that fails, the CA poll tries again."""
        try:
            if await self.rotation.align_name_constraints():
                await self.ca.load()
                self._note_ca()
        except Exception:
            log.exception("replacing the intermediate for new name constraints failed")

    async def _sweep(self) -> None:
        """Every identity checked once at the start of a term; tried again if the API
        fails it (until then a resync would still reach every identity)."""
        started = time.monotonic()
        scopes = None
        if self.settings.runtime.watch_namespaces:
            scopes = tuple(sorted({ns for ns, _ in self.identities.store}))
        while True:
            try:
                handed = await self.identities.sweep(scopes)
                break
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("the sweep of every identity failed (%s); trying again in 5 s", exc)
                await asyncio.sleep(5)
        # What the term loaded (the caches, every held identity) lives as long as it: out of
        # the cyclic collector's full passes, as what start-up allocated is.
        gc.freeze()
        log.info(
            "swept %d identities (%d Secrets vouched for by their metadata) in %.1fs",
            len(self.identities.store),
            handed,
            time.monotonic() - started,
        )

    async def _stop_leading(self) -> None:
        """Stop every write at once; the watches go on, so a new term starts warm."""
        self.leading = False
        self.admission_state.leading = False
        for task in self._leader_tasks:
            task.cancel()
        await asyncio.gather(*self._leader_tasks, return_exceptions=True)
        self._leader_tasks = []
        await self.identities.stop()
        await self.policies.queue.stop()
        await self.prober.stop()
        if self.pod_certificates is not None:
            await self.pod_certificates.stop_leading()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.webhook_server.stop()
        if self.leading:
            await self._stop_leading()
        await self.events.close()
        await self.loopwatch.stop()
        if self.health is not None:
            await self.health.stop()
        if self.elector is not None:
            await self.elector.release()
        await self.kube.close()

    def _note_ca(self) -> None:
        if self.ca.current is not None:
            metrics.CA_EXPIRATION.set(self.ca.current.issuer_cert.not_valid_after_utc.timestamp())

    async def _poll_ca(self) -> None:
        """The CA Secret is read by name every few seconds: a changed or repaired CA reaches
        every identity (new issuer, new bundle) without a Secret watch."""
        while True:
            await asyncio.sleep(self.settings.ca.poll_interval.total_seconds())
            try:
                changed = await self.ca.load()
            except Exception:  # the API being away must not stop the poll
                log.exception("reading the CA Secret failed")
                continue
            if self.leading:
                # One CA rotation step per poll; a step that wrote the CA Secret is loaded now.
                try:
                    if await self.rotation.step():
                        changed = await self.ca.load() or changed
                except Exception:
                    log.exception("a CA rotation step failed; the next poll retries")
            if changed:
                self._note_ca()
            if self.leading and (changed or self._configurations_stale):
                await self._apply_webhook_configurations()
            if self.leading and self.pod_certificates is not None:
                await self.pod_certificates.ca_changed(force=self._configurations_stale)
            if changed and self.leading:
                try:
                    await self.identities.refresh_trust_bundles()
                except Exception:
                    log.exception("updating the trust bundles failed; the next change retries")
                self.identities.enqueue_all()

    async def _poll_webhook_ca(self) -> None:
        """Every replica reads the webhook CA (its serving certificate follows the signing
        root); the leader takes one rotation step per poll and writes caBundle on a change."""
        while True:
            await asyncio.sleep(self.settings.ca.poll_interval.total_seconds())
            try:
                changed = await self.webhook_ca.load()
                if self.leading:
                    served = self.webhook_server.certificate
                    chain = served.chain_pem if served is not None else None
                    if await self.webhook_ca.step(chain):
                        changed = await self.webhook_ca.load() or changed
                if self.leading and changed:
                    await self._apply_webhook_configurations()
            except Exception:  # the API being away must not stop the poll
                log.exception("the webhook CA poll failed; trying again")

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.identity.resync_interval.total_seconds())
            self.identities.enqueue_all()
            self.policies.enqueue_all()
            # Applied again at the next CA poll: webhooks wiped by hand (or by `helm upgrade
            # --force`) come back within a resync interval.
            self._configurations_stale = True


def configure(settings: Settings) -> kopf.OperatorRegistry:
    """A registry with our handlers; kept out of import time so tests can build their own."""
    registry = kopf.OperatorRegistry()

    # backoff: should anything unforeseen still fail here, Kopf tries again within seconds
    # (its default is 60 s); every step below can run again.
    @kopf.on.startup(registry=registry, backoff=2)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        ours: Settings = memo.meshless_settings
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.watching.connect_timeout = 30
        # Initial lists in pages: unpaged, 50,000 Secrets were one 200 MB response to parse.
        settings.watching.chunk_size = 500
        # Kopf runs a task per object with events; an idle one lingers for this long. Our
        # handlers only hand the event over, so 1 s (Kopf: 5 s) covers an object's burst
        # (created, then its status) without 50,000 tasks alive after a re-list.
        settings.queueing.idle_timeout = 1.0
        settings.persistence.diffbase_storage = NoDiffBaseStorage()
        operator: Operator | None = getattr(memo, "operator", None)
        if operator is None:
            kube = Kube(load_configuration(), connections=max(8, ours.runtime.workers * 2))
            operator = Operator(ours, kube)
            memo.operator = operator
            operator.loopwatch.start()
        await operator.start_health()  # before "operator started": probes may ask at once
        await operator.start()
        # What start-up allocated lives as long as the process: keep it out of the cyclic
        # collector's full passes, which otherwise stall the loop as the caches grow.
        gc.freeze()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own does not get Kopf's default login handlers.
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        operator: Operator | None = getattr(memo, "operator", None)
        if operator is not None:
            await operator.stop()

    @kopf.on.event(GROUP, VERSION, Plural.MTLS_POLICIES, registry=registry)
    async def policy_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.operator.policies.on_policy_event(type, body)

    @kopf.on.event("v1", "pods", registry=registry)
    async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.operator.policies.on_pod_event(type, body)

    @kopf.on.event("v1", "namespaces", registry=registry)
    async def namespace_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.operator.policies.on_namespace_event(type, body)

    @kopf.on.event("networking.k8s.io", "v1", "networkpolicies", registry=registry)
    async def network_policy_event(
        type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        memo.operator.policies.on_network_policy_event(type, body)

    return registry


def run(settings: Settings, *, stop_flag: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (Kopf handles both) or until `stop_flag` is set."""
    check_listen_ports(settings)
    try:
        load_configuration()
    except Exception as exc:
        raise SettingsError(
            f"cannot load Kubernetes credentials (KUBECONFIG or in-cluster): {exc}"
        ) from None
    start_http_server(settings.endpoints.metrics_port, addr="0.0.0.0")
    registry = configure(settings)
    memo = kopf.Memo(meshless_settings=settings)
    namespaces = list(settings.runtime.watch_namespaces)
    operator = kopf.operator(
        registry=registry,
        memo=memo,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        stop_flag=stop_flag,
        memories=EventOnlyMemories(),
    )
    # The standard asyncio loop, not uvloop: uvloop's sock_connect can leave a closed
    # connection's file descriptor registered, and a reconnect that gets the same number
    # fails with "File descriptor N is used by transport" (MagicStack/uvloop#653, fix stalled
    # in #646). Kopf treats that as fatal in a watcher, so an API server restart could stop
    # the operator (the fault test caught it). uvloop saved some CPU; staying up matters more.
    with asyncio.Runner() as runner:
        runner.run(operator)
