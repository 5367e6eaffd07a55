"""The job's own data (quality.dataset) and synthetic inputs shaped as real ones (issue 25)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import Dataset
from bakeline.agents.datasets import read_dataset, split
from bakeline.agents.pipeline import StageRunner
from bakeline.agents.quality import Gate
from bakeline.agents.stages.common import calibration_holds
from bakeline.agents.synthetic import ModelHints, infer_roles
from bakeline.checkpoints.manifest import TensorSpec, sha256_file

NAMES = ["input_ids", "attention_mask"]
VOCAB, POSITIONS = 1000, 48


def _savez(path: Path, **arrays: Any) -> None:
    np.savez(path, **arrays)


def _uri(path: Path) -> str:
    return path.resolve().as_uri()


def _tokens(count: int = 9, width: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, width + 1, size=count)
    mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, size=(count, width)) * mask, "attention_mask": mask}


# -- readers --------------------------------------------------------------------------------------


def test_safetensors_and_npz_read_the_same_with_labels(tmp_path: Path) -> None:
    arrays = {**_tokens(), "__labels__": np.arange(9) % 3}
    save_file(arrays, str(tmp_path / "d.safetensors"))
    _savez(tmp_path / "d.npz", **arrays)
    for name in ("d.safetensors", "d.npz"):
        data, sha = read_dataset(_uri(tmp_path / name), NAMES)
        assert sha == sha256_file(tmp_path / name)
        assert list(data.inputs) == NAMES and len(data) == 9
        np.testing.assert_array_equal(data.inputs["input_ids"], arrays["input_ids"])
        assert data.labels is not None and data.labels.tolist() == (np.arange(9) % 3).tolist()


def test_the_format_is_told_by_the_bytes_not_the_name(tmp_path: Path) -> None:
    path = tmp_path / "evals"  # a ConfigMap key need not say what it holds
    _savez(path.with_suffix(".npz"), **_tokens())
    path.with_suffix(".npz").rename(path)
    assert len(read_dataset(_uri(path), NAMES)[0]) == 9


def test_an_npz_with_an_object_array_is_refused_unread(tmp_path: Path) -> None:
    objects = np.empty(9, dtype=object)
    objects[:] = [{"x": i} for i in range(9)]
    _savez(tmp_path / "evil.npz", **_tokens(), extra=objects)
    with pytest.raises(InvalidInput, match="object array"):
        read_dataset(_uri(tmp_path / "evil.npz"), NAMES)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (pickle.dumps({"input_ids": [1, 2]}), "is a pickle"),
        (b"\x93NUMPY\x01\x00" + b"x" * 40, "single .npy array"),
        (b"just some bytes", "not a dataset Bakeline reads"),
    ],
)
def test_what_is_not_data_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    (tmp_path / "d.bin").write_bytes(content)
    with pytest.raises(InvalidInput, match=match):
        read_dataset(_uri(tmp_path / "d.bin"), NAMES)


def test_refusals_say_what_to_change(tmp_path: Path) -> None:
    _savez(tmp_path / "few.npz", **_tokens(count=3))
    with pytest.raises(InvalidInput, match="at least 4 are needed"):
        read_dataset(_uri(tmp_path / "few.npz"), NAMES)
    np.savez(tmp_path / "ids.npz", input_ids=_tokens()["input_ids"])
    with pytest.raises(InvalidInput, match=r"lacks the model's inputs \['attention_mask'\]"):
        read_dataset(_uri(tmp_path / "ids.npz"), NAMES)
    left = _tokens()
    left["attention_mask"] = left["attention_mask"][:, ::-1].copy()
    _savez(tmp_path / "left.npz", **left)
    with pytest.raises(InvalidInput, match="right-padded"):
        read_dataset(_uri(tmp_path / "left.npz"), NAMES)
    _savez(tmp_path / "ok.npz", **_tokens())
    with pytest.raises(InvalidInput, match="changed while the job ran"):
        read_dataset(_uri(tmp_path / "ok.npz") + "#sha256=" + "0" * 64, NAMES)
    with pytest.raises(InvalidInput, match="not resolved to a file"):
        read_dataset("configmap/evals", NAMES)


def test_json_lines_of_token_ids_are_right_padded(tmp_path: Path) -> None:
    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n, "label": n % 2} for n in (1, 3, 2, 4)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data, _ = read_dataset(_uri(tmp_path / "d.jsonl"), NAMES)
    assert data.inputs["input_ids"].shape == (4, 4)
    assert data.inputs["attention_mask"].sum(1).tolist() == [1, 3, 2, 4]
    assert data.labels is not None and data.labels.tolist() == [1, 1, 0, 0]


def test_json_lines_of_token_ids_alone_get_their_mask_from_their_lengths(tmp_path: Path) -> None:
    rows = [{"input_ids": [7] * n} for n in (2, 5, 1, 3)]
    (tmp_path / "ids.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data, _ = read_dataset(_uri(tmp_path / "ids.jsonl"), NAMES)
    assert data.inputs["attention_mask"].tolist() == [
        [1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0],
    ]
    real = data.inputs["attention_mask"].astype(bool)
    assert ((data.inputs["input_ids"] > 0) == real).all()


def test_json_lines_of_text_need_the_models_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": f"s {i}"}) for i in range(5)))
    with pytest.raises(InvalidInput, match="ships no tokenizer"):
        read_dataset(_uri(tmp_path / "t.jsonl"), NAMES)


def test_a_folder_must_hold_one_file(tmp_path: Path) -> None:
    """A whole ConfigMap mounted: its hidden ..data entries do not count."""
    (tmp_path / "..data").mkdir()
    _savez(tmp_path / "a.npz", **_tokens())
    assert len(read_dataset(_uri(tmp_path), NAMES)[0]) == 9
    _savez(tmp_path / "b.npz", **_tokens())
    with pytest.raises(InvalidInput, match="folder of 2 files"):
        read_dataset(_uri(tmp_path), NAMES)


def test_the_split_is_reproducible_and_never_overlaps() -> None:
    data = Dataset({"x": np.arange(10, dtype=np.float32)[:, None]}, np.arange(10))
    calibration, evaluation = split(data)
    again = split(data)
    cal, ev = set(calibration.inputs["x"][:, 0]), set(evaluation.inputs["x"][:, 0])
    assert not cal & ev and len(cal) + len(ev) == 10
    assert cal == {0, 3, 6, 9}
    np.testing.assert_array_equal(again[1].inputs["x"], evaluation.inputs["x"])


# -- a user encoder, with and without data --------------------------------------------------------


class _Encoder(torch.nn.Module):
    """BERT-shaped: token, position and type embeddings, mean-pooled over a mask named `m`."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(VOCAB, 8)
        self.position_embeddings = torch.nn.Embedding(POSITIONS, 8)
        self.token_type_embeddings = torch.nn.Embedding(2, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(
        self, input_ids: torch.Tensor, m: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        hidden = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        weights = m.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        result: torch.Tensor = self.head(pooled)
        return result


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 8))
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=POSITIONS)
    dims = {0: batch, 1: sequence}
    program = torch.export.export(
        _Encoder().eval(),
        (ids, torch.ones_like(ids), torch.zeros_like(ids)),
        dynamic_shapes={"input_ids": dims, "m": dims, "token_type_ids": dims},
    )
    path = tmp_path_factory.mktemp("encoder") / "encoder.pt2"
    torch.export.save(program, str(path))
    return path


