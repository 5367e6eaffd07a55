"""Int8 quantization with ONNX Runtime, and the sensitivity analysis that keeps layers in float.

Dynamic quantization (weights int8 offline, activations per call) suits transformer MatMuls;
static QDQ quantization with calibration data suits convolutions (ONNX Runtime's dynamic
ConvInteger is slower than float Conv). Per-channel weight scales are the key quality setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from bakeline.agents.data import Dataset

Mode = Literal["dynamic", "static"]
# LSTM: ONNX Runtime's DynamicQuantizeLSTM (int8 W and R); GRU and RNN have no int8 kernel.
DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM")
STATIC_OPS = ("Conv", "MatMul", "Gemm")  # the layers with weights, each a candidate
# Layers with a weight input (input 1): what a precision label counts.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN"})
_RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})


@dataclass(frozen=True)
class Quantizable:
    """A node whose weight would become int8."""

    node: str
    op: str
    weight: str
    shape: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.node}[{'x'.join(map(str, self.shape))}]"

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape))


def choose_mode(model: onnx.ModelProto, requested: Literal["auto", "dynamic", "static"]) -> Mode:
    if requested != "auto":
        return requested
    return "static" if any(n.op_type == "Conv" for n in model.graph.node) else "dynamic"


def quantizable(model: onnx.ModelProto, mode: Mode) -> list[Quantizable]:
    inits = {init.name: tuple(init.dims) for init in model.graph.initializer}
    ops = STATIC_OPS if mode == "static" else DYNAMIC_OPS
    found = []
    for node in model.graph.node:
        if node.op_type in ops and len(node.input) > 1 and node.input[1] in inits:
            found.append(Quantizable(node.name, node.op_type, node.input[1], inits[node.input[1]]))
    return found


def float_layers(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(node, op) of every weighted layer whose weight is still a float initializer."""
    floats = {i.name for i in model.graph.initializer if i.data_type in _FLOATS}
    return [
        (node.name, node.op_type)
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in floats
    ]


def fold_recurrent_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its constants folded when a recurrent layer's weights are computed
    (torch's exporter reorders LSTM gates with Slice and Concat): the quantizer only takes
    weights that are initializers. onnxscript's optimizer (torch's own exporter's) folds
    them, in standard ops; ONNX Runtime's basic level leaves these. Any other model is
    returned as it is, the same object."""
    inits = {i.name for i in model.graph.initializer}
    computed = [
        node
        for node in model.graph.node
        if node.op_type in _RECURRENT_OPS and any(w not in inits for w in node.input[1:3])
    ]
    if not computed:
        return model
    import onnxscript.optimizer  # heavy: only for the graphs that need it

    folded: onnx.ModelProto = onnxscript.optimizer.optimize(model)
    return folded


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, data: Dataset, names: set[str]) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = (
            {k: v for k, v in feeds.items() if k in names} for feeds in data.batches(16)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(
    source: Path,
    target: Path,
    *,
    mode: Mode,
    per_channel: bool,
    exclude: list[str],
    calibration: Dataset | None = None,
    reduce_range: bool = False,
) -> Path:
    """Write the int8 model of `source` to `target`, keeping the `exclude` nodes in float.

    `reduce_range` quantizes weights to 7 bits: x86 CPUs without VNNI multiply u8 x s8 pairs
    into a saturating 16-bit sum (ONNX Runtime's AVX2 kernels), which 7-bit weights never
    overflow; with VNNI the eighth bit is simply lost.
    """
    if mode == "dynamic":
        extra: dict[str, Any] = {
            "MatMulConstBOnly": True,  # weight MatMuls only, not attention
            # Shape inference cannot type the outputs of fused com.microsoft ops
            # (MultiHeadAttention, SkipLayerNormalization): they are float.
            "DefaultTensorType": onnx.TensorProto.FLOAT,
        }
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(DYNAMIC_OPS),
            nodes_to_exclude=exclude,
            extra_options=extra,
        )
        return target
    if calibration is None:
        raise ValueError("static quantization needs calibration data")
    names = {i.name for i in onnx.load(str(source), load_external_data=False).graph.input}
    quantize_static(
        str(source),
        str(target),
        _Reader(calibration, names),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # Every op ONNX Runtime quantizes, not the weighted layers alone: a Relu after a
        # quantized Conv is then removed and an Add runs in int8, where a float one would sit
        # between a DequantizeLinear and a QuantizeLinear (about 10% of a ResNet's time).
        op_types_to_quantize=None,
        nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return target


def blockwise_int8(source: Path, target: Path, nodes: list[str], block_size: int = 32) -> Path:
    """Requantize float MatMuls `nodes` as MatMulNBits: int8 weights per block of `block_size`
    along K, activations quantized per block at run time (accuracy level 4).

    Much finer than dynamic int8 (one activation scale per tensor), so the layers too sensitive
    for it hold quality here, at int8 size and nearly int8 speed.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8
    )
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_include=nodes,
        algo_config=config,
    )
    quantizer.process()
    onnx.save_model(quantizer.model.model, str(target))
    return target
