"""An LSTM is quantized where ONNX Runtime can (DynamicQuantizeLSTM), and whatever stays float
is found in the artifact itself, so the precision label can name it (issue 25)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from bakeline.agents.onnx_tools import export_onnx
from bakeline.agents.quantize import float_layers, fold_recurrent_weights, quantize


class _LstmClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embed(input_ids))
        result: torch.Tensor = self.head(hidden[-1])
        return result


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_an_exported_lstm_is_folded_then_quantized_and_nothing_float_is_left(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    module = _LstmClassifier().eval()
    example = {"input_ids": np.random.default_rng(1).integers(1, 100, (2, 12)).astype(np.int64)}
    exported = tmp_path / "lstm.onnx"
    # As the pipeline exports it: torch.export, unoptimised, a dynamic batch.
    export_onnx(module, example, ["input_ids"], ["logits"], {"input_ids": {0: "batch"}}, exported)
    # torch reorders the gates with Slice/Concat: the weights are computed, not initializers.
    assert [op for _, op in float_layers(onnx.load(str(exported)))] == ["Gemm"]
    loaded = onnx.load(str(exported))
    model = fold_recurrent_weights(loaded)
    assert model is not loaded  # folded
    assert {op for _, op in float_layers(model)} == {"LSTM", "Gemm"}
    assert fold_recurrent_weights(model) is model  # nothing to fold
    folded = tmp_path / "folded.onnx"
    onnx.save(model, str(folded))

    target = quantize(folded, tmp_path / "int8.onnx", mode="dynamic", per_channel=True, exclude=[])
    assert "DynamicQuantizeLSTM" in _ops(target) and "LSTM" not in _ops(target)
    assert float_layers(onnx.load(str(target))) == []
    assert target.stat().st_size < 0.6 * folded.stat().st_size

    feeds = {"input_ids": np.random.default_rng(0).integers(1, 100, (16, 12)).astype(np.int64)}
    want = ort.InferenceSession(str(exported)).run(None, feeds)[0]
    got = ort.InferenceSession(str(target)).run(None, feeds)[0]
    cosine = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.99, cosine
