"""The stage state machine on hand-written scenarios."""

from __future__ import annotations

import pytest

from bakeline.api import Quality, default_workflow
from bakeline.api.validation import WorkflowInvalidError
from bakeline.engine.cache import cache_key
from bakeline.engine.pipeline import (
    DEADLINE_EXCEEDED,
    CacheContext,
    CheckpointInfo,
    Event,
    FailureStrategy,
    FinishJob,
    Gate,
    JobPhase,
    Plan,
    RetryPolicy,
    RunState,
    StagePhase,
    StagePlan,
    StartStage,
    WaitUntil,
    next_actions,
    reset_from,
    run_deadline,
    stage_cached,
    stage_finished,
    stage_started,
)
from bakeline.engine.retry import AttemptOutcome

OK, GATE, FLAKY, BAD = (
    AttemptOutcome.SUCCEEDED,
    AttemptOutcome.GATE_FAILED,
    AttemptOutcome.TRANSIENT,
    AttemptOutcome.INVALID_INPUT,
)


def _chain(*stages: StagePlan) -> Plan:
    linked = [
        StagePlan(**{**s.__dict__, "depends_on": (stages[i - 1].name,) if i else ()})
        for i, s in enumerate(stages)
    ]
    return Plan.build(linked)


def _ckpt(name: str) -> CheckpointInfo:
    return CheckpointInfo(f"{name}-ckpt", f"sha-{name}", 100)


def _run(
    plan: Plan,
    state: RunState,
    outcome: AttemptOutcome,
    now: float = 0.0,
    metrics: dict[str, float] | None = None,
    message: str = "",
) -> tuple[StartStage, RunState, list[Event]]:
    """Start the one stage the planner offers and finish it with `outcome`."""
    (action,) = next_actions(plan, state, now)
    assert isinstance(action, StartStage), action
    state, _ = stage_started(state, action.stage, now)
    checkpoint = _ckpt(action.stage) if outcome is OK else None
    state, events = stage_finished(
        plan, state, action.stage, outcome, now, checkpoint, metrics, message
    )
    return action, state, events


def test_stages_run_in_dependency_order_and_the_job_succeeds() -> None:
    plan = Plan.build(
        [
            StagePlan("c", "MemoryOptimizer", depends_on=("a", "b")),
            StagePlan("b", "ModelOptimizer", depends_on=("a",)),
            StagePlan("a", "GraphOptimizer"),
        ]
    )
    assert plan.order == ["a", "b", "c"]
    assert plan.primary_input("c") == "b"
    state = RunState.initial(plan)
    started = []
    for _ in range(3):
        action, state, _ = _run(plan, state, OK)
        started.append(action.stage)
    assert started == ["a", "b", "c"]
    (end,) = next_actions(plan, state, 0.0)
    assert isinstance(end, FinishJob) and end.phase is JobPhase.SUCCEEDED
    assert end.checkpoint == _ckpt("c")
    assert state.progress == "3/3"


def test_the_first_stage_reads_no_checkpoint_and_the_next_reads_its_output() -> None:
    plan = _chain(StagePlan("a", "GraphOptimizer"), StagePlan("b", "ModelOptimizer"))
    first, state, _ = _run(plan, RunState.initial(plan), OK)
    assert first.input is None
    (second,) = next_actions(plan, state, 0.0)
    assert isinstance(second, StartStage) and second.input == _ckpt("a")


def test_cycles_and_unknown_dependencies_are_refused() -> None:
    with pytest.raises(WorkflowInvalidError, match="cycle"):
        Plan.build(
            [
                StagePlan("a", "GraphOptimizer", depends_on=("b",)),
                StagePlan("b", "ModelOptimizer", depends_on=("a",)),
            ]
        )
    with pytest.raises(WorkflowInvalidError, match="depends on 'x', which is not a stage"):
        Plan.build([StagePlan("a", "GraphOptimizer", depends_on=("x",))])
    with pytest.raises(WorkflowInvalidError, match="unique"):
        Plan.build([StagePlan("a", "GraphOptimizer"), StagePlan("a", "ModelOptimizer")])


