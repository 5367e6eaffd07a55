"""Bake a ResNet-18 with `bakeline run` on a user's images and measure it against the strongest
CPU peers on held-out images of another kind: ONE JSON line.

1. The model: torchvision's ResNet-18 architecture written out here (torchvision is not a
   dependency): a 7x7 stride-2 stem, max-pool, BasicBlock x [2, 2, 2, 2] with batch norm, global
   average pool, a 10-way head; input 3 x SIZE x SIZE (default 64, so a bake fits two cores).
   Weights: random init, then a short AdamW run (80 steps of 32 images) the benchmark does
   itself on SYNTHETIC but structured images (numpy, fixed seeds): oriented colour gratings
   under a Gaussian envelope on a gradient background with noise; the class is the orientation
   (10 classes). Training leaves the batch-norm statistics, activations and logit margins of a
   real CNN, not of random weights (with random weights the logits are near ties, and the bake's
   argmax-agreement gate refuses every int8 variant).
2. The data, three sets that never overlap (separate seeds): the training set; the USER's set
   (the same kind as training: `quality.dataset`, an npz keyed by the input name with
   `__labels__`, the true classes); and the HELD-OUT set of a shifted kind (higher grating
   frequencies, other colours, more noise) that neither the bake nor any peer ever sees.
3. Bakeline: the model exported with torch.export (a dynamic batch), a BakingJob (file:// +
   sha256, `quality.dataset`, `target.batchSizes: [1, 32]`, metric accuracy, threshold the fp32
   model's accuracy on the evaluation rows minus one point), `bakeline run` in a subprocess;
   the package's model.onnx loaded with its runtime.json applied in full (`onnx_runner`:
   what the package's serve.py runs, on the backend runtime.json names (ONNX Runtime or
   OpenVINO), one session per thread count, spinning as runtime.json says; ONNX Runtime's
   peers run with its defaults, workers spinning, as their recipes load them).
4. The peers, each by its documented recipe, from the same fp32 weights, in the same process:
   - fp32: the module in eager torch (the speedups' baseline);
   - ortFp32: `torch.onnx.export` (dynamic batch) under ONNX Runtime;
   - ortInt8Static: `onnxruntime.quantization.quant_pre_process`, then `quantize_static` (QDQ,
     per channel, s8 weights, u8 activations, MinMax) on the same calibration rows Bakeline
     calibrates on (the user's rows 0, 3, 6, ...; `bakeline.agents.datasets.split`);
   - openvino: `openvino.convert_model` of that ONNX file, compiled for CPU with the default
     inference precision (on a CPU with AVX-512 BF16 or AMX, OpenVINO runs bf16 by default;
     the output says which precision it used);
   - openvinoF32: the same with `INFERENCE_PRECISION_HINT: f32`;
   - openvinoNncfInt8: `nncf.quantize` (post-training, default preset) of the OpenVINO model on
     the same calibration rows.
   Every ONNX Runtime session and OpenVINO model runs on --threads threads (OpenVINO: one
   stream, latency hint).
5. On the held-out images: top-1 agreement with fp32 torch, accuracy on the true classes,
   mean and minimum cosine of the logits to fp32 torch; latency p50 at batch 1 and 32 by THE
   timing method (`bakeline.agents.timing.compare`: interleaved blocks, rotating inputs, the
   least disturbed of several windows); speedup over fp32 eager torch; size in MB.

Peers are optional benchmark dependencies, not runtime ones; measured with (pip, Python 3.11):
    openvino==2026.4.1 nncf==3.4.0 (with openvino-telemetry==2025.2.0, psutil==7.2.2,
    ninja==1.13.2, pydot==4.0.1, tabulate==0.10.0), beside the project's torch 2.15.0,
    numpy 2.4.6, onnx 1.23.2, onnxruntime 1.32.0 (nncf 3.4.0 changed none of them).
Without openvino/nncf the script still runs and says which peers it skipped, and why.

Usage: python benchmarks/bake_resnet.py [--threads 2] [--runs 50] [--size 64] [--workdir DIR]
       [--reuse] [--train-steps 80]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bakeline_run
import numpy as np
import openvino_recipes
import torch
import yaml
from torch import nn

from bakeline.agents.data import Dataset
from bakeline.agents.datasets import split
from bakeline.agents.quality import cosine_rows
from bakeline.agents.runtimes import (
    RuntimeConfig,
    onnx_runner,
    ort_runner,
    ort_session,
    session_defaults,
    torch_runner,
)
from bakeline.agents.timing import Method, compare, rotating, wait_for_quiet
from bakeline.checkpoints.manifest import sha256_file

INPUT = "image"
CLASSES = 10
PEERS = ("ortFp32", "ortInt8Static", "openvino", "openvinoF32", "openvinoNncfInt8")
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

# -- the model: torchvision's ResNet-18, written out ---------------------------------------------


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


class ResNet18(nn.Module):
    """torchvision.models.resnet18(num_classes=CLASSES): BasicBlock x [2, 2, 2, 2]."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers: list[nn.Module] = []
        inplanes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            )
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)
        for module in self.modules():  # torchvision's init
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        result: torch.Tensor = self.fc(torch.flatten(self.avgpool(x), 1))
        return result


