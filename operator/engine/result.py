"""A finished job's result and verdict, decided once for the operator and `bakeline run`.

Both drivers hand over what they observed (the stages' metrics, the final artifact's facts);
neither decides on its own which metric is a speedup or whether quality passed, so
`status.result` and `bakeline run`'s report.json say the same of the same bake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bakeline import contract
from bakeline.api import BakeResult, QualityResult
from bakeline.api.bakingjob import Quality, Target
from bakeline.engine.pipeline import JobPhase, Plan, RunState, StagePhase
from bakeline.engine.retry import AttemptOutcome

_MAX_SPEEDUPS = 8  # batch sizes kept in the result, as many as status.result takes


@dataclass(frozen=True)
class FinalArtifact:
    """The facts of the job's last good checkpoint that a driver read from its store."""

    location: str  # where the artifact is: a path in the result directory, on the volume
    format: str
    sha256: str | None
    size_bytes: int | None
    runtime: str | None = None
    precision: str | None = None


def result_metrics(
    plan: Plan, state: RunState, final: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Every stage's metrics in the workflow's order (a later stage's value wins: the
    profiler's speedups, the validator's quality), then the final checkpoint's own; each at
    the precision the termination message carries, so both drivers see equal numbers."""
    merged: dict[str, float] = {}
    for stage in plan.stages:
        merged.update(state.stages[stage.name].metrics)
    merged.update(final or {})
    return {k: rounded for k, v in merged.items() if (rounded := contract.finite(v)) is not None}


def bake_result(
    plan: Plan,
    state: RunState,
    target: Target,
    quality: Quality,
    artifact: FinalArtifact,
    final_metrics: Mapping[str, float] | None = None,
) -> BakeResult:
    """What a Succeeded job made: the artifact, its speedups per batch size, its quality.
    `final_metrics` are the final checkpoint's own (its manifest's or its record's)."""
    metrics = result_metrics(plan, state, final_metrics)
    batch_sizes = target.batch_sizes
    speedups = dict(list(contract.per_batch(metrics, "speedup").items())[:_MAX_SPEEDUPS])
    first_batch = str(batch_sizes[0]) if batch_sizes else "1"
    speedup = metrics.get(contract.SPEEDUP, speedups.get(first_batch))
    if speedup is None and speedups:
        speedup = max(speedups.values())
    original = metrics.get(contract.ORIGINAL_SIZE_BYTES, _first_checkpoint_size(plan, state))
    return BakeResult(
        artifact=artifact.location,
        format=artifact.format[:64] or "unknown",
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        original_size_bytes=int(original) if original is not None else None,
        speedup=speedup,
        speedups=speedups,
        runtime=artifact.runtime,
        precision=artifact.precision,
        quality=quality_result(quality, metrics),
    )


def _first_checkpoint_size(plan: Plan, state: RunState) -> float | None:
    """The size of the first checkpoint, the model as it came in."""
    for stage in plan.stages:
        checkpoint = state.stages[stage.name].checkpoint
        if checkpoint is not None and checkpoint.size_bytes:
            return float(checkpoint.size_bytes)
    return None


def quality_result(quality: Quality, metrics: Mapping[str, float]) -> QualityResult | None:
    """The job's quality metric as measured, against its threshold; None if never measured."""
    value = metrics.get(contract.QUALITY_METRIC_KEYS[quality.metric])
    if value is None:
        return None
    return QualityResult(
        metric=quality.metric,
        value=value,
        threshold=quality.threshold,
        passed=contract.quality_passes(quality.metric, value, quality.threshold),
    )


@dataclass(frozen=True)
class Verdict:
    """How a finished job ended, in the words each driver reports it with."""

    succeeded: bool
    reason: str  # the Succeeded / Failed condition's reason
    exit_code: int  # `bakeline run`'s exit status


def job_verdict(
    phase: JobPhase, failed_outcome: AttemptOutcome | None = None, deadline_exceeded: bool = False
) -> Verdict:
    """The verdict of a finished job; `failed_outcome` is the last outcome of the first stage
    that failed (None when unknown: the job failed for another reason, or it succeeded)."""
    if phase is JobPhase.SUCCEEDED:
        return Verdict(True, "Baked", contract.EXIT_OK)
    if deadline_exceeded:
        return Verdict(False, "DeadlineExceeded", contract.EXIT_FAILED)
    if failed_outcome is AttemptOutcome.GATE_FAILED:
        return Verdict(False, "GateFailed", contract.EXIT_GATE_FAILED)
    if failed_outcome is AttemptOutcome.INVALID_INPUT:
        return Verdict(False, "InvalidInput", contract.EXIT_INVALID_INPUT)
    return Verdict(False, "StageFailed", contract.EXIT_FAILED)


def first_failed_stage(plan: Plan, state: RunState) -> str | None:
    """The first stage in the workflow's order that failed: the one a verdict speaks of."""
    return next((n for n in plan.order if state.stages[n].phase is StagePhase.FAILED), None)
