"""Bake all-MiniLM-L6-v2 with `bakeline run` and measure it against the peers: ONE JSON line.

1. Bakes `examples/bakingjob-minilm.yaml` with `bakeline run` (the built-in default workflow,
   nothing tuned for this model or this benchmark): the artifact a user gets.
2. Builds the peers from the same fp32 weights, each by its documented recipe, in this run:
   - fp32: the package's weights in eager torch, mean pooling + L2 normalisation (what
     sentence-transformers computes; the speedups' baseline and the quality reference);
   - quantizeDynamic: torch's hand-rolled dynamic int8 Linear layers;
   - ortInt8: onnxruntime's own quantizer on an ONNX export of the same module
     (`torch.onnx.export`, then `onnxruntime.quantization.quantize_dynamic`, per channel, int8
     weights, its default operator set: MatMul and the embedding Gathers), the recipe ONNX
     Runtime documents (Olive's dynamic quantization pass calls this same function);
   - openvino: `openvino.convert_model` of that same fp32 ONNX export, compiled for CPU with the
     default config (on a CPU with AVX-512 BF16 or AMX that means bf16 inference: the output's
     `peerNotes.inferencePrecision` records what the compiled model reports), one stream,
     latency hint, INFERENCE_NUM_THREADS = --threads (as benchmarks/bake_resnet.py);
   - openvinoNncfInt8: `nncf.quantize(..., model_type=nncf.ModelType.TRANSFORMER)` (NNCF's
     documented transformer preset) of that OpenVINO model, calibrated on the builtin
     calibration sentences (the ones the bake calibrates on), an `nncf.Dataset` of feed dicts of
     --nncf-batch sentences each (default 1: NNCF's advice for transformers, so that no padding
     enters the statistics), compiled the same way;
   - optimumO3Int8: Hugging Face Optimum's documented recipe, run by the Python of a separate
     venv (--optimum-python, default $BAKELINE_OPTIMUM_PYTHON; optimum-onnx 0.1.0 needs
     transformers < 4.58, this project >= 5.25):
     `ORTModelForFeatureExtraction.from_pretrained(model_dir(), export=True)`, `ORTOptimizer`
     with `AutoOptimizationConfig.O3()`, then `ORTQuantizer` with
     `AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True)` (the function's
     default, what sentence-transformers' `export_dynamic_quantized_onnx_model` uses). One
     deviation, needed for it to run at all: onnxruntime's (1.32) quantizer cannot type the O3
     graph's com.microsoft operators and stops ("Unable to find data type for weight_name
     ..."); the subprocess passes `extra_options["DefaultTensorType"] = FLOAT`, the
     fix that error message names (optimum PR 1959 proposes the same). Optimum exports the
     feature-extraction model (token embeddings), so this peer's sentence embedding is the
     mask-weighted mean and L2 norm computed in numpy after its ONNX Runtime session (inside
     its timed call: tiny);
   - baked: `bakeline run`'s model.onnx under its packaged runtime config (at most --threads
     threads; where the accelerator found a batch size faster on fewer, it runs on fewer);
   - ortInt8OneThread: the ortInt8 model on one thread, for reference only (not a peer: the
     recipe documents no thread setting), so that a thread count is never the only difference.
   A peer whose package is missing (or whose build fails) is listed under `skipped`, with why.
3. Quality, cosine to fp32 torch per text (mean and min), on texts from sources the bake never
   saw (`unseen_texts`: --per-kind each of stdlib docstrings, stdlib source lines, vocabulary
   word salads, identifiers/URLs/numbers, long texts; see its docstring): over all of them (the
   headline cosineMean / cosineMin), per kind (`quality`), and separately on the builtin
   evaluation sentences (`evaluationCosineMean` / `evaluationCosineMin`).
4. Times them by THE timing method (`bakeline.agents.timing.compare`, the PerformanceProfiler's
   too), every candidate in the same run, interleaved: one process, fixed threads, each as it
   is loaded (the peers' ONNX Runtime sessions with ONNX Runtime's defaults, workers spinning;
   the artifact as runtime.json says), interleaved blocks, rotating inputs, median of the timed runs
   per candidate and batch size, the least disturbed of several windows. At batch 1 and 32 on
   the builtin evaluation split (never used for calibration; short sentences and texts of
   other kinds, up to 215 tokens: b{1,32}P50Ms, speedupB{1,32}, the headline), and with
   --mixed (which doubles the timing) also on the union of those and the unseen texts, taken
   source by source in turn (evaluation sentence, documentation, code,
   rare words, identifiers, long, evaluation sentence, ...) so that even a short rotation
   meets every kind and a batch of 32 holds long texts, padded as served (b{1,32}P50MsMixed,
   speedupB{1,32}Mixed).

Optional peer dependencies (not runtime ones), measured with (pip, Python 3.11):
    openvino==2026.4.1 nncf==3.4.0 in the project's environment (see benchmarks/bake_resnet.py);
    Optimum in its own venv that reuses the project's torch, onnx and onnxruntime and shadows
    only transformers, tokenizers and huggingface_hub (the main environment is untouched):
        python -m venv --system-site-packages /tmp/optimum-venv
        /tmp/optimum-venv/bin/pip install --no-deps -r benchmarks/optimum-requirements.txt
        export BAKELINE_OPTIMUM_PYTHON=/tmp/optimum-venv/bin/python

Usage: python benchmarks/bake_minilm.py [--threads 2] [--runs 50] [--workdir DIR] [--reuse]
       [--per-kind 64] [--seed 0] [--nncf-batch 1] [--optimum-python PATH]
       [--no-optimum-per-channel] [--mixed]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bakeline_run
import numpy as np
import openvino_recipes
import torch
from tokenizers import Tokenizer

from bakeline.agents.builtins import minilm
from bakeline.agents.quality import cosine_rows
from bakeline.agents.runtimes import (
    Runner,
    RuntimeConfig,
    onnx_runner,
    ort_runner,
    ort_session,
    session_defaults,
    torch_runner,
)
from bakeline.agents.timing import Method, compare, rotating, wait_for_quiet

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
PEERS = ("quantizeDynamic", "ortInt8", "openvino", "openvinoNncfInt8", "optimumO3Int8")
KINDS = ("documentation", "code", "rareWords", "identifiers", "long")

# -- texts of kinds the bake never saw -----------------------------------------------------------

# Standard-library modules whose docstrings and source lines make the unseen texts: present
# wherever Python is, the same for a given Python version.
MODULES = (
    "argparse",
    "asyncio",
    "bisect",
    "calendar",
    "collections",
    "csv",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "fractions",
    "functools",
    "gzip",
    "hashlib",
    "heapq",
    "http.client",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "pathlib",
    "pickle",
    "queue",
    "random",
    "re",
    "shutil",
    "smtplib",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "unittest",
    "urllib.parse",
    "uuid",
    "wave",
    "zipfile",
)
FIRST_WORD_ID = 1996  # bert-base-uncased's vocabulary: ids below are [PAD], [unused*], chars


def _docstrings() -> list[str]:
    """First paragraphs (30 to 600 characters) of the docstrings of MODULES' own callables."""
    found: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc and getattr(obj, "__module__", None) == module.__name__:
                paragraph = " ".join(doc.split("\n\n")[0].split())
                if 30 <= len(paragraph) <= 600:
                    found.add(paragraph)
    return sorted(found)


