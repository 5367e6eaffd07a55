"""Weight shrinking by ONNX graph surgery: int8 embedding tables, fp16 storage of float weights.

Embeddings: a Gather over a float table [V, D] becomes a Gather over an int8 table with one
symmetric scale per row, dequantized after the lookup (Cast + Mul by the gathered row scale).
Per-row scales keep each token's vector accurate to 1/254 of its own range, which per-tensor
scales would not (embedding rows differ in norm).
With `bits=4` the table is stored as packed 4-bit codes with an asymmetric scale and zero point
per block of `block_size` values of a row, looked up by ONNX Runtime's GatherBlockQuantized
(com.microsoft) kernel: 5 MB instead of 11.7 MB for MiniLM's vocabulary, for about 0.001 of
cosine.
Every row of a table is checked data-free before its precision is kept: calibration text reaches
a few hundred of MiniLM's 30522 rows, so a quality gate on data cannot vouch for the rest. A
table whose worst row comes back further than `max_row_error` (relative L2) from itself at 4 bits
is stored at 8; failing at 8 too, it stays float.
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
    embeddings: list[str] = field(default_factory=list)  # "name[VxD]:int4"
    # Per table: the worst row's relative L2 error at the precision kept (at the one tried last
    # where the table stayed float).
    row_errors: dict[str, float] = field(default_factory=dict)
    # Tables stored above the asked precision (or left float) because a row failed the check.
    raised: list[str] = field(default_factory=list)
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


def quantize_blocks_int4(
    table: np.ndarray, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric 4-bit codes per block of a row, packed two per byte (low nibble first).

    Returns (packed codes [V, D/2] uint8, scales [V, D/block] float32, packed zero points
    [V, D/block/2] uint8): value = (code - zero) * scale.
    """
    rows, width = table.shape
    blocks = table.reshape(rows, width // block, block)
    low, high = blocks.min(axis=-1), blocks.max(axis=-1)
    scale = ((high - low) / 15.0).astype(np.float32)
    scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
    zero = np.clip(np.rint(-low / scale), 0, 15)
    codes = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    codes = codes.reshape(rows, width)

    def pack(values: np.ndarray) -> np.ndarray:
        return np.asarray(values[:, 0::2] | (values[:, 1::2] << 4), dtype=np.uint8)

    return pack(codes), scale, pack(zero.astype(np.uint8))


def dequantize_blocks_int4(
    codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, block: int
) -> np.ndarray:
    """The float table that `quantize_blocks_int4`'s output stands for."""

    def unpack(packed: np.ndarray) -> np.ndarray:
        values = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.float32)
        values[:, 0::2], values[:, 1::2] = packed & 15, packed >> 4
        return values

    rows = codes.shape[0]
    values = unpack(codes).reshape(rows, -1, block)
    table: np.ndarray = ((values - unpack(zero)[..., None]) * scale[..., None]).reshape(rows, -1)
    return table


def row_errors(table: np.ndarray, approximation: np.ndarray) -> np.ndarray:
    """Each row's relative L2 error (0 for an all-zero row reproduced exactly)."""
    norms = np.linalg.norm(table, axis=1)
    errors = np.linalg.norm(approximation - table, axis=1)
    relative: np.ndarray = np.where(norms > 0, errors / np.where(norms > 0, norms, 1.0), errors)
    return relative


def _table_bits(
    table: np.ndarray, asked: int, block: int, bound: float
) -> tuple[int | None, float, tuple[np.ndarray, ...], bool]:
    """The fewest bits, from `asked` up, at which every row holds within `bound` (None: float),
    the worst row's error there (at 8 bits where none held), the quantized arrays, and whether
    a row failed at fewer bits (rather than the 4-bit blocks not fitting the table's width)."""
    worst, failed = 0.0, False
    for bits in (4, 8) if asked == 4 else (8,):
        quantized: tuple[np.ndarray, ...]
        if bits == 4:
            if table.shape[1] % block or (table.shape[1] // block) % 2:
                continue  # GatherBlockQuantized needs whole, paired blocks
            quantized = quantize_blocks_int4(table, block)
            approximation = dequantize_blocks_int4(*quantized, block)
        else:
            quantized = quantize_row(table)
            approximation = quantized[0].astype(np.float32) * quantized[1]
        worst = float(row_errors(table, approximation).max())
        if worst <= bound:
            return bits, worst, quantized, failed
        failed = True
    return None, worst, (), failed


def _axis(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "axis"), 0)


