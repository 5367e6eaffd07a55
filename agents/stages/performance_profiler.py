"""PerformanceProfiler: latency percentiles and throughput per batch size, against the original.

The baked artifact (under its runtime config) and the imported model in eager torch are timed
by THE timing method (`bakeline.agents.timing.compare`, the one benchmarks/ use too): one
process, same threads, interleaved blocks over rotating calibration inputs, `runs` timed calls
each per batch size, the least disturbed of several windows: p50 / p95 / p99, throughput,
speedup. ONNX Runtime's profiler then attributes kernel time to operator types: the
top operators, and as bottlenecks those taking at least a fifth of the time. Budgets from
job.target: latencyBudgetMs bounds p95 at the smallest batch size, sizeBudgetMB the artifact;
a miss exits 3.

Params: runs (50), batchSizes (default job.target.batchSizes), topOperators (5),
compareOriginal (true).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from bakeline.agents import serving
from bakeline.agents.contract import GateFailed, Outcome, StageParams
from bakeline.agents.data import Feeds
from bakeline.agents.onnx_tools import scratch_dir
from bakeline.agents.runtimes import RuntimeConfig, open_runner, ort_runner, ort_session
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    batch_sizes,
    original_runner,
    runtime_config,
    timing_batch,
    timing_batches,
    write_report,
)
from bakeline.agents.timing import compare, rotating

BOTTLENECK_SHARE = 0.2
PROFILE_RUNS = 10


class ProfilerParams(StageParams):
    runs: int = Field(default=50, ge=5)
    batch_sizes: list[int] | None = Field(default=None, alias="batchSizes")
    top_operators: int = Field(default=5, alias="topOperators", ge=1)
    compare_original: bool = Field(default=True, alias="compareOriginal")


def onnx_operator_times(path: Path, config: RuntimeConfig, feeds: Feeds) -> dict[str, float]:
    """Kernel microseconds per operator type over PROFILE_RUNS calls (ONNX Runtime profiler)."""
    with scratch_dir() as tmp:
        session = ort_session(path, config, profile_prefix=str(Path(tmp) / "profile"))
        run = ort_runner(session)
        for _ in range(PROFILE_RUNS):
            run(feeds)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            totals[str(event.get("args", {}).get("op_name", "?"))] += float(event.get("dur", 0))
    return dict(totals)


def openvino_operator_times(path: Path, config: RuntimeConfig, feeds: Feeds) -> dict[str, float]:
    """Microseconds per operator type over PROFILE_RUNS calls (OpenVINO's performance counters,
    which name the kernel too: e.g. Convolution as brgconv_avx512_amx_I8)."""
    compiled = serving.openvino_model(path, config.dump(), profile=True)
    request = compiled.create_infer_request()
    names = {port.get_any_name() for port in compiled.inputs}
    totals: dict[str, float] = defaultdict(float)
    for _ in range(PROFILE_RUNS):
        request.infer({k: v for k, v in feeds.items() if k in names})
        for info in request.get_profiling_info():  # the last call's
            totals[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e6
    return dict(totals)


def torch_operator_times(run: Callable[[], object]) -> dict[str, float]:
    import torch.profiler

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILE_RUNS):
            run()
    return {e.key: float(e.self_cpu_time_total) for e in prof.key_averages()}


@register
class PerformanceProfiler(Agent[ProfilerParams]):
    name = "PerformanceProfiler"
    params_model = ProfilerParams

    def run(self, ctx: StageContext, params: ProfilerParams) -> StageResult:
        source = ctx.open_input()
        config = runtime_config(source)
        threads = config.intra_op_threads
        baked = open_runner(source.artifact, source.format, source.input_names, config)
        original = original_runner(source, threads) if params.compare_original else None
        sizes = batch_sizes(ctx.job, params.batch_sizes)

        per_batch: dict[str, dict[str, Any]] = {}
        metrics: dict[str, float] = {}
        for size in sizes:
            batches = timing_batches(source, size)
            calls = {"baked": rotating(baked, batches)}
            if original is not None:
                calls["original"] = rotating(original, batches)
            baseline = "original" if original is not None else "baked"
            stats = compare(calls, params.runs, baseline=baseline).stats
            entry: dict[str, Any] = {"baked": stats["baked"].summary(size)}
            if "original" in stats:
                entry["original"] = stats["original"].summary(size)
                entry["speedup"] = stats["original"].p50 / stats["baked"].p50
            per_batch[str(size)] = entry
            for key in ("p50Ms", "p95Ms", "p99Ms", "throughput"):
                metrics[f"b{size}.{key}"] = entry["baked"][key]
            if "speedup" in entry:
                metrics[f"b{size}.speedup"] = entry["speedup"]
                metrics[f"b{size}.originalP50Ms"] = entry["original"]["p50Ms"]

        profile_feeds = timing_batch(source, sizes[-1])
        if source.format == "onnx" and config.backend == "openvino":
            ops = openvino_operator_times(source.artifact, config, profile_feeds)
        elif source.format == "onnx":
            ops = onnx_operator_times(source.artifact, config, profile_feeds)
        else:
            ops = torch_operator_times(lambda: baked(profile_feeds))
        total = sum(ops.values()) or 1.0
        top = sorted(ops.items(), key=lambda kv: kv[1], reverse=True)[: params.top_operators]
        top_share = {op: round(t / total, 4) for op, t in top}
        bottlenecks = [
            f"{op} {share:.0%} of kernel time at batch {sizes[-1]}"
            for op, share in top_share.items()
            if share >= BOTTLENECK_SHARE
        ]

        size_bytes = float(source.artifact.stat().st_size)
        metrics["sizeBytes"] = size_bytes
        first = per_batch[str(sizes[0])]
        budget_failures = []
        budget = ctx.job.target.latency_budget_ms
        if budget is not None and first["baked"]["p95Ms"] > budget:
            budget_failures.append(
                f"p95 {first['baked']['p95Ms']:.2f} ms at batch {sizes[0]} exceeds the latency "
                f"budget {budget} ms"
            )
        size_budget = ctx.job.target.size_budget_mb
        if size_budget is not None and size_bytes / 1e6 > size_budget:
            budget_failures.append(
                f"artifact {size_bytes / 1e6:.2f} MB exceeds the size budget {size_budget} MB"
            )
        if budget_failures:
            raise GateFailed("; ".join(budget_failures), metrics)

        out = ctx.output(source)
        out.carry_forward(keep_model=True)
        out.add(source.manifest.artifact, "model")
        write_report(
            out,
            ctx.stage,
            {
                "batchSizes": per_batch,
                "topOperators": top_share,
                "bottlenecks": bottlenecks,
                "runtime": config.dump(),
                "runs": params.runs,
            },
        )
        manifest = out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=source.manifest.artifact,
            format=source.format,
            params=params.model_dump(by_alias=True, exclude_none=True),
            metrics=metrics,
            started_at=ctx.started_at,
            attributes={"profile": {"topOperators": top_share, "bottlenecks": bottlenecks}},
        )
        parts = []
        for size in sizes:
            entry = per_batch[str(size)]
            text = f"batch {size}: p50 {entry['baked']['p50Ms']:.2f} ms"
            if "speedup" in entry:
                text += f" ({entry['speedup']:.2f}x vs original)"
            parts.append(text)
        message = "; ".join(parts) + (
            f"; bottlenecks: {', '.join(bottlenecks)}" if bottlenecks else ""
        )
        return StageResult(Outcome(message, metrics), manifest)