# -- the data: synthetic structured images -------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What a set of images looks like: grating cycles across the image, the colours' hue range
    (fractions of the colour wheel), the noise's standard deviation."""

    cycles: tuple[float, float]
    hue: tuple[float, float]
    noise: float


KINDS = {
    "user": Kind(cycles=(1.5, 4.0), hue=(0.0, 0.5), noise=0.05),
    "heldOut": Kind(cycles=(4.0, 6.5), hue=(0.5, 1.0), noise=0.12),
}


def _hue(h: np.ndarray) -> np.ndarray:
    """RGB of hues h in [0, 1) at full saturation, shape (n, 3)."""
    k = (h[:, None] * 6 + np.array([5.0, 3.0, 1.0])) % 6
    return np.asarray(1 - np.clip(np.minimum(k, 4 - k), 0, 1))


def images(seed: int, count: int, side: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (n, 3, side, side), normalised as ImageNet's, and their classes: an
    oriented grating (the class is its orientation) in a colour, under a Gaussian envelope at a
    random place, on a gradient background in another colour, with noise."""
    spec = KINDS[kind]
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    theta = labels * np.pi / CLASSES + rng.uniform(-0.04, 0.04, count) * np.pi
    cycles = rng.uniform(*spec.cycles, count)
    phase = rng.uniform(0, 2 * np.pi, count)
    grid = np.linspace(-0.5, 0.5, side, dtype=np.float64)
    xs, ys = np.meshgrid(grid, grid)
    along = np.cos(theta)[:, None, None] * xs + np.sin(theta)[:, None, None] * ys
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles[:, None, None] * along + phase[:, None, None])
    cx, cy = rng.uniform(-0.2, 0.2, (2, count))
    width = rng.uniform(0.2, 0.4, count)
    envelope = np.exp(
        -((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2)
        / (2 * width[:, None, None] ** 2)
    )
    low, high = spec.hue
    fg = _hue(rng.uniform(low, high, count))
    bg = _hue(rng.uniform(low, high, count)) * rng.uniform(0.2, 0.6, (count, 1))
    slope = rng.uniform(-1, 1, (count, 2))
    gradient = 0.5 + 0.5 * (slope[:, 0, None, None] * xs + slope[:, 1, None, None] * ys)
    picture = (
        bg[:, :, None, None] * gradient[:, None]
        + (fg[:, :, None, None] - bg[:, :, None, None] * gradient[:, None])
        * (grating * envelope)[:, None]
    )
    picture = np.clip(picture + rng.normal(0, spec.noise, picture.shape), 0, 1)
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    return ((picture - mean) / std).astype(np.float32), labels.astype(np.int64)


def train(module: nn.Module, steps: int, side: int, seed: int = 0) -> dict[str, float]:
    """A short AdamW run on training images of the user's kind (their own seed)."""
    data, labels = images(seed, steps * 32, side, "user")
    optimiser = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=1e-4)
    module.train()
    losses = []
    for step in range(steps):
        x = torch.from_numpy(data[step * 32 : (step + 1) * 32])
        y = torch.from_numpy(labels[step * 32 : (step + 1) * 32])
        loss = nn.functional.cross_entropy(module(x), y)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        losses.append(float(loss.detach()))
    module.eval()
    tail = losses[-10:] if losses else [float("nan")]
    return {
        "steps": steps,
        "lossFirst": round(losses[0], 3) if losses else 0.0,
        "lossLast10": round(float(np.mean(tail)), 3),
    }


# -- Bakeline -----------------------------------------------------------------------------------