def _code_lines() -> list[str]:
    """Source lines (25 to 160 characters, not comments or string openings) of MODULES."""
    found: set[str] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        if not getattr(module, "__file__", None):
            continue  # built into the interpreter: no source
        for line in inspect.getsource(module).splitlines():
            stripped = line.strip()
            if 25 <= len(stripped) <= 160 and not stripped.startswith(("#", '"', "'")):
                found.add(stripped)
    return sorted(found)


def unseen_texts(tok: Tokenizer, per_kind: int, seed: int = 0) -> dict[str, list[str]]:
    """`per_kind` texts of each of KINDS, from sources the bake never saw.

    Why: the builtin evaluation split (`minilm.split_sentences()[1]`) holds the same kinds of
    text as the calibration split (the other lines of the same files), so a quantizer that fits
    only what it calibrated on would look perfect on it; the benchmark judges quality on text
    from elsewhere: documentation (stdlib docstrings), code (stdlib source lines), rareWords
    (random word salads from the tokenizer's vocabulary), identifiers (numbers, e-mail
    addresses, URLs, dates, hex, upper-case words) and long (six docstrings joined: about 70 to
    240 tokens here, longer than most calibration lines; served truncated at 256 tokens, as
    sentence-transformers does). Built from what any machine with Python has (no download),
    deterministic for a seed (and a Python version).
    """
    rng = random.Random(seed)
    docs = _docstrings()
    ids = tok.get_vocab()
    vocab = sorted(t for t, i in ids.items() if i >= FIRST_WORD_ID and not t.startswith("["))

    def word() -> str:
        return str(rng.choice(vocab)).strip("#")

    def salad() -> str:
        return str(tok.decode([ids[rng.choice(vocab)] for _ in range(rng.randint(6, 30))]))

    def identifiers() -> str:
        parts = [
            f"{rng.randint(1, 9999)}",
            f"user{rng.randint(1, 999)}@example{rng.randint(1, 99)}.org",
            f"https://{word()}.example.com/{word()}?id={rng.randint(1, 10**6)}",
            f"{rng.randint(1990, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            word().upper(),
            f"0x{rng.getrandbits(32):08x}",
            f"{rng.uniform(-1e4, 1e4):.3f}",
        ]
        return " ".join(rng.sample(parts, rng.randint(3, len(parts))))

    long = [" ".join(rng.sample(docs, 6)) for _ in range(per_kind)]
    return {
        "documentation": rng.sample(docs, per_kind),
        "code": rng.sample(_code_lines(), per_kind),
        "rareWords": [salad() for _ in range(per_kind)],
        "identifiers": [identifiers() for _ in range(per_kind)],
        "long": long,
    }


