"""What a finished job teaches the duration predictor, and the bounded history it is kept in."""

from __future__ import annotations

import pytest

from bakeline.engine.pipeline import (
    CheckpointInfo,
    Plan,
    RunState,
    StagePlan,
    stage_cached,
    stage_finished,
    stage_started,
)
from bakeline.engine.predict import (
    DurationSample,
    JobDurations,
    entries_to_drop,
    estimate_remaining,
    fit_durations,
    imported_size,
    latest_model_bytes,
    stage_samples,
)
from bakeline.engine.retry import AttemptOutcome

MB = 1024 * 1024


def _plan() -> Plan:
    return Plan.build(
        [
            StagePlan("import", "BakingCoordinator"),
            StagePlan("graph", "GraphOptimizer", depends_on=("import",)),
            StagePlan("quantize", "ModelOptimizer", depends_on=("graph",)),
        ]
    )


def _done(plan: Plan, state: RunState, stage: str, start: float, end: float, size: int) -> RunState:
    state, _ = stage_started(state, stage, start)
    checkpoint = CheckpointInfo(f"{stage}-1", "ab" * 32, size)
    state, _ = stage_finished(plan, state, stage, AttemptOutcome.SUCCEEDED, end, checkpoint)
    return state


def test_a_finished_job_teaches_each_stage_it_ran_with_the_size_it_read() -> None:
    plan = _plan()
    state = RunState.initial(plan)
    assert imported_size(plan, state) is None
    state = _done(plan, state, "import", 0.0, 12.0, 30 * MB)
    state = _done(plan, state, "graph", 12.0, 20.0, 20 * MB)
    state, _ = stage_cached(state, "quantize", CheckpointInfo("q", "cd" * 32, 5 * MB), 21.0)
    # The import read the outside model: its own output is that model, as imported.
    assert stage_samples(plan, state) == (
        DurationSample("BakingCoordinator", 30 * MB, 12.0),
        DurationSample("GraphOptimizer", 30 * MB, 8.0),
    )  # a cache hit ran nothing: it teaches nothing
    assert imported_size(plan, state) == 30 * MB


def test_the_history_keeps_the_newest_jobs() -> None:
    ended = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 4.0}
    assert entries_to_drop(ended, 2) == ["b", "c"]
    assert entries_to_drop(ended, 10) == []


def test_the_model_size_comes_from_the_newest_job_of_the_model_or_workflow() -> None:
    history = [
        JobDurations(1.0, "wf", "m1", 10, ()),
        JobDurations(2.0, "other", "m1", 20, ()),
        JobDurations(3.0, "wf", "m2", None, ()),  # failed before importing
    ]
    assert latest_model_bytes(history, model="m1") == 20
    assert latest_model_bytes(history, workflow="wf") == 10
    assert latest_model_bytes(history, model="m3") is None


def test_a_second_job_is_predicted_from_the_first_jobs_durations() -> None:
    prior = fit_durations([])
    learned = fit_durations(
        [DurationSample("BakingCoordinator", 0, 1.0), DurationSample("GraphOptimizer", 0, 1.0)]
    )
    agents = ["BakingCoordinator", "GraphOptimizer"]
    # The prior says 16 s; one observed job of 2 s, weighed as much as the prior, halves the gap.
    assert estimate_remaining(prior, agents, 0) == 16.0
    assert estimate_remaining(learned, agents, 0) == pytest.approx(9.0)
