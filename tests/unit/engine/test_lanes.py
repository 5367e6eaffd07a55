"""Lane admission and the circuit breaker."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bakeline.api.lane import CircuitBreaker, LaneSpec
from bakeline.engine.lanes import (
    BLOCKED,
    LANE_FROZEN,
    LANE_FULL,
    NO_FALLBACK,
    QUEUE_FULL,
    Circuit,
    FreezeAction,
    LaneView,
    QueuedJob,
    admit,
    blocked_agents,
    freeze_in_force,
    record_outcome,
    trial_started,
)
from bakeline.engine.retry import AttemptOutcome


def _lane(
    name: str = "std",
    running: tuple[str, ...] = (),
    frozen: bool = False,
    freeze: FreezeAction = "Freeze",
    **spec: object,
) -> LaneView:
    return LaneView(name, LaneSpec.model_validate(spec), running, freeze if frozen else None)


def test_priority_queueing_orders_by_priority_then_age() -> None:
    jobs = [
        QueuedJob("old-low", "std", priority=1, created_at=1),
        QueuedJob("new-high", "std", priority=9, created_at=5),
        QueuedJob("old-high", "std", priority=9, created_at=2),
    ]
    decision = admit([_lane(maxConcurrentJobs=1)], jobs)
    assert decision.admit == {"old-high": "std"}
    assert decision.positions == {"new-high": 1, "old-low": 2}
    assert decision.waiting["old-low"] == LANE_FULL


def test_strict_fifo_ignores_priority_and_a_blocked_head_blocks_the_rest() -> None:
    jobs = [
        QueuedJob("first", "std", priority=0, created_at=1, ready=False),
        QueuedJob("second", "std", priority=9, created_at=2),
    ]
    fifo = admit([_lane(maxConcurrentJobs=2, queueing="StrictFIFO")], jobs)
    assert fifo.admit == {} and fifo.waiting["second"] == BLOCKED
    prio = admit([_lane(maxConcurrentJobs=2, queueing="Priority")], jobs)
    assert prio.admit == {"second": "std"}


def test_queue_limit_held_and_drained_lanes() -> None:
    jobs = [QueuedJob(f"j{i}", "std", created_at=i) for i in range(4)]
    full = admit([_lane(running=("r",), maxConcurrentJobs=1, maxQueuedJobs=2)], jobs)
    assert [full.waiting[f"j{i}"] for i in range(4)] == [
        LANE_FULL,
        LANE_FULL,
        QUEUE_FULL,
        QUEUE_FULL,
    ]
    held = admit([_lane(running=("r",), maxConcurrentJobs=5, stopPolicy="Hold")], jobs)
    assert held.admit == {} and held.drain == ()
    drained = admit([_lane(running=("r",), maxConcurrentJobs=5, stopPolicy="HoldAndDrain")], jobs)
    assert drained.admit == {} and drained.drain == ("r",)


def test_a_fallback_freeze_routes_new_jobs_to_the_fallback_lane() -> None:
    lanes = [
        _lane("fast", frozen=True, freeze="Fallback", fallbackLane="slow", maxConcurrentJobs=3),
        _lane("slow", maxConcurrentJobs=1),
        _lane("lonely", frozen=True, freeze="Fallback"),
    ]
    jobs = [
        QueuedJob("a", "fast", created_at=1),
        QueuedJob("b", "fast", created_at=2),
        QueuedJob("c", "lonely"),
        QueuedJob("d", "nowhere"),
    ]
    decision = admit(lanes, jobs)
    assert decision.route == {"a": "slow", "b": "slow"}
    assert decision.admit == {"a": "slow"}
    # With no fallbackLane a Fallback freeze admits nothing, and says why.
    assert decision.waiting == {"b": LANE_FULL, "c": NO_FALLBACK, "d": "LaneNotFound"}


def test_a_freeze_admits_nothing_and_routes_nowhere_while_running_jobs_go_on() -> None:
    lanes = [
        _lane(
            "fast", ("r",), frozen=True, freeze="Freeze", fallbackLane="slow", maxConcurrentJobs=3
        ),
        _lane("slow", maxConcurrentJobs=3),
    ]
    decision = admit(lanes, [QueuedJob("a", "fast")])
    assert decision.admit == {} and decision.route == {}
    assert decision.waiting == {"a": LANE_FROZEN}
    assert decision.drain == ()


def test_a_hold_and_drain_freeze_admits_nothing_and_drains_its_running_jobs() -> None:
    lanes = [
        _lane("fast", ("r1", "r2"), True, "HoldAndDrain", fallbackLane="slow", maxConcurrentJobs=3),
        _lane("slow", ("s",), maxConcurrentJobs=3),
    ]
    decision = admit(lanes, [QueuedJob("a", "fast")])
    assert decision.admit == {} and decision.waiting == {"a": LANE_FROZEN}
    assert decision.drain == ("r1", "r2")


def test_a_held_lane_routes_on_until_a_freeze_stops_the_chain() -> None:
    lanes = [
        _lane("held", stopPolicy="Hold", fallbackLane="fallback"),
        _lane("fallback", frozen=True, freeze="Fallback", fallbackLane="frozen"),
        _lane("frozen", frozen=True, freeze="Freeze", fallbackLane="open"),
        _lane("open"),
    ]
    decision = admit(lanes, [QueuedJob("a", "held"), QueuedJob("b", "fallback")])
    assert decision.waiting == {"a": LANE_FROZEN, "b": LANE_FROZEN}


def test_the_strongest_freeze_is_in_force() -> None:
    assert freeze_in_force([]) is None
    assert freeze_in_force(["Fallback", None]) == "Freeze"  # no action recorded: Freeze
    assert freeze_in_force(["Fallback", "HoldAndDrain", "Freeze"]) == "HoldAndDrain"
    assert freeze_in_force(["Fallback"]) == "Fallback"


def test_operator_capacity_serves_higher_priority_lanes_first() -> None:
    lanes = [
        _lane("low", priority=1, maxConcurrentJobs=5),
        _lane("high", priority=9, maxConcurrentJobs=5),
    ]
    jobs = [
        QueuedJob("l", "low"),
        QueuedJob("h1", "high", created_at=1),
        QueuedJob("h2", "high", created_at=2),
    ]
    assert admit(lanes, jobs, capacity=2).admit == {"h1": "high", "h2": "high"}


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[list[LaneView], list[QueuedJob]]:
    lanes = []
    for i in range(draw(st.integers(1, 4))):
        limit = draw(st.integers(1, 4))
        running = tuple(f"run-{i}-{k}" for k in range(draw(st.integers(0, limit))))
        lanes.append(
            _lane(
                f"lane{i}",
                running=running,
                frozen=draw(st.booleans()),
                freeze=draw(st.sampled_from(["Freeze", "HoldAndDrain", "Fallback"])),
                maxConcurrentJobs=limit,
                maxQueuedJobs=limit + draw(st.integers(0, 5)),
                queueing=draw(st.sampled_from(["Priority", "StrictFIFO"])),
                stopPolicy=draw(st.sampled_from(["None", "None", "Hold", "HoldAndDrain"])),
                fallbackLane=draw(
                    st.sampled_from([None, *(f"lane{k}" for k in range(4) if k != i)])
                ),
            )
        )
    jobs = [
        QueuedJob(
            f"job{j}",
            f"lane{draw(st.integers(0, 4))}",
            priority=draw(st.integers(0, 3)),
            created_at=draw(st.floats(0, 100)),
            ready=draw(st.booleans()),
        )
        for j in range(draw(st.integers(0, 20)))
    ]
    return lanes, jobs


@settings(max_examples=400, deadline=None)
@given(scenario=_scenarios(), capacity=st.one_of(st.none(), st.integers(0, 10)))
def test_a_lane_never_exceeds_its_concurrency(
    scenario: tuple[list[LaneView], list[QueuedJob]], capacity: int | None
) -> None:
    lanes, jobs = scenario
    decision = admit(lanes, jobs, capacity)
    for lane in lanes:
        admitted = [job for job, to in decision.admit.items() if to == lane.name]
        assert len(lane.running) + len(admitted) <= lane.spec.max_concurrent_jobs
        if admitted:
            assert not lane.frozen and lane.spec.stop_policy == "None"
        if lane.frozen and lane.freeze != "Fallback":
            # Freeze and HoldAndDrain route nowhere: the lane's new jobs wait in it.
            assert not [job for job in jobs if job.lane == lane.name and job.name in decision.route]
        assert set(lane.running) <= set(decision.drain) or not lane.drains
    if capacity is not None:
        running = sum(len(lane.running) for lane in lanes)
        assert len(decision.admit) <= max(capacity - running, 0)
    ready = {job.name for job in jobs if job.ready}
    assert set(decision.admit) <= ready
    assert set(decision.admit).isdisjoint(decision.waiting)
    assert set(decision.admit) | set(decision.waiting) == {job.name for job in jobs}


def test_the_circuit_opens_after_consecutive_failures_and_lets_a_trial_through() -> None:
    policy = CircuitBreaker(consecutive_failures=2, cooldown_seconds=100)
    circuits: dict[str, Circuit] = {}
    circuits = record_outcome(circuits, "ModelOptimizer", AttemptOutcome.TRANSIENT, 0.0, policy)
    assert blocked_agents(circuits, 1.0, policy) == {}
    # A failed gate is the model's fault, not the agent's: it neither counts nor resets.
    circuits = record_outcome(circuits, "ModelOptimizer", AttemptOutcome.GATE_FAILED, 1.0, policy)
    circuits = record_outcome(
        circuits, "ModelOptimizer", AttemptOutcome.TRANSIENT, 2.0, policy, "oom"
    )
    assert blocked_agents(circuits, 50.0, policy) == {"ModelOptimizer": 102.0}
    assert circuits["ModelOptimizer"].last_failure == "oom"
    assert blocked_agents(circuits, 102.0, policy) == {}  # half-open: one trial may run
    circuits = trial_started(circuits, "ModelOptimizer", 102.0)
    assert "ModelOptimizer" in blocked_agents(circuits, 103.0, policy)
    circuits = record_outcome(circuits, "ModelOptimizer", AttemptOutcome.SUCCEEDED, 110.0, policy)
    assert blocked_agents(circuits, 111.0, policy) == {}
    assert circuits["ModelOptimizer"] == Circuit()
