"""Helpers several agents share: getting an ONNX graph, running and scoring a candidate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bakeline.agents import timing
from bakeline.agents.checkpoint_io import (
    CALIBRATION,
    EVALUATION,
    ROLE_REPORT,
    InputCheckpoint,
    OutputCheckpoint,
)
from bakeline.agents.contract import InvalidInput, JobSpec, QualityMetric
from bakeline.agents.data import Dataset, Feeds
from bakeline.agents.hardware import usable_cpus
from bakeline.agents.onnx_tools import export_onnx
from bakeline.agents.quality import Gate, compare_outputs, default_gate
from bakeline.agents.runtimes import (
    Outputs,
    OutputsRunner,
    Runner,
    RuntimeConfig,
    load_exported_program,
    load_torch_module,
    open_outputs,
    open_runner,
    run_outputs,
)
from bakeline.contract import ACCURACY_DEFAULT_DROP, REFERENCE_ACCURACY


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
        module = load_torch_module(checkpoint.artifact, "torchscript")
    else:
        raise InvalidInput(f"cannot build a graph from a {checkpoint.format} artifact")
    export_onnx(
        module,
        example,
        checkpoint.input_names,
        checkpoint.output_names,
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
    runner: OutputsRunner | Runner,
    checkpoint: InputCheckpoint,
    split: str,
    limit: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Run `runner` on a split and compare each output with the reference outputs recorded at
    import (`quality.compare_outputs`: the primary output's metrics by their names, and with
    several outputs every output's as `<metric>.<output>`; token-level outputs on real
    positions only). A runner of the primary output alone is compared on that one."""
    data = data_split(checkpoint, split, limit)
    names = checkpoint.output_names

    def every(feeds: Feeds) -> Outputs:
        found = runner(feeds)
        return found if isinstance(found, dict) else {names[0]: found}

    tokens = checkpoint.token_outputs
    outputs = run_outputs(every, data, batch_size, tokens)
    reference = {
        name: np.asarray(value)[: len(data)]
        for name, value in checkpoint.reference_outputs(split).items()
        if name in outputs or len(outputs) > 1
    }
    return compare_outputs(outputs, reference, data.labels, data.mask_array, tokens)


def score_file(
    path: Path,
    format: str,
    checkpoint: InputCheckpoint,
    split: str,
    config: RuntimeConfig | None = None,
    limit: int | None = None,
) -> dict[str, float]:
    return score(open_model(checkpoint, path, format, config), checkpoint, split, limit)


def open_model(
    checkpoint: InputCheckpoint,
    path: Path | None = None,
    format: str | None = None,
    config: RuntimeConfig | None = None,
) -> OutputsRunner:
    """A model file of this checkpoint (its artifact by default), every output named as the
    checkpoint names them."""
    return open_outputs(
        path or checkpoint.artifact,
        format or checkpoint.format,
        checkpoint.input_names,
        config,
        checkpoint.output_names,
    )


def default_metric(checkpoint: InputCheckpoint, job: JobSpec) -> QualityMetric:
    if job.quality.metric:
        return job.quality.metric
    value = checkpoint.manifest.attributes.get("defaultMetric")
    return value if value in ("cosine", "accuracy", "max-abs-error") else "cosine"


def lineage_metric(checkpoint: InputCheckpoint, key: str) -> float | None:
    """A metric an earlier stage of this checkpoint's lineage reported (the first that did)."""
    for entry in checkpoint.manifest.lineage:
        if key in entry.metrics:
            return entry.metrics[key]
    return None


def reference_accuracy(checkpoint: InputCheckpoint) -> float | None:
    return lineage_metric(checkpoint, REFERENCE_ACCURACY)


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


AGREEMENT_PROXY = 0.99  # calibration rows without labels: accuracy gates use argmax agreement


