"""GraphOptimizer: capture the graph, fold constants, fuse, remove training-only ops.

torch.export captures the graph (TorchScript goes through the TorchScript exporter), translated
to ONNX unoptimised; onnxscript's optimizer folds constants and removes dead code; ONNX Runtime's
offline optimizer then removes redundant nodes (Identity, Dropout), folds BatchNorm into
convolutions and fuses at the chosen level. Before that, MatMuls that read the same input with
constant weights (attention's Q, K, V) are fused into one MatMul + Split. `basic` (default) stays
hardware-independent and leaves the plain MatMul graph that quantizes well; `extended` / `all`
add fusions (SkipLayerNorm, BiasGelu, ...) tied to ONNX Runtime's CPU kernels.

Params: level ("basic" | "extended" | "all"), fuseSiblingMatMuls (true), maxAbsError (bound on
the rewrite's deviation from the reference outputs on calibration data; a larger one fails the
gate).
Measures: node counts before/after, training-only ops before/after, weight bytes, deviation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from bakeline.agents.checkpoint_io import artifact_name
from bakeline.agents.contract import GateFailed, Outcome, StageParams
from bakeline.agents.onnx_tools import (
    TRAINING_OPS,
    fuse_sibling_matmuls,
    name_nodes,
    onnxscript_optimize,
    op_histogram,
    ort_offline_optimize,
    save,
    scratch_dir,
    weight_bytes,
)
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import export_to_onnx, score_file
from bakeline.agents.timing import Stopwatch


class GraphParams(StageParams):
    level: Literal["basic", "extended", "all"] = "basic"
    fuse_sibling_matmuls: bool = Field(default=True, alias="fuseSiblingMatMuls")
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
                fused = 0
                if params.fuse_sibling_matmuls:
                    folded, fused = fuse_sibling_matmuls(folded)
                folded_path = save(folded, Path(tmp) / "folded.onnx")
            with Stopwatch() as optimize_time:
                final = ort_offline_optimize(folded_path, out.path(artifact), params.level)
        out.add(artifact, "model")
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
        manifest = out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=artifact,
            format="onnx",
            params=params.model_dump(by_alias=True),
            metrics=metrics,
            started_at=ctx.started_at,
            attributes={"graph": {"level": params.level, "ops": dict(after.most_common())}},
        )
        message = (
            f"graph: {int(metrics['nodesBefore'])} -> {int(metrics['nodesAfter'])} nodes "
            f"({params.level}), training-only ops {int(metrics['trainingOpsBefore'])} -> "
            f"{int(metrics['trainingOpsAfter'])}, max abs error {quality['maxAbsError']:.2g}"
        )
        return StageResult(Outcome(message, metrics), manifest)
