"""Models with any output structure (issue 25): every output of a tuple, list or dict is recorded
at import, run through every runtime, compared at every quality check, gated and reported;
token-level outputs on padded data are compared over real positions only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bakeline.agents.checkpoint_io import open_input
from bakeline.agents.contract import GateFailed
from bakeline.agents.data import Dataset
from bakeline.agents.pipeline import StageRunner
from bakeline.agents.quality import Gate, compare, compare_outputs, worst, worst_output
from bakeline.agents.runtimes import (
    flatten_outputs,
    open_outputs,
    run_dataset,
    run_outputs,
    torch_outputs,
    torch_runner,
)
from bakeline.agents.stages.common import score
from bakeline.checkpoints.manifest import sha256_file

VOCAB, WIDTH, HIDDEN = 50, 20, 8


class _DictOutputs(torch.nn.Module):
    """A classifier that also returns its embedding: {"logits": [b, 4], "embedding": [b, 8]}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(16, 8)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = torch.tanh(self.body(x))
        return {"logits": self.head(embedding), "embedding": embedding}


class _FragileSecond(torch.nn.Module):
    """Two outputs: a plain projection (int8 keeps it), and the small difference of two large,
    nearly equal projections (int8's error in each swamps it: its quality is lost)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(64, 32, bias=False)
        self.b = torch.nn.Linear(64, 32, bias=False)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight + 1e-3 * torch.randn_like(self.a.weight))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.a(x) - self.b(x)


class _TokenEncoder(torch.nn.Module):
    """Token-level output [batch, sequence, hidden] that does not zero its padding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.proj = torch.nn.Linear(HIDDEN, HIDDEN)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1).float()
        context = hidden.sum(1, keepdim=True) / attention_mask.sum(1).clamp(min=1).view(-1, 1, 1)
        result: torch.Tensor = self.proj(self.embed(input_ids) + context)
        return result


def _export(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> Path:
    batch = torch.export.Dim("batch")
    names = list(module.forward.__code__.co_varnames[1 : 1 + len(args)])
    if len(args) == 1:
        shapes: dict[str, Any] = {names[0]: {0: batch}}
    else:
        sequence = torch.export.Dim("sequence", max=64)
        shapes = {name: {0: batch, 1: sequence} for name in names}
    program = torch.export.export(module.eval(), args, dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def _job(model: Path, **quality: Any) -> dict[str, Any]:
    return {
        "name": "outputs",
        "model": {"source": {}, "localPath": str(model), "sha256": sha256_file(model)},
        "quality": quality,
    }


def _padded_tokens(count: int = 96) -> dict[str, np.ndarray]:
    """Right-padded token ids whose batches of 32 are trimmed to different widths (5, 12, 20)."""
    rng = np.random.default_rng(3)
    caps = np.repeat([5, 12, WIDTH], count // 3)
    lengths = rng.integers(1, caps + 1)
    lengths[[0, 32, 64]] = caps[[0, 32, 64]]
    mask = (np.arange(WIDTH)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, VOCAB, size=(count, WIDTH)) * mask
    return {"input_ids": ids, "attention_mask": mask}


# -- naming and joining ---------------------------------------------------------------------------


def test_outputs_are_named_by_key_index_or_field() -> None:
    t = torch.zeros(2, 1)
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs((t, t))] == ["output_0", "output_1"]
    assert [n for n, _ in flatten_outputs({"b": t, "a": [t, t], "c": None})] == ["b", "a.0", "a.1"]
    feeds = {"x": np.ones((3, 16), np.float32)}
    outputs = torch_outputs(_DictOutputs(), ["x"])(feeds)
    assert list(outputs) == ["logits", "embedding"] and outputs["embedding"].shape == (3, 8)
    # A primary-output runner (benchmarks, timing) takes the first, of a dict too.
    assert torch_runner(_DictOutputs(), ["x"])(feeds).shape == (3, 4)


def test_token_level_outputs_of_batches_trimmed_to_different_widths_join() -> None:
    data = Dataset(_padded_tokens())
    widths = {feeds["input_ids"].shape[1] for feeds in data.batches(32)}
    assert widths == {5, 12, WIDTH}  # the batches really are trimmed differently
    runner = torch_outputs(_TokenEncoder(), ["input_ids", "attention_mask"])
    joined = run_outputs(runner, data)
    assert joined["output"].shape == (96, WIDTH, HIDDEN)
    assert run_dataset(torch_runner(_TokenEncoder(), list(data.inputs)), data).shape[1] == WIDTH
    # Padding is zeros: batch 0's output stops at its width.
    assert not joined["output"][:32, 5:].any()


def test_token_level_outputs_are_compared_on_real_positions_only() -> None:
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2, 4, 3))
    garbage = reference.copy()
    garbage[mask == 0] = rng.normal(size=(int((mask == 0).sum()), 3)) * 100
    assert compare(garbage, reference, None, mask)["cosineMin"] == pytest.approx(1.0)
    assert compare(garbage, reference, None)["cosineMin"] < 0.5  # unmasked it is noise
    # A narrower output (one batch's width) against the padded reference: padded, then compared.
    assert compare(reference[:, :2], reference, None, mask)["cosineMin"] == pytest.approx(1.0)


