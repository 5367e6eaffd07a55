"""ONNX helpers: export from torch, graph statistics, ONNX Runtime offline optimisation."""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from bakeline.agents.data import Feeds
from bakeline.agents.logs import adopt_library_loggers
from bakeline.agents.runtimes import OptLevel, RuntimeConfig, ort_session

# Ops that only matter while training: an inference graph should hold none of them.
TRAINING_OPS = frozenset({"Dropout", "BatchNormalization", "Identity"})


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: exclusions and reports refer to nodes by name."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return model


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
    import torch.onnx  # its loggers exist only once imported

    adopt_library_loggers()
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
                dynamic_shapes=None
                if isinstance(module, torch.export.ExportedProgram)
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
        shapes[name] = {
            axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in axes.items()
        }
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


def fuse_sibling_matmuls(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fuse MatMuls that read the same input with constant weights (attention's Q, K and V) into
    one MatMul over the concatenated weights (+ one bias Add), then Split: one bigger GEMM and,
    once quantized, one activation quantization instead of three. Returns (model, groups fused).
    """
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)

    def weight(node: onnx.NodeProto) -> np.ndarray | None:
        init = inits.get(node.input[1]) if len(node.input) == 2 else None
        if init is None or len(init.dims) != 2 or init.data_type != onnx.TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(init)

    def bias_add(node: onnx.NodeProto, width: int) -> tuple[onnx.NodeProto, np.ndarray] | None:
        consumers = users.get(node.output[0], [])
        if len(consumers) != 1 or consumers[0].op_type != "Add":
            return None
        add = consumers[0]
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        init = inits.get(other)
        if init is None or list(init.dims) != [width]:
            return None
        return add, numpy_helper.to_array(init)

    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and weight(node) is not None:
            groups.setdefault(node.input[0], []).append(node)
    replaced: dict[str, list[onnx.NodeProto]] = {}  # first node's name -> replacement nodes
    dropped: set[str] = set()
    fused = 0
    for source, members in groups.items():
        weights = [weight(m) for m in members]
        if len(members) < 2 or len({w.shape[0] for w in weights if w is not None}) != 1:
            continue
        widths = [w.shape[1] for w in weights if w is not None]
        biases = [bias_add(m, w) for m, w in zip(members, widths, strict=True)]
        with_bias = all(b is not None for b in biases)
        tag = f"fused_{fused}"
        stacked = np.concatenate([w for w in weights if w is not None], axis=1)
        graph.initializer.extend(
            [
                numpy_helper.from_array(stacked, tag + "_weight"),
                numpy_helper.from_array(np.array(widths, dtype=np.int64), tag + "_split"),
            ]
        )
        nodes = [
            helper.make_node(
                "MatMul", [source, tag + "_weight"], [tag + "_mm"], name=tag + "_MatMul"
            )
        ]
        split_input = tag + "_mm"
        if with_bias:
            bias = np.concatenate([b[1] for b in biases if b is not None])
            graph.initializer.append(numpy_helper.from_array(bias, tag + "_bias"))
            nodes.append(
                helper.make_node(
                    "Add", [tag + "_mm", tag + "_bias"], [tag + "_add"], name=tag + "_Add"
                )
            )
            split_input = tag + "_add"
            outputs = [b[0].output[0] for b in biases if b is not None]
            dropped.update(b[0].name for b in biases if b is not None)
        else:
            outputs = [m.output[0] for m in members]
        nodes.append(
            helper.make_node(
                "Split", [split_input, tag + "_split"], outputs, name=tag + "_Split", axis=-1
            )
        )
        replaced[members[0].name] = nodes
        dropped.update(m.name for m in members)
        fused += 1
    if not fused:
        return model, 0
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name in replaced:
            new_nodes.extend(replaced[node.name])
        elif node.name not in dropped:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    drop_unused_initializers(graph)
    return model, fused


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node reads any more (weights a rewrite replaced)."""
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def ort_transformer_fusions(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """ONNX Runtime's transformer fusions, as onnxscript writes them for torch.export graphs:
    attention -> MultiHeadAttention, residual Add + LayerNorm -> SkipLayerNormalization,
    bias + GELU -> BiasGelu. Returns the fused model and the count of each fusion applied.

    ONNX Runtime's own session-time fusions never find attention in an exported graph; these
    rewrite rules do, and the fused kernels skip the attention's reshapes and transposes.
    """
    import onnx_ir as ir
    import onnxscript.rewriter.ort_fusions as fusions

    fused, counts = fusions.optimize_for_ort(ir.from_proto(model))
    return ir.to_proto(fused), {name: count for name, count in counts.items() if count}


def topological_order(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes ordered so that each comes after the producers of its inputs (a rewrite that
    appends nodes where first needed may leave them after their readers). ONNX requires it."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        remaining = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            raise ValueError(f"a rewrite left node {remaining[0].name} without its inputs")
        pending = remaining
    return ordered
