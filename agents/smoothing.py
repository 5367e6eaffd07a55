"""Activation smoothing before int8 (SmoothQuant, Xiao et al. 2023), for dynamic quantization.

Dynamic int8 quantizes a MatMul's activations with one scale per tensor, set by its largest
value. Transformer activations have a few outlier channels (MiniLM's FFN input after GELU: a
channel 16x the median's maximum), so every other channel gets a handful of int8 levels. Each
input channel j of such a MatMul is divided by s_j and the weight's row j multiplied by it, an
identity in float: X W = (X diag(1/s)) (diag(s) W), with s_j = max|X_j|^alpha / max|W_j|^(1-alpha)
from calibration activations, which moves part of the outliers' range into the weights, whose
scales are per output channel. The division is one Mul node before the MatMul (its input here
comes from a nonlinearity, into which no scale folds), elementwise and cheap next to the GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bakeline.agents.data import Dataset
from bakeline.agents.onnx_tools import drop_unused_initializers, topological_order
from bakeline.agents.runtimes import RuntimeConfig, ort_session

# A channel this many times the median channel's maximum makes a tensor worth smoothing.
OUTLIER_RATIO = 4.0


@dataclass(frozen=True)
class Smoothed:
    model: onnx.ModelProto
    layers: dict[str, float]  # MatMul node -> its input's outlier ratio (max over median)


def activation_ranges(
    model_path: Path, tensors: list[str], data: Dataset, batch_size: int = 32
) -> dict[str, np.ndarray]:
    """Per-channel max |value| of each named tensor (last axis = channels) over the data."""
    model = onnx.load(str(model_path))
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(
        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        for name in tensors
        if name not in known
    )
    probe = model_path.with_name(model_path.stem + "-ranges.onnx")
    onnx.save_model(model, str(probe))
    session = ort_session(probe, RuntimeConfig(graph_optimization_level="basic"))
    names = {i.name for i in session.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for feeds in data.batches(batch_size):
        values = session.run(tensors, {k: v for k, v in feeds.items() if k in names})
        for name, value in zip(tensors, values, strict=True):
            channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            ranges[name] = np.maximum(ranges.get(name, channel_max), channel_max)
    probe.unlink()
    return ranges


def smooth(model_path: Path, data: Dataset, alpha: float) -> Smoothed | None:
    """The model with the inputs of its outlier-heavy weight MatMuls smoothed, or None where no
    MatMul's input has outlier channels on the data."""
    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    matmuls = [
        node
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in inits
        and len(inits[node.input[1]].dims) == 2
        and inits[node.input[1]].data_type == onnx.TensorProto.FLOAT
    ]
    if not matmuls:
        return None
    ranges = activation_ranges(model_path, sorted({n.input[0] for n in matmuls}), data)
    layers: dict[str, float] = {}
    for node in matmuls:
        activation = np.maximum(ranges[node.input[0]], 1e-5)
        ratio = float(activation.max() / np.median(activation))
        if ratio < OUTLIER_RATIO:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        scale = activation**alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (1 - alpha)
        scale = scale.astype(np.float32)
        # A weight shared by another reader must not change under it: smooth a private copy.
        scaled = f"{node.input[1]}_smoothed_{node.name}"
        graph.initializer.append(numpy_helper.from_array(weight * scale[:, None], scaled))
        divisor = f"{node.name}_smoothing"
        graph.initializer.append(numpy_helper.from_array(1.0 / scale, divisor))
        smoothed = f"{node.input[0]}_smoothed_{node.name}"
        graph.node.append(
            helper.make_node("Mul", [node.input[0], divisor], [smoothed], name=divisor)
        )
        node.input[0], node.input[1] = smoothed, scaled
        layers[node.name] = round(ratio, 2)
    if not layers:
        return None
    ordered = topological_order(list(graph.node), graph)
    del graph.node[:]
    graph.node.extend(ordered)
    drop_unused_initializers(graph)
    return Smoothed(model, layers)