def bake(
    module: nn.Module, user: tuple[np.ndarray, np.ndarray], workdir: Path, reuse: bool
) -> tuple[dict[str, Any], float | None, Path]:
    """Export, write the user's npz and the BakingJob, `bakeline run`; (report, seconds, model).

    The job's accuracy threshold is written out: the fp32 model's accuracy on the evaluation
    rows minus one point (what a job without a threshold is judged by, here stated).
    """
    model = workdir / "resnet18.pt2"
    _, evaluation = split(Dataset({INPUT: user[0]}, user[1]))
    with torch.inference_mode():
        predicted = module(torch.from_numpy(evaluation.inputs[INPUT])).argmax(1).numpy()
    threshold = float(np.floor((predicted == evaluation.labels).mean() * 100 - 1) / 100)
    if not reuse:
        workdir.mkdir(parents=True, exist_ok=True)
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(
            module.eval(), (torch.from_numpy(user[0][:2]),), dynamic_shapes={INPUT: {0: batch}}
        )
        torch.export.save(program, str(model))
        arrays = {INPUT: user[0], "__labels__": user[1]}
        np.savez(workdir / "images.npz", **arrays)  # type: ignore[arg-type]
        job = {
            "apiVersion": "bakeline.io/v1alpha1",
            "kind": "BakingJob",
            "metadata": {"name": "resnet18-images"},
            "spec": {
                "model": {
                    "source": {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}
                },
                "target": {"device": "cpu", "batchSizes": [1, 32]},
                "quality": {
                    "dataset": "images.npz",
                    "metric": "accuracy",
                    "threshold": threshold,
                },
            },
        }
        (workdir / "job.yaml").write_text(yaml.safe_dump(job))
    seconds = None if reuse else bakeline_run.bake(workdir / "job.yaml", workdir / "bake")
    return bakeline_run.report(workdir / "bake"), seconds, model


# -- the peers -----------------------------------------------------------------------------------