def mixed(evaluation: list[str], unseen: dict[str, list[str]]) -> list[str]:
    """The union, one text from each source in turn (sources that run out drop out)."""
    sources = [evaluation, *unseen.values()]
    return [
        source[i] for i in range(max(map(len, sources))) for source in sources if i < len(source)
    ]


# -- the bake ------------------------------------------------------------------------------------


def bake(workdir: Path, reuse: bool) -> tuple[dict[str, Any], float | None]:
    """`bakeline run` on the example job; its report.json and wall seconds (None if reused)."""
    seconds = None if reuse else bakeline_run.bake(JOB, workdir)
    return bakeline_run.report(workdir), seconds


# -- the peers -----------------------------------------------------------------------------------


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated: it is the baseline
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized


def export_onnx(module: torch.nn.Module, example: dict[str, np.ndarray], path: Path) -> Path:
    """The fp32 ONNX export the ortInt8 and OpenVINO peers start from."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(example[name]) for name in NAMES),
            str(path),
            input_names=NAMES,
            output_names=["sentence_embedding"],
            dynamic_axes={
                **{name: {0: "batch", 1: "sequence"} for name in NAMES},
                "sentence_embedding": {0: "batch"},
            },
            dynamo=False,  # the TorchScript exporter: its graph is the one this recipe targets
        )
    return path


def ort_int8(exported: Path, target: Path) -> Path:
    """The hand-rolled ONNX Runtime recipe: onnxruntime's quantize_dynamic on the export."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(exported), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


