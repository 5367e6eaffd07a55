"""BakingCoordinator: builtin import, user files (ONNX), refusal of pickles and bad checksums."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bakeline.agents.checkpoint_io import open_input
from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import load_arrays
from bakeline.agents.pipeline import Chain, StageRunner
from bakeline.agents.vetting import vet_model_file
from bakeline.checkpoints.manifest import sha256_file, sha256_path
from support.user_models import TINY_VIT_PREPROCESSOR, build_huggingface_image_files


def test_checkpoint_zero_holds_model_data_and_references(digits_chain: Chain) -> None:
    result = digits_chain.results["BakingCoordinator"]
    ckpt = open_input(digits_chain.dirs["BakingCoordinator"])  # verifies every sha256
    roles = {f.path: f.role for f in ckpt.manifest.files}
    assert roles["original.pt2"] == "model"
    assert {"calibration", "evaluation", "reference"} <= set(roles.values())
    assert ckpt.manifest.model_name == "digits-cnn"
    assert ckpt.format == "exported-program"
    reference = load_arrays(ckpt.directory / "reference.safetensors")
    evaluation = ckpt.dataset("evaluation.safetensors")
    assert reference["evaluation"].shape == (len(evaluation), 10)
    assert evaluation.labels is not None and len(evaluation) == 540  # 30 % of 1797
    # the small CNN learns the digits: the reference itself is a good model
    assert result.outcome.metrics["referenceAccuracy"] > 0.96
    assert result.outcome.metrics["roundTripMaxAbsError"] < 1e-5
    fingerprint = ckpt.manifest.attributes["fingerprint"]
    assert fingerprint["artifactSha256"] == sha256_file(ckpt.artifact)
    assert len(ckpt.manifest.lineage) == 1


def test_training_is_deterministic(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    again = run_stage("BakingCoordinator", tmp_path / "again")
    first = open_input(digits_chain.dirs["BakingCoordinator"]).manifest.attributes["fingerprint"]
    assert again.manifest.attributes["fingerprint"]["weightsSha256"] == first["weightsSha256"]


def _job(path: Path, sha256: str | None = None) -> dict[str, object]:
    model: dict[str, object] = {
        "source": {"url": {"href": "https://example.invalid/m"}},
        "localPath": str(path),
    }
    if sha256:
        model["sha256"] = sha256
    return {"name": "user", "model": model}


def test_a_user_onnx_file_is_imported_with_synthetic_data(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    onnx_file = digits_chain.dirs["GraphOptimizer"] / "model.onnx"
    result = run_stage(
        "BakingCoordinator",
        tmp_path / "user",
        params={"calibrationSamples": 16, "evaluationSamples": 24},
        job=_job(onnx_file, sha256_file(onnx_file)),
    )
    assert result.manifest.format == "onnx"
    assert [t.name for t in result.manifest.inputs] == ["image"]
    assert result.outcome.metrics["evaluationSamples"] == 24
    assert result.outcome.metrics["syntheticInputs"] == 1.0  # said everywhere it matters
    assert "synthetic" in result.outcome.message
    assert result.outcome.metrics["parameters"] > 30_000


def test_a_gate_on_accuracy_without_labels_is_refused_at_import(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    """Not after the bake: synthetic inputs have no labels to be accurate against."""
    onnx_file = digits_chain.dirs["GraphOptimizer"] / "model.onnx"
    job = {**_job(onnx_file, sha256_file(onnx_file)), "quality": {"metric": "accuracy"}}
    with pytest.raises(InvalidInput, match="accuracy needs labelled evaluation data"):
        run_stage("BakingCoordinator", tmp_path / "user", job=job)


def test_a_pickle_is_refused(tmp_path: Path, run_stage: StageRunner) -> None:
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(InvalidInput, match="pickle"):
        run_stage("BakingCoordinator", tmp_path / "out", job=_job(evil))


def test_a_torch_save_of_a_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a zip whose data.pkl would rebuild the class
    with pytest.raises(InvalidInput, match=r"is a torch\.save archive"):
        vet_model_file(path)


def test_a_checksum_mismatch_is_refused(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    onnx_file = digits_chain.dirs["GraphOptimizer"] / "model.onnx"
    with pytest.raises(InvalidInput, match=r"does not match job\.model\.sha256"):
        run_stage("BakingCoordinator", tmp_path / "out", job=_job(onnx_file, "0" * 64))


def test_garbage_is_not_a_model(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(InvalidInput, match="not an ExportedProgram, TorchScript or ONNX"):
        vet_model_file(junk)


def test_unknown_builtin_and_missing_model(tmp_path: Path, run_stage: StageRunner) -> None:
    with pytest.raises(InvalidInput, match="unknown builtin"):
        run_stage(
            "BakingCoordinator", tmp_path / "a", job={"model": {"source": {"builtin": "gpt-17"}}}
        )
    with pytest.raises(InvalidInput, match=r"needs job\.model"):
        run_stage("BakingCoordinator", tmp_path / "b", job={})


def test_a_declared_format_that_the_bytes_contradict_is_refused(
    digits_chain: Chain, tmp_path: Path, run_stage: StageRunner
) -> None:
    """job.model.format is honoured: named, it must be what the file is (auto detects)."""
    onnx_file = digits_chain.dirs["GraphOptimizer"] / "model.onnx"
    job = _job(onnx_file, sha256_file(onnx_file))
    job["model"] = {**job["model"], "format": "exported-program"}  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match=r"is onnx by its bytes, but job\.model\.format says"):
        run_stage("BakingCoordinator", tmp_path / "wrong", job=job)
    job["model"] = {**job["model"], "format": "onnx"}  # type: ignore[dict-item]
    assert run_stage("BakingCoordinator", tmp_path / "right", job=job).manifest.format == "onnx"


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.body(features)
        return result


def test_torchscript_without_shapes_says_to_set_the_jobs_input_shapes(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    path = tmp_path / "mlp.ts"
    torch.jit.save(torch.jit.script(_Mlp().eval()), str(path))  # type: ignore[no-untyped-call]
    job = _job(path, sha256_file(path))
    with pytest.raises(InvalidInput, match=r"set spec\.model\.inputShapes .*\{features: \["):
        run_stage("BakingCoordinator", tmp_path / "bare", job=job)
    wrong = {**job, "model": {**job["model"], "inputShapes": {"x": [6]}}}  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match=r"forward takes \['features'\]"):
        run_stage("BakingCoordinator", tmp_path / "wrong", job=wrong)
    shaped = {**job, "model": {**job["model"], "inputShapes": {"features": [6]}}}  # type: ignore[dict-item]
    result = run_stage(
        "BakingCoordinator",
        tmp_path / "shaped",
        params={"calibrationSamples": 4, "evaluationSamples": 4},
        job=shaped,
    )
    assert [(t.name, t.shape) for t in result.manifest.inputs] == [("features", ["batch", 6])]


def test_a_static_batch_export_is_refused_saying_how_to_export_it(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(_Mlp().eval(), (torch.rand(4, 6),)), str(path))
    with pytest.raises(InvalidInput, match=r"static batch of 4 .*dynamic_shapes=\{'features'"):
        run_stage("BakingCoordinator", tmp_path / "out", job=_job(path, sha256_file(path)))


class _Tokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).float()
        result: torch.Tensor = (self.embed(input_ids) * weights).sum(1)
        return result


def test_a_fixed_sequence_length_is_refused_saying_how_to_export_it(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    """Batches of padded text are cut to their longest sample: a fixed length would fail later."""
    path = tmp_path / "fixed.pt2"
    batch = torch.export.Dim("batch")
    ids, mask = torch.ones(2, 12, dtype=torch.int64), torch.ones(2, 12, dtype=torch.int64)
    program = torch.export.export(
        _Tokens().eval(),
        (ids, mask),
        dynamic_shapes={"input_ids": {0: batch}, "attention_mask": {0: batch}},
    )
    torch.export.save(program, str(path))
    with pytest.raises(InvalidInput, match=r"fixed sequence length of 12 .*1: sequence\}"):
        run_stage("BakingCoordinator", tmp_path / "out", job=_job(path, sha256_file(path)))


class _TokenEncoder(torch.nn.Module):
    """Token-level outputs; its mask is an input named `valid` (no "mask" in the name)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)

    def forward(self, input_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.embed(input_ids) * valid.unsqueeze(-1).float()
        return result


def test_the_attention_mask_is_found_by_role_whatever_its_name(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    path = tmp_path / "encoder.pt2"
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    ids, valid = torch.ones(2, 6, dtype=torch.int64), torch.ones(2, 6, dtype=torch.int64)
    dims = {"input_ids": {0: batch, 1: sequence}, "valid": {0: batch, 1: sequence}}
    program = torch.export.export(_TokenEncoder().eval(), (ids, valid), dynamic_shapes=dims)
    torch.export.save(program, str(path))
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 10, 12)
    lengths[0] = 12  # the dataset is padded to 12; most batches are shorter
    marks = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    data = tmp_path / "data.npz"
    np.savez(data, input_ids=rng.integers(1, 50, (12, 12)) * marks, valid=marks)
    result = run_stage(
        "BakingCoordinator",
        tmp_path / "out",
        params={"dataset": data.as_uri()},
        job=_job(path, sha256_file(path)),
    )
    checkpoint = open_input(tmp_path / "out")
    evaluation = checkpoint.dataset("evaluation.safetensors")
    assert evaluation.mask == "valid"  # recorded with the data, read by every later stage
    first = evaluation.batch(0, 2)  # trimmed to its own longest sample
    assert first["valid"].shape[1] == int(first["valid"].sum(axis=1).max()) < 12
    # Its output follows the mask's sequence: token-level, so quality counts real positions.
    assert result.manifest.attributes["tokenOutputs"] == ["output"]
    np.savez(data, input_ids=rng.integers(1, 50, (12, 12)), valid=1 - marks)  # left-padded
    with pytest.raises(InvalidInput, match=r"valid must be right-padded"):
        run_stage(
            "BakingCoordinator",
            tmp_path / "again",
            params={"dataset": data.as_uri()},
            job=_job(path, sha256_file(path)),
        )


def test_an_image_model_imports_its_image_files_and_refuses_them_at_another_size(
    tmp_path: Path, run_stage: StageRunner
) -> None:
    folder, archive = build_huggingface_image_files(tmp_path)
    assert archive is not None
    job = _job(folder, sha256_path(folder))
    result = run_stage(
        "BakingCoordinator", tmp_path / "out", params={"dataset": archive.as_uri()}, job=job
    )
    assert result.outcome.metrics["syntheticInputs"] == 0.0
    assert result.outcome.metrics["referenceAccuracy"] == 1.0  # folders read as its labels
    checkpoint = open_input(tmp_path / "out")
    evaluation = checkpoint.dataset("evaluation.safetensors")
    assert evaluation.inputs["pixel_values"].shape == (40, 3, 16, 16)
    assert (tmp_path / "out" / "preprocessor_config.json").exists()
    # A processor that prepares 32x32 for a model of 16x16: said before any probe fails on it.
    (folder / "preprocessor_config.json").write_text(
        json.dumps({**TINY_VIT_PREPROCESSOR, "size": 32})
    )
    with pytest.raises(InvalidInput, match=r"pixel_values is 3x32x32 per sample \(the images"):
        run_stage(
            "BakingCoordinator",
            tmp_path / "again",
            params={"dataset": archive.as_uri()},
            job=_job(folder, sha256_path(folder)),
        )
