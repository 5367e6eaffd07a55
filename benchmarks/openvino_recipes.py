"""The OpenVINO peers the bake benchmarks build, each by its documented recipe, in one place.

`build` converts the fp32 ONNX export with `openvino.convert_model` and compiles it for CPU with
the default config (on a CPU with AVX-512 BF16 or AMX that means bf16 inference; the notes
record what each compiled model reports), one stream, latency hint, INFERENCE_NUM_THREADS =
threads; optionally the same model at f32 precision; and `nncf.quantize` of it (NNCF's
post-training int8; for a transformer its documented preset, `model_type=TRANSFORMER`),
calibrated on the feeds given, compiled the same way. Optional peer dependencies: a peer whose
package is missing is returned under `skipped`, with why.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPENVINO = "openvino"
OPENVINO_F32 = "openvinoF32"
NNCF_INT8 = "openvinoNncfInt8"


@dataclass
class Built:
    """Compiled models by peer name, their sizes on disk, notes and the peers skipped."""

    compiled: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def build(
    fp32: Path,
    calibration: list[Any],
    folder: Path,
    threads: int,
    *,
    f32: bool = False,
    transformer: bool = False,
) -> Built:
    """The OpenVINO peers of the ONNX model at `fp32`, written to `folder`."""
    built = Built()
    try:
        ov: Any = importlib.import_module("openvino")
    except ImportError as exc:
        names = [OPENVINO, *([OPENVINO_F32] if f32 else []), NNCF_INT8]
        built.skipped = dict.fromkeys(names, f"openvino not installed: {exc}")
        return built
    built.notes["openvinoVersion"] = ov.__version__
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    model = ov.convert_model(str(fp32))
    ov.save_model(model, str(folder / "ov_fp32.xml"), compress_to_fp16=False)
    built.compiled[OPENVINO] = core.compile_model(model, "CPU", config)
    built.sizes[OPENVINO] = size(folder / "ov_fp32.xml")
    if f32:
        precise = {**config, "INFERENCE_PRECISION_HINT": "f32"}
        built.compiled[OPENVINO_F32] = core.compile_model(model, "CPU", precise)
        built.sizes[OPENVINO_F32] = built.sizes[OPENVINO]
    try:
        nncf: Any = importlib.import_module("nncf")
    except ImportError as exc:
        built.skipped[NNCF_INT8] = f"nncf not installed: {exc}"
    else:
        built.notes["nncfVersion"] = nncf.__version__
        preset = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
        quantized = nncf.quantize(
            model, nncf.Dataset(calibration), subset_size=len(calibration), **preset
        )
        ov.save_model(quantized, str(folder / "ov_int8.xml"), compress_to_fp16=False)
        built.compiled[NNCF_INT8] = core.compile_model(quantized, "CPU", config)
        built.sizes[NNCF_INT8] = size(folder / "ov_int8.xml")
    built.notes["inferencePrecision"] = {
        name: program.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        for name, program in built.compiled.items()
    }
    built.notes["inferenceNumThreads"] = {
        name: int(program.get_property("INFERENCE_NUM_THREADS"))
        for name, program in built.compiled.items()
    }
    return built


def size(xml: Path) -> int:
    """Bytes on disk of an OpenVINO IR: the .xml and its .bin."""
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
