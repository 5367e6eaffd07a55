"""Bake all-MiniLM-L6-v2 with the nine agents, then measure the baked artifact: ONE JSON line.

1. Runs the nine agents in order, each through the real `bakeline-agent` CLI, on `minilm-l6`.
2. In this one process, with fixed threads, interleaved in blocks (8 calls, the first 3 not
   timed, so that each variant is timed with its own weights in the caches, as when serving),
   median of >= 50 timed runs per variant and batch size, on evaluation sentences (never used
   for calibration), measures:
   - fp32: the package's fp32 weights, eager torch, mean pooling + L2 normalisation: the
     headline baseline (it computes sentence-transformers' embeddings, cosine 1.0, a little
     faster than sentence-transformers' own module);
   - sentenceTransformers: that module itself, when installed, as a second reference;
   - quantize_dynamic: the hand-rolled baseline, torch's dynamic int8 Linear layers;
   - baked: the packaged ONNX model under its packaged runtime config.
   ONNX Runtime runs with spinning threads off while timed: spinning workers keep stealing the
   cores from whichever variant runs next and inflate the baseline (measured here: up to 1.7x
   at batch 1), which would flatter the speedup.
3. The machine is shared: before timing, wait (bounded) for a quiet load average, then measure
   in several windows and report the window where fp32 ran fastest, i.e. the least disturbed
   one (torch's fork-join threads suffer far more from other processes than ONNX Runtime's
   pool, so a busy window flatters the speedup); every window's speedups are reported too.

Usage: python benchmarks/bake_minilm.py [--threads 2] [--runs 50] [--workdir DIR]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from bakeline.agents.builtins import minilm
from bakeline.agents.pipeline import STAGES, StageRun, run_pipeline
from bakeline.agents.quality import cosine_rows
from bakeline.agents.runtimes import RuntimeConfig, ort_runner, ort_session, torch_runner
from bakeline.agents.timing import least_contended, wait_for_quiet

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
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def stage_params(threads: int) -> dict[str, dict[str, Any]]:
    return {
        "GraphOptimizer": {"level": "basic"},
        # Keep the two layers whose int8 costs the most cosine in blockwise int8: measured
        # here, the best trade (4 or 6 such layers hold more cosine but cost 20-30 % at batch 32).
        "ModelOptimizer": {
            "scheme": "int8-per-channel",
            "keepFloat": "auto",
            "sensitive": "int8-blockwise",
            "maxFloatLayers": 2,
            "targetCosineMean": 0.997,
            "targetCosineMin": 0.993,
        },
        "MemoryOptimizer": {"embeddings": "int4"},
        "HardwareAdapter": {"threads": threads},
        # torch.compile of MiniLM takes minutes on 2 cores: left to the default workflow.
        "InferenceAccelerator": {
            "candidates": ["onnxruntime", "torch-eager"],
            "runs": 30,
            "tryFewerThreads": False,
        },
        "QualityValidator": {"minThreshold": 0.98},
        "PerformanceProfiler": {"runs": 20},
    }


def summarize(runs: list[StageRun]) -> dict[str, Any]:
    return {
        run.agent: {
            "exitCode": run.exit_code,
            "seconds": run.result.get("durationSeconds"),
            "message": run.result.get("message"),
        }
        for run in runs
    }


def reread(workdir: Path) -> list[StageRun]:
    """The StageRuns of a pipeline already run in `workdir` (from its termination messages)."""
    runs = []
    for index, agent in enumerate(STAGES):
        output = workdir / f"{index}-{agent}"
        termination = workdir / f"{output.name}.termination.json"
        result = json.loads(termination.read_text()) if termination.exists() else {}
        code = 0 if result.get("status") == "succeeded" else 1
        runs.append(StageRun(agent, code, result, output, ""))
    return runs


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated: it is the baseline
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized


def state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def sentence_transformers_runner() -> Any:
    """sentence-transformers' own module (HF BertModel + Pooling + Normalize), or None."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    st = SentenceTransformer(str(minilm.model_dir()), device="cpu").eval()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = st({name: torch.from_numpy(array) for name, array in feeds.items()})
        return np.asarray(out["sentence_embedding"].numpy())

    return run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--workdir", type=Path)
    # Blocks of 8 calls, the first 3 untimed: each variant timed in its steady state (warm
    # caches), blocks interleaved so that every variant shares the machine's drift.
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--settle", type=int, default=3)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--quiet-wait", type=float, default=600.0)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="measure the pipeline already baked in --workdir (no re-bake)",
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bake-minilm-"))
    job = {
        "name": "bench-minilm",
        "model": {"source": {"builtin": "minilm-l6"}},
        "target": {"device": "cpu", "batchSizes": [1, 32]},
        "quality": {"metric": "cosine", "threshold": 0.99},
    }
    started = time.monotonic()
    params = stage_params(args.threads)
    runs = reread(workdir) if args.reuse else run_pipeline(job, workdir, params)
    bake_seconds = time.monotonic() - started
    if runs[-1].exit_code != 0 or len(runs) != 9:
        print(
            json.dumps(
                {
                    "benchmark": "bake_minilm",
                    "ok": False,
                    "stages": summarize(runs),
                    "stderrTail": runs[-1].stderr[-2000:],
                }
            )
        )
        return 1
    package = runs[-1].output
    runtime = RuntimeConfig.model_validate(json.loads((package / "runtime.json").read_text()))
    # As packaged (threads, graph level, disabled fusions), spinning off: see the docstring.
    timed_runtime = runtime.model_copy(update={"allow_spinning": False})

    torch.set_num_threads(args.threads)
    tok = minilm.tokenizer(package / "tokenizer.json")
    _, evaluation = minilm.split_sentences()
    fp32_module = minilm.load_minilm()
    fp32 = torch_runner(fp32_module, NAMES)
    qdyn_module = dynamic_int8(minilm.load_minilm())
    qdyn = torch_runner(qdyn_module, NAMES)
    baked = ort_runner(ort_session(package / "model.onnx", timed_runtime))
    variants = {"fp32": fp32, "quantizeDynamic": qdyn, "baked": baked}
    # sentence-transformers' own module, timed as a second reference: our fp32 module computes
    # the same embeddings and is the faster (stricter) baseline of the headline speedups.
    st = sentence_transformers_runner()
    if st is not None:
        variants["sentenceTransformers"] = st

    # Quality on every evaluation sentence, batched by 32.
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for start in range(0, len(evaluation), 32):
        feeds = minilm.encode(tok, evaluation[start : start + 32])
        for name, run in variants.items():
            outputs[name].append(run(feeds))
    reference = np.concatenate(outputs["fp32"])
    quality = {
        name: {"cosineMean": float(c.mean()), "cosineMin": float(c.min())}
        for name in variants
        if name != "fp32"
        for c in [cosine_rows(np.concatenate(outputs[name]), reference)]
    }

    load_before = wait_for_quiet(args.quiet_load, args.quiet_wait)
    latency: dict[str, dict[str, float]] = {name: {} for name in variants}
    windows: dict[str, list[float]] = {}
    for size in (1, 32):
        batches = [
            minilm.encode(tok, evaluation[i : i + size])
            for i in range(0, len(evaluation) - size + 1, size)
        ]
        calls = {
            name: (lambda i, r=run, b=batches: r(b[i % len(b)])) for name, run in variants.items()
        }
        best, medians = least_contended(
            calls, args.runs, args.windows, baseline="fp32", block=args.block, settle=args.settle
        )
        for name, stats in best.items():
            latency[name][f"b{size}P50Ms"] = round(stats.p50, 3)
            latency[name][f"b{size}P95Ms"] = round(stats.p95, 3)
        windows[f"bakedSpeedupB{size}"] = [round(m["fp32"] / m["baked"], 2) for m in medians]
        windows[f"fp32B{size}P50Ms"] = [round(m["fp32"], 2) for m in medians]

    def speedup(name: str, size: int) -> float:
        return round(latency["fp32"][f"b{size}P50Ms"] / latency[name][f"b{size}P50Ms"], 3)

    sizes = {
        "fp32": (minilm.model_dir() / "model.safetensors").stat().st_size / 1e6,
        "quantizeDynamic": state_bytes(qdyn_module) / 1e6,
        "sentenceTransformers": (minilm.model_dir() / "model.safetensors").stat().st_size / 1e6,
        "baked": (package / "model.onnx").stat().st_size / 1e6,
    }
    result: dict[str, Any] = {
        "benchmark": "bake_minilm",
        "ok": True,
        "threads": args.threads,
        "bakedThreads": runtime.intra_op_threads,
        "runs": args.runs,
        "block": args.block,
        "settle": args.settle,
        "evaluationSentences": len(evaluation),
        "loadAverageBefore": round(load_before, 2),
        "windows": windows,
        "bakeSeconds": None if args.reuse else round(bake_seconds, 1),
        "runtime": runtime.dump(),
    }
    for name in variants:
        entry: dict[str, Any] = {"sizeMB": round(sizes[name], 2), **latency[name]}
        if name != "fp32":
            entry.update(
                {
                    "speedupB1": speedup(name, 1),
                    "speedupB32": speedup(name, 32),
                    **{k: round(v, 5) for k, v in quality[name].items()},
                }
            )
        result[name] = entry
    if st is not None:
        result["bakedSpeedupVsSentenceTransformers"] = {
            f"b{size}": round(
                latency["sentenceTransformers"][f"b{size}P50Ms"]
                / latency["baked"][f"b{size}P50Ms"],
                3,
            )
            for size in (1, 32)
        }
    baked_entry = result["baked"]
    result["targetsMet"] = {
        key: (baked_entry[key] <= bound if key == "sizeMB" else baked_entry[key] >= bound)
        for key, bound in TARGETS.items()
    }
    result["stretchMet"] = {
        key: (baked_entry[key] <= bound if key == "sizeMB" else baked_entry[key] >= bound)
        for key, bound in STRETCH.items()
    }
    result["stages"] = {k: v["seconds"] for k, v in summarize(runs).items()}
    result["loadAverageAfter"] = round(os.getloadavg()[0], 2)
    result["workdir"] = str(workdir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