def test_transient_failures_retry_with_exponential_backoff_then_fail() -> None:
    retry = RetryPolicy(limit=3, duration=10, factor=2, maximum=25)
    plan = _chain(StagePlan("a", "GraphOptimizer", retry=retry))
    state = RunState.initial(plan)
    now = 0.0
    delays = []
    for _ in range(3):
        _, state, events = _run(plan, state, FLAKY, now)
        assert events[0].kind == "Retrying"
        wait = next_actions(plan, state, now)[0]
        assert isinstance(wait, WaitUntil)
        delays.append(wait.at - now)
        now = wait.at
    assert delays == [10, 20, 25]
    _, state, events = _run(plan, state, FLAKY, now)
    assert state.stages["a"].phase is StagePhase.FAILED
    assert state.stages["a"].attempts_total == 4
    (end,) = next_actions(plan, state, now)
    assert isinstance(end, FinishJob) and end.phase is JobPhase.FAILED
    assert "stage a failed" in end.reason


def test_invalid_input_is_never_retried() -> None:
    plan = _chain(
        StagePlan(
            "a",
            "GraphOptimizer",
            retry=RetryPolicy(limit=5),
            on_failure=FailureStrategy.ROLLBACK,
            fallbacks=({"x": 1},),
        )
    )
    _, state, events = _run(plan, RunState.initial(plan), BAD, message="no such layer")
    assert state.stages["a"].phase is StagePhase.FAILED
    assert [e.kind for e in events] == ["Failed"]


def test_a_gate_failure_rolls_back_to_the_last_good_checkpoint_and_tries_fallbacks() -> None:
    plan = _chain(
        StagePlan("import", "BakingCoordinator"),
        StagePlan(
            "quantize",
            "ModelOptimizer",
            params={"method": "int8", "perChannel": True},
            fallbacks=({"keepFloat": ["embeddings"]}, {"method": "bf16"}),
        ),
        StagePlan("profile", "PerformanceProfiler"),
        StagePlan("validate", "QualityValidator", on_failure=FailureStrategy.ROLLBACK),
    )
    state = RunState.initial(plan)
    for _ in range(3):
        _, state, _ = _run(plan, state, OK)
    _, state, events = _run(plan, state, GATE, message="cosine 0.91 < 0.99")
    (event,) = events
    assert event.kind == "RolledBack" and event.stage == "quantize"
    assert event.checkpoint == "import-ckpt"  # the output of the last stage before quantize
    assert state.phase is JobPhase.ROLLING_BACK and state.rollbacks == 1
    assert "cosine 0.91" in state.last_rollback_reason
    for name in ("quantize", "profile", "validate"):
        assert state.stages[name].phase is StagePhase.ROLLED_BACK
        assert state.stages[name].checkpoint is None
    assert state.current_checkpoint(plan) == _ckpt("import")
    action, state, _ = _run(plan, state, OK)
    assert action.stage == "quantize" and action.fallback == 1
    assert action.input == _ckpt("import")
    assert action.params == {"method": "int8", "perChannel": True, "keepFloat": ["embeddings"]}
    _, state, _ = _run(plan, state, OK)
    _, state, events = _run(plan, state, GATE, message="cosine 0.95 < 0.99")
    assert events[0].kind == "RolledBack"
    action, state, _ = _run(plan, state, OK)
    assert action.params["method"] == "bf16"
    _, state, _ = _run(plan, state, OK)
    # Fallbacks exhausted: the next gate failure fails the job, keeping the last good checkpoint.
    _, state, events = _run(plan, state, GATE, message="cosine 0.97 < 0.99")
    assert events[0].kind == "Failed" and "no fallback left" in events[0].message
    (end,) = next_actions(plan, state, 0.0)
    assert isinstance(end, FinishJob) and end.phase is JobPhase.FAILED
    assert end.checkpoint == _ckpt("profile")
    assert "cosine 0.97" in end.reason


def test_the_stage_gate_is_checked_on_the_result_metrics() -> None:
    plan = _chain(
        StagePlan(
            "a",
            "GraphOptimizer",
            gate=Gate("cosineMin", ">=", 0.99),
            on_failure=FailureStrategy.FALLBACK,
            fallbacks=({"mode": "safe"},),
        )
    )
    _, state, events = _run(plan, RunState.initial(plan), OK, metrics={"cosineMin": 0.5})
    assert events[0].kind == "Fallback" and "cosineMin = 0.5, needs >= 0.99" in events[0].message
    action, state, _ = _run(plan, state, OK, metrics={"cosineMin": 0.995})
    assert action.params == {"mode": "safe"}
    assert state.stages["a"].phase is StagePhase.SUCCEEDED


