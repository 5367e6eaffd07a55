"""Weight shrinking by ONNX graph surgery: int8 embedding tables, fp16 storage of float weights.

Embeddings: a Gather over a float table [V, D] becomes a Gather over an int8 table with one
symmetric scale per row, dequantized after the lookup (Cast + Mul by the gathered row scale).
Per-row scales keep each token's vector accurate to 1/254 of its own range, which per-tensor
scales would not (embedding rows differ in norm).
Float weights that quantization left (sensitive layers kept in float) are stored as fp16 and cast
back to fp32 when the session loads (ONNX Runtime folds the Cast): half the bytes on disk, the
same fp32 arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass
class ShrinkReport:
    embeddings: list[str] = field(default_factory=list)
    fp16_weights: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def quantize_row(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: table ~= q * scale, scale of shape [V, 1]."""
    scale = np.abs(table).max(axis=1, keepdims=True) / 127.0
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    q = np.clip(np.rint(table / scale), -127, 127).astype(np.int8)
    return q, scale


def _axis(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 0)


def shrink(
    model: onnx.ModelProto, *, embeddings: bool, fp16_weights: bool, min_elements: int
) -> tuple[onnx.ModelProto, ShrinkReport]:
    report = ShrinkReport()
    inits = {init.name: init for init in model.graph.initializer}
    users = _consumers(model)
    report.bytes_before = sum(numpy_helper.to_array(i).nbytes for i in inits.values())
    new_nodes: list[onnx.NodeProto] = []
    prologue: list[onnx.NodeProto] = []
    removed: set[str] = set()
    added: list[onnx.TensorProto] = []

    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if (
            embeddings
            and table is not None
            and table.data_type == TensorProto.FLOAT
            and len(table.dims) == 2
            and int(np.prod(table.dims)) >= min_elements
            and _axis(node) == 0
            and all(user.op_type == "Gather" for user in users[table.name])
        ):
            q, scale = quantize_row(numpy_helper.to_array(table))
            base = table.name
            if base not in removed:
                added += [numpy_helper.from_array(q, base + "_int8"),
                          numpy_helper.from_array(scale, base + "_scale")]
                removed.add(base)
                report.embeddings.append(f"{base}[{q.shape[0]}x{q.shape[1]}]")
            out = node.output[0]
            new_nodes += [
                helper.make_node("Gather", [base + "_int8", node.input[1]], [out + "_q"],
                                 name=node.name + "_q", axis=0),
                helper.make_node("Gather", [base + "_scale", node.input[1]], [out + "_s"],
                                 name=node.name + "_s", axis=0),
                helper.make_node("Cast", [out + "_q"], [out + "_f"], name=node.name + "_f",
                                 to=TensorProto.FLOAT),
                helper.make_node("Mul", [out + "_f", out + "_s"], [out], name=node.name + "_deq"),
            ]
            continue
        new_nodes.append(node)

    if fp16_weights:
        for name, init in inits.items():
            if (
                name in removed
                or init.data_type != TensorProto.FLOAT
                or int(np.prod(init.dims)) < min_elements
                or not all(u.op_type in ("MatMul", "Gemm") for u in users.get(name, []))
            ):
                continue
            half = numpy_helper.to_array(init).astype(np.float16)
            added.append(numpy_helper.from_array(half, name + "_fp16"))
            removed.add(name)
            prologue.append(helper.make_node("Cast", [name + "_fp16"], [name],
                                             name=name + "_to_fp32", to=TensorProto.FLOAT))
            report.fp16_weights.append(f"{name}[{'x'.join(map(str, init.dims))}]")

    kept = [init for init in model.graph.initializer if init.name not in removed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    del model.graph.node[:]
    model.graph.node.extend(prologue + new_nodes)
    report.bytes_after = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    return model, report
