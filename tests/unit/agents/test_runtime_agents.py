"""HardwareAdapter, InferenceAccelerator, QualityValidator, PerformanceProfiler,
DeploymentPreparer on digits-cnn."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bakeline.agents import runtimes
from bakeline.agents.checkpoint_io import open_input
from bakeline.agents.contract import GateFailed, InvalidInput
from bakeline.agents.hardware import cpu_flags, supports, usable_cpus
from bakeline.agents.pipeline import Chain, StageRunner
from bakeline.agents.runtimes import RuntimeConfig
from bakeline.agents.stages import hardware_adapter
from bakeline.agents.stages.inference_accelerator import (
    ORT_CANDIDATES,
    applicable,
    spinning_ways,
    threads_by_batch_size,
)
from bakeline.checkpoints.manifest import verify_checkpoint


def test_cpu_flags_and_cgroup_quota_are_read(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\n")
    flags = cpu_flags(cpuinfo)
    assert {"avx512_vnni", "avx512_bf16"} <= flags
    assert supports("int8", flags) and supports("bf16", flags) and not supports("fp16", flags)
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")
    assert usable_cpus(quota) == 1
    quota.write_text("max 100000\n")
    assert usable_cpus(quota) >= 1


def test_hardware_adapter_records_a_runtime_and_keeps_the_artifact(digits_chain: Chain) -> None:
    result = digits_chain.results["HardwareAdapter"]
    before = open_input(digits_chain.dirs["MemoryOptimizer"]).manifest
    assert result.manifest.artifact_sha256 == before.artifact_sha256
    runtime = result.manifest.attributes["runtime"]
    assert runtime["intraOpThreads"] == 1 and runtime["executionProvider"] == "CPUExecutionProvider"
    assert runtime["dtype"] == "int8"
    assert result.outcome.metrics["gflopsFp32"] > 0


def test_hardware_adapter_refuses_fp16_without_native_support(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CPU as the adapter reads it, less its fp16 flags: the refusal is tested on any CPU.
    flags = {flag for flag in cpu_flags() if not supports("fp16", {flag})} | {"avx2", "fma"}
    assert not supports("fp16", flags)
    monkeypatch.setattr(hardware_adapter, "cpu_flags", lambda: flags)
    with pytest.raises(GateFailed, match="refused fp16") as failure:
        run_stage(
            "HardwareAdapter",
            tmp_path / "x",
            digits_chain.dirs["MemoryOptimizer"],
            {"dtype": "fp16"},
        )
    assert "gflopsFp16" in failure.value.metrics


def test_hardware_adapter_refuses_cuda_when_there_is_none(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner, digits_job: dict[str, Any]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    job = {**digits_job, "target": {"device": "cuda"}}
    with pytest.raises(GateFailed, match="CUDA"):
        run_stage("HardwareAdapter", tmp_path / "x", digits_chain.dirs["MemoryOptimizer"], job=job)


def test_inference_accelerator_keeps_the_fastest_passing_candidate(digits_chain: Chain) -> None:
    result = digits_chain.results["InferenceAccelerator"]
    report = json.loads(
        (
            digits_chain.dirs["InferenceAccelerator"] / "reports/inference-accelerator.json"
        ).read_text()
    )
    latencies = report["latencyP50Ms"]
    assert {"ort-all", "openvino", "torch-eager"} <= set(latencies)
    chosen = report["chosen"]
    runtime = result.manifest.attributes["runtime"]
    assert runtime["backend"] == (
        "torch-eager"
        if chosen == "torch-eager"
        else "openvino"
        if chosen.startswith("openvino")
        else "onnxruntime"
    )
    # OpenVINO's candidates say what precision they computed in, for serving to use it too.
    assert report["runtime"]["inferencePrecision"] or runtime["backend"] != "openvino"
    # the chosen one is never slower than every other at both batch sizes
    others = [name for name in latencies if name != chosen]
    assert any(latencies[chosen][b] <= latencies[o][b] for o in others for b in ("1", "8"))


def test_the_accelerator_times_spinning_workers_and_keeps_what_it_timed(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    # The quick chain adapts to one thread; on two, every ONNX Runtime candidate with workers is
    # timed spinning and not (allowSpinning: auto), and the kept config spins exactly when the
    # candidate it keeps was timed spinning.
    hardware = tmp_path / "hardware"
    run_stage("HardwareAdapter", hardware, digits_chain.input_of("HardwareAdapter"), {"threads": 2})
    result = run_stage(
        "InferenceAccelerator",
        tmp_path / "accelerate",
        hardware,
        {"candidates": ["onnxruntime"], "runs": 4},
    )
    report = json.loads(
        (tmp_path / "accelerate" / "reports/inference-accelerator.json").read_text()
    )
    timed = set(report["latencyP50Ms"])
    assert {"ort-all", "ort-all-spinning", "ort-basic", "ort-basic-spinning"} <= timed
    assert "ort-all-1thread" in timed and "ort-all-1thread-spinning" not in timed
    runtime = result.manifest.attributes["runtime"]
    chosen = report["chosen"]
    if chosen.endswith("+threads-by-batch-size"):  # runs its largest batches as timed there
        base = chosen.removesuffix("+threads-by-batch-size")
        labels = {base, f"{base}-spinning", f"{base}-1thread"} & timed
        chosen = min(labels, key=lambda label: report["latencyP50Ms"][label]["8"])
    assert runtime["allowSpinning"] == chosen.endswith("-spinning")
    # Forced off: nothing is timed spinning, nothing kept spinning.
    off = run_stage(
        "InferenceAccelerator",
        tmp_path / "off",
        hardware,
        {"candidates": ["onnxruntime"], "runs": 4, "allowSpinning": False},
    )
    assert off.manifest.attributes["runtime"]["allowSpinning"] is False
    off_report = json.loads((tmp_path / "off" / "reports/inference-accelerator.json").read_text())
    assert not any(n.endswith("-spinning") for n in off_report["latencyP50Ms"])


def test_quality_validator_passes_with_the_job_default(digits_chain: Chain) -> None:
    metrics = digits_chain.results["QualityValidator"].outcome.metrics
    assert metrics["passed"] == 1.0
    # within one point of the fp32 reference, on the held-out split
    assert metrics["accuracy"] >= metrics["referenceAccuracy"] - 0.01
    assert metrics["samples"] == 540


def test_quality_validator_fails_an_unreachable_gate_with_the_reason(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    with pytest.raises(GateFailed, match=r"accuracy 0\.\d+ < threshold 0\.9999") as failure:
        run_stage(
            "QualityValidator",
            tmp_path / "x",
            digits_chain.input_of("QualityValidator"),
            {"threshold": 0.9999},
        )
    assert failure.value.metrics["passed"] == 0.0
    with pytest.raises(GateFailed, match="max abs error"):
        run_stage(
            "QualityValidator",
            tmp_path / "y",
            digits_chain.input_of("QualityValidator"),
            {"metric": "max-abs-error", "threshold": 1e-9},
        )


def test_quality_validator_reads_the_job_quality(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner, digits_job: dict[str, Any]
) -> None:
    job = {**digits_job, "quality": {"metric": "cosine", "threshold": 0.9999999}}
    with pytest.raises(GateFailed, match="mean cosine"):
        run_stage(
            "QualityValidator", tmp_path / "x", digits_chain.input_of("QualityValidator"), job=job
        )


def test_profiler_reports_percentiles_throughput_and_operators(digits_chain: Chain) -> None:
    result = digits_chain.results["PerformanceProfiler"]
    m = result.outcome.metrics
    for size in (1, 8):
        assert 0 < m[f"b{size}.p50Ms"] <= m[f"b{size}.p95Ms"] <= m[f"b{size}.p99Ms"]
        assert m[f"b{size}.throughput"] > 0 and m[f"b{size}.speedup"] > 0
    top = result.manifest.attributes["profile"]["topOperators"]
    assert top and abs(sum(top.values())) <= 1.0 + 1e-6


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ({"batchSizes": [1], "latencyBudgetMs": 1e-6}, "latency budget"),
        ({"batchSizes": [1], "sizeBudgetMB": 0.001}, "size budget"),
    ],
)
def test_profiler_enforces_budgets(
    digits_chain: Chain,
    tmp_path: Path,
    target: dict[str, object],
    reason: str,
    run_stage: StageRunner,
    digits_job: dict[str, Any],
) -> None:
    with pytest.raises(GateFailed, match=reason):
        run_stage(
            "PerformanceProfiler",
            tmp_path / "x",
            digits_chain.input_of("PerformanceProfiler"),
            {"runs": 5, "compareOriginal": False},
            job={**digits_job, "target": target},
        )


def test_deployment_package(digits_chain: Chain) -> None:
    package = digits_chain.dirs["DeploymentPreparer"]
    manifest = verify_checkpoint(package)
    paths = {f.path for f in manifest.files}
    assert {"model.onnx", "runtime.json", "README.md"} <= paths
    assert not paths & {"calibration.safetensors", "evaluation.safetensors", "original.pt2"}
    assert manifest.lineage[0].agent == "BakingCoordinator"
    assert len(manifest.lineage) == 9
    assert manifest.metrics["accuracy"] > 0.95 and manifest.metrics["sizeRatio"] < 0.5
    card = (package / "README.md").read_text()
    assert "digits-cnn" in card and "## Lineage" in card and manifest.artifact_sha256[:16] in card
    assert json.loads((package / "runtime.json").read_text())["intraOpThreads"] == 1


def test_agents_refuse_a_missing_input(tmp_path: Path, run_stage: StageRunner) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        run_stage("GraphOptimizer", tmp_path / "out", tmp_path / "nowhere")


def test_threads_per_batch_size_combine_each_sizes_fastest_thread_count() -> None:
    configs = {
        "ort-all": RuntimeConfig(intra_op_threads=2),
        "ort-all-1thread": RuntimeConfig(intra_op_threads=1),
        "ort-basic": RuntimeConfig(intra_op_threads=2, graph_optimization_level="basic"),
        "ort-basic-1thread": RuntimeConfig(intra_op_threads=1, graph_optimization_level="basic"),
    }
    variants = {"ort-all": ["ort-all", "ort-all-1thread"], "ort-basic": list(configs)[2:]}
    latency = {
        "ort-all": {1: 1.0, 32: 10.0},
        "ort-all-1thread": {1: 0.6, 32: 18.0},
        "ort-basic": {1: 1.2, 32: 12.0},  # two threads fastest at both: nothing to combine
        "ort-basic-1thread": {1: 1.3, 32: 20.0},
    }
    combined = threads_by_batch_size(variants, configs, latency, [1, 32])
    assert list(combined) == ["ort-all+threads-by-batch-size"]
    config, runs_on = combined["ort-all+threads-by-batch-size"]
    assert runs_on == {1: "ort-all-1thread", 32: "ort-all"}
    assert config.intra_op_threads == 2 and config.batch_threads == {1: 1}
    # As packaged (runtime.json) and read back: batch 1 on one thread, anything larger on two.
    again = RuntimeConfig.model_validate(json.loads(json.dumps(config.dump())))
    assert [again.threads_for(rows) for rows in (1, 2, 32, 64)] == [1, 2, 2, 2]


def test_threads_per_batch_size_keep_the_spinning_the_largest_batch_was_timed_with() -> None:
    configs = {
        "ort-all": RuntimeConfig(intra_op_threads=2),
        "ort-all-spinning": RuntimeConfig(intra_op_threads=2, allow_spinning=True),
        "ort-all-1thread": RuntimeConfig(intra_op_threads=1),
    }
    variants = {"ort-all": list(configs)}
    latency = {
        "ort-all": {1: 1.0, 32: 12.0},
        "ort-all-spinning": {1: 0.9, 32: 9.0},
        "ort-all-1thread": {1: 0.6, 32: 18.0},
    }
    config, runs_on = threads_by_batch_size(variants, configs, latency, [1, 32])[
        "ort-all+threads-by-batch-size"
    ]
    assert runs_on == {1: "ort-all-1thread", 32: "ort-all-spinning"}
    assert config.allow_spinning and config.batch_threads == {1: 1}
    # Batch 1 fastest on two threads NOT spinning, batch 32 spinning: one session per thread
    # count cannot run both as timed, so no combination is offered.
    latency["ort-all"] = {1: 0.5, 32: 12.0}
    assert threads_by_batch_size(variants, configs, latency, [1, 32]) == {}


def test_spinning_is_timed_both_ways_unless_the_workflow_decides() -> None:
    assert spinning_ways("auto") == [False, True]
    assert spinning_ways(True) == [True]
    assert spinning_ways(False) == [False]


def test_an_onnx_runner_runs_each_batch_on_the_session_for_its_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    opened: list[int] = []

    class Session:
        def __init__(self, threads: int) -> None:
            self.threads = threads

        def get_inputs(self) -> list[Any]:
            return [type("Input", (), {"name": "x"})()]

        def get_outputs(self) -> list[Any]:
            return [type("Output", (), {"name": "y"})()]

        def run(self, _names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.full((len(feeds["x"]), 1), self.threads)]

    def session(_path: Path, config: RuntimeConfig) -> Session:
        opened.append(config.intra_op_threads)
        return Session(config.intra_op_threads)

    monkeypatch.setattr(runtimes, "ort_session", session)
    config = RuntimeConfig(intra_op_threads=2, batch_threads={1: 1, 8: 2})
    run = runtimes.onnx_runner(tmp_path / "model.onnx", config)
    assert sorted(opened) == [1, 2]  # one session per thread count, not per size
    assert [int(run({"x": np.zeros((rows, 3))})[0, 0]) for rows in (1, 4, 8, 32)] == [1, 2, 2, 2]
    opened.clear()
    runtimes.onnx_runner(tmp_path / "model.onnx", RuntimeConfig(intra_op_threads=2))
    assert opened == [2]


def test_a_candidate_that_disables_a_fusion_with_nothing_to_fuse_is_not_timed() -> None:
    # On a CNN, "all but SkipLayerNorm" is the "all" session again: a quarter of the timing.
    def names(ops: set[str]) -> list[str]:
        return [name for name, _, _ in applicable(ORT_CANDIDATES, ops)]

    assert "ort-all-no-skiplayernorm" not in names({"Conv", "Relu", "Add", "Gemm"})
    assert names({"MatMul", "LayerNormalization"}) == [c[0] for c in ORT_CANDIDATES]
    assert "ort-all" in names(set())
