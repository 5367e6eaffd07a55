"""Attention-mask fill values: which constants are softened, and that softmax sees no change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bakeline.agents.attention_mask import FILL, soften_masks
from bakeline.agents.onnx_tools import run_onnx, save

LOWEST = float(np.finfo(np.float32).min)


def _masked_attention() -> onnx.ModelProto:
    """softmax(scores + (1 - mask) * finfo.min) as Hugging Face exports it, and beside it a
    product by a huge scalar that never reaches a Softmax (not a mask: left alone)."""
    nodes = [
        helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "maskf"], ["inverted"]),
        helper.make_node("Mul", ["inverted", "lowest"], ["bias"]),
        helper.make_node("Unsqueeze", ["bias", "axes"], ["bias4"]),
        helper.make_node("Add", ["scores", "bias4"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["weights"], axis=-1),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [2, 3, 5, 5]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, [2, 5]),
        ],
        [
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, None),
        ],
        [
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(LOWEST, np.float32), "lowest"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(np.array(-1e5, np.float32), "scale"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_fill_on_the_way_to_softmax_is_softened_and_nothing_else(tmp_path: Path) -> None:
    model, count = soften_masks(_masked_attention())
    values = {
        i.name: float(numpy_helper.to_array(i).reshape(-1)[0]) for i in model.graph.initializer
    }
    assert count == 1
    assert values["lowest"] == FILL
    assert values["scale"] == -1e5 and values["one"] == 1.0  # not a mask fill: untouched
    assert soften_masks(model)[1] == 0  # FILL is no longer huge: a second pass changes nothing


def test_softened_masks_give_padded_keys_the_same_zero_weight(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # Scores of the size a transformer's scaled dot products reach, padded keys included.
    feeds: dict[str, np.ndarray] = {
        "scores": (rng.standard_normal((2, 3, 5, 5)) * 8).astype(np.float32),
        "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64),
    }
    before = run_onnx(save(_masked_attention(), tmp_path / "before.onnx"), feeds)
    after = run_onnx(save(soften_masks(_masked_attention())[0], tmp_path / "after.onnx"), feeds)
    real = np.broadcast_to(feeds["mask"][:, None, None, :] == 1, before.shape)
    assert np.array_equal(before[real], after[real])  # the real keys' weights, bit for bit
    # Padded keys: 0 before, and after far below fp32's resolution next to the real weights
    # (the largest of a row is at least 1/5; fp32 resolves about 6e-8 of it).
    assert before[~real].max() == 0.0 and after[~real].max() < 1e-20
