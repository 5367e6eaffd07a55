"""MemoryOptimizer: shrink what quantization left, embeddings included; measure peak memory.

Params:
  embeddings: "int8" (default: per-row int8 embedding tables, near lossless) | "int4" (4-bit
    blocks of embeddingBlockSize with scale and zero point: less than half of int8's bytes, about
    0.001 cosine on MiniLM) | "none"
  maxRowError (0.15): every row of a table, checked data-free (calibration text reaches few rows),
    must come back within this relative L2 error of itself; a table that fails at 4 bits is
    stored at 8, failing at 8 it stays float (`raisedEmbeddings` counts them)
  floatWeights: "fp16" (default: store float MatMul weights as fp16, cast back at load) | "keep"
  minElements (65536): smaller tensors are not worth touching
Measures: size and weight bytes before/after, peak RSS of a fresh process loading and running the
model before/after, and the calibration quality against the reference (of every output, with
`cosineMean.<output>` where there are several). Exits 3 when the shrunk model misses the job's
quality gate on calibration data (on any output: the message names it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from bakeline.agents.checkpoint_io import CALIBRATION, InputCheckpoint, artifact_name
from bakeline.agents.contract import GateFailed, Outcome, StageParams
from bakeline.agents.memprobe import measure
from bakeline.agents.onnx_tools import save, scratch_dir
from bakeline.agents.quality import named_metrics
from bakeline.agents.shrink import ShrinkReport, shrink
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    calibration_holds,
    export_to_onnx,
    quality_gate,
    score_file,
    size_of,
)


class MemoryParams(StageParams):
    embeddings: Literal["int8", "int4", "none"] = "int8"
    embedding_block_size: int = Field(default=32, alias="embeddingBlockSize", ge=16)
    max_row_error: float = Field(default=0.15, alias="maxRowError", gt=0, le=1)
    float_weights: Literal["fp16", "keep"] = Field(default="fp16", alias="floatWeights")
    min_elements: int = Field(default=65536, alias="minElements", ge=1)


def _precision(source: InputCheckpoint, report: ShrinkReport) -> str:
    """The quantization stage's label (what the weights are), with what this stage changed."""
    label = str(
        source.manifest.attributes.get("precision")
        or source.manifest.attributes.get("dtype")
        or "fp32"
    )
    if report.embeddings:
        kinds = sorted(Counter(entry.rsplit(":", 1)[1] for entry in report.embeddings).items())
        if len(kinds) == 1:
            (bits, count), plural = kinds[0], "s" if kinds[0][1] > 1 else ""
            label += f"; {count} embedding table{plural} {bits}"
        else:
            label += "; embedding tables " + ", ".join(f"{n} {bits}" for bits, n in kinds)
    if report.fp16_weights:
        label += f"; {len(report.fp16_weights)} weights fp16"
    return label


def _raised(report: ShrinkReport) -> str:
    if not report.raised:
        return ""
    worst = ", ".join(f"{name} {report.row_errors[name]:.3f}" for name in report.raised)
    return f"; above the asked precision, a row's error over the bound: {worst}"


@register
class MemoryOptimizer(Agent[MemoryParams]):
    name = "MemoryOptimizer"
    params_model = MemoryParams
    reads = (CALIBRATION,)
    writes = ("model.onnx",)

    def run(self, ctx: StageContext, params: MemoryParams) -> StageResult:
        source = ctx.open_input()
        out = ctx.output(source)
        artifact = artifact_name("onnx")
        calibration_file = source.directory / CALIBRATION
        with scratch_dir() as tmp:
            before_path = export_to_onnx(source, Path(tmp) / "exported.onnx")
            memory_before = measure(before_path, calibration_file)
            model, report = shrink(
                onnx.load(str(before_path)),
                embedding_bits={"int8": 8, "int4": 4}.get(params.embeddings),
                block_size=params.embedding_block_size,
                fp16_weights=params.float_weights == "fp16",
                min_elements=params.min_elements,
                max_row_error=params.max_row_error,
            )
            onnx.checker.check_model(model)
            save(model, out.path(artifact))
            out.add(artifact, "model")
            size_before = size_of(before_path)
        memory_after = measure(out.directory / artifact, calibration_file)
        quality = score_file(out.directory / artifact, "onnx", source, "calibration")
        metrics = {
            "sizeBytes": size_of(out.directory / artifact),
            "sizeBytesBefore": size_before,
            "weightBytes": float(report.bytes_after),
            "weightBytesBefore": float(report.bytes_before),
            "peakMemoryMB": memory_after["modelMB"],
            "peakMemoryMBBefore": memory_before["modelMB"],
            "embeddingsQuantized": float(len(report.embeddings)),
            "raisedEmbeddings": float(len(report.raised)),
            "embeddingRowErrorMax": max(report.row_errors.values(), default=0.0),
            "fp16Weights": float(len(report.fp16_weights)),
            "cosineMean": quality["cosineMean"],
            "cosineMin": quality["cosineMin"],
            **named_metrics(quality),
        }
        ok, why = calibration_holds(quality_gate(source, ctx.job), quality)
        if not ok:
            raise GateFailed(
                f"the shrunk model misses the quality gate on calibration: {why}", metrics
            )
        out.carry_forward()
        manifest = self.finish(
            ctx,
            out,
            params,
            artifact=artifact,
            format="onnx",
            metrics=metrics,
            attributes={
                "memory": {
                    "embeddings": report.embeddings,
                    "embeddingRowErrors": report.row_errors,
                    "raisedEmbeddings": report.raised,
                    "fp16Weights": report.fp16_weights,
                },
                "precision": _precision(source, report),
            },
        )
        message = (
            f"{size_before / 1e6:.2f} -> {metrics['sizeBytes'] / 1e6:.2f} MB "
            f"({', '.join(report.embeddings) or 'no embedding table quantized'}"
            f"{_raised(report)}, "
            f"{len(report.fp16_weights)} float "
            f"weights fp16); peak memory {memory_before['modelMB']:.1f} -> "
            f"{memory_after['modelMB']:.1f} MB; calibration cosine {quality['cosineMean']:.4f}"
        )
        return StageResult(Outcome(message, metrics), manifest)