def export_onnx(module: nn.Module, example: np.ndarray, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            (torch.from_numpy(example),),
            str(path),
            input_names=[INPUT],
            output_names=["logits"],
            dynamic_axes={INPUT: {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def ort_int8_static(fp32: Path, calibration: np.ndarray, target: Path) -> Path:
    """ONNX Runtime's documented static recipe: pre-process, then QDQ, per channel."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: batch}

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(
        str(prepared),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return target


def openvino_peers(
    fp32: Path, calibration: np.ndarray, folder: Path, threads: int
) -> tuple[dict[str, Runner], dict[str, int], dict[str, Any]]:
    """OpenVINO fp32 (default and f32 precision) and OpenVINO + NNCF int8, or the reason not."""
    feeds = [calibration[i : i + 1] for i in range(len(calibration))]
    built = openvino_recipes.build(fp32, feeds, folder, threads, f32=True)
    notes = {**built.notes, **({"skipped": built.skipped} if built.skipped else {})}
    return {name: _ov_runner(p) for name, p in built.compiled.items()}, built.sizes, notes


def _ov_runner(compiled: Any) -> Runner:
    request = compiled.create_infer_request()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(request.infer({0: feeds[INPUT]})[0])

    return run


# -- the machine ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model, flags = platform.processor(), set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = (
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    )
    return {"cpu": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in wanted}}


def state_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="input side, pixels")
    parser.add_argument("--user-images", type=int, default=384)
    parser.add_argument("--held-out", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=80)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--quiet-load", type=float, default=1.0)
    parser.add_argument("--quiet-wait", type=float, default=300.0)
    parser.add_argument("--reuse", action="store_true", help="measure a bake already in --workdir")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bake-resnet-"))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    started = time.monotonic()
    module = ResNet18()
    if args.reuse:
        module.load_state_dict(torch.load(workdir / "weights.pt", weights_only=True))
        training: dict[str, Any] = json.loads((workdir / "training.json").read_text())
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        training = train(module, args.train_steps, args.size, seed=0)
        training["seconds"] = round(time.monotonic() - started, 1)
        torch.save(module.state_dict(), workdir / "weights.pt")
        (workdir / "training.json").write_text(json.dumps(training))
    module.eval()
    user = images(1, args.user_images, args.size, "user")
    held_out, held_labels = images(2, args.held_out, args.size, "heldOut")
    try:
        report, bake_seconds, pt2 = bake(module, user, workdir, args.reuse)
    except RuntimeError as exc:
        print(json.dumps({"benchmark": "bake_resnet", "ok": False, "error": str(exc)}))
        return 1
    package = workdir / "bake" / "result"
    runtime = RuntimeConfig.model_validate(json.loads((package / "runtime.json").read_text()))

    calibration_set, _ = split(Dataset({INPUT: user[0]}, user[1]))
    calibration = calibration_set.inputs[INPUT]
    peers = workdir / "peers"
    peers.mkdir(exist_ok=True)
    peer_started = time.monotonic()
    fp32_onnx = export_onnx(module, user[0][:2], peers / "fp32.onnx")
    int8_onnx = ort_int8_static(fp32_onnx, calibration, peers / "int8.onnx")
    ort_config = session_defaults(args.threads)  # as the recipes load their models
    variants: dict[str, Runner] = {
        "fp32": torch_runner(module, [INPUT]),
        "ortFp32": ort_runner(ort_session(fp32_onnx, ort_config)),
        "ortInt8Static": ort_runner(ort_session(int8_onnx, ort_config)),
    }
    sizes = {
        "fp32": pt2.stat().st_size,
        "ortFp32": fp32_onnx.stat().st_size,
        "ortInt8Static": int8_onnx.stat().st_size,
    }
    with contextlib.redirect_stdout(sys.stderr):  # nncf's progress bars: stdout is the JSON's
        ov_runners, ov_sizes, ov_notes = openvino_peers(fp32_onnx, calibration, peers, args.threads)
    variants.update(ov_runners)
    sizes.update(ov_sizes)
    peer_seconds = time.monotonic() - peer_started
    # runtime.json applied in full (threads per batch size, optimizers, spinning).
    variants["baked"] = onnx_runner(package / "model.onnx", runtime)
    sizes["baked"] = (package / "model.onnx").stat().st_size

    outputs: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for start in range(0, len(held_out), 32):
        feeds = {INPUT: held_out[start : start + 32]}
        for name, run in variants.items():
            outputs[name].append(run(feeds))
    logits = {name: np.concatenate(parts) for name, parts in outputs.items()}
    reference = logits["fp32"]
    quality: dict[str, dict[str, float]] = {}
    for name, value in logits.items():
        cos = cosine_rows(value, reference)
        quality[name] = {
            "top1Agreement": round(float((value.argmax(1) == reference.argmax(1)).mean()), 4),
            "accuracy": round(float((value.argmax(1) == held_labels).mean()), 4),
            "cosineMean": round(float(cos.mean()), 5),
            "cosineMin": round(float(cos.min()), 5),
        }

    load_before = wait_for_quiet(args.quiet_load, args.quiet_wait)
    method = Method(windows=args.windows)
    latency: dict[str, dict[str, float]] = {name: {} for name in variants}
    windows: dict[str, list[float]] = {}
    timing_started = time.monotonic()
    for size in (1, 32):
        batches = [
            {INPUT: held_out[i : i + size]} for i in range(0, len(held_out) - size + 1, size)
        ]
        calls = {name: rotating(run, batches) for name, run in variants.items()}
        measured = compare(calls, args.runs, "fp32", method)
        for name in variants:
            latency[name][f"b{size}P50Ms"] = round(measured.p50(name), 3)
            if name != "fp32":
                latency[name][f"speedupB{size}"] = round(measured.speedup(name), 3)
        windows[f"bakedSpeedupB{size}"] = [round(x, 2) for x in measured.window_speedups("baked")]

    result: dict[str, Any] = {
        "benchmark": "bake_resnet",
        "ok": True,
        "machine": machine(),
        "threads": args.threads,
        "runs": args.runs,
        "method": {"block": method.block, "settle": method.settle, "windows": method.windows},
        "model": f"ResNet-18 (torchvision architecture, {CLASSES} classes), "
        f"input 3x{args.size}x{args.size}",
        "data": {
            "description": "synthetic structured images (numpy, fixed seeds): oriented colour "
            "gratings under a Gaussian envelope on a gradient background with noise; the class "
            "is the orientation",
            "training": f"seed 0, {args.train_steps * 32} images of the user's kind",
            "user": f"seed 1, {args.user_images} images, {KINDS['user']}; Bakeline calibrates "
            f"on rows 0, 3, 6, ... ({len(calibration)}), as do the peers, and evaluates on the "
            "rest",
            "heldOut": f"seed 2, {args.held_out} images of a shifted kind, {KINDS['heldOut']}",
        },
        "training": training,
        "fp32SizeMB": round(state_bytes(module) / 1e6, 2),
        "loadAverageBefore": round(load_before, 2),
    }
    for name in variants:
        result[name] = {"sizeMB": round(sizes[name] / 1e6, 2), **latency[name], **quality[name]}
    result["windows"] = windows
    result["peerNotes"] = ov_notes
    outcome = report.get("result") or {}
    result["bakelineRun"] = {
        "wallSeconds": None if bake_seconds is None else round(bake_seconds, 1),
        "phase": report.get("phase"),
        "speedups": outcome.get("speedups"),
        "precision": outcome.get("precision"),
        "sizeMB": round(float(outcome.get("sizeBytes") or 0) / 1e6, 2),
        "quality": outcome.get("quality"),
        "stages": [
            {
                "agent": s.get("agent"),
                "seconds": round(float(s.get("durationSeconds") or 0), 1),
                "message": s.get("message"),
            }
            for s in report["stages"]
        ],
    }
    result["runtime"] = runtime.dump()
    result["seconds"] = {
        "total": round(time.monotonic() - started, 1),
        "peersBuild": round(peer_seconds, 1),
        "timing": round(time.monotonic() - timing_started, 1),
    }
    result["loadAverageAfter"] = round(os.getloadavg()[0], 2)
    result["workdir"] = str(workdir)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
