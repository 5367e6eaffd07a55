"""InferenceAccelerator: time candidate runtimes, keep the fastest that passes quality.

Candidates: ONNX Runtime on the artifact under several session options (graph optimisation
levels, with and without the SkipLayerNormalization fusion, which measures slower on the int8
MiniLM graph, where the graph has a LayerNormalization for it to fuse; the configured threads
and one), the imported model in eager torch, and
torch.compile of it (not for a quantized ONNX artifact: it would drop the quantization).
ONNX Runtime's workers can spin between operators instead of sleeping: it trades
CPU for latency (waking a sleeping worker costs microseconds per operator, a quarter of the int8
MiniLM's time at batch 32 on two threads; under a tight CPU quota spinning can lose instead).
`allowSpinning: auto` (default) times each multi-threaded ONNX Runtime candidate both ways on the
node, under the pod's own CPU limit, and keeps what wins; `true` / `false` time and keep one way.
Each is scored against the reference
outputs on calibration data and timed by THE timing method (`bakeline.agents.timing.compare`)
at every target batch size; the fastest (the smallest worst-case latency relative to the best at
each batch size) among those passing the job's quality gate is kept, with its runtime config
recorded for the later stages and the package. A candidate is scored on every output of the
model, and passes only where the gate holds for each.

Where ONNX Runtime's fastest thread count differs between batch sizes (one thread at batch 1,
all of them at batch 32 is usual: waking a worker costs more than a small batch saves), the
candidate that runs each batch size on its fastest count is timed-by-composition and can be kept
(`threadsByBatchSize` in the runtime config: the runner keeps a session per count).

Params: candidates (["onnxruntime", "torch-eager", "torch-compile"]), runs (20), batchSizes
(default job.target.batchSizes), allowSpinning ("auto"), tryFewerThreads (true: also time one
intra-op thread), threadsByBatchSize (true: allow thread counts per batch size).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

import onnx
from pydantic import Field

from bakeline.agents.contract import GateFailed, InvalidInput, Outcome, StageParams
from bakeline.agents.logs import log
from bakeline.agents.onnx_tools import op_histogram
from bakeline.agents.runtimes import OptLevel, OutputsRunner, RuntimeConfig, openvino_precision
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    batch_sizes,
    calibration_holds,
    open_model,
    quality_gate,
    runtime_config,
    score,
    timing_batches,
    write_report,
)
from bakeline.agents.timing import SELECTION, compare, rotating

Family = Literal["onnxruntime", "openvino", "torch-eager", "torch-compile"]
FAMILIES: tuple[Family, ...] = ("onnxruntime", "openvino", "torch-eager", "torch-compile")
QUALITY_SAMPLES = 64
ORT_CANDIDATES: tuple[tuple[str, OptLevel, list[str]], ...] = (
    ("ort-all", "all", []),
    ("ort-all-no-skiplayernorm", "all", ["SkipLayerNormFusion"]),
    ("ort-extended", "extended", []),
    ("ort-basic", "basic", []),
)


# What each disabled optimizer rewrites: where the graph has none of it, the candidate that
# disables it is the same session as the one that does not, timed twice for nothing.
FUSION_INPUTS = {"SkipLayerNormFusion": frozenset({"LayerNormalization", "SkipLayerNormalization"})}


def applicable(
    candidates: tuple[tuple[str, OptLevel, list[str]], ...], ops: Collection[str]
) -> list[tuple[str, OptLevel, list[str]]]:
    """The candidates whose disabled optimizers would have something to rewrite in `ops`."""
    return [
        (name, level, disabled)
        for name, level, disabled in candidates
        if all(FUSION_INPUTS[fusion] & set(ops) for fusion in disabled)
    ]


class AcceleratorParams(StageParams):
    candidates: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    runs: int = Field(default=20, ge=3)
    batch_sizes: list[int] | None = Field(default=None, alias="batchSizes")
    allow_spinning: Literal["auto"] | bool = Field(default="auto", alias="allowSpinning")
    try_fewer_threads: bool = Field(default=True, alias="tryFewerThreads")
    threads_by_batch_size: bool = Field(default=True, alias="threadsByBatchSize")


@register
class InferenceAccelerator(Agent[AcceleratorParams]):
    name = "InferenceAccelerator"
    params_model = AcceleratorParams

    def run(self, ctx: StageContext, params: AcceleratorParams) -> StageResult:
        source = ctx.open_input()
        base = runtime_config(source)
        gate = quality_gate(source, ctx.job)
        original_path, original_format = source.original()

        configs: dict[str, tuple[RuntimeConfig, str, str]] = {}  # name -> config, path, format
        thread_variants: dict[str, list[str]] = {}  # ONNX file candidate -> its thread counts
        failures_before: dict[str, str] = {}  # candidates that could not even be made
        # Fewer threads can win for small models: waking a worker costs more than it saves.
        fewer = {1} if params.try_fewer_threads else set()
        thread_counts = sorted({base.intra_op_threads, *fewer} - {0}) or [0]

        def on_the_onnx_file(name: str, update: dict[str, object], spins: bool = False) -> None:
            """One candidate running the artifact as it is, at each thread count (and, where
            `spins` and it has workers, with them spinning and not, as allowSpinning asks)."""
            for threads in thread_counts:
                label = name if threads == max(thread_counts) else f"{name}-{threads}thread"
                ways = spinning_ways(params.allow_spinning) if spins and threads != 1 else [False]
                for spinning in ways:
                    timed = f"{label}-spinning" if spinning and len(ways) > 1 else label
                    thread_variants.setdefault(name, []).append(timed)
                    config = base.model_copy(
                        update={**update, "intra_op_threads": threads, "allow_spinning": spinning}
                    )
                    configs[timed] = (config, str(source.artifact), "onnx")

        if "onnxruntime" in params.candidates and source.format == "onnx":
            ops = op_histogram(onnx.load(str(source.artifact)))
            for name, level, disabled in applicable(ORT_CANDIDATES, ops):
                on_the_onnx_file(
                    name,
                    {
                        "backend": "onnxruntime",
                        "graph_optimization_level": level,
                        "disabled_optimizers": disabled,
                    },
                    spins=True,
                )
        if "openvino" in params.candidates and source.format == "onnx":
            # The same ONNX file compiled by OpenVINO: its CPU plugin runs a QDQ graph's int8
            # convolutions on AMX where the CPU has it, and the float parts at the precision it
            # picks for this CPU (recorded, so that serving computes in it too). A graph with an
            # operator it cannot load fails to open, and is reported so.
            precision = openvino_precision()
            if precision is None:
                failures_before["openvino"] = "openvino is not installed"
            else:
                on_the_onnx_file(
                    "openvino", {"backend": "openvino", "inference_precision": precision}
                )
        torch_source = (
            (str(source.artifact), source.format)
            if source.format != "onnx"
            else (str(original_path), original_format)
        )
        # For a quantized ONNX artifact the torch candidates run the original float model: eager
        # stays as the yardstick (speedupVsEager), compiling it would cost minutes for a
        # candidate that throws the quantization away.
        quantized = source.format == "onnx" and base.dtype not in ("fp32", "auto")
        skipped = ["torch-compile"] if quantized else []
        for family in ("torch-eager", "torch-compile"):
            if family in params.candidates and torch_source[1] != "onnx" and family not in skipped:
                configs[family] = (base.model_copy(update={"backend": family}), *torch_source)
        if not configs:
            raise InvalidInput(f"no candidate runtime applies to a {source.format} artifact")

        runners: dict[str, OutputsRunner] = {}
        quality: dict[str, dict[str, float]] = {}
        failures: dict[str, str] = dict(failures_before)
        for name, (config, path, fmt) in configs.items():
            try:
                runner = open_model(source, Path(path), fmt, config)
                quality[name] = score(runner, source, "calibration", QUALITY_SAMPLES)
            except Exception as exc:  # e.g. torch.compile without a working compiler
                failures[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
                log("candidate failed", candidate=name, error=failures[name], level="warning")
                continue
            ok, why = calibration_holds(gate, quality[name])
            if ok:
                runners[name] = runner
            else:
                failures[name] = f"quality: {why}"
        if not runners:
            raise GateFailed(f"no candidate runtime passes quality: {failures}")

        sizes = batch_sizes(ctx.job, params.batch_sizes)
        latency: dict[str, dict[int, float]] = {name: {} for name in runners}
        for size in sizes:
            batches = timing_batches(source, size)
            calls = {name: rotating(runner, batches) for name, runner in runners.items()}
            baseline = "torch-eager" if "torch-eager" in calls else next(iter(calls))
            measured = compare(calls, params.runs, baseline, SELECTION)
            for name in runners:
                # Each candidate's least disturbed window: selection compares candidates, not
                # candidates against a baseline, so no window has to be shared.
                latency[name][size] = min(m[name] for m in measured.window_medians)
        if params.threads_by_batch_size:
            combined = threads_by_batch_size(
                thread_variants, {n: configs[n][0] for n in runners}, latency, sizes
            )
            for name, (config, runs_on) in combined.items():
                configs[name] = (config, *configs[runs_on[sizes[-1]]][1:])
                latency[name] = {size: latency[label][size] for size, label in runs_on.items()}
                quality[name] = quality[runs_on[sizes[-1]]]
        # Minimax: the candidate whose worst batch size is nearest its best latency there (a sum
        # would trade a batch size away, e.g. one thread: fastest at batch 1, slowest at 32).
        relative = {
            name: max(latency[name][s] / min(latency[n][s] for n in latency) for s in sizes)
            for name in latency
        }
        chosen = min(relative, key=lambda n: relative[n])
        config, path, fmt = configs[chosen]
        eager = "torch-eager" if "torch-eager" in latency else None

        metrics: dict[str, float] = {
            "chosenP50Ms": latency[chosen][sizes[0]],
            "candidates": float(len(configs)),
            "passing": float(len(runners)),
        }
        if eager:
            metrics["speedupVsEager"] = latency[eager][sizes[0]] / latency[chosen][sizes[0]]
        for name in latency:
            for size in sizes:
                metrics[f"{name}.b{size}.p50Ms"] = latency[name][size]

        out = ctx.output(source)
        keep_artifact = Path(path) == source.artifact
        out.carry_forward(keep_model=keep_artifact)
        artifact = source.manifest.artifact if keep_artifact else Path(path).name
        out.add(artifact, "model")
        write_report(
            out,
            ctx.stage,
            {
                "latencyP50Ms": latency,
                "quality": quality,
                "failures": failures,
                "chosen": chosen,
                "runtime": config.dump(),
            },
        )
        manifest = out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=artifact,
            format=fmt,  # type: ignore[arg-type]
            params=params.model_dump(by_alias=True),
            metrics=metrics,
            started_at=ctx.started_at,
            attributes={"runtime": config.dump()},
        )
        timings = ", ".join(f"{n} {latency[n][sizes[0]]:.2f} ms" for n in latency)
        message = f"kept {chosen} (batch {sizes[0]} p50: {timings})"
        if failures:
            message += f"; failed: {', '.join(failures)}"
        return StageResult(Outcome(message, metrics), manifest)


def spinning_ways(allow: Literal["auto"] | bool) -> list[bool]:
    """The spinning settings a multi-threaded ONNX Runtime candidate is timed with."""
    return [False, True] if allow == "auto" else [allow]


def threads_by_batch_size(
    variants: dict[str, list[str]],
    configs: dict[str, RuntimeConfig],
    latency: dict[str, dict[int, float]],
    sizes: list[int],
) -> dict[str, tuple[RuntimeConfig, dict[int, str]]]:
    """For each ONNX Runtime candidate timed on several thread counts whose fastest count is not
    the same at every batch size, one more candidate that runs each size on its fastest (e.g.
    batch 1 on one thread, batch 32 on two). Returns its name -> its config and, per size, the
    timed variant it runs as there. `sizes` ascending."""
    found: dict[str, tuple[RuntimeConfig, dict[int, str]]] = {}
    for base, labels in variants.items():
        timed = [label for label in labels if label in configs and label in latency]
        if len(timed) < 2:
            continue
        fastest = {size: min(timed, key=lambda label: latency[label][size]) for size in sizes}
        if len(set(fastest.values())) < 2:
            continue
        largest = configs[fastest[sizes[-1]]]
        # A runner keeps one session per thread count: a smaller size whose fastest runs on the
        # largest's thread count but spins otherwise cannot be run as it was timed.
        if any(
            configs[fastest[size]].intra_op_threads == largest.intra_op_threads
            and configs[fastest[size]].allow_spinning != largest.allow_spinning
            for size in sizes[:-1]
        ):
            continue
        # Batches up to each smaller size run on that size's fastest, larger ones as the largest.
        by_size = {size: configs[fastest[size]].intra_op_threads for size in sizes[:-1]}
        config = largest.model_copy(update={"batch_threads": by_size})
        found[f"{base}+threads-by-batch-size"] = (config, fastest)
    return found