def calibration_holds(gate: Gate, metrics: dict[str, float]) -> tuple[bool, str]:
    """The job's gate, checked on calibration data during optimisation (never evaluation data).
    An accuracy gate is checked on accuracy where the rows have labels (the user's data), else
    by argmax agreement with the original (the builtin and synthetic splits have none). On
    labelled rows the bound is the job's, or the original's own accuracy on those rows less
    ACCURACY_DEFAULT_DROP where that is lower: the job's bound was set on other rows, and the
    original itself may not reach it on these."""
    reference = metrics.get(REFERENCE_ACCURACY)
    if gate.metric == "accuracy" and "accuracy" in metrics and reference is not None:
        bound = min(gate.threshold, reference - ACCURACY_DEFAULT_DROP)
        accuracy = metrics["accuracy"]
        return accuracy >= bound, (
            f"accuracy {accuracy:.4f} on the labelled calibration rows (need {bound:.4f}; "
            f"the original's {reference:.4f} there)"
        )
    if gate.metric == "accuracy":
        agreement = metrics.get("agreement", 0.0)
        ok = agreement >= AGREEMENT_PROXY
        return ok, f"argmax agreement with the reference {agreement:.4f} (need {AGREEMENT_PROXY})"
    return gate.check(metrics)


def write_report(out: OutputCheckpoint, stage: str, data: dict[str, Any]) -> str:
    """A stage's full findings as JSON (the termination message only has room for headlines)."""
    relative = f"reports/{stage}.json"
    out.path(relative).write_text(json.dumps(data, indent=2, default=str))
    out.add(relative, ROLE_REPORT)
    return relative


def batch_sizes(job: JobSpec, override: list[int] | None) -> list[int]:
    sizes = override or job.target.batch_sizes or [1]
    if any(size < 1 for size in sizes):
        raise InvalidInput(f"batch sizes must be >= 1, got {sizes}")
    return sorted(set(sizes))


def timing_batch(checkpoint: InputCheckpoint, batch_size: int) -> Feeds:
    """A batch of real calibration inputs (repeated when the split is smaller than the batch)."""
    data = data_split(checkpoint, "calibration")
    if len(data) >= batch_size:
        return data.batch(0, batch_size)
    repeats = -(-batch_size // len(data))
    tiled = Dataset(
        {k: np.concatenate([v] * repeats)[:batch_size] for k, v in data.inputs.items()},
        mask=data.mask,
    )
    return tiled.batch(0, batch_size)


def timing_batches(checkpoint: InputCheckpoint, batch_size: int) -> list[Feeds]:
    """The calibration split cut into batches of `batch_size`, for timing over real inputs of
    varied lengths (at least one batch: a smaller split is repeated)."""
    data = data_split(checkpoint, "calibration")
    if len(data) < batch_size:
        return [timing_batch(checkpoint, batch_size)]
    return [data.batch(i, i + batch_size) for i in range(0, len(data) - batch_size + 1, batch_size)]


def original_runner(checkpoint: InputCheckpoint, threads: int) -> Runner:
    """The imported model, eager, as the baseline for speed comparisons."""
    path, fmt = checkpoint.original()
    config = RuntimeConfig(
        backend="torch-eager", intra_op_threads=threads, graph_optimization_level="basic"
    )
    return open_runner(path, fmt, checkpoint.input_names, config)


def relative_latency(
    candidates: dict[str, Path], source: InputCheckpoint, sizes: list[int], runs: int
) -> dict[str, float]:
    """Each ONNX file's latency over the fastest's, summed over the batch sizes: how agents
    choose between two rewrites of a model on this node (THE timing method, SELECTION)."""
    config = RuntimeConfig(intra_op_threads=usable_cpus())
    runners = {
        name: open_runner(path, "onnx", source.input_names, config)
        for name, path in candidates.items()
    }
    total = dict.fromkeys(candidates, 0.0)
    for size in sizes:
        batches = timing_batches(source, size)
        calls = {name: timing.rotating(runner, batches) for name, runner in runners.items()}
        stats = timing.compare(calls, runs, next(iter(calls)), timing.SELECTION).stats
        best = min(s.p50 for s in stats.values())
        for name, s in stats.items():
            total[name] += s.p50 / best
    return total
