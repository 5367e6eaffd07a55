"""A finished job's result and verdict, decided once for the operator and `bakeline run`.

Both drivers hand over what they observed (the stages' metrics, the final artifact's facts);
neither decides on its own which metric is a speedup or whether quality passed, so
`status.result` and `bakeline run`'s report.json say the same of the same bake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bakeline import contract
from bakeline.api import BakeResult, QualityResult
from bakeline.api.bakingjob import PRECISION_MAX, RUNTIME_MAX, Quality, Target
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
        runtime=_clipped(artifact.runtime, RUNTIME_MAX),
        precision=_clipped(artifact.precision, PRECISION_MAX),
        quality=quality_result(quality, metrics),
    )


def _clipped(label: str | None, bound: int) -> str | None:
    """An agent's label within the status field's bound: a long one loses its tail, never the
    job's result."""
    return label if label is None or len(label) <= bound else label[: bound - 3] + "..."


# What a result says of the data its quality was measured on (QualityEvidence.data).
SYNTHETIC_DATA = "synthetic"  # made up by the import stage: the job gave none of its own
BUILTIN_DATA = "builtin"  # the builtin model's own held-out evaluation split
DATASET_DATA = "dataset"  # the job's dataset
UNVERIFIED_NOTE = "evaluated on synthetic inputs: quality unverified"
_SAMPLES = ("calibrationSamples", "evaluationSamples")  # the import stage's split sizes


@dataclass(frozen=True)
class QualityEvidence:
    """What the job's quality figures were measured on, from the stages' own metrics
    (`contract.SYNTHETIC_INPUTS` of the import stage, `contract.QUALITY_VERIFIED` of the
    validator). A bake on made-up inputs still Succeeds, but its quality is unverified."""

    verified: bool | None  # None: no stage said what the data was (e.g. an older agent)
    data: str | None = None  # SYNTHETIC_DATA, BUILTIN_DATA, DATASET_DATA; None: unknown
    calibration_samples: int | None = None
    evaluation_samples: int | None = None

    @property
    def note(self) -> str:
        """One line for a person: what the quality figures are worth."""
        if self.verified is None:
            return ""
        if not self.verified:
            return UNVERIFIED_NOTE
        where = {
            BUILTIN_DATA: "the builtin model's evaluation split",
            DATASET_DATA: "the job's dataset",
        }.get(self.data or "", "data of the job's")
        sizes = []
        if self.evaluation_samples is not None:
            sizes.append(f"{self.evaluation_samples} held-out samples")
        if self.calibration_samples is not None:
            sizes.append(f"{self.calibration_samples} for calibration")
        return f"evaluated on {where}" + (f" ({', '.join(sizes)})" if sizes else "")

    def to_wire(self) -> dict[str, Any]:
        """The fields a result adds (none when nothing is known)."""
        if self.verified is None:
            return {}
        wire: dict[str, Any] = {"qualityVerified": self.verified, "qualityNote": self.note}
        if self.data is not None:
            wire["evaluationData"] = self.data
        if self.calibration_samples is not None:
            wire["calibrationSamples"] = self.calibration_samples
        if self.evaluation_samples is not None:
            wire["evaluationSamples"] = self.evaluation_samples
        return wire


def quality_evidence(
    plan: Plan,
    state: RunState,
    quality: Quality | None = None,
    final_metrics: Mapping[str, float] | None = None,
) -> QualityEvidence:
    """What the job's quality was measured on: synthetic inputs (unverified) if the import stage
    made them up or the validator said so; else the job's dataset (a `dataset` param of the
    stage that imported it, or `quality.dataset` other than builtin) or the builtin model's
    evaluation split. Unknown (verified None) when no stage reported either metric."""
    metrics = result_metrics(plan, state, final_metrics)
    synthetic = metrics.get(contract.SYNTHETIC_INPUTS)
    verified = metrics.get(contract.QUALITY_VERIFIED)
    if synthetic is None and verified is None:
        return QualityEvidence(verified=None)
    calibration, evaluation = (
        int(metrics[k]) if k in metrics and metrics[k] >= 0 else None for k in _SAMPLES
    )
    if bool(synthetic) or verified == 0.0:
        return QualityEvidence(False, SYNTHETIC_DATA, calibration, evaluation)
    data = None
    if synthetic is not None:
        given = _dataset_param(plan, state) or (
            quality.dataset if quality is not None and quality.dataset != "builtin" else None
        )
        data = DATASET_DATA if given else BUILTIN_DATA
    return QualityEvidence(True, data, calibration, evaluation)


def _dataset_param(plan: Plan, state: RunState) -> str | None:
    """The `dataset` param of the stage that said whether its inputs were synthetic."""
    for stage in plan.stages:
        stage_state = state.stages[stage.name]
        if contract.SYNTHETIC_INPUTS in stage_state.metrics:
            value = stage.params_for(stage_state.fallback).get("dataset")
            return str(value) if value else None
    return None


def result_document(
    plan: Plan,
    state: RunState,
    target: Target,
    quality: Quality,
    artifact: FinalArtifact,
    final_metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The result as both drivers write it (status.result, report.json's result): the bake
    result and what its quality was measured on (`quality_evidence`)."""
    bake = bake_result(plan, state, target, quality, artifact, final_metrics)
    evidence = quality_evidence(plan, state, quality, final_metrics)
    return {**bake.to_wire(), **evidence.to_wire()}


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
    threshold = job_threshold(quality, metrics)
    return QualityResult(
        metric=quality.metric,
        value=value,
        threshold=threshold,
        passed=contract.quality_passes(quality.metric, value, threshold),
    )


def job_threshold(quality: Quality, metrics: Mapping[str, float]) -> float:
    """The bound of the job's own gate: its threshold, else the one the quality validator
    judged by (it knows the original's accuracy), else the metric's default."""
    if quality.threshold is not None:
        return quality.threshold
    return contract.judged_threshold(quality.metric, metrics)


@dataclass(frozen=True)
class Verdict:
    """How a finished job ended, in the words each driver reports it with."""

    succeeded: bool
    reason: str  # the Succeeded / Failed condition's reason
    exit_code: int  # `bakeline run`'s exit status
    # A success whose quality was measured on made-up inputs is still a success, marked so.
    verified: bool = True
    note: str = ""  # QualityEvidence.note of a success, when known


def job_verdict(
    phase: JobPhase,
    failed_outcome: AttemptOutcome | None = None,
    deadline_exceeded: bool = False,
    evidence: QualityEvidence | None = None,
) -> Verdict:
    """The verdict of a finished job; `failed_outcome` is the last outcome of the first stage
    that failed (None when unknown: the job failed for another reason, or it succeeded);
    `evidence` (`quality_evidence`) marks a success whose quality is unverified."""
    if phase is JobPhase.SUCCEEDED:
        if evidence is None:
            return Verdict(True, "Baked", contract.EXIT_OK)
        return Verdict(
            True, "Baked", contract.EXIT_OK, evidence.verified is not False, evidence.note
        )
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