def _job(model: Path, **quality: Any) -> dict[str, Any]:
    return {
        "name": "user",
        "model": {"source": {}, "localPath": str(model), "sha256": sha256_file(model)},
        "quality": quality,
    }


def test_synthetic_inputs_look_like_tokenized_text(
    encoder_file: Path, tmp_path: Path, run_stage: StageRunner
) -> None:
    result = run_stage(
        "BakingCoordinator",
        tmp_path / "out",
        params={"calibrationSamples": 40, "evaluationSamples": 64},
        job=_job(encoder_file),
    )
    assert result.outcome.metrics["syntheticInputs"] == 1.0
    data = Dataset.load(tmp_path / "out" / "evaluation.safetensors")
    ids, mask, types = (data.inputs[n] for n in ("input_ids", "m", "token_type_ids"))
    # a real sequence length: the default 128, capped by the 48-row position table
    assert ids.shape == (64, POSITIONS)
    lengths = mask.sum(axis=1)
    assert lengths.min() >= 1 and len(set(lengths.tolist())) > 5  # never fully masked; varied
    assert (np.diff(mask, axis=1) <= 0).all()  # right-padded
    assert (ids[mask == 0] == 0).all()  # padding is id 0
    real = ids[mask == 1]
    assert real.max() >= 0.9 * VOCAB and len(np.unique(real)) > 0.5 * VOCAB  # across the vocab
    assert not types.any()
    axes = result.manifest.attributes["dynamicAxes"]
    assert set(axes["m"]) == {"0", "1"} and axes["m"]["1"] == axes["input_ids"]["1"]


