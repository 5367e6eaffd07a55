"""The job's result and verdict: one decision for the operator and `bakeline run`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bakeline.api.bakingjob import Quality, Target
from bakeline.api.defaults import default_workflow
from bakeline.contract import EXIT_FAILED, EXIT_GATE_FAILED, EXIT_INVALID_INPUT, EXIT_OK
from bakeline.engine import pipeline as engine
from bakeline.engine.result import (
    FinalArtifact,
    bake_result,
    first_failed_stage,
    job_verdict,
    result_metrics,
)
from bakeline.engine.retry import AttemptOutcome

PLAN = engine.Plan.from_workflow(default_workflow().spec)
ARTIFACT = FinalArtifact("model.onnx", "onnx", "ab" * 32, 1000)
# What the DeploymentPreparer reports: the profiler's per-batch speedups, the validator's quality.
PACKAGE = {
    "sizeBytes": 1000.0,
    "originalSizeBytes": 4000.0,
    "accuracy": 0.98765432109,
    "cosineMean": 0.999,
    "b1.speedup": 2.5,
    "b64.speedup": 1.25,
    "b1.p50Ms": 0.1,
}


def _succeeded(metrics_by_stage: dict[str, dict[str, float]]) -> engine.RunState:
    state = engine.RunState.initial(PLAN)
    stages = {
        name: replace(
            s,
            phase=engine.StagePhase.SUCCEEDED,
            checkpoint=engine.CheckpointInfo(f"{name}-1", "cd" * 32, 4000),
            metrics=metrics_by_stage.get(name, {}),
        )
        for name, s in state.stages.items()
    }
    return replace(state, stages=stages, phase=engine.JobPhase.SUCCEEDED)


def test_the_result_names_speedups_per_batch_size_and_quality() -> None:
    state = _succeeded({"profile": {"b1.speedup": 9.0, "b1.p50Ms": 0.1}, "package": PACKAGE})
    result = bake_result(
        PLAN,
        state,
        Target(batch_sizes=[1, 64]),
        Quality(metric="accuracy", threshold=0.97),
        ARTIFACT,
    )
    assert result.speedups == {"1": 2.5, "64": 1.25}  # the last stage's value wins
    assert result.speedup == 2.5  # the first batch size's
    assert result.quality is not None
    assert result.quality.value == 0.987654  # at the termination message's precision
    assert result.quality.passed and result.quality.threshold == 0.97
    assert result.original_size_bytes == 4000 and result.size_bytes == 1000
    assert result.sha256 == "ab" * 32


def test_a_precision_label_of_any_length_leaves_the_result_whole() -> None:
    # An honest label names what stayed float and what the memory stage changed: it grew past
    # the old 64-character bound and the finished bake's report failed to build.
    label = (
        "int8-per-channel: 22 of 24 layers, the rest fp32; 2 embedding tables int4; 2 weights fp16"
    )
    huge = "x" * 1000
    for given, expected in ((label, label), (huge, huge[:253] + "...")):
        artifact = replace(ARTIFACT, precision=given, runtime=huge)
        result = bake_result(
            PLAN, _succeeded({}), Target(batch_sizes=[1]), Quality(metric="cosine"), artifact
        )
        assert result.precision == expected
        assert result.runtime is not None and len(result.runtime) == 64


def test_a_job_without_a_threshold_reports_the_bound_it_was_judged_by() -> None:
    judged = {**PACKAGE, "accuracy": 0.58, "threshold": 0.575}
    for quality, metrics, bound in (
        (Quality(metric="accuracy"), judged, 0.575),  # the validator's
        (Quality(metric="accuracy"), {"accuracy": 0.58, "referenceAccuracy": 0.6}, 0.59),
        (Quality(metric="accuracy", threshold=0.5), judged, 0.5),  # the job's wins
        (Quality(metric="cosine"), {"cosineMean": 0.99}, 0.98),  # the metric's default
    ):
        state = _succeeded({"package": metrics})
        result = bake_result(PLAN, state, Target(batch_sizes=[1]), quality, ARTIFACT)
        assert result.quality is not None
        assert result.quality.threshold == pytest.approx(bound), (quality, metrics)
        assert result.quality.passed is (result.quality.value >= bound)


def test_the_final_checkpoints_metrics_win_and_a_failed_gate_shows() -> None:
    state = _succeeded({"package": {"b1.speedup": 1.0}})
    result = bake_result(
        PLAN,
        state,
        Target(batch_sizes=[64, 1]),
        Quality(metric="max-abs-error", threshold=0.01),
        ARTIFACT,
        {"b64.speedup": 3.0, "maxAbsError": 0.5},
    )
    assert result.speedup == 3.0
    assert result.quality is not None and not result.quality.passed
    assert result.original_size_bytes == 4000  # no metric: the first checkpoint's size


def test_metrics_that_json_cannot_carry_are_left_out() -> None:
    state = _succeeded({"package": {"b1.speedup": float("nan"), "x": float("inf"), "y": 1.0}})
    assert result_metrics(PLAN, state) == {"y": 1.0}


@pytest.mark.parametrize(
    ("phase", "outcome", "reason", "code"),
    [
        (engine.JobPhase.SUCCEEDED, None, "Baked", EXIT_OK),
        (engine.JobPhase.FAILED, AttemptOutcome.GATE_FAILED, "GateFailed", EXIT_GATE_FAILED),
        (engine.JobPhase.FAILED, AttemptOutcome.INVALID_INPUT, "InvalidInput", EXIT_INVALID_INPUT),
        (engine.JobPhase.FAILED, AttemptOutcome.TRANSIENT, "StageFailed", EXIT_FAILED),
        (engine.JobPhase.FAILED, None, "StageFailed", EXIT_FAILED),
    ],
)
def test_the_verdict(
    phase: engine.JobPhase, outcome: AttemptOutcome | None, reason: str, code: int
) -> None:
    verdict = job_verdict(phase, outcome)
    assert (verdict.succeeded, verdict.reason, verdict.exit_code) == (
        phase is engine.JobPhase.SUCCEEDED,
        reason,
        code,
    )


def test_a_passed_deadline_is_its_own_verdict_and_the_first_failed_stage_is_named() -> None:
    verdict = job_verdict(engine.JobPhase.FAILED, AttemptOutcome.TRANSIENT, deadline_exceeded=True)
    assert (verdict.reason, verdict.exit_code) == ("DeadlineExceeded", EXIT_FAILED)
    state = _succeeded({})
    assert first_failed_stage(PLAN, state) is None
    for name in ("profile", "quantize"):
        failed = replace(state.stages[name], phase=engine.StagePhase.FAILED)
        state = replace(state, stages={**state.stages, name: failed})
    assert first_failed_stage(PLAN, state) == "quantize"
