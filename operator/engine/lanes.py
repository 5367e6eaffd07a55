"""Lane admission and the per-agent circuit breaker.

Admission answers, for the jobs waiting in lanes: which start now, which move to a fallback lane,
which wait and why, and which running jobs must stop at their next stage boundary. It never lets
a lane run more than its `maxConcurrentJobs`. An SLOPolicy's freeze acts as its action says:
Freeze admits nothing, HoldAndDrain also drains, Fallback routes new jobs to the fallbackLane.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from bakeline.api.lane import CircuitBreaker, LaneSpec
from bakeline.engine.retry import AttemptOutcome

# Reasons a job waits, as Condition reasons (one CamelCase word).
LANE_FULL = "LaneFull"  # every running slot is taken
QUEUE_FULL = "QueueFull"  # beyond maxQueuedJobs
LANE_HELD = "LaneHeld"
LANE_FROZEN = "LaneFrozen"
NO_FALLBACK = "NoFallbackLane"  # an SLOPolicy's Fallback on a lane with no fallbackLane
UNKNOWN_LANE = "LaneNotFound"
NOT_READY = "NotReady"  # the job itself cannot start yet (e.g. its agent's circuit is open)
BLOCKED = "BlockedByHead"  # StrictFIFO: a job ahead of it cannot start
CAPACITY = "OperatorAtCapacity"


# What an SLOPolicy's freeze does to a lane (the `action` of its `frozenBy` entry), strongest
# first: HoldAndDrain stops admission and drains; Freeze stops admission; Fallback routes new
# jobs to the lane's fallbackLane.
FreezeAction = Literal["HoldAndDrain", "Freeze", "Fallback"]
FREEZE_ACTIONS: tuple[FreezeAction, ...] = ("HoldAndDrain", "Freeze", "Fallback")


def freeze_in_force(actions: Iterable[str | None]) -> FreezeAction | None:
    """The action a lane frozen by these `frozenBy` actions is under: the strongest; None when
    there are none. An entry without an action (written before actions were recorded) is a
    Freeze."""
    given = {a or "Freeze" for a in actions}
    return next((a for a in FREEZE_ACTIONS if a in given), None)


@dataclass(frozen=True)
class QueuedJob:
    name: str
    lane: str
    priority: int = 0
    created_at: float = 0.0  # unix time; older first among equals
    ready: bool = True  # False: the job cannot start now even with room


@dataclass(frozen=True)
class LaneView:
    name: str
    spec: LaneSpec
    running: tuple[str, ...] = ()  # jobs of this lane running now
    freeze: FreezeAction | None = None  # what an SLOPolicy's freeze does (freeze_in_force)

    @property
    def frozen(self) -> bool:
        """An SLOPolicy froze it."""
        return self.freeze is not None

    @property
    def drains(self) -> bool:
        """Its running jobs stop at their next stage boundary and go back to the queue."""
        return lane_drains(self.spec, self.freeze)

    @property
    def routes_on(self) -> bool:
        """Its new jobs may go on to its fallbackLane: it is held by its stopPolicy or frozen
        with Fallback. A Freeze or HoldAndDrain freeze keeps them waiting here."""
        return not self.frozen or self.freeze == "Fallback"


@dataclass(frozen=True)
class Admission:
    admit: dict[str, str] = field(default_factory=dict)  # job -> lane it runs in
    route: dict[str, str] = field(default_factory=dict)  # job -> fallback lane it moved to
    positions: dict[str, int] = field(default_factory=dict)  # job -> 1-based place in its queue
    waiting: dict[str, str] = field(default_factory=dict)  # job -> reason it waits
    drain: tuple[str, ...] = ()  # running jobs to stop at their next stage boundary


def queue_order(spec: LaneSpec, jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """Priority: higher priority first, then oldest. StrictFIFO: oldest first."""
    if spec.queueing == "StrictFIFO":
        return sorted(jobs, key=lambda j: (j.created_at, j.name))
    return sorted(jobs, key=lambda j: (-j.priority, j.created_at, j.name))


def admit(
    lanes: Sequence[LaneView],
    queued: Sequence[QueuedJob],
    capacity: int | None = None,
) -> Admission:
    """Decide admissions for every lane at once.

    `capacity` bounds the running jobs of all lanes together; lanes with a higher priority are
    served first when it is short.
    """
    by_name = {lane.name: lane for lane in lanes}
    result = Admission()
    lane_of: dict[str, str] = {}
    for job in queued:
        target, why = _route(by_name, job.lane)
        if target is None:
            result.waiting[job.name] = why
            continue
        if target != job.lane:
            result.route[job.name] = target
        lane_of[job.name] = target
    drain = tuple(name for lane in lanes if lane.drains for name in lane.running)
    result = replace(result, drain=drain)
    running_total = sum(len(lane.running) for lane in lanes)
    free_total = None if capacity is None else max(capacity - running_total, 0)
    for lane in sorted(lanes, key=lambda ln: (-ln.spec.priority, ln.name)):
        jobs = [replace(j, lane=lane.name) for j in queued if lane_of.get(j.name) == lane.name]
        ordered = queue_order(lane.spec, jobs)
        free = max(lane.spec.max_concurrent_jobs - len(lane.running), 0)
        blocked = False
        place = 0
        for job in ordered:
            place += 1
            if place > lane.spec.max_queued_jobs:
                result.waiting[job.name] = QUEUE_FULL
                continue
            reason = None
            if blocked:
                reason = BLOCKED
            elif not job.ready:
                reason = NOT_READY
                blocked = lane.spec.queueing == "StrictFIFO"
            elif free <= 0:
                reason = LANE_FULL
            elif free_total is not None and free_total <= 0:
                reason = CAPACITY
            if reason is None:
                result.admit[job.name] = lane.name
                free -= 1
                if free_total is not None:
                    free_total -= 1
                place -= 1  # admitted jobs leave the queue
            else:
                result.waiting[job.name] = reason
                result.positions[job.name] = place
    return result


def lane_drains(spec: LaneSpec, freeze: FreezeAction | None) -> bool:
    """Whether a lane with this spec, under this SLO freeze (None: none), stops its running jobs
    at their next stage boundary: its own stopPolicy HoldAndDrain, or an SLOPolicy's."""
    return spec.stop_policy == "HoldAndDrain" or freeze == "HoldAndDrain"