def test_the_error_is_also_measured_against_the_outputs_scale() -> None:
    reference = np.array([[300.0, -120.0], [40.0, 2.0]], dtype=np.float32)
    shifted = reference + np.float32(0.02)
    found = compare(shifted, reference, None)
    assert found["maxAbsError"] == pytest.approx(0.02, rel=1e-3)
    assert found["scaledError"] == pytest.approx(0.02 / 300, rel=1e-3)  # 300: the largest value
    small = np.array([[0.5, -0.25]], dtype=np.float32)  # below 1: the absolute error itself
    found = compare(small + np.float32(1e-3), small, None)
    assert found["scaledError"] == pytest.approx(1e-3, rel=1e-4)
    two = compare_outputs({"a": shifted, "b": small}, {"a": reference, "b": small}, None)
    assert worst(two, "scaledError") == two["scaledError.a"] and two["scaledError.b"] == 0.0
    assert worst_output(two, "scaledError") == "a"


def test_the_gate_holds_per_output_and_names_the_one_that_misses() -> None:
    rng = np.random.default_rng(1)
    reference = {"logits": rng.normal(size=(8, 4)), "embedding": rng.normal(size=(8, 6))}
    outputs = {"logits": reference["logits"], "embedding": -reference["embedding"]}
    measured = compare_outputs(outputs, reference, None)
    assert measured["cosineMean"] == pytest.approx(1.0)  # the primary output keeps the names
    assert measured["cosineMean.embedding"] == pytest.approx(-1.0)
    ok, why = Gate("cosine", 0.99).check(measured)
    assert not ok and "`embedding`" in why and "`logits`" not in why
    ok, why = Gate("max-abs-error", 100.0).check(measured)
    assert ok and "`logits`" in why and "`embedding`" in why
    # A one-output result reads as before (no output named).
    ok, why = Gate("cosine", 0.99).check(
        compare_outputs({"y": reference["logits"]}, {"y": reference["logits"]}, None)
    )
    assert ok and "`" not in why


# -- through the agents ---------------------------------------------------------------------------