def test_a_job_gate_without_a_threshold_judges_by_the_validators_bound_or_the_reference() -> None:
    # An accuracy job that names no threshold: an absolute default failed every model below it.
    plan = Plan.from_workflow(default_workflow().spec, Quality(metric="accuracy"))
    gate = plan.stage("validate").gate
    assert gate == Gate("accuracy", ">=", None)
    assert gate.violation({"accuracy": 0.58, "threshold": 0.575}) is None
    assert "needs >= 0.6" in (gate.violation({"accuracy": 0.58, "threshold": 0.6}) or "")
    # No bound reported: the import stage's reference accuracy less one point.
    assert gate.violation({"accuracy": 0.58, "referenceAccuracy": 0.59}) is None
    assert gate.violation({"accuracy": 0.57, "referenceAccuracy": 0.59}) is not None

    chain = _chain(
        StagePlan("import", "BakingCoordinator"),
        StagePlan("validate", "QualityValidator", gate=gate),
    )
    _, state, _ = _run(chain, RunState.initial(chain), OK, metrics={"referenceAccuracy": 0.59})
    _, state, events = _run(chain, state, OK, metrics={"accuracy": 0.585})
    assert state.stages["validate"].phase is StagePhase.SUCCEEDED, events


def test_a_skipped_stage_passes_its_input_through() -> None:
    plan = _chain(
        StagePlan("a", "GraphOptimizer"),
        StagePlan("b", "ModelOptimizer", on_failure=FailureStrategy.SKIP),
        StagePlan("c", "MemoryOptimizer"),
    )
    _, state, _ = _run(plan, RunState.initial(plan), OK)
    _, state, events = _run(plan, state, GATE)
    assert events[0].kind == "Skipped"
    action, state, _ = _run(plan, state, OK)
    assert action.stage == "c" and action.input == _ckpt("a")
    (end,) = next_actions(plan, state, 0.0)
    assert isinstance(end, FinishJob) and end.phase is JobPhase.SUCCEEDED


def test_start_actions_carry_the_cache_key_and_a_hit_marks_the_stage_cached() -> None:
    plan = _chain(
        StagePlan("a", "GraphOptimizer", params={"k": 1}),
        StagePlan("b", "ModelOptimizer", cache=False),
    )
    context = CacheContext(model_sha256="m" * 64, agent_version="1.0", job={"target": {}})
    (start,) = next_actions(plan, RunState.initial(plan), 0.0, context)
    assert isinstance(start, StartStage)
    assert start.cache_key == cache_key("m" * 64, "GraphOptimizer", "1.0", {"k": 1}, {"target": {}})
    state, events = stage_cached(RunState.initial(plan), "a", _ckpt("a"), 0.0)
    assert state.stages["a"].phase is StagePhase.CACHED and events[0].kind == "Cached"
    (second,) = next_actions(plan, state, 0.0, context)
    assert isinstance(second, StartStage) and second.cache_key is None  # cache: false
    bypassed = CacheContext("m" * 64, "1.0", bypass=frozenset({"a"}))
    # Results measured on a machine are keyed by the machine.
    profile = _chain(StagePlan("p", "PerformanceProfiler"))
    keys = {
        action.cache_key
        for host in ("host-a", "host-b")
        for action in next_actions(
            profile, RunState.initial(profile), 0.0, CacheContext("m" * 64, "1.0", host=host)
        )
        if isinstance(action, StartStage)
    }
    assert len(keys) == 2
    (again,) = next_actions(plan, RunState.initial(plan), 0.0, bypassed)
    assert isinstance(again, StartStage) and again.cache_key is None