def openvino_peers(
    fp32: Path, calibration: list[dict[str, np.ndarray]], folder: Path, threads: int
) -> tuple[dict[str, Runner], dict[str, int], dict[str, Any], dict[str, str]]:
    """OpenVINO (default precision) and OpenVINO + NNCF int8 (transformer preset): runners,
    sizes, notes, skipped."""
    built = openvino_recipes.build(fp32, calibration, folder, threads, transformer=True)
    runners = {name: _ov_runner(program) for name, program in built.compiled.items()}
    return runners, built.sizes, built.notes, built.skipped


def _ov_runner(compiled: Any) -> Runner:
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(request.infer({name: feeds[name] for name in NAMES})[0])

    return run


# Run by the Optimum venv's Python: argv = HF model folder, output folder, per_channel (0/1).
# Prints one JSON line: the quantized model's path and the versions used.
OPTIMUM_SCRIPT = """
import json, sys
from pathlib import Path
import onnx, onnxruntime, optimum.onnxruntime.quantization as quantization, transformers
from importlib.metadata import version
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTOptimizer, ORTQuantizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

source, target, per_channel = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
quantizer_class = quantization.ONNXQuantizer

def typed_quantizer(*args, **kwargs):
    # onnxruntime's quantizer cannot type the O3 graph's com.microsoft operators: the fix its error
    # message names. Nothing else of the recipe changes.
    options = {**kwargs.get("extra_options", {}), "DefaultTensorType": onnx.TensorProto.FLOAT}
    return quantizer_class(*args, **{**kwargs, "extra_options": options})

quantization.ONNXQuantizer = typed_quantizer
model = ORTModelForFeatureExtraction.from_pretrained(source, export=True)
optimizer = ORTOptimizer.from_pretrained(model)
optimizer.optimize(save_dir=target / "optimized", optimization_config=AutoOptimizationConfig.O3())
quantizer = ORTQuantizer.from_pretrained(target / "optimized", file_name="model_optimized.onnx")
config = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=per_channel)
quantizer.quantize(save_dir=target / "quantized", quantization_config=config)
onnx_files = sorted((target / "quantized").glob("*.onnx"))
print(json.dumps({
    "onnx": str(onnx_files[0]),
    "versions": {p: version(p) for p in (
        "optimum", "optimum-onnx", "transformers", "torch", "onnx", "onnxruntime")},
}))
"""


def optimum_peer(
    python: str | None, folder: Path, per_channel: bool
) -> tuple[Path, dict[str, Any]]:
    """Optimum's O3 + dynamic int8 model, built by the Optimum venv's Python; RuntimeError why
    not."""
    if not python:
        raise RuntimeError(
            "no Optimum venv: pass --optimum-python or set BAKELINE_OPTIMUM_PYTHON "
            "(see the docstring and benchmarks/optimum-requirements.txt)"
        )
    if not Path(python).exists():
        raise RuntimeError(f"--optimum-python {python} does not exist")
    done = subprocess.run(
        [python, "-c", OPTIMUM_SCRIPT, str(minilm.model_dir()), str(folder), str(int(per_channel))],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"optimum exited {done.returncode}: {done.stderr[-1500:]}")
    built: dict[str, Any] = json.loads(lines[-1])
    notes = {"versions": built["versions"], "perChannel": per_channel}
    return Path(built["onnx"]), notes


def pooled_runner(session: Any) -> Runner:
    """Token embeddings -> sentence embedding in numpy: attention-mask-weighted mean, L2 norm
    (sentence-transformers' Pooling + Normalize)."""
    inputs = [i.name for i in session.get_inputs()]
    output = session.get_outputs()[0].name

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        tokens = session.run([output], {name: feeds[name] for name in inputs})[0]
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)

    return run


def state_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


# -- measuring -----------------------------------------------------------------------------------