def _route(lanes: Mapping[str, LaneView], name: str) -> tuple[str | None, str]:
    """The lane a new job of `name` goes to: itself when open, else on along the fallback chain
    while each closed lane lets its jobs go on (held, or frozen with Fallback); (None, why it
    waits) when no open lane is reached."""
    seen: set[str] = set()
    current: str | None = name
    why = UNKNOWN_LANE
    while current is not None and current not in seen:
        seen.add(current)
        lane = lanes.get(current)
        if lane is None:
            return None, why
        if not lane.frozen and lane.spec.stop_policy == "None":
            return current, ""
        if not lane.routes_on:
            return None, LANE_FROZEN
        if lane.frozen and lane.spec.fallback_lane is None:
            return None, NO_FALLBACK
        why = LANE_FROZEN if lane.frozen else LANE_HELD
        current = lane.spec.fallback_lane
    return None, why


# ---- circuit breaker ------------------------------------------------------------------------


@dataclass(frozen=True)
class Circuit:
    """One agent's record on one lane."""

    consecutive_failures: int = 0
    opened_at: float | None = None  # set while open, and re-armed when a trial starts
    last_failure: str = ""


def record_outcome(
    circuits: Mapping[str, Circuit],
    agent: str,
    outcome: AttemptOutcome,
    now: float,
    policy: CircuitBreaker,
    message: str = "",
) -> dict[str, Circuit]:
    """Count a finished stage run of `agent`.

    Crashes, timeouts and invalid-input exits count against the agent (a broken agent version
    typically fails every job the same way); a failed quality gate is about the model, not the
    agent, and changes nothing. A success closes the circuit.
    """
    updated = dict(circuits)
    current = circuits.get(agent, Circuit())
    if outcome is AttemptOutcome.SUCCEEDED:
        updated[agent] = Circuit()
    elif outcome is not AttemptOutcome.GATE_FAILED:
        failures = current.consecutive_failures + 1
        opened = now if failures >= policy.consecutive_failures else current.opened_at
        updated[agent] = Circuit(failures, opened, message)
    return updated


def trial_started(circuits: Mapping[str, Circuit], agent: str, now: float) -> dict[str, Circuit]:
    """A half-open agent got its trial run: keep others out for another cooldown meanwhile."""
    updated = dict(circuits)
    current = circuits.get(agent)
    if current is not None and current.opened_at is not None:
        updated[agent] = replace(current, opened_at=now)
    return updated


def blocked_agents(
    circuits: Mapping[str, Circuit], now: float, policy: CircuitBreaker
) -> dict[str, float]:
    """Agents whose circuit is open now, with when a trial will be let through."""
    return {
        agent: circuit.opened_at + policy.cooldown_seconds
        for agent, circuit in circuits.items()
        if circuit.opened_at is not None and now < circuit.opened_at + policy.cooldown_seconds
    }
