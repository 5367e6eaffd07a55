"""Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does it.

Only the holder of one Lease in the operator's namespace reconciles; the other replicas stand by
and poll it. The decisions are pure functions of what was read and a clock, tested with a fake
one; `LeaderElector` does the reading and writing around them.

- A candidate judges expiry by its own clock: a Lease is expired when its record has not
  changed for `leaseDurationSeconds` since this process *saw* it change, never by comparing
  the `renewTime` another machine wrote with ours (clock skew would decide who leads).
- Every write carries the resourceVersion it was read at: of two candidates taking over the
  same expired Lease, the API server accepts one and answers the other 409.
- The leader that cannot renew within the renew deadline (shorter than the lease duration)
  stops at once: `keep_leading` calls `on_lost`, which in the operator exits the process. A
  candidate waits out the full lease duration after the last renewal it saw, so the old leader
  has stopped before the new one starts (the deadline's margin absorbs a slow loop or a slow
  request). A lost leader that tried to stop kopf and its reconcile threads in place could not
  bound how long they go on; a new process can (controller-runtime exits too).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bakeline.kube.client import Kube
from bakeline.kube.clock import epoch
from bakeline.metrics.collectors import LEADER

log = logging.getLogger("bakeline.leader")

# client-go's defaults (and kube-controller-manager's flags).
LEASE_DURATION_S = 15
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0
JITTER = 1.2  # client-go's JitterFactor: a retry waits retry period x [1, 1.2)
EXIT_LEADERSHIP_LOST = 1
DEFAULT_LEASE_NAME = "bakeline-operator"


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    name: str
    identity: str
    lease_duration_s: int = LEASE_DURATION_S
    renew_deadline_s: float = RENEW_DEADLINE_S
    retry_period_s: float = RETRY_PERIOD_S

    def __post_init__(self) -> None:
        # client-go's checks: the margin between the deadline and the duration is what keeps
        # two leaders from overlapping, and a deadline shorter than a retry never renews.
        if not self.identity:
            raise ValueError("leader election needs an identity")
        if self.lease_duration_s <= self.renew_deadline_s:
            raise ValueError("the lease duration must be longer than the renew deadline")
        if self.renew_deadline_s <= JITTER * self.retry_period_s:
            raise ValueError(f"the renew deadline must exceed {JITTER} x the retry period")
        if self.retry_period_s <= 0:
            raise ValueError("the retry period must be positive")


def default_identity() -> str:
    """The pod's name (the chart passes it from the downward API), else host and pid: unique
    per process when run by hand."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