def embed(
    variants: dict[str, Runner], tok: Tokenizer, texts: list[str], batch: int = 32
) -> dict[str, np.ndarray]:
    """Every variant's embeddings of `texts`, in batches (each padded to its longest text)."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for start in range(0, len(texts), batch):
        feeds = minilm.encode(tok, texts[start : start + batch])
        for name, run in variants.items():
            outputs[name].append(run(feeds))
    return {name: np.concatenate(parts) for name, parts in outputs.items()}


def cosines(embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per variant, the cosine of each text's embedding to fp32 torch's."""
    return {name: cosine_rows(value, embeddings["fp32"]) for name, value in embeddings.items()}


def summary(values: np.ndarray) -> dict[str, float]:
    return {
        "cosineMean": round(float(values.mean()), 5),
        "cosineMin": round(float(values.min()), 5),
    }


def versus_peers(result: dict[str, Any]) -> dict[str, Any]:
    """Per axis: the best peer (of those that ran), its value, the artifact's, and whether the
    artifact is at least as good."""
    ran = [p for p in PEERS if p in result]
    axes: dict[str, Any] = {}
    for axis in AXES:
        lower = axis == "sizeMB"
        values = {p: result[p][axis] for p in ran}
        best = (min if lower else max)(values, key=values.__getitem__)
        ours = result["baked"][axis]
        axes[axis] = {
            "bestPeer": values[best],
            "bestPeerName": best,
            "baked": ours,
            "atLeastAsGood": ours <= values[best] if lower else ours >= values[best],
            "strictlyBetter": ours < values[best] if lower else ours > values[best],
        }
    return {
        "peers": ran,
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
    parser.add_argument("--mixed", action="store_true", help="time the unseen texts too")
    parser.add_argument("--per-kind", type=int, default=64, help="unseen texts of each kind")
    parser.add_argument("--seed", type=int, default=0, help="of the unseen texts")
    parser.add_argument("--nncf-batch", type=int, default=1, help="sentences per NNCF feed")
    parser.add_argument(
        "--optimum-python",
        default=os.environ.get("BAKELINE_OPTIMUM_PYTHON"),
        help="Python of the Optimum venv (default: $BAKELINE_OPTIMUM_PYTHON; unset: skipped)",
    )
    parser.add_argument(
        "--optimum-per-channel",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="AutoQuantizationConfig.avx512_vnni's per_channel (its default: on)",
    )
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
    unseen = unseen_texts(tok, args.per_kind, args.seed)
    union = mixed(evaluation, unseen)

    peers = workdir / "peer"
    peers.mkdir(exist_ok=True)
    peer_started = time.monotonic()
    fp32_module = minilm.load_minilm()
    qdyn_module = dynamic_int8(minilm.load_minilm())
    fp32_onnx = export_onnx(
        minilm.load_minilm(), minilm.encode(tok, calibration[:2]), peers / "fp32.onnx"
    )
    peer_path = ort_int8(fp32_onnx, peers / "int8.onnx")
    ort_config = session_defaults(args.threads)  # as the recipes load their models
    variants: dict[str, Runner] = {
        "fp32": torch_runner(fp32_module, NAMES),
        "quantizeDynamic": torch_runner(qdyn_module, NAMES),
        "ortInt8": ort_runner(ort_session(peer_path, ort_config)),
        "ortInt8OneThread": ort_runner(
            ort_session(peer_path, ort_config.model_copy(update={"intra_op_threads": 1}))
        ),
    }
    sizes = {
        "fp32": (minilm.model_dir() / "model.safetensors").stat().st_size,
        "quantizeDynamic": state_bytes(qdyn_module),
        "ortInt8": peer_path.stat().st_size,
        "ortInt8OneThread": peer_path.stat().st_size,
    }
    nncf_feeds = [
        minilm.encode(tok, calibration[i : i + args.nncf_batch])
        for i in range(0, len(calibration), args.nncf_batch)
    ]
    with contextlib.redirect_stdout(sys.stderr):  # nncf's progress bars: stdout is the JSON's
        ov_runners, ov_sizes, peer_notes, skipped = openvino_peers(
            fp32_onnx, nncf_feeds, peers, args.threads
        )
    variants.update(ov_runners)
    sizes.update(ov_sizes)
    peer_notes["nncfCalibration"] = {
        "sentences": len(calibration),
        "feeds": len(nncf_feeds),
        "batch": args.nncf_batch,
    }
    try:
        optimum_path, peer_notes["optimum"] = optimum_peer(
            args.optimum_python, peers / "optimum", args.optimum_per_channel
        )
    except RuntimeError as exc:
        skipped["optimumO3Int8"] = str(exc)
    else:
        variants["optimumO3Int8"] = pooled_runner(ort_session(optimum_path, ort_config))
        sizes["optimumO3Int8"] = optimum_path.stat().st_size
    peer_seconds = time.monotonic() - peer_started
    # As packaged: with threadsByBatchSize, one session per thread count.
    variants["baked"] = onnx_runner(package / "model.onnx", runtime)
    sizes["baked"] = (package / "model.onnx").stat().st_size

    by_kind = {kind: cosines(embed(variants, tok, texts)) for kind, texts in unseen.items()}
    on_evaluation = cosines(embed(variants, tok, evaluation))
    quality: dict[str, dict[str, Any]] = {}
    for name in variants:
        every = np.concatenate([by_kind[kind][name] for kind in unseen])
        builtin = summary(on_evaluation[name])
        quality[name] = {
            **summary(every),
            "evaluationCosineMean": builtin["cosineMean"],
            "evaluationCosineMin": builtin["cosineMin"],
            "quality": {kind: summary(by_kind[kind][name]) for kind in unseen},
        }

    load_before = wait_for_quiet(args.quiet_load, args.quiet_wait)
    method = Method(windows=args.windows)
    latency: dict[str, dict[str, float]] = {name: {} for name in variants}
    windows: dict[str, list[float]] = {}
    timing_started = time.monotonic()
    for texts, suffix in [(evaluation, ""), *([(union, "Mixed")] if args.mixed else [])]:
        for size in (1, 32):
            batches = [
                minilm.encode(tok, texts[i : i + size])
                for i in range(0, len(texts) - size + 1, size)
            ]
            calls = {name: rotating(run, batches) for name, run in variants.items()}
            measured = compare(calls, args.runs, "fp32", method)
            for name in variants:
                latency[name][f"b{size}P50Ms{suffix}"] = round(measured.p50(name), 3)
                latency[name][f"speedupB{size}{suffix}"] = round(measured.speedup(name), 3)
            for name in ("baked", "ortInt8"):
                windows[f"{name}SpeedupB{size}{suffix}"] = [
                    round(x, 2) for x in measured.window_speedups(name)
                ]

    result: dict[str, Any] = {
        "benchmark": "bake_minilm",
        "ok": True,
        "threads": args.threads,
        "runs": args.runs,
        "method": {"block": method.block, "settle": method.settle, "windows": method.windows},
        "evaluationSentences": len(evaluation),
        "unseenTexts": {
            "perKind": args.per_kind,
            "seed": args.seed,
            "kinds": list(unseen),
            "tokens": {
                kind: {
                    "min": min(lengths),
                    "median": int(np.median(lengths)),
                    "max": max(lengths),
                }
                for kind, texts in unseen.items()
                for lengths in [[sum(e.attention_mask) for e in tok.encode_batch(texts)]]
            },
        },
        "mixedTexts": len(union),
        "loadAverageBefore": round(load_before, 2),
    }
    for name in variants:
        result[name] = {
            "sizeMB": round(sizes[name] / 1e6, 2),
            **latency[name],
            **quality[name],
        }
    result["skipped"] = skipped
    result["peerNotes"] = peer_notes
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
    result["seconds"] = {
        "peersBuild": round(peer_seconds, 1),
        "timing": round(time.monotonic() - timing_started, 1),
    }
    result["loadAverageAfter"] = round(os.getloadavg()[0], 2)
    result["workdir"] = str(workdir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
