"""GraphOptimizer: capture the graph, fold constants, fuse, remove training-only ops.

torch.export captures the graph (TorchScript goes through the TorchScript exporter), translated
to ONNX unoptimised; onnxscript's optimizer folds constants and removes dead code; ONNX Runtime's
offline optimizer then removes redundant nodes (Identity, Dropout), folds BatchNorm into
convolutions and fuses at the chosen level. Before that, MatMuls that read the same input with
constant weights (attention's Q, K, V) are fused into one MatMul + Split. `basic` (default) stays
hardware-independent and leaves the plain MatMul graph that quantizes well; `extended` / `all`
add fusions (SkipLayerNorm, BiasGelu, ...) tied to ONNX Runtime's CPU kernels.

Transformer fusions (onnxscript's rewrite rules for ONNX Runtime: attention into
MultiHeadAttention, which ONNX Runtime's own session fusions never find in an exported graph,
plus SkipLayerNormalization and BiasGelu) leave the weight MatMuls alone, so quantization still
sees them. `fusions: auto` (default) decides by measurement on this node: the fused and unfused
graphs are timed by THE timing method at the job's batch sizes, and the fused one is kept only
when it is faster overall and within maxAbsError; `on` keeps it whenever it fuses anything.

Params: level ("basic" | "extended" | "all"), fuseSiblingMatMuls (true), fusions ("auto" | "on"
| "off"), timingRuns (20), maxAbsError (bound on the rewrite's deviation from the reference
outputs on calibration data; a larger one fails the gate).
Measures: node counts before/after, training-only ops before/after, weight bytes, deviation,
fusions applied and the fused / unfused latency ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from bakeline.agents.checkpoint_io import artifact_name
from bakeline.agents.contract import GateFailed, Outcome, StageParams
from bakeline.agents.logs import log
from bakeline.agents.onnx_tools import (
    TRAINING_OPS,
    fuse_sibling_matmuls,
    name_nodes,
    onnxscript_optimize,
    op_histogram,
    ort_offline_optimize,
    ort_transformer_fusions,
    save,
    scratch_dir,
    weight_bytes,
)
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import batch_sizes, export_to_onnx, relative_latency, score_file
from bakeline.agents.timing import Stopwatch


class GraphParams(StageParams):
    level: Literal["basic", "extended", "all"] = "basic"
    fuse_sibling_matmuls: bool = Field(default=True, alias="fuseSiblingMatMuls")
    fusions: Literal["auto", "on", "off"] = "auto"
    timing_runs: int = Field(default=20, alias="timingRuns", ge=5)
    max_abs_error: float = Field(default=1e-3, alias="maxAbsError", gt=0)


@register
class GraphOptimizer(Agent[GraphParams]):
    name = "GraphOptimizer"
    params_model = GraphParams
    writes = ("model.onnx",)
    metrics = ("nodesBefore", "nodesAfter", "trainingOpsAfter", "maxAbsError")

    def run(self, ctx: StageContext, params: GraphParams) -> StageResult:
        source = ctx.open_input()
        out = ctx.output(source)
        artifact = artifact_name("onnx")
        with scratch_dir() as tmp:
            with Stopwatch() as export_time:
                raw = onnx.load(str(export_to_onnx(source, Path(tmp) / "raw.onnx")))
                folded = name_nodes(onnxscript_optimize(raw))
            variants = {"plain": folded}
            applied: dict[str, int] = {}
            if params.fusions != "off":
                try:
                    transformer, applied = ort_transformer_fusions(folded)
                except Exception as exc:  # a rewrite rule that trips on an unusual graph
                    log("transformer fusions failed", error=str(exc)[:300], level="warning")
                if applied:
                    variants["fused"] = name_nodes(transformer)
            with Stopwatch() as optimize_time:
                paths: dict[str, Path] = {}
                fused = 0
                for name, variant in variants.items():
                    if params.fuse_sibling_matmuls:
                        variant, fused = fuse_sibling_matmuls(variant)
                    folded_path = save(variant, Path(tmp) / f"{name}-folded.onnx")
                    paths[name] = Path(tmp) / f"{name}.onnx"
                    ort_offline_optimize(folded_path, paths[name], params.level)
            ratio = 1.0
            chosen = "plain"
            if "fused" in paths:
                deviation = score_file(paths["fused"], "onnx", source, "calibration", limit=64)
                if deviation["maxAbsError"] > params.max_abs_error:
                    log("transformer fusions deviate: not kept", **deviation, level="warning")
                elif params.fusions == "on":
                    chosen = "fused"
                else:
                    sizes = batch_sizes(ctx.job, None)
                    with Stopwatch() as timing:
                        relative = relative_latency(paths, source, sizes, params.timing_runs)
                    ratio = relative["fused"] / relative["plain"]
                    chosen = "fused" if ratio < 1.0 else "plain"
                    log("transformer fusions timed", ratio=ratio, seconds=timing.seconds)
            out.add_copy(paths[chosen], artifact, "model")
            final = onnx.load(str(out.path(artifact)))
        before, after = op_histogram(raw), op_histogram(final)
        quality = score_file(out.directory / artifact, "onnx", source, "calibration", limit=64)
        metrics = {
            "nodesBefore": float(sum(before.values())),
            "nodesAfter": float(sum(after.values())),
            "nodesRemoved": float(sum(before.values()) - sum(after.values())),
            "matmulGroupsFused": float(fused),
            "trainingOpsBefore": float(sum(before[op] for op in TRAINING_OPS)),
            "trainingOpsAfter": float(sum(after[op] for op in TRAINING_OPS)),
            "weightBytes": float(weight_bytes(final)),
            "sizeBytes": float((out.directory / artifact).stat().st_size),
            "exportSeconds": export_time.seconds,
            "transformerFusions": float(sum(applied.values()) if chosen == "fused" else 0),
            "fusedLatencyRatio": ratio,
            "optimizeSeconds": optimize_time.seconds,
            "maxAbsError": quality["maxAbsError"],
            "cosineMin": quality["cosineMin"],
        }
        if quality["maxAbsError"] > params.max_abs_error:
            raise GateFailed(
                f"the optimised graph deviates from the reference by {quality['maxAbsError']:.3g} "
                f"> maxAbsError {params.max_abs_error}",
                metrics,
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
                "graph": {
                    "level": params.level,
                    "transformerFusions": applied if chosen == "fused" else {},
                    "ops": dict(after.most_common()),
                }
            },
        )
        fusions = ", transformer fusions" if chosen == "fused" else ""
        message = (
            f"graph: {int(metrics['nodesBefore'])} -> {int(metrics['nodesAfter'])} nodes "
            f"({params.level}{fusions}), training-only ops "
            f"{int(metrics['trainingOpsBefore'])} -> {int(metrics['trainingOpsAfter'])}, "
            f"max abs error {quality['maxAbsError']:.2g}"
        )
        return StageResult(Outcome(message, metrics), manifest)
