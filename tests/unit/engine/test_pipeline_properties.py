"""Properties of the stage state machine under arbitrary workflows and failure sequences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bakeline.api.names import AGENTS
from bakeline.engine.pipeline import (
    DONE_PHASES,
    CheckpointInfo,
    Event,
    FailureStrategy,
    FinishJob,
    JobPhase,
    Plan,
    RetryPolicy,
    RunState,
    StagePhase,
    StagePlan,
    StartStage,
    WaitUntil,
    finish,
    next_actions,
    stage_finished,
    stage_started,
)
from bakeline.engine.retry import AttemptOutcome

# Weighted towards success so that jobs get far enough for rollbacks to have targets.
_OUTCOMES = [
    *[AttemptOutcome.SUCCEEDED] * 5,
    AttemptOutcome.TRANSIENT,
    *[AttemptOutcome.GATE_FAILED] * 2,
    AttemptOutcome.INVALID_INPUT,
]
_STRATEGIES = [*FailureStrategy, FailureStrategy.ROLLBACK, FailureStrategy.ROLLBACK]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    count = draw(st.integers(1, 7))
    stages = []
    for index in range(count):
        deps = draw(st.sets(st.integers(0, index - 1), max_size=3)) if index else set()
        stages.append(
            StagePlan(
                name=f"s{index}",
                agent=AGENTS[index % 3],
                depends_on=tuple(f"s{d}" for d in sorted(deps)),
                retry=RetryPolicy(
                    limit=draw(st.integers(0, 2)), duration=1.0, factor=2.0, maximum=5.0
                ),
                on_failure=draw(st.sampled_from(_STRATEGIES)),
                fallbacks=tuple({"variant": k} for k in range(draw(st.integers(0, 3)))),
            )
        )
    # Declared in a shuffled order: the plan must sort them itself.
    shuffled = draw(st.permutations(stages))
    return Plan.build(shuffled, max_parallel=draw(st.integers(1, 3)), fail_fast=draw(st.booleans()))


@dataclass
class _Trace:
    starts: list[tuple[str, dict[str, StagePhase]]] = field(default_factory=list)
    events: list[tuple[Event, RunState]] = field(default_factory=list)
    checkpoint_owner: dict[str, str] = field(default_factory=dict)
    finished: FinishJob | None = None
    steps: int = 0


def _simulate(plan: Plan, draw: Callable[[st.SearchStrategy[Any]], Any]) -> tuple[RunState, _Trace]:
    state = RunState.initial(plan)
    trace = _Trace()
    now = 0.0
    serial = 0
    running: list[str] = []
    while trace.steps < 2000:
        trace.steps += 1
        actions = next_actions(plan, state, now)
        for action in actions:
            if isinstance(action, FinishJob):
                trace.finished = action
                return finish(state, action), trace
            if isinstance(action, WaitUntil):
                assert action.at > now
                now = action.at
            if isinstance(action, StartStage):
                phases = {d: state.stages[d].phase for d in plan.stage(action.stage).depends_on}
                trace.starts.append((action.stage, phases))
                state, events = stage_started(state, action.stage, now)
                running.append(action.stage)
        if not running:
            assert any(isinstance(a, WaitUntil) for a in actions), actions
            continue
        # Finish one running stage, chosen and failed arbitrarily.
        name = running.pop(draw(st.integers(0, len(running) - 1)))
        outcome = draw(st.sampled_from(_OUTCOMES))
        checkpoint = None
        if outcome is AttemptOutcome.SUCCEEDED:
            serial += 1
            checkpoint = CheckpointInfo(f"{name}-{serial}", f"sha{serial}")
            trace.checkpoint_owner[checkpoint.id] = name
        before = state
        state, events = stage_finished(plan, state, name, outcome, now, checkpoint, {}, "boom")
        trace.events.extend((event, before) for event in events)
        now += 0.5
        # A rollback may have discarded stages still running: their results are ignored.
        running = [n for n in running if state.stages[n].phase is StagePhase.RUNNING]
    raise AssertionError(f"no terminal phase after {trace.steps} steps")


@settings(max_examples=300, deadline=None)
@given(plan=plans(), data=st.data())
def test_a_stage_never_starts_before_its_dependencies_are_done(
    plan: Plan, data: st.DataObject
) -> None:
    _, trace = _simulate(plan, data.draw)
    for stage, dep_phases in trace.starts:
        assert all(phase in DONE_PHASES for phase in dep_phases.values()), (stage, dep_phases)


@settings(max_examples=300, deadline=None)
@given(plan=plans(), data=st.data())
def test_a_job_always_reaches_a_terminal_phase(plan: Plan, data: st.DataObject) -> None:
    state, trace = _simulate(plan, data.draw)
    assert trace.finished is not None
    assert state.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED)
    if state.phase is JobPhase.SUCCEEDED:
        assert all(s.phase in DONE_PHASES for s in state.stages.values())
    else:
        assert trace.finished.reason


@settings(max_examples=300, deadline=None)
@given(plan=plans(), data=st.data())
def test_a_rollback_never_targets_a_failed_stages_checkpoint(
    plan: Plan, data: st.DataObject
) -> None:
    _, trace = _simulate(plan, data.draw)
    for event, before in trace.events:
        if event.kind != "RolledBack" or event.checkpoint is None:
            continue
        owner = trace.checkpoint_owner[event.checkpoint]
        # The target was produced by a stage that was good when the rollback happened, and it
        # is the very checkpoint that stage holds, not an older or a discarded one.
        assert before.stages[owner].phase in (StagePhase.SUCCEEDED, StagePhase.CACHED)
        held = before.stages[owner].checkpoint
        assert held is not None and held.id == event.checkpoint
        assert owner != event.stage


@settings(max_examples=200, deadline=None)
@given(plan=plans(), data=st.data())
def test_the_job_result_is_the_last_good_checkpoint(plan: Plan, data: st.DataObject) -> None:
    state, trace = _simulate(plan, data.draw)
    assert trace.finished is not None
    result = trace.finished.checkpoint
    if result is not None:
        owner = trace.checkpoint_owner[result.id]
        assert state.stages[owner].phase in (StagePhase.SUCCEEDED, StagePhase.CACHED)