def test_roles_are_declared_or_inferred_by_what_the_model_does() -> None:
    specs = [
        TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in ("ids", "valid")
    ]
    hints = ModelHints(vocab={"ids": 500})
    assert infer_roles(specs, hints) == {"ids": "tokens", "valid": "mask"}
    assert infer_roles(specs, hints, {"valid": "segments"})["valid"] == "segments"
    floats = [TensorSpec(name="attention_mask_like", dtype="float32", shape=["batch", 4])]
    assert infer_roles(floats, ModelHints()) == {"attention_mask_like": "values"}


def test_the_jobs_dataset_replaces_synthetic_inputs(
    encoder_file: Path, tmp_path: Path, run_stage: StageRunner
) -> None:
    arrays = _tokens(count=30)
    arrays = {
        "input_ids": arrays["input_ids"],
        "m": arrays["attention_mask"],
        "token_type_ids": np.zeros_like(arrays["input_ids"]),
    }
    _savez(tmp_path / "evals.npz", **arrays)
    address = f"{_uri(tmp_path / 'evals.npz')}#sha256={sha256_file(tmp_path / 'evals.npz')}"
    result = run_stage(
        "BakingCoordinator", tmp_path / "out", job=_job(encoder_file, dataset=address)
    )
    metrics = result.outcome.metrics
    assert metrics["syntheticInputs"] == 0.0
    assert (metrics["calibrationSamples"], metrics["evaluationSamples"]) == (10.0, 20.0)
    assert "synthetic" not in result.outcome.message
    evaluation = Dataset.load(tmp_path / "out" / "evaluation.safetensors")
    np.testing.assert_array_equal(evaluation.inputs["m"], arrays["m"][np.arange(30) % 3 != 0])
    assert "sha256" in result.manifest.attributes["facts"]["dataset"]
    # accuracy needs labels: refused at import, not after the bake
    with pytest.raises(InvalidInput, match="accuracy needs labelled evaluation data"):
        run_stage(
            "BakingCoordinator",
            tmp_path / "acc",
            job=_job(encoder_file, dataset=address, metric="accuracy"),
        )
    _savez(tmp_path / "labelled.npz", **arrays, __labels__=np.arange(30) % 3)
    labelled = run_stage(
        "BakingCoordinator",
        tmp_path / "acc2",
        job=_job(encoder_file, dataset=_uri(tmp_path / "labelled.npz"), metric="accuracy"),
    )
    assert "referenceAccuracy" in labelled.outcome.metrics


def test_a_builtin_takes_the_jobs_dataset(tmp_path: Path, run_stage: StageRunner) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((12, 1, 8, 8)).astype(np.float64)  # float64: cast to the model's float32
    save_file({"image": images, "__labels__": np.arange(12) % 10}, str(tmp_path / "d.st"))
    job = {
        "model": {"source": {"builtin": "digits-cnn"}},
        "quality": {"dataset": _uri(tmp_path / "d.st")},
    }
    result = run_stage("BakingCoordinator", tmp_path / "out", job=job)
    assert result.outcome.metrics["syntheticInputs"] == 0.0
    assert result.outcome.metrics["evaluationSamples"] == 8.0


def test_the_users_labels_judge_calibration_by_accuracy_not_by_agreement() -> None:
    # Int8 may flip a few argmaxes of a 0.59-accurate model without costing accuracy: with
    # labels the job's gate is checked as it is on evaluation, without them by agreement.
    gate = Gate("accuracy", 0.58)
    flips = {"agreement": 0.95, "accuracy": 0.59, "referenceAccuracy": 0.59}
    assert calibration_holds(gate, flips)[0]
    assert not calibration_holds(gate, {**flips, "accuracy": 0.55})[0]
    # The job's bound came from other rows: where the original itself scores 0.50 on these,
    # the bound is its own less a point (the float model never fails its own gate).
    harder = {"agreement": 1.0, "accuracy": 0.50, "referenceAccuracy": 0.50}
    assert calibration_holds(gate, harder)[0]
    assert not calibration_holds(gate, {**harder, "accuracy": 0.48})[0]
    unlabelled = {"agreement": 0.95}
    ok, why = calibration_holds(gate, unlabelled)
    assert not ok and "agreement" in why
