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

Attention-mask fill values (Hugging Face's finfo.min on padded keys) are softened to one that
keeps CPU softmax kernels off their subnormal slow path (`bakeline.agents.attention_mask`) where
the outputs stay within maxAbsError of the reference: the same weights, a faster softmax.

Padding removal (`bakeline.agents.padding`) then runs the per-token layers of each candidate on
the real tokens only: a third of the positions in MiniLM's batches of 32 are padding. Every
candidate (plain, fused, each with and without padding) within maxAbsError of the reference is
timed in one comparison and the fastest kept (`removePadding: auto`); `on` keeps the unpadded
graph wherever the rewrite applies and holds.

Params: level ("basic" | "extended" | "all"), fuseSiblingMatMuls (true), fusions ("auto" | "on"
| "off"), removePadding ("auto" | "on" | "off"), timingRuns (20), maxAbsError (bound on a
rewrite's deviation from the reference outputs on calibration data, on real positions, per unit
of the output's scale where its largest magnitude is above 1; a larger one fails the gate).
Measures: node counts before/after, training-only ops before/after, weight bytes, deviation,
fusions applied, the fused / unfused and unpadded / padded latency ratios, packed nodes,
attention restores and packs done head-major, and mask fill values softened.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from bakeline.agents.attention_mask import soften_masks
from bakeline.agents.checkpoint_io import InputCheckpoint, artifact_name
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
from bakeline.agents.padding import Unpadded, remove_padding
from bakeline.agents.quality import named_metrics, worst, worst_output
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    batch_sizes,
    data_split,
    export_to_onnx,
    relative_latency,
    score_file,
)
from bakeline.agents.timing import Stopwatch


class GraphParams(StageParams):
    level: Literal["basic", "extended", "all"] = "basic"
    fuse_sibling_matmuls: bool = Field(default=True, alias="fuseSiblingMatMuls")
    fusions: Literal["auto", "on", "off"] = "auto"
    timing_runs: int = Field(default=20, alias="timingRuns", ge=5)
    # Relative to the output's scale above 1 (quality.compare's scaledError).
    max_abs_error: float = Field(default=1e-3, alias="maxAbsError", gt=0)
    remove_padding: Literal["auto", "on", "off"] = Field(default="auto", alias="removePadding")


UNPADDED = "+unpadded"  # suffix of a candidate graph's name once its padding is removed


@register
class GraphOptimizer(Agent[GraphParams]):
    name = "GraphOptimizer"
    params_model = GraphParams
    writes = ("model.onnx",)

    def run(self, ctx: StageContext, params: GraphParams) -> StageResult:
        source = ctx.open_input()
        out = ctx.output(source)
        artifact = artifact_name("onnx")
        with scratch_dir() as tmp:
            with Stopwatch() as export_time:
                raw = onnx.load(str(export_to_onnx(source, Path(tmp) / "raw.onnx")))
                folded = name_nodes(onnxscript_optimize(raw))
            folded, masks = checked_mask_fills(folded, source, Path(tmp), params)
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
            unpadded: dict[str, Unpadded] = {}
            if params.remove_padding != "off":
                mask = data_split(source, "calibration").mask
                for name in list(paths):
                    packed = remove_padding(onnx.load(str(paths[name])), mask)
                    if packed is not None:
                        paths[name + UNPADDED] = save(packed.model, Path(tmp) / f"{name}-u.onnx")
                        unpadded[name + UNPADDED] = packed
            chosen, relative, scores = choose_graph(ctx, source, paths, params)
            out.add_copy(paths[chosen], artifact, "model")
            final = onnx.load(str(out.path(artifact)))
            # A rewrite was scored as it was checked against the bound; plain was not.
            quality = scores.get(chosen) or _score(paths[chosen], source)
        fused_graph = chosen.startswith("fused")
        before, after = op_histogram(raw), op_histogram(final)
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
            "transformerFusions": float(sum(applied.values()) if fused_graph else 0),
            "fusedLatencyRatio": _ratio(relative, chosen, "fused"),
            "paddingRemoved": float(chosen in unpadded),
            "packedNodes": float(unpadded[chosen].packed_nodes if chosen in unpadded else 0),
            "headMajorRewrites": float(unpadded[chosen].head_major if chosen in unpadded else 0),
            "unpaddedLatencyRatio": _ratio(relative, chosen, UNPADDED),
            "optimizeSeconds": optimize_time.seconds,
            "maskFillsSoftened": float(masks),
            "maxAbsError": quality["maxAbsError"],
            "cosineMin": quality["cosineMin"],
            **named_metrics(quality, ("maxAbsError",)),
        }
        deviation = worst(quality, "scaledError")
        if deviation > params.max_abs_error:
            output = worst_output(quality, "scaledError")
            raise GateFailed(
                f"the optimised graph deviates from the reference by {deviation:.3g} of the "
                f"output's scale (max abs error {worst(quality, 'maxAbsError'):.3g}) "
                f"> maxAbsError {params.max_abs_error}"
                + (f" on output `{output}`" if output else ""),
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
                    "transformerFusions": applied if fused_graph else {},
                    "paddingRemoved": chosen in unpadded,
                    "ops": dict(after.most_common()),
                }
            },
        )
        fusions = (
            (", transformer fusions" if fused_graph else "")
            + (", padding removed" if chosen in unpadded else "")
            + (f", {masks} attention mask fill{'s' if masks > 1 else ''} softened" if masks else "")
        )
        message = (
            f"graph: {int(metrics['nodesBefore'])} -> {int(metrics['nodesAfter'])} nodes "
            f"({params.level}{fusions}), training-only ops "
            f"{int(metrics['trainingOpsBefore'])} -> {int(metrics['trainingOpsAfter'])}, "
            f"max abs error {quality['maxAbsError']:.2g}"
        )
        return StageResult(Outcome(message, metrics), manifest)


