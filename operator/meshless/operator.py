"""The Kopf operator: wiring only. Watches come in through Kopf; the work is done by the
controllers, which call the pure core.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import kopf
from prometheus_client import start_http_server

from meshless import metrics
from meshless.api import GROUP, IDENTITY_LABEL, VERSION, Plural
from meshless.budget import WriteBudget
from meshless.ca_rotation import CARotation
from meshless.ca_store import CAStore
from meshless.identity.controller import IdentityController
from meshless.kube import Kube, load_configuration
from meshless.leader import LeaderElector, default_identity
from meshless.policy.controller import PolicyController
from meshless.settings import Settings
from meshless.status import EventRecorder

log = logging.getLogger(__name__)


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


class Operator:
    """Holds the running parts; Kopf's handlers reach it through `memo`."""

    def __init__(self, settings: Settings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self.ca = CAStore(kube, settings, utcnow)
        self.rotation = CARotation(kube, settings, self.ca, utcnow)
        self.budget = WriteBudget(settings.write_budget_qps, settings.write_budget_burst)
        self.events = EventRecorder(kube)
        self.identities = IdentityController(
            kube, settings, self.ca, self.budget, utcnow, self.events
        )
        self.policies = PolicyController(kube, settings, utcnow, self.events)
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_tasks: list[asyncio.Task[None]] = []
        self.leading = False
        self.elector: LeaderElector | None = None
        metrics.WORK_QUEUE_DEPTH.labels("identity").set_function(lambda: len(self.identities.queue))
        metrics.WORK_QUEUE_DEPTH.labels("policy").set_function(lambda: len(self.policies.queue))

    async def start(self) -> None:
        """Every replica loads the CA and watches; only the leader reconciles and writes."""
        await self.ca.load()
        self._note_ca()
        self._tasks.append(asyncio.create_task(self._poll_ca()))
        if self.settings.leader_election:
            self.elector = LeaderElector(
                self.kube,
                self.settings.namespace,
                default_identity(),
                on_started=self._start_leading,
                on_stopped=self._stop_leading,
            )
            self._tasks.append(asyncio.create_task(self.elector.run()))
        else:
            await self._start_leading()
        log.info("operator started")

    async def _start_leading(self) -> None:
        self.leading = True
        self.identities.queue.start()
        await self.policies.prime()
        self.policies.queue.start()
        self.identities.enqueue_all()
        self._leader_tasks.append(asyncio.create_task(self._resync()))
        log.info("reconciling as leader")

    async def _stop_leading(self) -> None:
        """Stop every write at once; the watches go on, so a new term starts warm."""
        self.leading = False
        for task in self._leader_tasks:
            task.cancel()
        await asyncio.gather(*self._leader_tasks, return_exceptions=True)
        self._leader_tasks = []
        await self.identities.queue.stop()
        await self.policies.queue.stop()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.leading:
            await self._stop_leading()
        await self.events.close()
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
            await asyncio.sleep(self.settings.ca_poll_interval.total_seconds())
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
            if changed and self.leading:
                try:
                    await self.identities.refresh_trust_bundles()
                except Exception:
                    log.exception("updating the trust bundles failed; the next change retries")
                self.identities.enqueue_all()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval.total_seconds())
            self.identities.enqueue_all()
            self.policies.enqueue_all()


def configure(settings: Settings) -> kopf.OperatorRegistry:
    """A registry with our handlers; kept out of import time so tests can build their own."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        ours: Settings = memo.meshless_settings
        settings.peering.standalone = True
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 270
        settings.watching.client_timeout = 300
        settings.watching.connect_timeout = 30
        settings.persistence.diffbase_storage = NoDiffBaseStorage()
        # Only our own Secrets are watched, filtered by the API server: never all Secrets.
        settings.watching.label_selectors["v1", "secrets"] = IDENTITY_LABEL
        kube = Kube(load_configuration(), connections=max(8, ours.workers * 2))
        memo.operator = Operator(ours, kube)
        await memo.operator.start()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own does not get Kopf's default login handlers.
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        operator: Operator | None = getattr(memo, "operator", None)
        if operator is not None:
            await operator.stop()

    @kopf.on.event(GROUP, VERSION, Plural.WORKLOAD_IDENTITIES, registry=registry)
    async def identity_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.operator.identities.on_identity_event(type, body)
        memo.operator.policies.on_identity_event(type, body)

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

    @kopf.on.event("v1", "secrets", labels={IDENTITY_LABEL: kopf.PRESENT}, registry=registry)
    async def secret_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        memo.operator.identities.on_secret_event(type, body)

    @kopf.on.probe(id="issued", registry=registry)
    async def issued_probe(memo: kopf.Memo, **_: Any) -> int:
        operator: Operator | None = getattr(memo, "operator", None)
        return operator.identities.issued if operator else 0

    return registry


def run(settings: Settings, *, stop_flag: threading.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (Kopf handles both) or until `stop_flag` is set."""
    start_http_server(settings.metrics_port, addr="0.0.0.0")
    registry = configure(settings)
    memo = kopf.Memo(meshless_settings=settings)
    namespaces = list(settings.watch_namespaces)
    operator = kopf.operator(
        registry=registry,
        memo=memo,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        stop_flag=stop_flag,
    )
    # uvloop (Kopf's optional extra; Kopf's own CLI uses it the same way): the event loop and
    # its sockets are a large part of the operator's CPU.
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(operator)