def test_reset_from_reruns_a_stage_and_everything_after_it() -> None:
    plan = _chain(
        StagePlan("a", "GraphOptimizer"),
        StagePlan("b", "ModelOptimizer", retry=RetryPolicy(limit=1)),
        StagePlan("c", "MemoryOptimizer"),
    )
    state = RunState.initial(plan)
    for _ in range(3):
        _, state, _ = _run(plan, state, OK)
    state = reset_from(plan, state, "b")
    assert [state.stages[n].phase for n in "abc"] == [
        StagePhase.SUCCEEDED,
        StagePhase.PENDING,
        StagePhase.PENDING,
    ]
    (action,) = next_actions(plan, state, 0.0)
    assert isinstance(action, StartStage) and action.stage == "b" and action.input == _ckpt("a")
    # The rerun's attempt is the second of b: Events say so, as the pod's name (b-2) does.
    state, (started,) = stage_started(state, "b", 1.0)
    assert state.stages["b"].attempts_total == 2 and started.message == "attempt 2"
    state, (retrying,) = stage_finished(plan, state, "b", FLAKY, 2.0)
    assert retrying.message.startswith("attempt 2 failed")


def test_a_rerun_gets_a_deadline_window_of_its_own() -> None:
    assert run_deadline(None, 10.0) is None and run_deadline(60, None) is None
    assert run_deadline(60, 10.0) == 70.0
    assert run_deadline(60, 10.0, 500.0) == 560.0  # admitted at 10, rerun at 500
    plan = _chain(StagePlan("a", "GraphOptimizer"))
    state = RunState.initial(plan, deadline=run_deadline(60, 10.0, 500.0))
    (start,) = next_actions(plan, state, 520.0)
    assert isinstance(start, StartStage)


def test_an_open_circuit_makes_the_job_wait_until_the_trial() -> None:
    plan = _chain(StagePlan("a", "GraphOptimizer"))
    (wait,) = next_actions(
        plan, RunState.initial(plan), 0.0, blocked_agents={"GraphOptimizer": 600.0}
    )
    assert isinstance(wait, WaitUntil) and wait.at == 600.0 and "circuit open" in wait.reason


def test_the_deadline_fails_the_job() -> None:
    plan = _chain(StagePlan("a", "GraphOptimizer"))
    state = RunState.initial(plan, deadline=100.0)
    (end,) = next_actions(plan, state, 100.0)
    assert isinstance(end, FinishJob) and end.reason == DEADLINE_EXCEEDED


def test_without_fail_fast_independent_branches_finish_before_the_job_fails() -> None:
    plan = Plan.build(
        [
            StagePlan("a", "GraphOptimizer"),
            StagePlan("b", "ModelOptimizer"),
            StagePlan("c", "MemoryOptimizer", depends_on=("a",)),
        ],
        max_parallel=2,
        fail_fast=False,
    )
    state = RunState.initial(plan)
    starts = next_actions(plan, state, 0.0)
    assert [a.stage for a in starts if isinstance(a, StartStage)] == ["a", "b"]
    for name in ("a", "b"):
        state, _ = stage_started(state, name, 0.0)
    state, _ = stage_finished(plan, state, "b", BAD, 0.0)
    state, _ = stage_finished(plan, state, "a", OK, 0.0, _ckpt("a"))
    (action,) = next_actions(plan, state, 0.0)
    assert isinstance(action, StartStage) and action.stage == "c"
    state, _ = stage_started(state, "c", 0.0)
    state, _ = stage_finished(plan, state, "c", OK, 0.0, _ckpt("c"))
    (end,) = next_actions(plan, state, 0.0)
    assert isinstance(end, FinishJob) and end.phase is JobPhase.FAILED and "stage b" in end.reason


def test_a_result_for_a_stage_no_longer_running_is_ignored() -> None:
    plan = _chain(StagePlan("a", "GraphOptimizer"))
    state = RunState.initial(plan)
    after, events = stage_finished(plan, state, "a", OK, 0.0, _ckpt("a"))
    assert after is state and events == []


def test_plans_come_from_api_workflows_with_the_jobs_quality_gate() -> None:
    plan = Plan.from_workflow(
        default_workflow().spec, Quality(metric="max-abs-error", threshold=0.01)
    )
    assert plan.order[0] == "import" and plan.order[-1] == "package"
    validate = plan.stage("validate")
    assert validate.gate == Gate("maxAbsError", "<=", 0.01)
    assert validate.on_failure is FailureStrategy.ROLLBACK
    assert plan.stage("quantize").fallbacks[-1] == {"scheme": "none"}
    assert plan.stage("import").retry.limit == 2 and plan.stage("import").retry.duration == 10
    cosine = Plan.from_workflow(default_workflow().spec, Quality(metric="cosine", threshold=0.99))
    assert cosine.stage("validate").gate == Gate("cosineMean", ">=", 0.99)
