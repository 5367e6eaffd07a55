"""Padding removal: a transformer's per-token layers run on the real tokens only.

A batch of sentences is padded to its longest one; on MiniLM's evaluation batches of 32 a
third of the positions are padding, yet every weight GEMM, layer norm and GELU computes them.
Only attention mixes positions. This rewrite gathers the real tokens of each [batch, sequence,
hidden] tensor into one [tokens, hidden] tensor before the per-token layers (its index is the
attention mask's non-zero positions) and scatters them back where a layer that mixes positions
reads them (attention, pooling, reshapes), with zeros at the padding; where only attention reads
them (Q, K, V), padding positions hold a copy of a real token instead, which saves a copy of the
widest tensor of each layer: a masked attention never weighs padded keys, and the rows of padded
queries are dropped at the next pack. Outputs are unchanged for
a model that masks its padding, which the caller verifies against the reference; the technique
is EffectiveTransformer's and FasterTransformer's "remove padding", done here in the graph so
that any ONNX runtime runs it.

Attention's inputs are restored head-major where the graph cuts them into heads the usual way
(Split, Reshape to [batch, sequence, heads, width], Transpose): one Gather per part reads each
position's head straight from the packed rows, and the context is packed straight from its
heads, so the whole tensor is never copied padded, split or transposed (at batch 32 those
copies took a sixth of the quantized MiniLM's time).

Which nodes run packed is decided by op type and shape: an op that acts on each position alone
(weight MatMul, elementwise ops with per-feature constants, layer norms over the last axis),
whose activation inputs all have the mask's [batch, sequence] leading dimensions. Connected runs
of such nodes without a weight MatMul stay padded: packing them would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bakeline.agents.data import MASK
from bakeline.agents.onnx_tools import topological_order

_PREFIX = "unpad_"

# Ops that compute each position from that position alone; the value says which inputs must be
# constants (weights, biases, scales): None when any may be an activation.
_ELEMENTWISE = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min",
        "Erf", "Tanh", "Relu", "Sigmoid", "Sqrt", "Reciprocal", "Neg", "Abs", "Exp", "Softplus",
        "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "Cast",
    }
)  # fmt: skip
_LAST_AXIS = frozenset(
    {
        "LayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
    }
)


# Ops that move positions around without computing on them, and ops that attend over them.
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Split", "Squeeze", "Unsqueeze"})
_ATTENTION_OPS = frozenset({"MultiHeadAttention", "Attention"})


@dataclass(frozen=True)
class Unpadded:
    model: onnx.ModelProto
    packed_nodes: int
    weight_matmuls: int
    packs: int
    unpacks: int
    head_major: int = 0  # restores and packs done straight from / into attention's heads


def remove_padding(model: onnx.ModelProto, mask_input: str | None = MASK) -> Unpadded | None:
    """A copy of the model with its per-token layers on real tokens only, or None where nothing
    applies (no [batch, sequence] attention mask input: `mask_input`, the input whose role it
    is, as the checkpoint's datasets record it; or no weight MatMul that could run packed). The
    model passed in is left as it was."""
    graph = model.graph
    mask = next((i for i in graph.input if i.name == mask_input), None)
    if mask is None or len(mask.type.tensor_type.shape.dim) != 2:
        return None
    batch, sequence = (d.dim_param for d in mask.type.tensor_type.shape.dim)
    if not batch or not sequence:  # a fixed shape: the exporter's symbolic dims mark the axes
        return None
    consts = _constants(graph)
    shapes = _shapes(model)
    producer = {out: node for node in graph.node for out in node.output}

    def token_shaped(name: str) -> bool:
        shape = shapes.get(name)
        return shape is not None and len(shape) == 3 and shape[:2] == [batch, sequence]

    packed = _packable_nodes(graph.node, consts, token_shaped)
    packed = _with_weight_matmul(packed, graph.node, producer)
    if not packed:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return _rewrite(copy, packed, _constants(copy.graph), (batch, sequence), mask.name)


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant nodes' values, by name."""
    consts = {init.name: init for init in graph.initializer}
    consts.update(
        {
            n.output[0]: n.attribute[0].t
            for n in graph.node
            if n.op_type == "Constant" and n.attribute
        }
    )
    return consts


def _shapes(model: onnx.ModelProto) -> dict[str, list[str | int | None]]:
    """Tensor shapes as recorded in the graph (the exporter's symbolic dims), inferred by ONNX
    where missing; unknown dims are None."""
    recorded = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    if len(model.graph.value_info) < len(model.graph.node) // 2:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            recorded += list(inferred.graph.value_info)
        except Exception:  # noqa: S110 - contrib ops ONNX cannot infer: keep what is recorded
            pass
    shapes: dict[str, list[str | int | None]] = {}
    for info in recorded:
        if not info.type.tensor_type.HasField("shape"):
            continue
        shapes.setdefault(
            info.name,
            [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
             for d in info.type.tensor_type.shape.dim],
        )  # fmt: skip
    return shapes


def _packable_nodes(
    nodes: Iterable[onnx.NodeProto],
    consts: dict[str, onnx.TensorProto],
    token_shaped: Callable[[str], bool],
) -> set[str]:
    """Nodes that can run on packed tokens. Their outputs keep their inputs' [batch, sequence]
    leading dims, so they count as token-shaped for the nodes after them."""
    result: set[str] = set()
    produced: set[str] = set()
    for node in nodes:
        if not _token_local(node, consts):
            continue
        activations = [name for name in node.input if name and name not in consts]
        if not activations or not all(n in produced or token_shaped(n) for n in activations):
            continue
        if node.op_type in _ELEMENTWISE and not all(
            _broadcasts_per_feature(consts[n]) for n in node.input if n in consts
        ):
            continue
        result.add(node.name)
        produced.update(out for out in node.output if out)
    return result


def _token_local(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type == "MatMul":
        weight = consts.get(node.input[1])
        return weight is not None and len(weight.dims) == 2
    if node.op_type in _LAST_AXIS:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        return axis in (-1, 2)
    return node.op_type in _ELEMENTWISE


def _broadcasts_per_feature(init: onnx.TensorProto) -> bool:
    """A constant that broadcasts over positions: scalar, [hidden], or leading ones."""
    dims = list(init.dims)
    return len(dims) <= 1 or all(d == 1 for d in dims[:-1])


def _with_weight_matmul(
    packed: set[str],
    nodes: Sequence[onnx.NodeProto],
    producer: dict[str, onnx.NodeProto],
) -> set[str]:
    """Only the connected runs of packable nodes that hold a weight MatMul."""
    parent = {name: name for name in packed}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for node in nodes:
        if node.name not in packed:
            continue
        for name in node.input:
            source = producer.get(name)
            if source is not None and source.name in packed:
                parent[find(source.name)] = find(node.name)
    with_matmul = {
        find(node.name) for node in nodes if node.name in packed and node.op_type == "MatMul"
    }
    return {name for name in packed if find(name) in with_matmul}


def _rewrite(
    model: onnx.ModelProto,
    packed: set[str],
    consts: dict[str, onnx.TensorProto],
    dims: tuple[str, str],
    mask: str,
) -> Unpadded:
    """Packed nodes read and write `unpad_<name>` [tokens, features] tensors; a padded tensor they
    read is packed once at their door; a packed one read outside is restored under its own name,
    so the rest of the graph (and its recorded shapes) stays as it was. Attention's heads are
    restored and packed head-major where the graph splits them the usual way (`_Heads`)."""
    graph = model.graph
    p = _PREFIX
    types = _elem_types(model)
    shapes = _shapes(model)
    outputs_of_packed = {
        out for node in graph.node if node.name in packed for out in node.output if out
    }
    new_nodes: list[onnx.NodeProto] = _index_nodes(mask)
    new_inits = [
        numpy_helper.from_array(np.array(value, dtype=np.int64), p + name)
        for name, value in (
            ("flat", [-1]), ("zero", [0]), ("one", [1]), ("origin", 0), ("pads", [0, 0, 1, 0]),
        )
    ]  # fmt: skip
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {out.name for out in graph.output}
    producer = {out: node for node in graph.node for out in node.output}
    skipped: set[str] = set()  # nodes whose work a head-major restore does
    head_major = 0
    token_info: dict[str, tuple[int, int | str | None]] = {}  # name -> (elem type, features)
    packed_inputs: dict[str, str] = {}
    restored: set[str] = set()
    squeezed: dict[str, str] = {}
    matmuls = 0

    def features(name: str) -> int | str | None:
        shape = shapes.get(name)
        return shape[-1] if shape else None

    def constant(name: str, value: object) -> str:
        if not any(init.name == p + name for init in new_inits):
            new_inits.append(numpy_helper.from_array(np.array(value, dtype=np.int64), p + name))
        return p + name

    def emit(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        if not any(output in n.output for n in new_nodes):
            new_nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def head_rows(heads: int, parts: int, part: int) -> str:
        """[batch, heads, sequence]: for each position and head, its row among the packed
        tensor's rows of one head's width (padding reads token 0's)."""
        inverse = emit("Reshape", [p + "inverse_copy", p + "mask_shape"], p + "inverse_2d")
        column = emit("Unsqueeze", [inverse, p + "one"], p + "inverse_rows")
        first = emit("Mul", [column, constant(f"parts{parts * heads}", parts * heads)],
                     f"{p}head_base{parts * heads}")  # fmt: skip
        offsets = constant(
            f"heads{heads}_part{part}", np.arange(heads).reshape(1, heads, 1) + part * heads
        )
        return emit("Add", [first, offsets], f"{p}head_rows{parts * heads}_{part}")

    def token_rows(heads: int) -> str:
        """[tokens, heads]: for each packed token and head, its row in [batch * heads *
        sequence, head width]: position + batch * (heads - 1) * sequence + head * sequence."""
        position = emit("Unsqueeze", [p + "index", p + "one"], p + "index_column")
        sequence = emit("Gather", [p + "mask_shape", p + "one"], p + "sequence", axis=0)
        batch = emit("Div", [position, sequence], p + "index_batch")
        stride = emit("Mul", [sequence, constant(f"h{heads - 1}", heads - 1)], f"{p}skip{heads}")
        skip = emit("Mul", [batch, stride], f"{p}index_skip{heads}")
        head = emit("Mul", [constant(f"heads{heads}", np.arange(heads).reshape(1, heads)),
                            sequence], f"{p}head_offsets{heads}")  # fmt: skip
        return emit("Add", [emit("Add", [position, skip], f"{p}index_skipped{heads}"), head],
                    f"{p}token_rows{heads}")  # fmt: skip

    def pack(name: str) -> str:
        nonlocal head_major
        if name not in packed_inputs:
            gathered = f"{p}{name}_packed"
            heads = _heads_packed_from(name, producer, shapes, dims)
            if heads is not None:  # [batch, heads, sequence, width] rows straight into tokens
                source, count, width = heads
                rows = emit("Reshape", [source, constant(f"rows{width}", [-1, width])],
                            f"{p}{name}_head_rows")  # fmt: skip
                tokens = emit("Gather", [rows, token_rows(count)], f"{p}{name}_heads", axis=0)
                emit("Reshape", [tokens, constant(f"width{count * width}", [-1, count * width])],
                     gathered)  # fmt: skip
                head_major += 1
            else:
                flat = f"{p}{name}_flat"
                new_nodes.append(helper.make_node("Flatten", [name], [flat], name=flat, axis=2))
                new_nodes.append(
                    helper.make_node(
                        "Gather", [flat, p + "index"], [gathered], name=gathered, axis=0
                    )
                )
            packed_inputs[name] = gathered
            token_info[gathered] = (types.get(name, TensorProto.FLOAT), features(name))
        return packed_inputs[name]

    def restore(name: str) -> None:
        if name in restored:
            return
        restored.add(name)
        nonlocal head_major
        tokens, base = p + name, f"{p}{name}_"
        attention_only = _read_by_attention_only(name, consumers, consts, graph_outputs)
        heads = _heads_split_from(name, consumers, shapes, dims) if attention_only else None
        if heads is not None:
            # Each part's heads gathered straight from the packed rows, under the name of the
            # Transpose that made them: no padded copy, split or transpose of the whole tensor.
            rows = emit("Reshape", [tokens, constant(f"rows{heads.width}", [-1, heads.width])],
                        base + "head_rows")  # fmt: skip
            for part, (transpose, keys) in enumerate(heads.parts):
                index = head_rows(heads.count, len(heads.parts), part)
                if keys:  # [batch, heads, width, sequence]: K, transposed for Q x K
                    gathered = emit("Gather", [rows, index], f"{base}part{part}", axis=0)
                    emit("Transpose", [gathered], transpose.output[0], perm=[0, 1, 3, 2])
                else:
                    emit("Gather", [rows, index], transpose.output[0], axis=0)
            skipped.update(heads.nodes)
            head_major += 1
            return
        if attention_only:
            # Padding rows copy row 0: one Gather, no zero row to pad in first.
            rows, inverse = tokens, p + "inverse_copy"
        else:
            rows, inverse = base + "rows", p + "inverse"
            new_nodes.append(
                helper.make_node("Pad", [tokens, p + "pads"], [rows], name=base + "pad")
            )
        new_nodes.extend(
            [
                helper.make_node(
                    "Gather", [rows, inverse], [base + "flat"], name=base + "scatter", axis=0
                ),
                helper.make_node(
                    "Reshape", [base + "flat", p + "padded_shape"], [name], name=base + "restore"
                ),
            ]
        )

    def per_feature(name: str) -> str:
        """A constant [1, 1, features] broadcasts wrongly onto [tokens, features]: drop its ones."""
        init = consts[name]
        if len(init.dims) <= 1:
            return name
        if name not in squeezed:
            value = numpy_helper.to_array(init)
            squeezed[name] = f"{p}{name}_features"
            new_inits.append(
                numpy_helper.from_array(value.reshape(value.shape[-1:]), squeezed[name])
            )
        return squeezed[name]

    for node in graph.node:
        if node.name in skipped:
            continue
        if node.name not in packed:
            for name in node.input:
                if name in outputs_of_packed:
                    restore(name)
            new_nodes.append(node)
            continue
        inputs = [
            name if not name
            else (per_feature(name) if node.op_type in _ELEMENTWISE else name) if name in consts
            else p + name if name in outputs_of_packed
            else pack(name)
            for name in node.input
        ]  # fmt: skip
        rewritten = helper.make_node(
            node.op_type, inputs, [p + out if out else out for out in node.output],
            name=node.name, domain=node.domain,
        )  # fmt: skip
        # The last axis stays the last once batch and sequence merge into one.
        rewritten.attribute.extend(
            helper.make_attribute("axis", -1) if a.name == "axis" else a for a in node.attribute
        )
        source = next(n for n in node.input if n and n not in consts)
        elem = (
            next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type == "Cast"
            else None
        )
        for out in node.output:
            if out:
                width = features(out) or (
                    consts[node.input[1]].dims[1] if node.op_type == "MatMul" else None
                )
                token_info[p + out] = (
                    elem or types.get(source) or types.get(p + source, TensorProto.FLOAT),
                    width,
                )
                types[p + out] = token_info[p + out][0]
        matmuls += node.op_type == "MatMul"
        new_nodes.append(rewritten)
    for out in graph.output:
        if out.name in outputs_of_packed:
            restore(out.name)
    new_nodes = _without_dead_nodes(new_nodes, graph_outputs)
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(topological_order(new_nodes, graph))
    produced = {out for node in graph.node for out in node.output}
    live = [info for info in graph.value_info if info.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(live)
    # Recorded types let ONNX Runtime's quantizer read the packed tensors it cannot infer
    # through contrib ops.
    graph.value_info.extend(
        helper.make_tensor_value_info(name, elem, ["unpad_tokens", width])
        for name, (elem, width) in token_info.items()
    )
    return Unpadded(model, len(packed), matmuls, len(packed_inputs), len(restored), head_major)


@dataclass(frozen=True)
class _Heads:
    """A [batch, sequence, parts * count * width] tensor split into attention's heads: each part
    reshaped to [batch, sequence, count, width] and transposed to [batch, count, sequence, width]
    (`keys` False) or [batch, count, width, sequence] (True)."""

    parts: list[tuple[onnx.NodeProto, bool]]  # each part's Transpose, and whether it is keys
    count: int
    width: int
    nodes: set[str]  # the split, reshapes and transposes


def _heads_split_from(
    name: str,
    consumers: dict[str, list[onnx.NodeProto]],
    shapes: dict[str, list[str | int | None]],
    dims: tuple[str, str],
) -> _Heads | None:
    """How `name` is cut into heads, if it is only that: read by one Split on the last axis (or
    one Reshape), each part by one Reshape to [batch, sequence, heads, width] and that by one
    Transpose to heads-major."""
    readers = consumers.get(name, [])
    if len(readers) != 1:
        return None
    (first,) = readers
    split: onnx.NodeProto | None = None
    if first.op_type == "Split":
        axis = next((a.i for a in first.attribute if a.name == "axis"), 0)
        if axis not in (-1, 2):
            return None
        split, pieces = first, list(first.output)
    elif first.op_type == "Reshape":
        pieces = [name]
    else:
        return None
    parts: list[tuple[onnx.NodeProto, bool]] = []
    nodes = {split.name} if split is not None else set()
    heads: set[tuple[int, int]] = set()
    for piece in pieces:
        (reshape, *others) = consumers.get(piece, [None])
        if others or reshape is None or reshape.op_type != "Reshape":
            return None
        shape = shapes.get(reshape.output[0])
        transposes = consumers.get(reshape.output[0], [])
        if shape is None or len(shape) != 4 or tuple(shape[:2]) != dims or len(transposes) != 1:
            return None
        count, width = shape[2], shape[3]
        (transpose,) = transposes
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if (
            not isinstance(count, int)
            or not isinstance(width, int)
            or transpose.op_type != ("Transpose")
            or perm not in ([0, 2, 1, 3], [0, 2, 3, 1])
        ):
            return None
        heads.add((count, width))
        parts.append((transpose, perm == [0, 2, 3, 1]))
        nodes.update({reshape.name, transpose.name})
    if len(heads) != 1:
        return None
    ((count, width),) = heads
    total = shapes.get(name) or shapes.get(pieces[0])
    if split is None and (total is None or total[-1] != count * width):
        return None
    if split is not None and any((shapes.get(x) or [None])[-1] != count * width for x in pieces):
        return None
    return _Heads(parts, count, width, nodes)


def _heads_packed_from(
    name: str,
    producer: dict[str, onnx.NodeProto],
    shapes: dict[str, list[str | int | None]],
    dims: tuple[str, str],
) -> tuple[str, int, int] | None:
    """Where `name` [batch, sequence, heads * width] is attention's heads merged back (a Reshape
    of a [0, 2, 1, 3] Transpose of [batch, heads, sequence, width]): that tensor, heads, width."""
    reshape = producer.get(name)
    transpose = producer.get(reshape.input[0]) if reshape and reshape.op_type == "Reshape" else None
    if transpose is None or transpose.op_type != "Transpose":
        return None
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
    heads = shapes.get(transpose.input[0])
    merged = shapes.get(name)
    if perm != [0, 2, 1, 3] or heads is None or merged is None or len(heads) != 4:
        return None
    count, width = heads[1], heads[3]
    if (heads[0], heads[2]) != dims or not isinstance(count, int) or not isinstance(width, int):
        return None
    if merged[-1] != count * width:
        return None
    return transpose.input[0], count, width


def _without_dead_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes some output depends on (a head-major restore or pack leaves the old split,
    transposes and index nodes unread)."""
    while True:
        read = outputs | {name for node in nodes for name in node.input}
        live = [node for node in nodes if any(out in read for out in node.output if out)]
        if len(live) == len(nodes):
            return nodes
        nodes = live


def _read_by_attention_only(
    name: str,
    consumers: dict[str, list[onnx.NodeProto]],
    consts: dict[str, onnx.TensorProto],
    outputs: set[str],
) -> bool:
    """Whether every path from `name`, through reshapes, transposes and splits, ends in an
    activation x activation MatMul or an attention op: there padded positions are keys the mask
    hides or queries whose rows the next pack drops, so their values never count, zero or not.
    Anything else (a reduction over positions, a graph output) needs zeros at the padding."""
    readers = consumers.get(name, [])
    if not readers or name in outputs:
        return False
    for node in readers:
        if node.op_type in _ATTENTION_OPS or node.op_type == "Shape":  # Shape reads no values
            continue
        if node.op_type == "MatMul" and not any(i in consts for i in node.input):
            continue
        if (
            node.op_type in _LAYOUT_OPS
            and node.input[0] == name
            and all(
                _read_by_attention_only(out, consumers, consts, outputs)
                for out in node.output
                if out
            )
        ):
            continue
        return False
    return True


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    infos = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    types = {i.name: i.type.tensor_type.elem_type for i in infos if i.type.HasField("tensor_type")}
    types.update({init.name: init.data_type for init in model.graph.initializer})
    return types


def _index_nodes(mask: str) -> list[onnx.NodeProto]:
    """`index`: the flat positions of real tokens, and the first position whatever the mask says
    (the packed tensor always has a row 0); `inverse`: for each flat position, its row in the
    packed tensor padded with one zero row, which padding positions read; `inverse_copy`: the
    same with padding reading row 0 instead; `padded_shape`: [batch, sequence, -1]."""
    steps: list[tuple[str, list[str], str, dict[str, int]]] = [
        ("Shape", [mask], "mask_shape", {}),
        ("Concat", ["mask_shape", "flat"], "padded_shape", {"axis": 0}),
        ("Reshape", [mask, "flat"], "mask_flat", {}),
        ("Cast", ["mask_flat"], "masked", {"to": TensorProto.BOOL}),
        ("Cast", ["masked"], "masked_i64", {"to": TensorProto.INT64}),
        ("ScatterElements", ["masked_i64", "zero", "one"], "real_i64", {"axis": 0}),
        ("Cast", ["real_i64"], "real", {"to": TensorProto.BOOL}),
        ("NonZero", ["real"], "nonzero", {}),
        ("Reshape", ["nonzero", "flat"], "index", {}),
        ("Shape", ["index"], "count", {}),
        ("CumSum", ["real_i64", "zero"], "ends", {}),
        ("Sub", ["ends", "one"], "rank", {}),
        ("Where", ["real", "rank", "count"], "inverse", {}),
        ("Where", ["real", "rank", "origin"], "inverse_copy", {}),
    ]
    nodes = []
    for op, inputs, output, attributes in steps:
        node = helper.make_node(
            op,
            [name if name == mask else _PREFIX + name for name in inputs],
            [_PREFIX + output],
            name=_PREFIX + output,
        )
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attributes.items())
        nodes.append(node)
    return nodes
