"""The admission webhooks served from a child process of the operator (shell), one per
replica: admission/child.py runs the server, `admit` and a mirror of the operator's state
(mirror.py); this side starts it, keeps its mirror current, takes its records and starts
another when it dies. docs/decisions/admission.md, "Serving: a process of its own", says why.

Kept current down the child's stdin, in order (mirror.py has the messages):
- at each start, the state with the identities not yet listed, then the serving certificate
  (once there is one: the child listens from then on), then every WorkloadIdentity record in
  batches, then the state as it is: the child never says "listed" before it holds every
  record;
- after that, only what changes: the identity records a store write touched (the store is
  observed; a record written twice between two sends goes once), and the state whenever
  `state()` returns a new value (`ControllerAdmissionState.current()` builds one only when
  the policies, the flags, the delivery or the APIs changed), looked at after every write of
  the identity or policy store and at least every `resync` seconds;
- the first serving certificate and each renewal (`load_certificate`, the keeper's call);
- a sync marker after all that, when `caught_up()` asks: its answer says the child holds
  what the operator held when it asked. The policy controller asks before it labels a
  namespace for the webhooks, so the first pod the API server sends because of a label is
  answered from a state that has the policy behind it (a CI run saw a pod created right
  after the label pass the injector uninjected).

The child is started with the operator (`start`), before the webhook CA is read: its imports
then overlap the operator's start-up, and it listens as soon as the certificate arrives.

The child's Warn/Audit records come back up its stdout and go to `record` on this loop. The
child exits when its stdin closes: `stop()` closes it, and so does the operator's death.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Hashable
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshless.admission.admit import AdmissionState
from meshless.admission.mirror import (
    CertificateMessage,
    IdentityDeltas,
    Key,
    SyncMessage,
    without_identities,
)
from meshless.admission.pipe import Listening, Synced, frame, read_frame
from meshless.admission.serving import ServingCertificate
from meshless.admission.validate import AdmissionRecord
from meshless.policy.provision import IdentityRecord
from meshless.runtime.store import Store

log = logging.getLogger(__name__)

CHILD_MODULE = "meshless.admission.child"
BATCH = 2000  # identity records per message while a child is filled
STOP_TIMEOUT_S = 10.0
CAUGHT_UP_TIMEOUT_S = 5.0  # a child that cannot answer this soon is not waited for longer
# Where the meshless package lives: the child imports it from there, whatever the operator's
# working directory or sys.path.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class AdmissionProcess:
    """Serves the webhooks from a child process at `host:port`; the keeper's `Serving`."""

    def __init__(
        self,
        state: Callable[[], AdmissionState],
        identities: Store[Key, IdentityRecord],
        policies: Store[Any, Any],
        record: Callable[[AdmissionRecord], None],
        certificate: ServingCertificate | None = None,
        *,
        host: str,
        port: int,
        log_format: str = "text",
        restart_delay: float = 2.0,
        resync: float = 0.5,
    ) -> None:
        self.state = state
        self.identities = identities
        self.record = record
        self._certificate = certificate
        self.host, self.port = host, port
        self.log_format = log_format
        self.restart_delay = restart_delay
        self.resync = resync
        self.listening = False  # a child answers now
        self.started = 0  # children started so far (the first and every restart)
        self.pid: int | None = None
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._stdin: asyncio.StreamWriter | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._first: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._sync_asked = 0  # the newest marker asked for (0: none yet)
        self._sync_sent = 0  # the newest marker written to the child
        self._synced: dict[int, asyncio.Future[bool]] = {}  # answers awaited, by marker
        identities.observe(self._identity_changed)
        policies.observe(self._policy_changed)

    # --- what the operator calls --------------------------------------------------------
    @property
    def certificate(self) -> ServingCertificate | None:
        return self._certificate

    def load_certificate(self, certificate: ServingCertificate) -> None:
        """Serve `certificate` from the next handshake on (sent to the child now; the first
        one makes it listen)."""
        renewal = self._certificate is not None
        self._certificate = certificate
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(frame(CertificateMessage(certificate)))
        if renewal:
            log.info("webhook serving certificate renewed (valid until %s)", certificate.not_after)

    async def start(self) -> None:
        """Start the child (and its supervisor) and return: it imports what it needs while
        the operator starts, and listens once it has a certificate (`wait_listening`). A
        child that dies or cannot listen (the port taken) is started again every
        `restart_delay` s."""
        if self._supervisor is None:
            self._first = asyncio.get_running_loop().create_future()
            self._supervisor = asyncio.create_task(self._supervise())

    async def wait_listening(self) -> None:
        """Return once a child has listened (the first time)."""
        assert self._first is not None, "start() first"
        await asyncio.shield(self._first)

    async def caught_up(self, timeout: float = CAUGHT_UP_TIMEOUT_S) -> bool:
        """Wait until the child has applied everything the operator's stores and state held
        when this was called. True at once when no child answers (there is nothing that
        could answer from an older state); False if it did not answer within `timeout`."""
        if not self.listening or self._stdin is None or self._stdin.is_closing():
            return True
        self._sync_asked += 1
        answered = asyncio.get_running_loop().create_future()
        self._synced[self._sync_asked] = answered
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(answered), timeout)
        except TimeoutError:
            log.warning("the admission child did not catch up within %.0f s", timeout)
            return False

    async def stop(self) -> None:
        """Close the child's stdin (it stops serving and exits), kill it after 10 s."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:  # not self._stdin: it is set only once the child is fed
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning(
                    "the admission child did not stop within %.0f s; killing it", STOP_TIMEOUT_S
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        self.listening = False

    # --- the stores' observers (inside their writes: only take note) ---------------------
    def _identity_changed(self, key: Key) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _policy_changed(self, key: Hashable) -> None:
        self._wake.set()

    # --- the child ----------------------------------------------------------------------
    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                code = await self._run_child()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("running the admission child failed")
                code = None
            self.listening = False
            if self._stopping:
                return
            log.error(
                "the admission child exited (code %s); the webhooks are not served until "
                "another starts, in %.0f s",
                code,
                self.restart_delay,
            )
            await asyncio.sleep(self.restart_delay)

    async def _run_child(self) -> int:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            CHILD_MODULE,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--log-format",
            self.log_format,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        self._proc, self.pid = proc, proc.pid
        self.started += 1
        log.info("admission child started (pid %d)", proc.pid)
        replicate = asyncio.create_task(self._replicate(proc.stdin))
        # A child that cannot be kept current must not answer from a stale mirror.
        replicate.add_done_callback(lambda task: self._replication_ended(task, proc))
        try:
            await self._take_replies(proc.stdout)
            return await proc.wait()
        finally:
            replicate.cancel()
            await asyncio.gather(replicate, return_exceptions=True)
            self._stdin = None  # nothing more is sent to it, no marker asked of it
            self._answer_syncs(None)  # this child answers no more: nobody waits on it
            if proc.returncode is None:  # cancelled (the operator stops): no orphan
                proc.kill()
                await proc.wait()

    async def _replicate(self, stdin: asyncio.StreamWriter) -> None:
        """Fill the new child, then keep it current (see the module's docstring)."""
        first = replace(self.state(), identities_listed=False)  # no record sent yet
        stdin.write(frame(without_identities(first)))
        # From here on `load_certificate` writes to this child: after the first state, so
        # the child never listens without it.
        self._stdin = stdin
        if self._certificate is not None:
            stdin.write(frame(CertificateMessage(self._certificate)))
        self._dirty = set(self.identities.keys())
        sent: AdmissionState | None = None
        self._wake.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.resync)
            self._wake.clear()
            while self._dirty:
                batch = [self._dirty.pop() for _ in range(min(BATCH, len(self._dirty)))]
                changes = tuple((key, self.identities.get(key)) for key in batch)
                stdin.write(frame(IdentityDeltas(changes)))
                await stdin.drain()
            # No await since the last records were written: a state that says "listed"
            # reaches the child after every record written before it.
            state = self.state()
            if state is not sent:
                stdin.write(frame(without_identities(state)))
                sent = state
            if self._sync_asked > self._sync_sent:  # after the records and state it covers
                self._sync_sent = self._sync_asked
                stdin.write(frame(SyncMessage(self._sync_sent)))
            await stdin.drain()

    @staticmethod
    def _replication_ended(task: asyncio.Task[None], proc: asyncio.subprocess.Process) -> None:
        if task.cancelled() or task.exception() is None:
            return
        if proc.returncode is None:
            log.error(
                "keeping the admission child current failed; stopping it",
                exc_info=task.exception(),
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    async def _take_replies(self, stdout: asyncio.StreamReader) -> None:
        while (message := await read_frame(stdout)) is not None:
            if isinstance(message, AdmissionRecord):
                try:
                    self.record(message)
                except Exception:
                    log.exception("recording an admission for the policy status failed")
            elif isinstance(message, Synced):
                self._answer_syncs(message.seq)
            elif isinstance(message, Listening):
                self.listening = True
                log.info("admission webhooks served by the child (pid %s)", self.pid)
                if self._first is not None and not self._first.done():
                    self._first.set_result(None)

    def _answer_syncs(self, seq: int | None) -> None:
        """Answer the `caught_up` waits up to marker `seq` (True), or all of them (False)
        when `seq` is None: the child they waited on is gone."""
        for asked in [k for k in self._synced if seq is None or k <= seq]:
            answered = self._synced.pop(asked)
            if not answered.done():
                answered.set_result(seq is not None)
