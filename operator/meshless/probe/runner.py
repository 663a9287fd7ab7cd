"""Probing in the operator (shell): every running, selected pod's STRICT and PERMISSIVE ports
are probed on a jittered interval and on change, under a cluster-wide budget of connections
per second; results go to policy status, pod Events and metrics.

Reconciles and webhooks never wait on probes: the policy controller only tells the prober
which ports exist (`update_namespace`), and the prober asks for a policy status write when a
result changes. The prober's identity is a WorkloadIdentity of the operator's own
ServiceAccount, issued like any other; its key stays in this process and its Secret.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from meshless import metrics
from meshless.api import API_VERSION, MANAGED_BY, Kind, Mode, Reason
from meshless.budget import WriteBudget
from meshless.conditions import ConditionChange
from meshless.kube import IDENTITIES, SECRETS, ApiError, Kube
from meshless.pki.spiffe import spiffe_id
from meshless.policy.model import PodInfo, PodResolution, PolicyRef
from meshless.probe.classify import Expectation, ProbeResult, Verdict
from meshless.probe.endpoint import probe_endpoint
from meshless.probe.handshake import ProbeContexts, ProberIdentity
from meshless.probe.tally import PortProbe, enforcement_status, port_state
from meshless.settings import Settings
from meshless.status import EventRecorder
from meshless.workqueue import WorkQueue

log = logging.getLogger(__name__)

PROBER_IDENTITY = "meshless-prober"
PROBE_WORKERS = 8
IDLE_CHECK_S = 1.0
ROTATION_REPROBE_S = 90.0  # kubelet syncs mounted Secrets within about a minute
IDENTITY_REREAD_S = 10.0
NO_IDENTITY_RETRY_S = 2.0  # the prober's Secret is read again at most this often
# A result stays "proven" for the interval plus this slack (jitter, a busy budget).
WINDOW_SLACK = 0.5
# Verdicts that mean a STRICT port lets a client in without a certificate: a Warning Event.
ACCEPTS_WITHOUT_CERTIFICATE = {Verdict.PERMISSIVE, Verdict.DISABLE, Verdict.PLAINTEXT}

TargetKey = tuple[str, str, int]  # namespace, pod, port


@dataclass(frozen=True)
class Target:
    """What a port should be. A change of any field means: probe again now."""

    ip: str
    mode: Mode
    spiffe_id: str
    policy: PolicyRef
    pod_uid: str


@dataclass
class TargetState:
    target: Target
    verdict: Verdict | None = None
    at: datetime | None = None
    reprobe_at: float | None = None  # monotonic: a probe is owed at or after this


class EnforcementProber:
    def __init__(
        self,
        kube: Kube,
        settings: Settings,
        events: EventRecorder,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        on_policy_changed: Callable[[PolicyRef], None],
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.events = events
        self.clock = clock
        self.monotonic = monotonic
        self.on_policy_changed = on_policy_changed
        self.interval = settings.probe.interval.total_seconds()
        self.window = timedelta(seconds=self.interval * (1 + WINDOW_SLACK))
        self.budget = WriteBudget(settings.probe.qps, max(1, int(settings.probe.qps)))
        self.targets: dict[TargetKey, TargetState] = {}
        self.by_namespace: dict[str, set[TargetKey]] = defaultdict(set)
        # The probe schedule: one probe of a port at a time, due times kept by the queue.
        self.queue = self._new_queue()
        self._contexts: ProbeContexts | None = None
        self._identity: ProberIdentity | None = None
        self._bundle = b""
        self._identity_version = ""
        self._identity_read_at = float("-inf")
        self._identity_requested = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- what to probe ------------------------------------------------------------------
    def update_namespace(
        self, namespace: str, pods: Iterable[tuple[PodInfo, PodResolution | None]]
    ) -> None:
        """The ports of a namespace after a reconcile: STRICT and PERMISSIVE ports of running,
        ready pods with an IP. Unchanged targets keep their schedule; new or changed ones are
        probed at once."""
        wanted: dict[TargetKey, Target] = {}
        for pod, resolution in pods:
            if resolution is None or not pod.running or not pod.ip or pod.deleting:
                continue
            sid = spiffe_id(self.settings.identity.trust_domain, pod.namespace, pod.service_account)
            for port, port_mode in resolution.ports.items():
                if port_mode.mode not in (Mode.STRICT, Mode.PERMISSIVE):
                    continue
                wanted[(pod.namespace, pod.name, port)] = Target(
                    pod.ip, port_mode.mode, sid, resolution.governing, pod.uid
                )
        changed: set[PolicyRef] = set()
        for key in self.by_namespace.get(namespace, set()) - set(wanted):
            gone = self.targets.pop(key)
            self.queue.forget(key)
            changed.add(gone.target.policy)
        for key, target in wanted.items():
            state = self.targets.get(key)
            if state is not None and state.target == target:
                continue
            if state is not None:
                changed.add(state.target.policy)
            self.targets[key] = TargetState(target)
            changed.add(target.policy)
            self._schedule(key, 0.0)
        self.by_namespace[namespace] = set(wanted)
        if not wanted:
            del self.by_namespace[namespace]
        elif not self._identity_requested and self._tasks:
            # The prober's identity is made when there is first something to probe.
            self._identity_requested = True
            self._tasks.append(asyncio.create_task(self.ensure_identity()))
        for policy in changed:
            self.on_policy_changed(policy)

    def certificate_rotated(self, namespace: str, sid: str) -> None:
        """A workload's certificate changed: probe its ports again soon (the kubelet needs a
        moment to update the mounted files, the workload to reload them)."""
        for key in self.by_namespace.get(namespace, ()):
            state = self.targets[key]
            if state.target.spiffe_id == sid:
                state.reprobe_at = self.monotonic() + ROTATION_REPROBE_S
                self._schedule(key, ROTATION_REPROBE_S)

    def _schedule(self, key: TargetKey, delay: float) -> None:
        """Probe `key` in `delay` seconds, or sooner if it is due sooner. While not leading,
        nothing is scheduled: `start` schedules every target."""
        if self.queue.running:
            self.queue.add_after(key, delay)

    # --- status -------------------------------------------------------------------------
    def probes_of(self, policy: PolicyRef) -> list[PortProbe]:
        return [
            PortProbe(policy, f"{ns}/{pod}", port, state.target.mode, state.verdict, state.at)
            for (ns, pod, port), state in self.targets.items()
            if state.target.policy == policy
        ]

    def status_for(self, policy: PolicyRef) -> tuple[dict[str, object], ConditionChange]:
        return enforcement_status(self.probes_of(policy), self.clock(), self.window)

    def _update_port_metrics(self) -> None:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        now = self.clock()
        for state in self.targets.values():
            probe = PortProbe(
                state.target.policy, "", 0, state.target.mode, state.verdict, state.at
            )
            counts[(state.target.mode.value, port_state(probe, now, self.window))] += 1
        for mode in (Mode.STRICT, Mode.PERMISSIVE):
            for word in ("proven", "failing", "unreachable", "pending"):
                metrics.ENFORCEMENT_PORTS.labels(mode.value, word).set(
                    counts.get((mode.value, word), 0)
                )

    # --- running ------------------------------------------------------------------------
    def _new_queue(self) -> WorkQueue[TargetKey]:
        return WorkQueue(self._probe_due, workers=PROBE_WORKERS, clock=self.monotonic)

    def start(self) -> None:
        self.queue = self._new_queue()  # a new term: what an earlier one scheduled is dropped
        self.queue.start()
        self._tasks = [asyncio.create_task(self._report_ports())]
        self._identity_requested = False
        for key in self.targets:  # a new term: everything is due
            self._schedule(key, random.uniform(0, min(self.interval, 5.0)))
        if self.targets:
            self._identity_requested = True
            self._tasks.append(asyncio.create_task(self.ensure_identity()))

    async def stop(self) -> None:
        await self.queue.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _report_ports(self) -> None:
        """The port gauges, every IDLE_CHECK_S: a port's state ages (proven, then pending)
        without any event."""
        while True:
            self._update_port_metrics()
            await asyncio.sleep(IDLE_CHECK_S)

    async def _probe_due(self, key: TargetKey) -> float | None:
        """The queue's handler: probe one port, and say when to probe it next (None: it is
        gone). A failed probe is logged and tried again at the interval, not backed off."""
        state = self.targets.get(key)
        if state is None:
            return None
        probed = False
        try:
            probed = await self._probe(key, state)
        except Exception:
            log.exception("probing %s/%s:%d failed", *key)
        current = self.targets.get(key)
        if current is None:
            return None
        if not probed:  # no prober identity yet
            return min(self.interval, NO_IDENTITY_RETRY_S)
        delay = self.interval * (1 + random.uniform(-0.1, 0.1))
        if current.reprobe_at is not None:  # a certificate rotated: one probe after it is owed
            owed = current.reprobe_at - self.monotonic()
            if owed > 0:
                return min(delay, owed)
            current.reprobe_at = None
        return delay

    async def _probe(self, key: TargetKey, state: TargetState) -> bool:
        """Probe one port; False when there is no prober identity to probe with yet."""
        contexts = await self._prober_contexts()
        if contexts is None or self._identity is None:
            return False
        target = state.target
        result: ProbeResult = await probe_endpoint(
            target.ip,
            key[2],
            Expectation(target.mode.value, target.spiffe_id),
            self._identity,
            self._bundle,
            self.settings.probe.timeout.total_seconds(),
            contexts=contexts,
            acquire=self.budget.acquire,
        )
        metrics.ENFORCEMENT_PROBES.labels(result.verdict.value).inc()
        current = self.targets.get(key)
        if current is None or current.target != target:
            return True  # the port changed while it was probed: that schedules its own
        before = current.verdict
        current.verdict, current.at = result.verdict, self.clock()
        self.targets[key] = replace(current)
        if result.verdict != before or result.meets_expectation:
            self.on_policy_changed(target.policy)
        if result.meets_expectation:
            metrics.ENFORCEMENT_LAST_PROVEN.labels(target.policy.namespace, target.policy.name).set(
                current.at.timestamp()
            )
        if (
            target.mode is Mode.STRICT
            and result.verdict in ACCEPTS_WITHOUT_CERTIFICATE
            and result.verdict != before
        ):
            self.events.post(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "namespace": key[0],
                    "name": key[1],
                    "uid": target.pod_uid,
                },
                "Warning",
                Reason.STRICT_NOT_ENFORCED,
                f"Port {key[2]} is STRICT under MtlsPolicy {target.policy} but the probe "
                f"observed {result.verdict.value}: a client without a certificate gets in",
            )
        return True

    # --- the prober's own identity ------------------------------------------------------
    async def ensure_identity(self) -> None:
        """The WorkloadIdentity of the operator's ServiceAccount (the leader makes it)."""
        body = {
            "apiVersion": API_VERSION,
            "kind": Kind.WORKLOAD_IDENTITY.value,
            "metadata": {
                "name": PROBER_IDENTITY,
                "namespace": self.settings.runtime.namespace,
                "labels": dict(MANAGED_BY),
            },
            "spec": {"serviceAccountName": self.settings.runtime.service_account},
        }
        try:
            await self.kube.apply(IDENTITIES, body)
        except ApiError as exc:
            log.warning("could not create the prober identity: %s", exc)

    async def _prober_contexts(self) -> ProbeContexts | None:
        """Client contexts from the prober's Secret, rebuilt when it changes."""
        now = self.monotonic()
        if self._contexts is not None and now - self._identity_read_at < IDENTITY_REREAD_S:
            return self._contexts
        self._identity_read_at = now
        secret = await self.kube.get(
            SECRETS, self.settings.runtime.namespace, f"{PROBER_IDENTITY}-mtls"
        )
        if secret is None:
            return None
        version = secret["metadata"].get("resourceVersion", "")
        if version != self._identity_version or self._contexts is None:
            data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
            if not all(data.get(k) for k in ("tls.crt", "tls.key", "ca.crt")):
                return None
            self._identity = ProberIdentity(data["tls.crt"], data["tls.key"])
            self._bundle = data["ca.crt"]
            self._contexts = await asyncio.to_thread(
                ProbeContexts.build, self._identity, self._bundle
            )
            self._identity_version = version
        return self._contexts
