"""Activation smoothing: an identity in float that makes dynamic int8 more accurate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from bakeline.agents.data import Dataset
from bakeline.agents.onnx_tools import run_onnx, save
from bakeline.agents.smoothing import smooth


def _linear(tmp_path: Path, seed: int = 0) -> Path:
    """x [n, 64] -> Relu -> MatMul [64, 32]: the shape of an FFN's down projection."""
    weight = np.random.default_rng(seed).standard_normal((64, 32)).astype(np.float32) / 8
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"], name="act"),
            helper.make_node("MatMul", ["h", "w"], ["y"], name="down"),
        ],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return save(model, tmp_path / "ffn.onnx")


def _activations(outliers: bool, seed: int = 1) -> np.ndarray:
    x = np.abs(np.random.default_rng(seed).standard_normal((256, 64))).astype(np.float32)
    if outliers:
        x[:, :2] *= 40  # two channels far above the rest, as after GELU in a transformer
    return x


def _quantized_error(model: Path, x: np.ndarray, reference: np.ndarray, tmp_path: Path) -> float:
    target = tmp_path / f"{model.stem}-int8.onnx"
    quantize_dynamic(model, target, per_channel=True, weight_type=QuantType.QInt8)
    return float(np.abs(run_onnx(target, {"x": x}) - reference).mean())


def test_smoothing_is_an_identity_in_float_and_halves_the_int8_error(tmp_path: Path) -> None:
    source = _linear(tmp_path)
    x = _activations(outliers=True)
    smoothed = smooth(source, Dataset({"x": x[:128]}), alpha=0.7)
    assert smoothed is not None and list(smoothed.layers) == ["down"]
    assert smoothed.layers["down"] > 4  # the outlier ratio that made it worth smoothing
    target = save(smoothed.model, tmp_path / "smoothed.onnx")
    held_out = x[128:]  # not the calibration rows
    reference = run_onnx(source, {"x": held_out})
    np.testing.assert_allclose(run_onnx(target, {"x": held_out}), reference, rtol=1e-4, atol=1e-4)
    plain_error = _quantized_error(source, held_out, reference, tmp_path)
    smoothed_error = _quantized_error(target, held_out, reference, tmp_path)
    assert smoothed_error < 0.5 * plain_error


def test_inputs_without_outlier_channels_are_left_alone(tmp_path: Path) -> None:
    assert smooth(_linear(tmp_path), Dataset({"x": _activations(outliers=False)}), 0.7) is None


def test_a_weight_read_by_two_matmuls_is_smoothed_in_a_private_copy(tmp_path: Path) -> None:
    model = onnx.load(str(_linear(tmp_path)))
    model.graph.node.append(helper.make_node("MatMul", ["x", "w"], ["z"], name="plain"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 32]))
    source = save(model, tmp_path / "shared.onnx")
    x = _activations(outliers=True)
    smoothed = smooth(source, Dataset({"x": x}), alpha=0.7)
    assert smoothed is not None
    target = save(smoothed.model, tmp_path / "shared-smoothed.onnx")
    import onnxruntime as ort

    expected = ort.InferenceSession(str(source)).run(None, {"x": x})
    actual = ort.InferenceSession(str(target)).run(None, {"x": x})
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
