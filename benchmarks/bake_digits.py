"""Bake digits-cnn with the nine agents, then measure the baked artifact: ONE JSON line.

The nine agents through the real `bakeline-agent` CLI with their defaults, then THE timing method
(`bakeline.agents.timing.compare`, as bake_minilm.py and the PerformanceProfiler): one process,
fixed threads, interleaved blocks rotating over the held-out test split (never used for training
or calibration), median of >= 50 timed runs per variant and batch size, the least disturbed of
several windows:
  - fp32: the imported model (checkpoint 0's ExportedProgram) in eager torch;
  - quantizeDynamic: torch's dynamic int8 Linear layers (the hand-rolled baseline);
  - baked: the packaged ONNX model under its packaged runtime config.
Targets: accuracy within 1 point of fp32, smaller and faster.

Usage: python benchmarks/bake_digits.py [--threads 2] [--runs 50] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bakeline.agents.checkpoint_io import open_input
from bakeline.agents.pipeline import run_pipeline
from bakeline.agents.runtimes import (
    RuntimeConfig,
    load_exported_program,
    onnx_runner,
    torch_runner,
)
from bakeline.agents.timing import Method, compare, rotating, wait_for_quiet

JOB = {
    "name": "bench-digits",
    "model": {"source": {"builtin": "digits-cnn"}},
    "target": {"device": "cpu", "batchSizes": [1, 32]},
    "quality": {"metric": "accuracy"},
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--quiet-wait", type=float, default=300.0)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    method = Method(windows=args.windows)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bake-digits-"))
    params = {
        "HardwareAdapter": {"threads": args.threads},
        "PerformanceProfiler": {"runs": 20},
    }
    started = time.monotonic()
    runs = run_pipeline(JOB, workdir, params)
    bake_seconds = time.monotonic() - started
    if runs[-1].exit_code != 0 or len(runs) != 9:
        stages = {r.agent: r.result.get("message") for r in runs}
        print(json.dumps({"benchmark": "bake_digits", "ok": False, "stages": stages}))
        return 1

    torch.set_num_threads(args.threads)
    checkpoint0 = open_input(runs[0].output)
    package = runs[-1].output
    runtime = RuntimeConfig.model_validate(json.loads((package / "runtime.json").read_text()))
    # As packaged (the accelerator may have kept one thread: faster for so small a model).
    test = checkpoint0.dataset("evaluation.safetensors")
    assert test.labels is not None

    fp32_module = load_exported_program(checkpoint0.artifact).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated torch.ao: it is the baseline
        from bakeline.agents.builtins.digits import DigitsCNN

        # quantize_dynamic needs the nn.Module (an ExportedProgram's module is a GraphModule).
        module = DigitsCNN()
        module.load_state_dict(dict(fp32_module.state_dict()))
        qdyn_module: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            module.eval(), {torch.nn.Linear}, dtype=torch.qint8
        )
    variants = {
        "fp32": torch_runner(fp32_module, ["image"]),
        "quantizeDynamic": torch_runner(qdyn_module, ["image"]),
        "baked": onnx_runner(package / "model.onnx", runtime),
    }
    accuracy = {
        name: float(
            (np.concatenate([run(b) for b in test.batches(64)]).argmax(1) == test.labels).mean()
        )
        for name, run in variants.items()
    }
    load_before = wait_for_quiet(args.quiet_load, args.quiet_wait)
    latency: dict[str, dict[str, float]] = {name: {} for name in variants}
    for size in (1, 32):
        batches = [test.batch(i, i + size) for i in range(0, len(test) - size + 1, size)]
        calls = {name: rotating(run, batches) for name, run in variants.items()}
        measured = compare(calls, args.runs, "fp32", method)
        for name in variants:
            latency[name][f"b{size}P50Ms"] = round(measured.p50(name), 4)

    buffer = io.BytesIO()
    torch.save(qdyn_module.state_dict(), buffer)
    sizes = {
        "fp32": checkpoint0.artifact.stat().st_size,
        "quantizeDynamic": buffer.tell(),
        "baked": (package / "model.onnx").stat().st_size,
    }
    result: dict[str, Any] = {
        "benchmark": "bake_digits",
        "ok": True,
        "threads": args.threads,
        "bakedThreads": runtime.intra_op_threads,
        "runs": args.runs,
        "method": {"block": method.block, "settle": method.settle, "windows": method.windows},
        "testSamples": len(test),
        "loadAverageBefore": round(load_before, 2),
        "bakeSeconds": round(bake_seconds, 1),
    }
    for name in variants:
        entry: dict[str, Any] = {
            "sizeKB": round(sizes[name] / 1e3, 1),
            "accuracy": round(accuracy[name], 4),
            **latency[name],
        }
        if name != "fp32":
            for size in (1, 32):
                key = f"b{size}P50Ms"
                entry[f"speedupB{size}"] = round(latency["fp32"][key] / latency[name][key], 3)
        result[name] = entry
    baked = result["baked"]
    result["targetsMet"] = {
        "accuracyWithin1Point": accuracy["baked"] >= accuracy["fp32"] - 0.01,
        "smaller": sizes["baked"] < sizes["fp32"],
        "fasterB1": baked["speedupB1"] > 1.0,
        "fasterB32": baked["speedupB32"] > 1.0,
    }
    result["loadAverageAfter"] = round(os.getloadavg()[0], 2)
    result["stages"] = {r.agent: r.result.get("durationSeconds") for r in runs}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