# ---------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease's spec says, plus the resourceVersion it was read at (not part of the
    record: a change of labels alone is no renewal)."""

    holder: str
    lease_duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None = field(default=None, compare=False)

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(lease.get("metadata") or {}).get("resourceVersion"),
        )


@dataclass(frozen=True)
class Observation:
    """A record and when (on this process's monotonic clock) it was first seen as it is."""

    record: LeaseRecord
    seen_at: float


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet
    TAKE_OVER = "take over"  # expired or released: ours, with one more transition
    RENEW = "renew"  # ours already
    WAIT = "wait"  # another's, and alive


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The observation after reading `record` at `now`: its clock restarts only when the
    record changed (a renewal, a new holder), so an unchanged record ages."""
    if previous is not None and previous.record == record:
        return Observation(record, previous.seen_at)
    return Observation(record, now)


def expired(observation: Observation, now: float) -> bool:
    """Released (no holder), or unchanged for the lease's duration since it was seen."""
    record = observation.record
    return not record.holder or now >= observation.seen_at + record.lease_duration_s


def decide(identity: str, observation: Observation | None, now: float) -> Action:
    if observation is None:
        return Action.CREATE
    if observation.record.holder == identity:
        return Action.RENEW
    return Action.TAKE_OVER if expired(observation, now) else Action.WAIT


def lost(renewed_at: float, now: float, renew_deadline_s: float) -> bool:
    """The leader has gone `renew_deadline_s` without a successful renewal: it must stop."""
    return now - renewed_at >= renew_deadline_s


def micro_time(wall: float) -> str:
    """A Lease's MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    config: ElectionConfig, action: Action, record: LeaseRecord | None, wall: float
) -> dict[str, Any]:
    """The Lease to write for `action` (not WAIT), conditional on the version read."""
    if action is Action.WAIT:
        raise ValueError("nothing to write while another holds the lease")
    now = micro_time(wall)
    metadata: dict[str, Any] = {"name": config.name, "namespace": config.namespace}
    if action is Action.CREATE or record is None:
        acquired, transitions = now, 0
    elif action is Action.TAKE_OVER:
        acquired, transitions = now, record.transitions + 1
    else:
        acquired, transitions = record.acquire_time or now, record.transitions
    if record is not None and record.resource_version:
        metadata["resourceVersion"] = record.resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": config.identity,
            "leaseDurationSeconds": config.lease_duration_s,
            "acquireTime": acquired,
            "renewTime": now,
            "leaseTransitions": transitions,
        },
    }


def acquired_at(lease: dict[str, Any]) -> float | None:
    """When the Lease's holder acquired it (unix seconds), for takeover measurements."""
    return epoch((lease.get("spec") or {}).get("acquireTime"))


# ---------------------------------------------------------------------------- the loop


def exit_process(reason: str) -> None:
    """What a lost leader does: exit at once, non-zero, so that no reconcile thread runs on
    and the pod restarts as a standby. os._exit: no cleanup handler may write anything more."""
    LEADER.set(0)
    log.critical("leader election lost (%s): exiting", reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_LEADERSHIP_LOST)


class LeaderElector:
    """Acquires and keeps the Lease for one process. `clock` is monotonic (expiry and
    deadlines); `wall` is what goes into the Lease's times."""

    def __init__(
        self,
        kube: Kube,
        config: ElectionConfig,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        watchdog: bool = True,
    ) -> None:
        self.kube, self.config = kube, config
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.watchdog = watchdog
        self.observation: Observation | None = None
        self.renewed_at: float | None = None  # our last successful write, by `clock`
        self.leading = False
        self.last_action: Action | None = None
        # Whether a read of the Lease has answered: a candidate's clock on the record starts
        # at its first look, so one that has not looked cannot take over in time.
        self.looked = False
        self._stopped = threading.Event()
        self._losing = threading.Lock()  # the loop and the watchdog may both find it lost

    def try_acquire_or_renew(self) -> bool:
        """One round (blocking calls): read the Lease, and write it if it is or may become
        ours. False: another holds it, or another write won the race (409)."""
        config = self.config
        # Taken before the read: a renewal then counts from no later than it really happened,
        # which only ever shortens how long this process believes it leads.
        now = self.clock()
        timeout = config.renew_deadline_s
        if self.leading and self._renew_optimistically(now, timeout):
            return True
        lease = self.kube.read_lease(config.namespace, config.name, timeout)
        self.looked = True
        if lease is None:
            self.observation = None
        else:
            self.observation = observe(self.observation, LeaseRecord.from_lease(lease), now)
        action = self.last_action = decide(config.identity, self.observation, now)
        if action is Action.WAIT:
            return False
        record = self.observation.record if self.observation else None
        body = lease_body(config, action, record, self.wall())
        if action is Action.CREATE:
            written = self.kube.create_lease(body, timeout)
        else:
            written = self.kube.replace_lease(config.namespace, config.name, body, timeout)
        if written is None:  # 409: someone wrote first; the next round reads what they wrote
            log.info("lease %s conflicted (409): another write came first", action.value)
            return False
        self.observation = Observation(LeaseRecord.from_lease(written), now)
        self.renewed_at = now
        if action is not Action.RENEW or not self.leading:
            log.info(
                "%s the lease %s/%s as %s (transition %d)",
                "created" if action is Action.CREATE else "took",
                config.namespace,
                config.name,
                config.identity,
                self.observation.record.transitions,
            )
        return True

    def _renew_optimistically(self, now: float, timeout: float) -> bool:
        """A leader renews at the version of its own last write, without reading first (as
        client-go does): one request, not two, so a busy process renews sooner. A 409 means
        the Lease changed since: the caller reads it."""
        observation = self.observation
        if observation is None or observation.record.holder != self.config.identity:
            return False
        body = lease_body(self.config, Action.RENEW, observation.record, self.wall())
        written = self.kube.replace_lease(self.config.namespace, self.config.name, body, timeout)
        if written is None:
            return False
        self.last_action = Action.RENEW
        self.observation = Observation(LeaseRecord.from_lease(written), now)
        self.renewed_at = now
        return True

    async def _round(self, timeout: float) -> bool:
        began = self.clock()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self.try_acquire_or_renew), timeout=max(timeout, 0.01)
            )
        except TimeoutError:
            log.warning("lease round took longer than %.1fs", timeout)
        except Exception as exc:  # the API server down or refusing: try again, the clock runs
            log.warning("lease round failed: %s", exc)
        finally:
            took = self.clock() - began
            if took > self.config.retry_period_s:  # what eats into the renew deadline
                log.warning("lease round took %.2fs", took)
        return False

    def _retry_wait(self) -> float:
        return self.config.retry_period_s * random.uniform(1.0, JITTER)  # noqa: S311 (jitter)

    async def acquire(self) -> None:
        """Return once this process holds the Lease; until then a round every retry period."""
        LEADER.set(0)
        holder = None
        while not await self._round(self.config.renew_deadline_s):
            now_holder = self.observation.record.holder if self.observation else None
            if now_holder != holder:
                holder = now_holder
                log.info("standing by: the lease is held by %s", holder or "nobody")
            await self.sleep(self._retry_wait())
        self.leading = True
        LEADER.set(1)

    async def keep_leading(self, on_lost: Callable[[str], None] = exit_process) -> None:
        """Renew every retry period; call `on_lost` (once) when the Lease turns out to be
        another's, or no renewal succeeded within the renew deadline. A watchdog thread makes
        the deadline hold even if this event loop stalls."""
        config = self.config
        if self.watchdog:
            self._watch(on_lost)
        try:
            while True:
                slept = self.clock()
                await self.sleep(config.retry_period_s)
                if self.clock() - slept > config.retry_period_s + 1.0:
                    log.warning("the event loop stalled: %.2fs", self.clock() - slept)
                assert self.renewed_at is not None, "keep_leading follows acquire"
                left = config.renew_deadline_s - (self.clock() - self.renewed_at)
                if await self._round(left):
                    if self.last_action is Action.RENEW:
                        continue
                    # Ours again only after another's term: this process did not lead
                    # throughout, and must not go on as if it had.
                    self._lose(on_lost, "the lease changed hands meanwhile")
                    return
                holder = self.observation.record.holder if self.observation else ""
                if holder and holder != config.identity:
                    self._lose(on_lost, f"the lease is now held by {holder}")
                    return
                if lost(self.renewed_at, self.clock(), config.renew_deadline_s):
                    self._lose(on_lost, f"not renewed within {config.renew_deadline_s:g}s")
                    return
        finally:
            self._stopped.set()

    def _lose(self, on_lost: Callable[[str], None], reason: str) -> None:
        with self._losing:
            if not self.leading:
                return
            self.leading = False
        LEADER.set(0)
        on_lost(reason)

    def _watch(self, on_lost: Callable[[str], None]) -> None:
        def run() -> None:
            step = min(self.config.retry_period_s, 0.5)
            while not self._stopped.wait(step):
                renewed = self.renewed_at
                if renewed is not None and lost(
                    renewed, self.clock(), self.config.renew_deadline_s
                ):
                    self._lose(on_lost, "renewals stalled past the renew deadline")
                    return

        threading.Thread(target=run, name="bakeline-lease-watchdog", daemon=True).start()
