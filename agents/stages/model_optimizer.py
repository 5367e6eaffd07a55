"""ModelOptimizer: int8 quantization, per channel where quality holds, sensitive layers in float.

Params (the fallback ladder a Workflow can walk after a rollback):
  scheme: "int8-per-channel" (default) | "int8-per-tensor" | "none" (pass the model through)
  weightRange: "auto" (default: 8-bit and 7-bit weights are both scored on calibration data and
    the better one kept; on x86 CPUs without VNNI ONNX Runtime's u8 x s8 kernels saturate a
    16-bit sum, which 7-bit weights never reach, elsewhere the eighth bit wins) | "full" |
    "reduced"; the same kernels run either way, so this costs no speed
  smoothing: "auto" (default, dynamic mode: the inputs of weight MatMuls with outlier channels
    are smoothed, SmoothQuant with smoothingAlpha (0.7), see `bakeline.agents.smoothing`; the
    smoothed and plain models are scored with each weight range on calibration data and the best
    of the four kept) | "off"
  keepFloat: "none" (default: quantize every eligible layer) | "auto" (sensitivity analysis on
    calibration data: layers whose quantization costs the most cosine stay float, greedily, until
    targetCosineMean / targetCosineMin hold, maxFloatLayers are kept or the next layer would take
    float weights past maxFloatShare) | [node names]
  sensitive: "auto" (default: in dynamic mode, whichever of float and int8-blockwise times
    faster at the job's batch sizes on this node; float otherwise) | "float" (the kept layers
    stay fp32) | "int8-blockwise" (they become MatMulNBits with int8 weights per block of 32 and
    per-block activation quantization: near float quality at int8 size; dynamic mode only)
  mode: "auto" (static QDQ with calibration for convolutional models, dynamic otherwise) |
    "dynamic" | "static"
  targetCosineMean (0.996), targetCosineMin (0.99), maxFloatLayers (6), maxFloatShare (0.12:
    float layers cost latency in proportion to their weights; MiniLM's six most sensitive, 34%
    of its weights, made batch 32 18% slower), sensitivitySamples (64)

e.g. {"scheme": "int8-per-channel"}, {"scheme": "int8-per-channel", "keepFloat": "auto"},
{"scheme": "none"}.

Gate: the quantized model is scored against the reference outputs on calibration data (never on
evaluation data); if the job's quality gate does not hold there (for accuracy: argmax agreement
with the reference >= 0.99), the stage exits 3 so that the operator can fall back. A model with
several outputs is scored on each: the gate holds for every one, the search's targets too (a
candidate is as good as its worst output), and `cosineMean.<output>` is reported per output.
Measures: size before/after, quantized and float layer counts, calibration cosine / agreement.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from bakeline.agents.checkpoint_io import InputCheckpoint, artifact_name
from bakeline.agents.contract import GateFailed, InvalidInput, Outcome, StageParams
from bakeline.agents.logs import log
from bakeline.agents.onnx_tools import name_nodes, save, scratch_dir
from bakeline.agents.quality import Gate, by_output, named_metrics, worst
from bakeline.agents.quantize import (
    Quantizable,
    blockwise_int8,
    choose_mode,
    float_layers,
    fold_recurrent_weights,
    quantizable,
    quantize,
)
from bakeline.agents.runtimes import RuntimeConfig
from bakeline.agents.smoothing import smooth
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    batch_sizes,
    calibration_holds,
    data_split,
    export_to_onnx,
    quality_gate,
    relative_latency,
    score_file,
    size_of,
)
from bakeline.agents.timing import Stopwatch

Scheme = Literal["int8-per-channel", "int8-per-tensor", "none"]
# The result is scored as it will run (all graph optimizations). Candidates in the sensitivity
# search too where it matters: at the basic level ONNX Runtime keeps static QDQ pairs as float
# ops, which overstates int8 quality. Dynamic int8 runs as int8 at any level; there the basic
# level ranks layers alike and creates sessions faster.
SCORING = RuntimeConfig()
PROBING = {"static": SCORING, "dynamic": RuntimeConfig(graph_optimization_level="basic")}


class ModelParams(StageParams):
    scheme: Scheme = "int8-per-channel"
    weight_range: Literal["auto", "full", "reduced"] = Field(default="auto", alias="weightRange")
    keep_float: Literal["auto", "none"] | list[str] = Field(default="none", alias="keepFloat")
    sensitive: Literal["auto", "float", "int8-blockwise"] = "auto"
    mode: Literal["auto", "dynamic", "static"] = "auto"
    target_cosine_mean: float = Field(default=0.996, alias="targetCosineMean", gt=0, le=1)
    target_cosine_min: float = Field(default=0.99, alias="targetCosineMin", gt=0, le=1)
    max_float_layers: int = Field(default=6, alias="maxFloatLayers", ge=0)
    max_float_share: float = Field(default=0.12, alias="maxFloatShare", ge=0, le=1)
    sensitivity_samples: int = Field(default=64, alias="sensitivitySamples", ge=4)
    smoothing: Literal["auto", "off"] = "auto"
    smoothing_alpha: float = Field(default=0.7, alias="smoothingAlpha", gt=0, lt=1)


def precision_label(
    scheme: str,
    quantized: int,
    kept: int,
    blockwise: bool,
    unreached: Mapping[str, int] | None = None,
) -> str:
    """What the artifact's weights are, in a few words (a status field holds 64 characters):
    the scheme only for the layers it reached. `kept`: layers the sensitivity search kept out
    of int8 (float, or int8-blockwise); `unreached`: float layers the scheme does not quantize,
    by op (an LSTM in a convolutional model, a GRU), named so the label cannot hide them."""
    if scheme == "none" or quantized == 0:
        return "fp32 (no layer quantized)" if scheme != "none" else "fp32"
    rest = "int8-blockwise" if blockwise else "fp32"
    unreached = dict(unreached or {})
    others = sum(unreached.values())
    if not kept and not others:
        return f"{scheme}: all {quantized} layers"
    head = f"{scheme}: {quantized} of {quantized + kept + others} layers"
    if not others:
        return f"{head}, the rest {rest}"
    parts = [head, *([f"{kept} {rest}"] if kept else [])]
    label = "; ".join([*parts, f"{', '.join(sorted(unreached))} fp32"])
    return label if len(label) <= 64 else "; ".join([*parts, f"{others} fp32"])


@register
class ModelOptimizer(Agent[ModelParams]):
    name = "ModelOptimizer"
    params_model = ModelParams
    writes = ("model.onnx",)

    def run(self, ctx: StageContext, params: ModelParams) -> StageResult:
        source = ctx.open_input()
        out = ctx.output(source)
        artifact = artifact_name("onnx")
        gate = quality_gate(source, ctx.job)
        with scratch_dir() as tmp_name:
            tmp = Path(tmp_name)
            onnx_path = export_to_onnx(source, tmp / "exported.onnx")
            model = name_nodes(fold_recurrent_weights(onnx.load(str(onnx_path))))
            named = save(model, tmp / "named.onnx")
            size_before = size_of(onnx_path)
            kept: list[str] = []
            sensitivity: dict[str, float] = {}
            blockwise = reduced = False
            share = 0.0
            smoothed_layers: dict[str, float] = {}
            candidates: list[Quantizable] = []
            if params.scheme == "none":
                out.add_copy(named, artifact, "model")
                layers, mode = 0, "none"
            else:
                mode = choose_mode(model, params.mode)
                candidates = quantizable(model, mode)
                per_channel = params.scheme == "int8-per-channel"
                calibration = data_split(source, "calibration")
                probe = calibration.head(params.sensitivity_samples)

                def build(
                    exclude: list[str],
                    target: Path,
                    reduce_range: bool,
                    limit: int | None = None,
                    base: Path = named,
                ) -> dict[str, float]:
                    quantize(
                        base,
                        target,
                        mode=mode,
                        per_channel=per_channel,
                        exclude=exclude,
                        calibration=calibration,
                        reduce_range=reduce_range,
                    )
                    return score_file(
                        target, "onnx", source, "calibration", PROBING[mode], limit=limit
                    )

                with Stopwatch() as search:
                    bases = {"plain": named}
                    if mode == "dynamic" and params.smoothing == "auto":
                        smoothed = smooth(named, calibration, params.smoothing_alpha)
                        if smoothed is not None:
                            bases["smoothed"] = save(smoothed.model, tmp / "smoothed.onnx")
                            smoothed_layers = smoothed.layers
                    ranges = {"auto": [False, True], "full": [False], "reduced": [True]}
                    options = [
                        (base, bits) for base in bases for bits in ranges[params.weight_range]
                    ]
                    if len(options) > 1:
                        # On all of the calibration data: the candidates differ in a few sentences.
                        scores = {
                            (base, bits): build(
                                [], tmp / f"{base}-{bits}.onnx", bits, base=bases[base]
                            )
                            for base, bits in options
                        }
                        chosen, reduced = max(scores, key=lambda o: _merit(scores[o]))
                        log(
                            "weight range and smoothing scored",
                            scores={f"{b}-{7 if r else 8}bit": m for (b, r), m in scores.items()},
                        )
                    else:
                        chosen, reduced = options[0]
                    named = bases[chosen]
                    if chosen != "smoothed":
                        smoothed_layers = {}
                    if params.keep_float == "auto":
                        kept, sensitivity = self._auto(
                            functools.partial(
                                build, reduce_range=reduced, limit=len(probe), base=named
                            ),
                            candidates,
                            params,
                            tmp,
                            gate,
                        )
                    else:
                        kept = [] if params.keep_float == "none" else list(params.keep_float)
                        unknown = set(kept) - {c.node for c in candidates}
                        if unknown:
                            raise InvalidInput(f"keepFloat names unknown nodes: {sorted(unknown)}")
                    quantize(
                        named,
                        tmp / "float.onnx",
                        mode=mode,
                        per_channel=per_channel,
                        exclude=kept,
                        calibration=calibration,
                        reduce_range=reduced,
                    )
                    if kept and mode == "dynamic" and params.sensitive != "float":
                        blockwise_int8(tmp / "float.onnx", tmp / "blockwise.onnx", kept)
                        blockwise = params.sensitive == "int8-blockwise" or self._faster(
                            tmp / "blockwise.onnx", tmp / "float.onnx", source, ctx
                        )
                out.add_copy(
                    tmp / ("blockwise.onnx" if blockwise else "float.onnx"), artifact, "model"
                )
                layers = len(candidates) - len(kept)
                share = _share(candidates, kept)
                log(
                    "quantized",
                    mode=mode,
                    weightRange="reduced" if reduced else "full",
                    smoothed=smoothed_layers,
                    layers=layers,
                    keptFloat=kept,
                    floatShare=share,
                    searchSeconds=search.seconds,
                )
        quality = score_file(out.directory / artifact, "onnx", source, "calibration", SCORING)
        size_after = size_of(out.directory / artifact)
        # What the artifact holds, read from it: float layers the scheme did not reach (an
        # LSTM whose weights stayed computed, a GRU, a kept layer blockwise int8 cannot take)
        # are named in the label, and not counted as quantized.
        left = float_layers(onnx.load(str(out.directory / artifact)))
        still_float = {node for node, _ in left}
        chose_float = set() if blockwise else set(kept)
        unreached = Counter(op for node, op in left if node not in chose_float)
        layers -= sum(1 for c in candidates if c.node in still_float - set(kept))
        kept_label = len(set(kept) - still_float) if blockwise else len(kept)
        metrics = {
            "sizeBytes": size_after,
            "sizeBytesBefore": size_before,
            "sizeRatio": size_after / size_before,
            "quantizedLayers": float(layers),
            "floatLayers": float(len(kept)),
            "floatWeightShare": share,
            "cosineMean": quality["cosineMean"],
            "cosineMin": quality["cosineMin"],
            "maxAbsError": quality["maxAbsError"],
            "smoothedLayers": float(len(smoothed_layers)),
        }
        if "agreement" in quality:
            metrics["agreement"] = quality["agreement"]
        metrics.update(named_metrics(quality))
        ok, why = calibration_holds(gate, quality)
        if not ok:
            raise GateFailed(
                f"{params.scheme} quantization misses the quality gate on calibration data: {why}",
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
                "quantization": {
                    "scheme": params.scheme,
                    "mode": mode,
                    "weightBits": 7 if reduced else 8,
                    "smoothed": smoothed_layers,
                    "keptFloat": kept,
                    "sensitive": "int8-blockwise" if blockwise else "float",
                    "sensitivity": sensitivity,
                },
                "dtype": "fp32" if params.scheme == "none" else "int8",
                # What the artifact holds, not what was asked: a scheme that quantized nothing
                # is not an int8 model.
                "precision": precision_label(
                    params.scheme, layers, kept_label, blockwise, unreached
                ),
            },
        )
        smoothing = f", {len(smoothed_layers)} inputs smoothed" if smoothed_layers else ""
        message = (
            f"{params.scheme} ({mode}{', 7-bit weights' if reduced else ''}{smoothing}): "
            f"{layers} layers "
            f"int8, {len(kept)} sensitive kept "
            f"{'int8-blockwise' if blockwise else 'float'}; "
            f"{size_before / 1e6:.1f} -> {size_after / 1e6:.1f} MB; calibration cosine mean "
            f"{quality['cosineMean']:.4f} min {quality['cosineMin']:.4f}"
        )
        outputs = by_output(quality)
        if len(outputs) > 1:
            message += (
                " (per output: "
                + ", ".join(f"{name} {found['cosineMean']:.4f}" for name, found in outputs.items())
                + ")"
            )
        return StageResult(Outcome(message, metrics), manifest)

    @staticmethod
    def _faster(candidate: Path, other: Path, source: InputCheckpoint, ctx: StageContext) -> bool:
        """Whether `candidate` times faster than `other` at the job's batch sizes on this node
        (blockwise int8 kernels win on some CPUs and lose badly on others at large batches)."""
        sizes = batch_sizes(ctx.job, None)
        relative = relative_latency({"candidate": candidate, "other": other}, source, sizes, 20)
        log("sensitive layers timed", blockwiseOverFloat=relative["candidate"] / relative["other"])
        return relative["candidate"] < relative["other"]

    @staticmethod
    def _auto(
        run: Callable[[list[str], Path], dict[str, float]],
        layers: list[Quantizable],
        params: ModelParams,
        tmp: Path,
        gate: Gate,
    ) -> tuple[list[str], dict[str, float]]:
        """Greedy: rank layers by the cosine they cost, keep the worst float until targets hold,
        within maxFloatLayers and maxFloatShare (a layer past the share is passed over). The
        targets include the job's own gate: a classifier's near-tied logits can flip at a
        cosine of 0.9999, which the cosine targets alone would call good."""

        def meets(m: dict[str, float]) -> bool:
            return (
                worst(m, "cosineMean") >= params.target_cosine_mean
                and worst(m, "cosineMin") >= params.target_cosine_min
                and calibration_holds(gate, m)[0]
            )

        base = run([], tmp / "all.onnx")
        if meets(base) or params.max_float_layers == 0:
            return [], {}
        # Sensitivity of a layer: how much mean and worst-case error fall when it alone stays float.
        gains: dict[str, float] = {}
        for layer in layers:
            gains[layer.node] = _merit(run([layer.node], tmp / "probe.onnx")) - _merit(base)
        ranked = sorted(layers, key=lambda c: gains[c.node], reverse=True)
        sensitivity = {c.label: round(gains[c.node], 6) for c in ranked[:10]}
        kept: list[str] = []
        for layer in ranked:
            if len(kept) >= params.max_float_layers or gains[layer.node] <= 0:
                break
            if _share(layers, [*kept, layer.node]) > params.max_float_share:
                continue
            kept.append(layer.node)
            if meets(run(kept, tmp / "greedy.onnx")):
                break
        return kept, sensitivity


def _merit(metrics: dict[str, float]) -> float:
    """One figure for calibration quality: the mean cosine, and a quarter of the worst case (of
    the output that does worst, where there are several)."""
    return min(m["cosineMean"] + 0.25 * m["cosineMin"] for m in by_output(metrics).values())


def _share(layers: list[Quantizable], kept: list[str]) -> float:
    """The fraction of the quantizable weights that `kept` leaves in float."""
    total = sum(layer.elements for layer in layers)
    names = set(kept)
    return sum(layer.elements for layer in layers if layer.node in names) / total if total else 0.0
