"""Bake all-MiniLM-L6-v2 with `bakeline run` and measure it against the peers: ONE JSON line.

1. Bakes `examples/bakingjob-minilm.yaml` with `bakeline run` (the built-in default workflow,
   nothing tuned for this model or this benchmark): the artifact a user gets.
2. Builds the peers from the same fp32 weights:
   - fp32: the package's weights in eager torch, mean pooling + L2 normalisation (what
     sentence-transformers computes; the speedups' baseline);
   - quantizeDynamic: torch's hand-rolled dynamic int8 Linear layers;
   - ortInt8: onnxruntime's own quantizer on an ONNX export of the same module
     (`torch.onnx.export`, then `onnxruntime.quantization.quantize_dynamic`, per channel, int8
     weights, its default operator set: MatMul and the embedding Gathers), the recipe ONNX
     Runtime documents (Olive's dynamic quantization pass calls this same function);
   - baked: `bakeline run`'s model.onnx under its packaged runtime config (at most --threads
     threads; where the accelerator found a batch size faster on fewer, it runs on fewer);
   - ortInt8OneThread: the ortInt8 model on one thread, for reference only (not a peer: the
     recipe documents no thread setting), so that a thread count is never the only difference.
3. Times them by THE timing method (`bakeline.agents.timing.compare`, the PerformanceProfiler's
   too): one process, fixed threads, ONNX Runtime sessions with spinning off, interleaved
   blocks, rotating over the evaluation sentences (never used for calibration), median of
   >= 50 timed runs per candidate and batch size, the least disturbed of several windows.
   Cosine to fp32 on every evaluation sentence.

Usage: python benchmarks/bake_minilm.py [--threads 2] [--runs 50] [--workdir DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bakeline.agents.builtins import minilm
from bakeline.agents.quality import cosine_rows
from bakeline.agents.runtimes import (
    RuntimeConfig,
    onnx_runner,
    ort_runner,
    ort_session,
    torch_runner,
)
from bakeline.agents.timing import Method, compare, rotating, timed_config, wait_for_quiet

JOB = Path(__file__).resolve().parent.parent / "examples" / "bakingjob-minilm.yaml"
# Issue 5 (the agents issue's figures) and issue 8 section 1 (the peers' level, in absolute terms).
TARGETS = {
    "speedupB1": 4.0,
    "speedupB32": 2.8,
    "sizeMB": 25.0,
    "cosineMean": 0.99,
    "cosineMin": 0.98,
}
STRETCH = {
    "speedupB1": 5.5,
    "speedupB32": 3.3,
    "sizeMB": 23.0,
    "cosineMean": 0.993,
    "cosineMin": 0.985,
}
AXES = ("speedupB1", "speedupB32", "sizeMB", "cosineMean", "cosineMin")
NAMES = ["input_ids", "attention_mask", "token_type_ids"]
PEERS = ("quantizeDynamic", "ortInt8")


def bake(workdir: Path, reuse: bool) -> tuple[dict[str, Any], float | None]:
    """`bakeline run` on the example job; its report.json and wall seconds (None if reused)."""
    if not reuse:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "bakeline.cli.main", "run", str(JOB), "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            check=False,
        )
        seconds: float | None = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(f"bakeline run exited {done.returncode}: {done.stderr[-2000:]}")
    else:
        seconds = None
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return report, seconds


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated: it is the baseline
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized


def ort_int8(module: torch.nn.Module, example: dict[str, np.ndarray], target: Path) -> Path:
    """The hand-rolled ONNX Runtime recipe: export, then onnxruntime's quantize_dynamic."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exported = target.with_name("fp32.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(example[name]) for name in NAMES),
            str(exported),
            input_names=NAMES,
            output_names=["sentence_embedding"],
            dynamic_axes={
                **{name: {0: "batch", 1: "sequence"} for name in NAMES},
                "sentence_embedding": {0: "batch"},
            },
            dynamo=False,  # the TorchScript exporter: its graph is the one this recipe targets
        )
    quantize_dynamic(str(exported), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


def state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def versus_peers(result: dict[str, Any]) -> dict[str, Any]:
    """Per axis: the best peer's value, the artifact's, and whether it is at least as good."""
    axes: dict[str, Any] = {}
    for axis in AXES:
        lower = axis == "sizeMB"
        values = [result[p][axis] for p in PEERS]
        best = min(values) if lower else max(values)
        ours = result["baked"][axis]
        axes[axis] = {
            "bestPeer": best,
            "baked": ours,
            "atLeastAsGood": ours <= best if lower else ours >= best,
            "strictlyBetter": ours < best if lower else ours > best,
        }
    return {
        "axes": axes,
        "dominates": all(a["atLeastAsGood"] for a in axes.values())
        and any(a["strictlyBetter"] for a in axes.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--quiet-wait", type=float, default=300.0)
    parser.add_argument("--reuse", action="store_true", help="measure a bake already in --workdir")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bake-minilm-"))
    try:
        report, bake_seconds = bake(workdir, args.reuse)
    except RuntimeError as exc:
        print(json.dumps({"benchmark": "bake_minilm", "ok": False, "error": str(exc)}))
        return 1
    package = workdir / "result"
    runtime = RuntimeConfig.model_validate(json.loads((package / "runtime.json").read_text()))

    torch.set_num_threads(args.threads)
    tok = minilm.tokenizer(package / "tokenizer.json")
    calibration, evaluation = minilm.split_sentences()
    fp32_module = minilm.load_minilm()
    qdyn_module = dynamic_int8(minilm.load_minilm())
    (workdir / "peer").mkdir(exist_ok=True)
    peer_path = ort_int8(
        minilm.load_minilm(), minilm.encode(tok, calibration[:2]), workdir / "peer" / "int8.onnx"
    )
    ort_config = timed_config(RuntimeConfig(intra_op_threads=args.threads))
    variants = {
        "fp32": torch_runner(fp32_module, NAMES),
        "quantizeDynamic": torch_runner(qdyn_module, NAMES),
        "ortInt8": ort_runner(ort_session(peer_path, ort_config)),
        "ortInt8OneThread": ort_runner(
            ort_session(peer_path, ort_config.model_copy(update={"intra_op_threads": 1}))
        ),
        # As packaged: with threadsByBatchSize, one session per thread count.
        "baked": onnx_runner(package / "model.onnx", timed_config(runtime)),
    }

    outputs: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for start in range(0, len(evaluation), 32):
        feeds = minilm.encode(tok, evaluation[start : start + 32])
        for name, run in variants.items():
            outputs[name].append(run(feeds))
    reference = np.concatenate(outputs["fp32"])
    quality = {
        name: {"cosineMean": float(c.mean()), "cosineMin": float(c.min())}
        for name in variants
        for c in [cosine_rows(np.concatenate(outputs[name]), reference)]
    }

    load_before = wait_for_quiet(args.quiet_load, args.quiet_wait)
    method = Method(windows=args.windows)
    latency: dict[str, dict[str, float]] = {name: {} for name in variants}
    windows: dict[str, list[float]] = {}
    for size in (1, 32):
        batches = [
            minilm.encode(tok, evaluation[i : i + size])
            for i in range(0, len(evaluation) - size + 1, size)
        ]
        calls = {name: rotating(run, batches) for name, run in variants.items()}
        measured = compare(calls, args.runs, "fp32", method)
        for name in variants:
            latency[name][f"b{size}P50Ms"] = round(measured.p50(name), 3)
            latency[name][f"speedupB{size}"] = round(measured.speedup(name), 3)
        windows[f"bakedSpeedupB{size}"] = [round(x, 2) for x in measured.window_speedups("baked")]
        windows[f"ortInt8SpeedupB{size}"] = [
            round(x, 2) for x in measured.window_speedups("ortInt8")
        ]

    weights = (minilm.model_dir() / "model.safetensors").stat().st_size
    sizes = {
        "fp32": weights,
        "quantizeDynamic": state_bytes(qdyn_module),
        "ortInt8": peer_path.stat().st_size,
        "ortInt8OneThread": peer_path.stat().st_size,
        "baked": (package / "model.onnx").stat().st_size,
    }
    result: dict[str, Any] = {
        "benchmark": "bake_minilm",
        "ok": True,
        "threads": args.threads,
        "runs": args.runs,
        "method": {"block": method.block, "settle": method.settle, "windows": method.windows},
        "evaluationSentences": len(evaluation),
        "loadAverageBefore": round(load_before, 2),
    }
    for name in variants:
        result[name] = {
            "sizeMB": round(sizes[name] / 1e6, 2),
            **latency[name],
            **{k: round(v, 5) for k, v in quality[name].items()},
        }
    result["versusBestPeer"] = versus_peers(result)
    baked = result["baked"]
    result["targetsMet"] = {
        key: baked[key] <= bound if key == "sizeMB" else baked[key] >= bound
        for key, bound in TARGETS.items()
    }
    result["stretchMet"] = {
        key: baked[key] <= bound if key == "sizeMB" else baked[key] >= bound
        for key, bound in STRETCH.items()
    }
    result["windows"] = windows
    outcome = report.get("result") or {}
    result["bakelineRun"] = {
        "wallSeconds": None if bake_seconds is None else round(bake_seconds, 1),
        "speedups": outcome.get("speedups"),
        "sizeMB": round(float(outcome.get("sizeBytes") or 0) / 1e6, 2),
        "quality": outcome.get("quality"),
        "stages": {
            s["name"]: round(float(s.get("durationSeconds") or 0), 1) for s in report["stages"]
        },
    }
    result["runtime"] = runtime.dump()
    result["loadAverageAfter"] = round(os.getloadavg()[0], 2)
    result["workdir"] = str(workdir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
