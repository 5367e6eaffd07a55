"""GraphOptimizer, ModelOptimizer, MemoryOptimizer on digits-cnn, and the shrink surgery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bakeline.agents.checkpoint_io import open_input
from bakeline.agents.contract import InvalidInput
from bakeline.agents.onnx_tools import (
    export_onnx,
    fuse_sibling_matmuls,
    onnxscript_optimize,
    op_histogram,
    ort_transformer_fusions,
    run_onnx,
    save,
)
from bakeline.agents.pipeline import Chain, StageRunner
from bakeline.agents.quality import cosine_rows
from bakeline.agents.shrink import shrink


def test_graph_optimizer_folds_batchnorm_and_drops_training_ops(digits_chain: Chain) -> None:
    metrics = digits_chain.results["GraphOptimizer"].outcome.metrics
    assert metrics["nodesAfter"] < metrics["nodesBefore"]
    assert metrics["trainingOpsBefore"] >= 2 and metrics["trainingOpsAfter"] == 0
    assert metrics["maxAbsError"] < 1e-4
    graph = onnx.load(str(digits_chain.dirs["GraphOptimizer"] / "model.onnx"))
    ops = op_histogram(graph)
    assert ops["BatchNormalization"] == 0 and ops["Dropout"] == 0 and ops["Conv"] == 2


def test_sibling_matmuls_fuse_without_changing_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inits = []
    nodes = []
    for name in "qkv":
        inits += [
            numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), f"w{name}"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), f"b{name}"),
        ]
        nodes += [
            helper.make_node("MatMul", ["x", f"w{name}"], [f"m{name}"], name=f"mm{name}"),
            helper.make_node("Add", [f"m{name}", f"b{name}"], [name], name=f"add{name}"),
        ]
    nodes.append(helper.make_node("Concat", ["q", "k", "v"], ["y"], name="cat", axis=-1))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(tmp_path / "a.onnx"))
    fused, groups = fuse_sibling_matmuls(onnx.load(str(tmp_path / "a.onnx")))
    assert groups == 1
    assert op_histogram(fused)["MatMul"] == 1 and op_histogram(fused)["Split"] == 1
    onnx.save(fused, str(tmp_path / "b.onnx"))
    x = {"x": rng.standard_normal((3, 8)).astype(np.float32)}
    np.testing.assert_allclose(
        run_onnx(tmp_path / "a.onnx", x), run_onnx(tmp_path / "b.onnx", x), rtol=1e-5, atol=1e-5
    )


def test_model_optimizer_quantizes_convs_statically_and_holds_accuracy(digits_chain: Chain) -> None:
    result = digits_chain.results["ModelOptimizer"]
    metrics = result.outcome.metrics
    assert metrics["sizeRatio"] < 0.5
    assert metrics["quantizedLayers"] == 4  # 2 convs + 2 linears
    assert metrics["agreement"] >= 0.99
    assert result.manifest.attributes["quantization"]["mode"] == "static"
    ops = op_histogram(onnx.load(str(digits_chain.dirs["ModelOptimizer"] / "model.onnx")))
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0


def test_model_optimizer_scheme_none_passes_the_model_through(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    result = run_stage(
        "ModelOptimizer", tmp_path / "none", digits_chain.dirs["GraphOptimizer"], {"scheme": "none"}
    )
    assert result.outcome.metrics["sizeRatio"] == pytest.approx(1.0, abs=0.01)
    assert result.outcome.metrics["quantizedLayers"] == 0


def test_model_optimizer_keep_float_auto_and_per_tensor(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    auto = run_stage(
        "ModelOptimizer",
        tmp_path / "auto",
        digits_chain.dirs["GraphOptimizer"],
        {
            "keepFloat": "auto",
            "targetCosineMean": 0.99999999,
            "targetCosineMin": 0.9999999,
            "maxFloatLayers": 1,
            "maxFloatShare": 1.0,
        },
    )
    # an unreachable target keeps the most sensitive layer in float, bounded by maxFloatLayers
    assert auto.outcome.metrics["floatLayers"] == 1
    assert auto.manifest.attributes["quantization"]["sensitivity"]
    per_tensor = run_stage(
        "ModelOptimizer",
        tmp_path / "pt",
        digits_chain.dirs["GraphOptimizer"],
        {"scheme": "int8-per-tensor"},
    )
    assert per_tensor.outcome.metrics["quantizedLayers"] == 4


def _int8_weights(path: Path) -> np.ndarray:
    model = onnx.load(str(path))
    arrays = [
        numpy_helper.to_array(i).ravel()
        for i in model.graph.initializer
        if i.data_type == TensorProto.INT8 and len(i.dims) > 1
    ]
    return np.concatenate(arrays).astype(np.int32)


def test_model_optimizer_weight_range_reduced_keeps_weights_in_seven_bits(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    source = digits_chain.dirs["GraphOptimizer"]
    reduced = run_stage("ModelOptimizer", tmp_path / "r", source, {"weightRange": "reduced"})
    full = run_stage("ModelOptimizer", tmp_path / "f", source, {"weightRange": "full"})
    assert reduced.manifest.attributes["quantization"]["weightBits"] == 7
    assert full.manifest.attributes["quantization"]["weightBits"] == 8
    # 7 bits: no u8 x s8 pair can overflow a 16-bit sum (255 * 64 * 2 < 32768)
    assert np.abs(_int8_weights(tmp_path / "r" / "model.onnx")).max() <= 64
    assert np.abs(_int8_weights(tmp_path / "f" / "model.onnx")).max() > 64
    # auto keeps whichever scores better on calibration data: digits' default bake chose one
    chosen = digits_chain.results["ModelOptimizer"].manifest.attributes["quantization"]
    assert chosen["weightBits"] in (7, 8)


def test_model_optimizer_float_share_caps_what_stays_float(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    unreachable = {
        "keepFloat": "auto",
        "targetCosineMean": 0.99999999,
        "targetCosineMin": 0.9999999,
        "maxFloatLayers": 4,
    }
    source = digits_chain.dirs["GraphOptimizer"]
    none = run_stage("ModelOptimizer", tmp_path / "n", source, {**unreachable, "maxFloatShare": 0})
    assert none.outcome.metrics["floatLayers"] == 0
    capped = run_stage(
        "ModelOptimizer", tmp_path / "c", source, {**unreachable, "maxFloatShare": 0.1}
    )
    metrics = capped.outcome.metrics
    assert 0 < metrics["floatWeightShare"] <= 0.1
    # the most sensitive layers that fit: the search passes over the big ones
    assert metrics["floatLayers"] >= 1


def test_model_optimizer_rejects_unknown_keep_float_nodes(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    with pytest.raises(InvalidInput, match="unknown nodes"):
        run_stage(
            "ModelOptimizer",
            tmp_path / "x",
            digits_chain.dirs["GraphOptimizer"],
            {"keepFloat": ["no_such_node"]},
        )


def test_memory_optimizer_measures_peak_memory(digits_chain: Chain) -> None:
    metrics = digits_chain.results["MemoryOptimizer"].outcome.metrics
    assert metrics["peakMemoryMB"] > 0 and metrics["peakMemoryMBBefore"] > 0
    assert metrics["sizeBytes"] <= metrics["sizeBytesBefore"]
    # Against the reference: what quantization cost stays, the memory stage adds next to nothing.
    quantized = digits_chain.results["ModelOptimizer"].outcome.metrics
    assert metrics["cosineMean"] > quantized["cosineMean"] - 1e-3


def _embedding_model(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    table = (rng.standard_normal((1000, 64)) * rng.uniform(0.1, 3, (1000, 1))).astype(np.float32)
    weight = rng.standard_normal((64, 300)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="gather"),
            helper.make_node("MatMul", ["e", "w"], ["y"], name="mm"),
        ],
        "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "emb.onnx"
    onnx.save(
        helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]),
        str(path),
    )
    return path, table


@pytest.mark.parametrize(("bits", "max_ratio", "min_cosine"), [(8, 0.45, 0.9999), (4, 0.3, 0.99)])
def test_shrink_quantizes_embeddings_and_stores_float_weights_as_fp16(
    tmp_path: Path, bits: int, max_ratio: float, min_cosine: float
) -> None:
    path, _ = _embedding_model(tmp_path)
    model, report = shrink(
        onnx.load(str(path)), embedding_bits=bits, fp16_weights=True, min_elements=10_000
    )
    assert len(report.embeddings) == 1 and len(report.fp16_weights) == 1
    assert report.bytes_after < max_ratio * report.bytes_before
    onnx.save(model, str(tmp_path / "small.onnx"))
    ids = {"ids": np.arange(0, 1000, 7, dtype=np.int64)}
    before, after = run_onnx(path, ids), run_onnx(tmp_path / "small.onnx", ids)
    assert cosine_rows(after, before).min() > min_cosine


def test_every_row_is_checked_and_a_table_with_a_failing_row_keeps_more_bits(
    tmp_path: Path,
) -> None:
    # Row 5 is +-1 with one spike per block: at 4 bits its small values all round to zero, an
    # error no calibration text would see unless it used that token.
    path, table = _embedding_model(tmp_path)
    spiky = np.where(np.arange(64) % 2 == 0, 1.0, -1.0).astype(np.float32)
    spiky[[0, 32]] = 30.0
    table[5] = spiky
    model = onnx.load(str(path))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(table, "table"))
    onnx.save(model, str(path))
    shrunk, report = shrink(model, embedding_bits=4, fp16_weights=False, min_elements=10_000)
    assert report.embeddings == ["table[1000x64]:int8"] and report.raised == ["table"]
    assert report.row_errors["table"] < 0.02  # at 8 bits
    onnx.save(shrunk, str(tmp_path / "raised.onnx"))
    ids = {"ids": np.array([5], dtype=np.int64)}
    before, after = run_onnx(path, ids), run_onnx(tmp_path / "raised.onnx", ids)
    assert cosine_rows(after, before).min() > 0.999

    kept, report = shrink(
        onnx.load(str(path)),
        embedding_bits=8,
        fp16_weights=False,
        min_elements=10_000,
        max_row_error=0.001,
    )
    assert report.embeddings == [] and report.raised == ["table"]
    assert [n.op_type for n in kept.graph.node] == ["Gather", "MatMul"]  # left float


def test_a_table_whose_rows_all_hold_keeps_the_asked_bits(tmp_path: Path) -> None:
    path, _ = _embedding_model(tmp_path)
    _, report = shrink(onnx.load(str(path)), embedding_bits=4, fp16_weights=False, min_elements=1)
    assert report.embeddings == ["table[1000x64]:int4"] and report.raised == []
    assert 0.05 < report.row_errors["table"] < 0.15


def test_checkpoint_files_carry_forward(digits_chain: Chain) -> None:
    ckpt = open_input(digits_chain.dirs["MemoryOptimizer"])
    roles = {f.path: f.role for f in ckpt.manifest.files}
    assert roles["original.pt2"] == "original"
    assert roles["model.onnx"] == "model"
    assert {"reference.safetensors", "calibration.safetensors", "evaluation.safetensors"} <= set(
        roles
    )
    assert [e.agent for e in ckpt.manifest.lineage] == [
        "BakingCoordinator",
        "GraphOptimizer",
        "ModelOptimizer",
        "MemoryOptimizer",
    ]


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(16, 16)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(x + torch.nn.functional.gelu(self.dense(x)))
        return out


def test_transformer_fusions_rewrite_for_onnx_runtime_and_keep_the_outputs(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    module = _Residual().eval()
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    plain = onnxscript_optimize(
        export_onnx(module, {"x": x}, ["x"], ["y"], {"x": {0: "b", 1: "s"}}, tmp_path / "p.onnx")
    )
    fused, counts = ort_transformer_fusions(plain)
    ops = {node.op_type for node in fused.graph.node}
    assert counts.get("skip_layer_normalization", 0) >= 1 and "SkipLayerNormalization" in ops
    assert "LayerNormalization" not in ops
    outputs = [
        run_onnx(save(m, tmp_path / f"{i}.onnx"), {"x": x}) for i, m in enumerate([plain, fused])
    ]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
