"""The checkpoint manifest's wire format: what is written, what is read, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bakeline.checkpoints.manifest import (
    FileEntry,
    LineageEntry,
    Manifest,
    ManifestError,
    TensorSpec,
    parse_manifest,
    read_manifest,
    write_manifest,
)


def _manifest(**overrides: object) -> Manifest:
    fields: dict[str, object] = {
        "model_name": "digits-cnn",
        "artifact": "model.onnx",
        "format": "onnx",
        "files": [FileEntry(path="model.onnx", sha256="ab" * 32, size_bytes=12, role="model")],
        "inputs": [TensorSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])],
        "lineage": [
            LineageEntry(
                stage="import",
                agent="BakingCoordinator",
                agent_version="1",
                output_sha256="ab" * 32,
                started_at="2026-12-05T00:00:00Z",
                finished_at="2026-12-05T00:00:01Z",
            )
        ],
    }
    return Manifest(**{**fields, **overrides})  # type: ignore[arg-type]


def test_written_manifest_is_camel_case_and_reads_back_equal(tmp_path: Path) -> None:
    manifest = _manifest(metrics={"accuracy": 0.97}, attributes={"dtype": "int8"})
    write_manifest(tmp_path, manifest)
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written["schemaVersion"] == 1 and written["modelName"] == "digits-cnn"
    assert written["files"][0] == {
        "path": "model.onnx",
        "sha256": "ab" * 32,
        "sizeBytes": 12,
        "role": "model",
    }
    assert written["lineage"][0]["agentVersion"] == "1"
    assert read_manifest(tmp_path) == manifest
    assert manifest.artifact_sha256 == "ab" * 32


def test_numpy_scalars_are_written_as_numbers(tmp_path: Path) -> None:
    entry = FileEntry(path="model.onnx", sha256="ab" * 32, size_bytes=np.int64(12))  # type: ignore[arg-type]
    manifest = _manifest(
        files=[entry],
        metrics={"cosine": np.float32(0.5), "latency": np.float64(1.25)},
        attributes={"threads": np.int64(2)},
    )
    written = json.loads(manifest.to_json())
    assert written["metrics"] == {"cosine": 0.5, "latency": 1.25}
    assert written["attributes"] == {"threads": 2}
    assert written["files"][0]["sizeBytes"] == 12


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"format": "pickle"}, "$.format"),
        ({"modelName": 7}, "$.modelName"),
        ({"files": [{"path": "model.onnx", "sha256": "x", "sizeBytes": "12"}]}, "sizeBytes"),
        ({"metrics": {"accuracy": "high"}}, "$.metrics"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_a_manifest_that_does_not_fit_is_refused_naming_the_field(
    change: dict[str, object], named: str
) -> None:
    document = {**json.loads(_manifest().to_json()), **change}
    with pytest.raises(ManifestError, match="does not parse") as raised:
        parse_manifest(json.dumps(document))
    assert named in str(raised.value)


def test_a_manifest_built_wrong_in_python_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"\$\.format"):
        write_manifest(tmp_path, _manifest(format="pickle"))
    assert not (tmp_path / "manifest.json").exists()


def test_broken_json_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"modelName": ')
    with pytest.raises(ManifestError, match=r"manifest\.json: manifest does not parse"):
        read_manifest(tmp_path)


@given(
    metrics=st.dictionaries(st.text(), st.floats(allow_nan=False, allow_infinity=False)),
    shape=st.lists(st.one_of(st.integers(0, 1 << 40), st.text(min_size=1)), max_size=5),
)
def test_any_manifest_round_trips(metrics: dict[str, float], shape: list[int | str]) -> None:
    manifest = _manifest(metrics=metrics, inputs=[TensorSpec(name="x", dtype="int64", shape=shape)])
    assert parse_manifest(manifest.to_json()) == manifest