def test_a_dict_output_is_recorded_run_everywhere_and_gated(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    torch.manual_seed(0)
    model = _export(_DictOutputs(), (torch.rand(2, 16),), tmp_path / "dict.pt2")
    job = _job(model, metric="cosine", threshold=0.95)
    params = {"calibrationSamples": 48, "evaluationSamples": 48}
    imported = run_stage("BakingCoordinator", tmp_path / "0", params=params, job=job)
    outputs = {spec.name: spec.shape for spec in imported.manifest.outputs}
    assert outputs == {"logits": ["batch", 4], "embedding": ["batch", 8]}
    zero = open_input(tmp_path / "0")
    reference = zero.reference_outputs("evaluation")
    assert list(reference) == ["logits", "embedding"] and reference["embedding"].shape == (48, 8)

    # The torch runtime and the ONNX export through ONNX Runtime both give every output.
    torch_scores = score(
        open_outputs(zero.artifact, zero.format, zero.input_names), zero, "evaluation"
    )
    assert torch_scores["cosineMin.embedding"] == pytest.approx(1.0, abs=1e-6)
    graph = run_stage("GraphOptimizer", tmp_path / "1", tmp_path / "0", job=job)
    assert "maxAbsError.embedding" in graph.outcome.metrics
    onnx_outputs = open_input(tmp_path / "1").manifest.outputs
    assert [o.name for o in onnx_outputs] == ["logits", "embedding"]

    quantized = run_stage("ModelOptimizer", tmp_path / "2", tmp_path / "1", job=job)
    assert {"cosineMean.logits", "cosineMean.embedding"} <= set(quantized.outcome.metrics)
    shrunk = run_stage("MemoryOptimizer", tmp_path / "3", tmp_path / "2", job=job)
    assert "cosineMean.embedding" in shrunk.outcome.metrics
    validated = run_stage("QualityValidator", tmp_path / "4", tmp_path / "3", job=job)
    metrics = validated.outcome.metrics
    assert metrics["cosineMean"] == metrics["cosineMean.logits"]
    assert metrics["cosineMean.embedding"] > 0.95
    assert "`logits`" in validated.outcome.message and "`embedding`" in validated.outcome.message
    report = json.loads(
        (tmp_path / "4" / "reports" / f"{validated.manifest.lineage[-1].stage}.json").read_text()
    )
    assert set(report["outputs"]) == {"logits", "embedding"}

    package = run_stage("DeploymentPreparer", tmp_path / "5", tmp_path / "4", job=job)
    readme = (tmp_path / "5" / "README.md").read_text()
    assert "output `logits`: float32 ['batch', 4]" in readme
    assert "output `embedding`: float32 ['batch', 8]" in readme
    assert "cosineMean.embedding" in package.outcome.metrics


def test_the_second_output_of_a_tuple_fails_the_gate_by_name(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    torch.manual_seed(0)
    model = _export(_FragileSecond(), (torch.randn(2, 64),), tmp_path / "pair.pt2")
    job = _job(model, metric="cosine", threshold=0.99)
    params = {"calibrationSamples": 64, "evaluationSamples": 32}
    imported = run_stage("BakingCoordinator", tmp_path / "0", params=params, job=job)
    assert [o.name for o in imported.manifest.outputs] == ["output_0", "output_1"]
    assert imported.outcome.metrics["outputs"] == 2.0
    with pytest.raises(GateFailed, match="output `output_1`") as failed:
        run_stage(
            "ModelOptimizer", tmp_path / "1", tmp_path / "0", params={"smoothing": "off"}, job=job
        )
    metrics = failed.value.metrics
    # The first output held: alone (as before) it would have passed.
    assert metrics["cosineMean"] == metrics["cosineMean.output_0"] > 0.99
    assert metrics["cosineMean.output_1"] < 0.99
    # Without quantization both hold, and the validator gates each.
    run_stage("ModelOptimizer", tmp_path / "2", tmp_path / "0", params={"scheme": "none"}, job=job)
    validated = run_stage("QualityValidator", tmp_path / "3", tmp_path / "2", job=job)
    assert validated.outcome.metrics["cosineMean.output_1"] > 0.999
    # Quantized under a lenient job gate, the validator's own bound catches the second output.
    lenient = _job(model, metric="cosine", threshold=0.5)
    run_stage("ModelOptimizer", tmp_path / "4", tmp_path / "0", job=lenient)
    with pytest.raises(GateFailed, match="output `output_1`: mean cosine") as missed:
        run_stage(
            "QualityValidator", tmp_path / "5", tmp_path / "4", params={"threshold": 0.99}, job=job
        )
    assert missed.value.metrics["passed"] == 0.0
    assert missed.value.metrics["cosineMean.output_0"] > 0.99


def test_a_token_level_output_on_padded_data_bakes_and_compares_real_positions(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    torch.manual_seed(0)
    ids = torch.randint(1, VOCAB, (2, 6))
    model = _export(_TokenEncoder(), (ids, torch.ones_like(ids)), tmp_path / "tokens.pt2")
    arrays: dict[str, Any] = _padded_tokens(144)
    np.savez(tmp_path / "data.npz", **arrays)
    job = _job(model, metric="cosine", threshold=0.99, dataset=(tmp_path / "data.npz").as_uri())
    imported = run_stage("BakingCoordinator", tmp_path / "0", job=job)
    zero = open_input(tmp_path / "0")
    assert zero.token_outputs == {"output"}
    (spec,) = imported.manifest.outputs
    mask_spec = next(s for s in imported.manifest.inputs if s.name == "attention_mask")
    assert spec.shape == ["batch", mask_spec.shape[1], HIDDEN]
    assert zero.reference("evaluation").shape == (96, WIDTH, HIDDEN)

    # ONNX, padding removed where it applies (zeros at the padding): equal on real positions.
    graph = run_stage("GraphOptimizer", tmp_path / "1", tmp_path / "0", job=job)
    assert graph.outcome.metrics["maxAbsError"] < 1e-4
    validated = run_stage("QualityValidator", tmp_path / "2", tmp_path / "1", job=job)
    assert validated.outcome.metrics["cosineMin"] > 0.9999
    run_stage("DeploymentPreparer", tmp_path / "3", tmp_path / "2", job=job)
    readme = (tmp_path / "3" / "README.md").read_text()
    assert f"output `output`: float32 ['batch', '{mask_spec.shape[1]}', {HIDDEN}]" in readme
    assert "real positions only" in readme
