"""Helpers several agents share: getting an ONNX graph, running and scoring a candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bakeline.agents.checkpoint_io import CALIBRATION, EVALUATION, InputCheckpoint
from bakeline.agents.contract import InvalidInput, JobSpec, QualityMetric
from bakeline.agents.data import Dataset
from bakeline.agents.onnx_tools import export_onnx
from bakeline.agents.quality import Gate, compare, default_gate
from bakeline.agents.runtimes import (
    Runner,
    RuntimeConfig,
    load_exported_program,
    open_runner,
    run_dataset,
)


def dynamic_axes(checkpoint: InputCheckpoint) -> dict[str, dict[int, str]]:
    raw = checkpoint.manifest.attributes.get("dynamicAxes") or {}
    return {name: {int(axis): dim for axis, dim in axes.items()} for name, axes in raw.items()}


def export_to_onnx(checkpoint: InputCheckpoint, target: Path) -> Path:
    """The checkpoint's artifact as an (unoptimised) ONNX file at `target`."""
    if checkpoint.format == "onnx":
        return checkpoint.artifact
    example = checkpoint.dataset(CALIBRATION).batch(0, 2)
    module: torch.nn.Module | torch.export.ExportedProgram
    if checkpoint.format == "exported-program":
        module = load_exported_program(checkpoint.artifact)
    elif checkpoint.format == "torchscript":
        module = torch.jit.load(str(checkpoint.artifact), map_location="cpu")
    else:
        raise InvalidInput(f"cannot build a graph from a {checkpoint.format} artifact")
    export_onnx(
        module,
        example,
        checkpoint.input_names,
        [spec.name for spec in checkpoint.manifest.outputs][:1] or ["output"],
        dynamic_axes(checkpoint),
        target,
    )
    return target


def runtime_config(checkpoint: InputCheckpoint, **overrides: Any) -> RuntimeConfig:
    config = RuntimeConfig.model_validate(checkpoint.runtime)
    return config.model_copy(update=overrides) if overrides else config


def data_split(checkpoint: InputCheckpoint, split: str, limit: int | None = None) -> Dataset:
    data = checkpoint.dataset(CALIBRATION if split == "calibration" else EVALUATION)
    return data.head(limit) if limit else data


def score(
    runner: Runner,
    checkpoint: InputCheckpoint,
    split: str,
    limit: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Run `runner` on a split and compare with the reference outputs recorded at import."""
    data = data_split(checkpoint, split, limit)
    reference = np.asarray(checkpoint.reference(split))[: len(data)]
    outputs = run_dataset(runner, data, batch_size)
    return compare(outputs, reference, data.labels)


def score_file(
    path: Path,
    format: str,
    checkpoint: InputCheckpoint,
    split: str,
    config: RuntimeConfig | None = None,
    limit: int | None = None,
) -> dict[str, float]:
    return score(open_runner(path, format, checkpoint.input_names, config), checkpoint, split, limit)


def default_metric(checkpoint: InputCheckpoint, job: JobSpec) -> QualityMetric:
    if job.quality.metric:
        return job.quality.metric
    value = checkpoint.manifest.attributes.get("defaultMetric")
    return value if value in ("cosine", "accuracy", "max-abs-error") else "cosine"


def reference_accuracy(checkpoint: InputCheckpoint) -> float | None:
    for entry in checkpoint.manifest.lineage:
        if "referenceAccuracy" in entry.metrics:
            return entry.metrics["referenceAccuracy"]
    return None


def quality_gate(
    checkpoint: InputCheckpoint,
    job: JobSpec,
    metric: QualityMetric | None = None,
    threshold: float | None = None,
    min_threshold: float | None = None,
) -> Gate:
    """The gate params name, else the job's quality spec, else the metric's default."""
    chosen = metric or default_metric(checkpoint, job)
    if threshold is None and (metric is None or metric == job.quality.metric):
        threshold = job.quality.threshold
    gate = default_gate(chosen, threshold, reference_accuracy(checkpoint))
    if min_threshold is not None:
        gate = Gate(gate.metric, gate.threshold, min_threshold)
    return gate


def size_of(path: Path) -> float:
    return float(path.stat().st_size)


AGREEMENT_PROXY = 0.99  # calibration data has no labels: accuracy gates use argmax agreement


def calibration_holds(gate: Gate, metrics: dict[str, float]) -> tuple[bool, str]:
    """The job's gate, checked on calibration data during optimisation (never evaluation data)."""
    if gate.metric == "accuracy":
        agreement = metrics.get("agreement", 0.0)
        ok = agreement >= AGREEMENT_PROXY
        return ok, f"argmax agreement with the reference {agreement:.4f} (need {AGREEMENT_PROXY})"
    return gate.check(metrics)
