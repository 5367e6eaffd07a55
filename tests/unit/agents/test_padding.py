"""Padding removal: per-token layers run on the real tokens only, outputs unchanged."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from bakeline.agents.onnx_tools import (
    export_onnx,
    fuse_sibling_matmuls,
    onnxscript_optimize,
    ort_transformer_fusions,
    run_onnx,
    save,
)
from bakeline.agents.padding import remove_padding

HIDDEN, HEADS, VOCAB, MAX_LEN = 32, 4, 50, 16
NAMES = ["input_ids", "attention_mask"]


class _Encoder(torch.nn.Module):
    """A BERT-shaped encoder with mean pooling: one masked self-attention layer and an FFN."""

    def __init__(self, masked: bool = True) -> None:
        super().__init__()
        self.masked = masked
        self.words = torch.nn.Embedding(VOCAB, HIDDEN)
        self.positions = torch.nn.Embedding(MAX_LEN, HIDDEN)
        self.norm0 = torch.nn.LayerNorm(HIDDEN)
        self.q, self.k, self.v = (torch.nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.out = torch.nn.Linear(HIDDEN, HIDDEN)
        self.norm1 = torch.nn.LayerNorm(HIDDEN)
        self.up, self.down = (
            torch.nn.Linear(HIDDEN, 4 * HIDDEN),
            torch.nn.Linear(4 * HIDDEN, HIDDEN),
        )
        self.norm2 = torch.nn.LayerNorm(HIDDEN)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length).unsqueeze(0)
        x = self.norm0(self.words(input_ids) + self.positions(positions))

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, HEADS, HIDDEN // HEADS).transpose(1, 2)

        scores = heads(self.q(x)) @ heads(self.k(x)).transpose(-1, -2) / (HIDDEN // HEADS) ** 0.5
        if self.masked:
            keep = attention_mask[:, None, None, :].to(scores.dtype)
            scores = scores + (1.0 - keep) * torch.finfo(scores.dtype).min
        context = (scores.softmax(-1) @ heads(self.v(x))).transpose(1, 2).reshape(batch, length, -1)
        x = self.norm1(x + self.out(context))
        x = self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        pooled: torch.Tensor = (x * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled


def _feeds(lengths: list[int], width: int | None = None) -> dict[str, np.ndarray]:
    width = width or max(lengths)
    rng = np.random.default_rng(sum(lengths))
    ids = rng.integers(1, VOCAB, (len(lengths), width))
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}


def _exported(
    tmp_path: Path, masked: bool = True, fused: bool = False, siblings: bool = True
) -> onnx.ModelProto:
    torch.manual_seed(0)
    module = _Encoder(masked).eval()
    dynamic = {name: {0: "batch", 1: "sequence"} for name in NAMES}
    model = onnxscript_optimize(
        export_onnx(module, _feeds([3, 5]), NAMES, ["pooled"], dynamic, tmp_path / "raw.onnx")
    )
    if fused:
        model, _ = ort_transformer_fusions(model)
    if siblings:
        model, _ = fuse_sibling_matmuls(model)
    return model


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    return _exported(tmp_path_factory.mktemp("plain"))


def _outputs(model: onnx.ModelProto, path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return run_onnx(save(model, path), feeds)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "transformer-fused"])
def test_removing_padding_keeps_the_outputs_and_packs_every_weight_matmul(
    tmp_path: Path, fused: bool
) -> None:
    model = _exported(tmp_path, fused=fused)
    weight_matmuls = sum(node.op_type == "MatMul" for node in model.graph.node) - 2 * (not fused)
    feeds = _feeds([2, 7, 4, 1])
    expected = _outputs(model, tmp_path / "padded.onnx", feeds)
    unpadded = remove_padding(onnx.load(str(tmp_path / "padded.onnx")))
    assert unpadded is not None
    # All weight MatMuls (fused Q/K/V, output, FFN up and down); attention's two stay padded.
    assert unpadded.weight_matmuls == weight_matmuls == 4
    actual = _outputs(unpadded.model, tmp_path / "unpadded.onnx", feeds)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_packed_layers_compute_the_real_tokens_only(tmp_path: Path, plain: onnx.ModelProto) -> None:
    unpadded = remove_padding(plain)
    assert unpadded is not None
    graph = unpadded.model.graph
    up = next(n for n in graph.node if n.op_type == "MatMul" and n.output[0].startswith("unpad_"))
    graph.output.append(helper.make_tensor_value_info(up.output[0], onnx.TensorProto.FLOAT, None))
    path = save(unpadded.model, tmp_path / "probe.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds([2, 7, 4, 1])
    tokens = session.run([up.output[0]], feeds)[0]
    assert tokens.shape[0] == int(feeds["attention_mask"].sum()) == 14  # of 4 x 7 = 28 positions


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "transformer-fused"])
def test_attention_reads_its_inputs_without_zeroed_padding(tmp_path: Path, fused: bool) -> None:
    """Plain attention's heads are gathered straight from the packed rows and its context packed
    straight from its heads (no split or transpose of the whole tensor); fused attention reads
    Q, K, V restored by one Gather (padding copies a real row). What the pooling sums over
    positions keeps zeros at the padding (a Pad with a zero row first)."""
    unpadded = remove_padding(_exported(tmp_path, fused=fused))
    assert unpadded is not None
    graph = unpadded.model.graph
    ops = Counter(node.op_type for node in graph.node)
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    zeroed = {n.output[0] for n in graph.node if n.op_type == "Pad"}
    restored = [n.output[0] for n in graph.node if n.name.endswith("_restore")]
    by_reader = {tuple(readers[name]): f"unpad_{name}_rows" in zeroed for name in restored}
    if fused:
        assert unpadded.head_major == 0
        assert by_reader == {("Split",): False, ("ReduceSum",): True}
    else:
        assert unpadded.head_major == 2  # Q, K, V restored; the context packed
        assert ops["Split"] == 0 and ops["Transpose"] == 1  # K's, for Q x K
        assert by_reader == {("ReduceSum",): True}


def test_separate_q_k_v_projections_are_each_restored_head_major(tmp_path: Path) -> None:
    model = _exported(tmp_path, siblings=False)
    feeds = _feeds([2, 7, 4, 1])
    unpadded = remove_padding(model)
    assert unpadded is not None and unpadded.head_major == 4  # Q, K and V; the context
    np.testing.assert_allclose(
        _outputs(unpadded.model, tmp_path / "u.onnx", feeds),
        _outputs(model, tmp_path / "p.onnx", feeds),
        atol=1e-5,
    )


@settings(max_examples=25, deadline=None)
@given(
    # Empty sentences too, even a batch of nothing but padding: the packed tensor keeps a row.
    lengths=st.lists(st.integers(min_value=0, max_value=MAX_LEN - 2), min_size=1, max_size=6),
    extra=st.integers(min_value=0, max_value=2),
)
def test_any_padding_pattern_gives_the_padded_graphs_outputs(
    tmp_path_factory: pytest.TempPathFactory, plain: onnx.ModelProto, lengths: list[int], extra: int
) -> None:
    directory = tmp_path_factory.mktemp("pattern")
    unpadded = remove_padding(plain)
    assert unpadded is not None
    feeds = _feeds(lengths, max(*lengths, 1) + extra)
    np.testing.assert_allclose(
        _outputs(unpadded.model, directory / "u.onnx", feeds),
        _outputs(plain, directory / "p.onnx", feeds),
        atol=1e-5,
    )


def test_a_model_that_ignores_its_mask_changes_so_the_stage_must_check(tmp_path: Path) -> None:
    """Other values replace the padding's hidden states: a model whose attention reads padded
    keys gives other outputs, which is why GraphOptimizer keeps the rewrite only within
    maxAbsError."""
    model = _exported(tmp_path, masked=False)
    feeds = _feeds([2, 7])
    unpadded = remove_padding(model)
    assert unpadded is not None
    difference = np.abs(
        _outputs(unpadded.model, tmp_path / "u.onnx", feeds)
        - _outputs(model, tmp_path / "p.onnx", feeds)
    )
    assert difference.max() > 1e-3


def test_the_model_passed_in_is_left_as_it_was(plain: onnx.ModelProto) -> None:
    before = plain.SerializeToString()
    assert remove_padding(plain) is not None
    assert plain.SerializeToString() == before


def test_a_graph_without_an_attention_mask_is_left_alone(tmp_path: Path) -> None:
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "sequence", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph)
    assert remove_padding(model) is None


def test_the_unpadded_graph_quantizes_with_onnx_runtime(
    tmp_path: Path, plain: onnx.ModelProto
) -> None:
    """Types are recorded for the packed tensors: the quantizer cannot infer them through
    contrib ops, and refused such a graph before."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    unpadded = remove_padding(plain)
    assert unpadded is not None
    source = save(unpadded.model, tmp_path / "u.onnx")
    quantize_dynamic(source, tmp_path / "q.onnx", per_channel=True, weight_type=QuantType.QInt8)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    feeds = _feeds([3, 6, 1])
    quantized = run_onnx(tmp_path / "q.onnx", feeds)
    reference = run_onnx(save(plain, tmp_path / "p.onnx"), feeds)
    cosine = (quantized * reference).sum(1) / (
        np.linalg.norm(quantized, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() > 0.98


def test_the_mask_is_found_by_the_name_its_role_was_given(
    tmp_path: Path, plain: onnx.ModelProto
) -> None:
    """A model whose attention mask is another input (`valid` here): the import stage finds it
    by role and hands its name on; the rewrite reads that input, and no other."""
    model = onnx.ModelProto()
    model.CopyFrom(plain)
    for value in model.graph.input:
        if value.name == "attention_mask":
            value.name = "valid"
    for node in model.graph.node:
        node.input[:] = ["valid" if name == "attention_mask" else name for name in node.input]
    assert remove_padding(model) is None  # no input named attention_mask
    unpadded = remove_padding(model, "valid")
    assert unpadded is not None
    feeds = _feeds([2, 6, 3])
    renamed = {"input_ids": feeds["input_ids"], "valid": feeds["attention_mask"]}
    expected = _outputs(model, tmp_path / "padded.onnx", renamed)
    actual = _outputs(unpadded.model, tmp_path / "unpadded.onnx", renamed)
    np.testing.assert_allclose(actual, expected, atol=1e-5)
