"""The checkpoint manifest: what a stage leaves behind, shared by agents, stores and the operator.

A checkpoint is a directory holding `manifest.json` and the files it lists. Every file carries
its sha256; a checkpoint whose files do not match is never restored or consumed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
# Not in the manifest: which of its files are not in this directory but left in the checkpoint
# store the directory was restored from, and carried by reference (bakeline.checkpoints.configmap).
CARRIED_NAME = "carried.json"
SCHEMA_VERSION = 1

ArtifactFormat = Literal["exported-program", "torchscript", "onnx", "safetensors", "package"]


class ChecksumMismatchError(ValueError):
    """A file's bytes do not match the sha256 its manifest records."""


class ManifestError(ValueError):
    """A checkpoint directory has no manifest, or one that does not parse."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class TensorSpec(_Model):
    """One named input or output of the model."""

    name: str
    dtype: str = Field(description="torch/numpy dtype name, e.g. int64, float32")
    shape: list[int | str] = Field(
        default_factory=list, description="dimensions; strings name dynamic axes such as 'batch'"
    )
    description: str = ""


class FileEntry(_Model):
    """A file of the checkpoint, relative to its directory."""

    path: str
    sha256: str
    size_bytes: int = Field(alias="sizeBytes")
    role: str = Field(
        default="data",
        description="model | reference | calibration | evaluation | tokenizer | report | data",
    )


class LineageEntry(_Model):
    """One stage applied on the way to this checkpoint."""

    stage: str
    agent: str
    agent_version: str = Field(alias="agentVersion")
    params: dict[str, Any] = Field(default_factory=dict)
    input_sha256: str | None = Field(default=None, alias="inputSha256")
    output_sha256: str = Field(alias="outputSha256")
    started_at: str = Field(alias="startedAt")
    finished_at: str = Field(alias="finishedAt")
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(_Model):
    """The manifest of one checkpoint."""

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schemaVersion")
    model_name: str = Field(alias="modelName", description="e.g. minilm-l6, digits-cnn")
    task: str = Field(default="", description="e.g. sentence-embedding, image-classification")
    artifact: str = Field(description="path of the primary model file among `files`")
    format: ArtifactFormat
    files: list[FileEntry]
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    lineage: list[LineageEntry] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    attributes: dict[str, Any] = Field(
        default_factory=dict, description="agent-specific facts, e.g. dtype, backend, threads"
    )
    created_at: str = Field(default_factory=lambda: utc_now(), alias="createdAt")

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ManifestError(f"manifest lists no file {path!r}")

    @property
    def artifact_sha256(self) -> str:
        return self.file(self.artifact).sha256

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2, exclude_none=True)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(directory: Path, relative: str, role: str = "data") -> FileEntry:
    """Describe `directory/relative` with its current sha256 and size."""
    path = directory / relative
    return FileEntry(
        path=relative, sha256=sha256_file(path), size_bytes=path.stat().st_size, role=role
    )


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{directory} is not a checkpoint: {MANIFEST_NAME} is missing")
    try:
        return Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as exc:
        raise ManifestError(f"{path} does not parse: {exc}") from exc


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.to_json())
    tmp.replace(path)  # atomic: a reader never sees half a manifest
    return path


def read_carried(directory: Path) -> frozenset[str]:
    """The manifest paths this directory carries by reference (none without a marker)."""
    path = directory / CARRIED_NAME
    if not path.is_file():
        return frozenset()
    try:
        paths = json.loads(path.read_text())["files"]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise TypeError("files is not a list of paths")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(f"{path} does not parse: {exc}") from exc
    return frozenset(paths)


def write_carried(directory: Path, paths: Iterable[str]) -> None:
    """Mark `paths` as carried by reference; no marker when there are none."""
    listed = sorted(set(paths))
    path = directory / CARRIED_NAME
    if listed:
        path.write_text(json.dumps({"files": listed}, indent=2))
    else:
        path.unlink(missing_ok=True)


def verify_checkpoint(
    directory: Path, manifest: Manifest | None = None, *, carried_ok: bool = False
) -> Manifest:
    """Check every listed file against its sha256; raise ChecksumMismatchError on any difference.

    With `carried_ok`, a file that is missing but named in the directory's carried marker
    passes: the store it came from holds it, checked there (a present file is always checked).
    """
    manifest = manifest or read_manifest(directory)
    carried = read_carried(directory) if carried_ok else frozenset()
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            if entry.path in carried:
                continue
            raise ChecksumMismatchError(f"{entry.path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ChecksumMismatchError(
                f"{entry.path}: sha256 {actual} does not match the manifest's {entry.sha256}"
            )
    return manifest