def checked_mask_fills(
    model: onnx.ModelProto, source: InputCheckpoint, tmp: Path, params: GraphParams
) -> tuple[onnx.ModelProto, int]:
    """`model` with its attention-mask fill values softened (`bakeline.agents.attention_mask`)
    where the result stays within maxAbsError of the reference on calibration data; else
    `model` unchanged. Returns the model and how many fill values it softened."""
    softened, count = soften_masks(copy.deepcopy(model))
    if not count:
        return model, 0
    deviation = _score(save(softened, tmp / "softened.onnx"), source)
    if beyond_bound(deviation, params):
        log("softened attention masks deviate: not kept", **deviation, level="warning")
        return model, 0
    return softened, count


def _score(path: Path, source: InputCheckpoint) -> dict[str, float]:
    """How the graph at `path` deviates from the reference on calibration data."""
    return score_file(path, "onnx", source, "calibration", limit=64)


def beyond_bound(deviation: dict[str, float], params: GraphParams) -> bool:
    """Whether a rewrite's deviation (`_score`) is beyond maxAbsError, per unit of the
    output's scale."""
    return worst(deviation, "scaledError") > params.max_abs_error


def choose_graph(
    ctx: StageContext, source: InputCheckpoint, paths: dict[str, Path], params: GraphParams
) -> tuple[str, dict[str, float], dict[str, dict[str, float]]]:
    """The rewrite to keep: among those the params allow that stay within maxAbsError of the
    reference, the fastest on this node at the job's batch sizes (timed only where there is a
    choice left). Returns its name, each timed candidate's relative latency, and the deviation
    of each rewrite it scored (not plain's, which is never refused)."""
    allowed = list(paths)
    if params.fusions == "on" and any(n.startswith("fused") for n in allowed):
        allowed = [n for n in allowed if n.startswith("fused")]
    if params.remove_padding == "on" and any(n.endswith(UNPADDED) for n in allowed):
        allowed = [n for n in allowed if n.endswith(UNPADDED)]
    within: list[str] = []
    scores: dict[str, dict[str, float]] = {}
    for name in allowed:
        if name == "plain":
            within.append(name)
            continue
        scores[name] = _score(paths[name], source)
        if beyond_bound(scores[name], params):
            log(f"{name} graph deviates: not kept", **scores[name], level="warning")
        else:
            within.append(name)
    if not within:
        return "plain", {}, scores
    if len(within) == 1:
        return within[0], {}, scores
    sizes = batch_sizes(ctx.job, None)
    with Stopwatch() as timing:
        relative = relative_latency(
            {n: paths[n] for n in within}, source, sizes, params.timing_runs
        )
    log("graph rewrites timed", seconds=timing.seconds, relative=relative)
    return min(within, key=relative.__getitem__), relative, scores


def _ratio(relative: dict[str, float], chosen: str, rewrite: str) -> float:
    """The chosen graph's latency with `rewrite` ("fused" or UNPADDED) over its latency without
    it, both timed in the same run (1.0 where the two were not timed against each other)."""
    fusion, padding = chosen.removesuffix(UNPADDED), chosen[len(chosen.removesuffix(UNPADDED)) :]
    if rewrite == "fused":
        without, with_ = "plain" + padding, "fused" + padding
    else:
        without, with_ = fusion, fusion + UNPADDED
    if without in relative and with_ in relative:
        return relative[with_] / relative[without]
    return 1.0
