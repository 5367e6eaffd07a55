"""ONNX helpers: export from torch, graph statistics, ONNX Runtime offline optimisation."""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from bakeline.agents.data import Feeds
from bakeline.agents.runtimes import OptLevel, RuntimeConfig, ort_session

# Ops that only matter while training: an inference graph should hold none of them.
TRAINING_OPS = frozenset({"Dropout", "BatchNormalization", "Identity"})


def op_histogram(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


def export_onnx(
    module: torch.nn.Module | torch.export.ExportedProgram,
    example: Feeds,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]],
    target: Path,
) -> onnx.ModelProto:
    """Capture the graph with torch.export and translate it to ONNX, unoptimised.

    TorchScript modules go through the (deprecated) TorchScript exporter: torch.export cannot
    trace them.
    """
    args = tuple(torch.from_numpy(example[name]) for name in input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(module, torch.jit.ScriptModule):
            torch.onnx.export(
                module,
                args,
                str(target),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes={k: {a: n for a, n in v.items()} for k, v in dynamic.items()},
                dynamo=False,
            )
        else:
            program = torch.onnx.export(
                module,
                args,
                input_names=input_names,
                output_names=output_names,
                dynamo=True,
                optimize=False,
                verbose=False,
                dynamic_shapes=None if isinstance(module, torch.export.ExportedProgram)
                else _dynamic_shapes(input_names, dynamic),
            )
            assert program is not None
            program.save(str(target), external_data=False)
    return onnx.load(str(target))


def _dynamic_shapes(
    input_names: list[str], dynamic: dict[str, dict[int, str]]
) -> dict[str, dict[int, torch.export.Dim]]:
    dims: dict[str, torch.export.Dim] = {}
    shapes: dict[str, dict[int, torch.export.Dim]] = {}
    for name in input_names:
        axes = dynamic.get(name, {})
        shapes[name] = {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes.items()}
    return shapes


def ort_offline_optimize(source: Path, target: Path, level: OptLevel) -> onnx.ModelProto:
    """Let ONNX Runtime rewrite the graph (constant folding, redundant node removal, fusions)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(target))


def onnxscript_optimize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-code elimination by onnxscript's optimizer."""
    import onnxscript.optimizer

    optimized = onnxscript.optimizer.optimize(model)
    return optimized if isinstance(optimized, onnx.ModelProto) else model


def run_onnx(model_path: Path, feeds: Feeds, config: RuntimeConfig | None = None) -> np.ndarray:
    session = ort_session(model_path, config or RuntimeConfig(graph_optimization_level="basic"))
    names = {i.name for i in session.get_inputs()}
    return np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in names})[0])


def save(model: onnx.ModelProto, target: Path) -> Path:
    onnx.save_model(model, str(target))
    return target


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="bakeline-")