def shrink(
    model: onnx.ModelProto,
    *,
    embedding_bits: int | None,
    fp16_weights: bool,
    min_elements: int,
    block_size: int = 32,
    max_row_error: float = 0.15,
) -> tuple[onnx.ModelProto, ShrinkReport]:
    """Shrink `model` in place; embedding_bits None leaves embeddings, 8 or 4 quantizes them
    (at more bits, or not at all, where a row would come back further than max_row_error)."""
    report = ShrinkReport()
    inits = {init.name: init for init in model.graph.initializer}
    users = _consumers(model)
    report.bytes_before = sum(numpy_helper.to_array(i).nbytes for i in inits.values())
    new_nodes: list[onnx.NodeProto] = []
    prologue: list[onnx.NodeProto] = []
    removed: set[str] = set()
    added: list[onnx.TensorProto] = []
    decided: dict[str, int | None] = {}  # table -> bits kept (None: float)
    quantized: tuple[np.ndarray, ...] = ()

    for node in model.graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if (
            embedding_bits is not None
            and table is not None
            and table.data_type == TensorProto.FLOAT
            and len(table.dims) == 2
            and int(np.prod(table.dims)) >= min_elements
            and _axis(node) == 0
            and all(user.op_type == "Gather" for user in users[table.name])
        ):
            base, out = table.name, node.output[0]
            shape = "x".join(map(str, table.dims))
            if base not in decided:
                bits, worst, quantized, failed = _table_bits(
                    numpy_helper.to_array(table), embedding_bits, block_size, max_row_error
                )
                decided[base] = bits
                report.row_errors[base] = round(worst, 6)
                if failed:
                    report.raised.append(base)
            bits = decided[base]
            if bits is None:
                new_nodes.append(node)
                continue
            if bits == 4:
                if base not in removed:
                    codes, scale, zero = quantized
                    added += [
                        numpy_helper.from_array(codes, base + "_int4"),
                        numpy_helper.from_array(scale, base + "_scale"),
                        numpy_helper.from_array(zero, base + "_zero"),
                    ]
                    removed.add(base)
                    report.embeddings.append(f"{base}[{shape}]:int4")
                new_nodes.append(
                    helper.make_node(
                        "GatherBlockQuantized",
                        [base + "_int4", node.input[1], base + "_scale", base + "_zero"],
                        [out],
                        name=node.name + "_int4",
                        domain="com.microsoft",
                        block_size=block_size,
                        gather_axis=0,
                        quantize_axis=1,
                        bits=4,
                    )
                )
                continue
            if base not in removed:
                q, scale8 = quantized
                added += [
                    numpy_helper.from_array(q, base + "_int8"),
                    numpy_helper.from_array(scale8, base + "_scale"),
                ]
                removed.add(base)
                report.embeddings.append(f"{base}[{shape}]:int8")
            new_nodes += [
                helper.make_node(
                    "Gather",
                    [base + "_int8", node.input[1]],
                    [out + "_q"],
                    name=node.name + "_q",
                    axis=0,
                ),
                helper.make_node(
                    "Gather",
                    [base + "_scale", node.input[1]],
                    [out + "_s"],
                    name=node.name + "_s",
                    axis=0,
                ),
                helper.make_node(
                    "Cast", [out + "_q"], [out + "_f"], name=node.name + "_f", to=TensorProto.FLOAT
                ),
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
            prologue.append(
                helper.make_node(
                    "Cast", [name + "_fp16"], [name], name=name + "_to_fp32", to=TensorProto.FLOAT
                )
            )
            report.fp16_weights.append(f"{name}[{'x'.join(map(str, init.dims))}]")

    kept = [init for init in model.graph.initializer if init.name not in removed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    del model.graph.node[:]
    model.graph.node.extend(prologue + new_nodes)
    if any(n.domain == "com.microsoft" for n in model.graph.node) and not any(
        o.domain == "com.microsoft" for o in model.opset_import
    ):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report.bytes_after = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    return model, report
