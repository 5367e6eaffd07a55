"""Reading an input checkpoint (sha256-verified) and writing the output checkpoint of a stage.

Every checkpoint carries forward what later stages need: the reference outputs, calibration and
evaluation data, the tokenizer, earlier reports and the original model (the yardstick for quality
and speed). Carried files are hard-linked when possible: they are never modified in place.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import Dataset, load_arrays
from bakeline.agents.version import agent_version
from bakeline.checkpoints.manifest import (
    ArtifactFormat,
    ChecksumMismatchError,
    LineageEntry,
    Manifest,
    ManifestError,
    TensorSpec,
    file_entry,
    utc_now,
    write_manifest,
)
from bakeline.checkpoints.manifest import verify_checkpoint as _verify

# File names and roles every agent agrees on.
CALIBRATION = "calibration.safetensors"
EVALUATION = "evaluation.safetensors"
REFERENCE = "reference.safetensors"  # arrays "calibration" and "evaluation": reference outputs
TOKENIZER = "tokenizer.json"
ROLE_MODEL = "model"
ROLE_ORIGINAL = "original"
ROLE_REPORT = "report"

EXTENSIONS: dict[str, str] = {
    "exported-program": ".pt2",
    "torchscript": ".ts",
    "onnx": ".onnx",
    "safetensors": ".safetensors",
}


@dataclass
class InputCheckpoint:
    directory: Path
    manifest: Manifest

    @property
    def artifact(self) -> Path:
        return self.directory / self.manifest.artifact

    @property
    def format(self) -> ArtifactFormat:
        return self.manifest.format

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.manifest.inputs]

    @property
    def task(self) -> str:
        return self.manifest.task

    def has(self, relative: str) -> bool:
        return any(entry.path == relative for entry in self.manifest.files)

    def original(self) -> tuple[Path, ArtifactFormat]:
        """The model as imported (checkpoint 0): the yardstick for speed comparisons."""
        original = self.manifest.attributes.get("original")
        if not isinstance(original, dict):
            return self.artifact, self.format
        return self.directory / str(original["path"]), original["format"]

    def dataset(self, relative: str) -> Dataset:
        if not self.has(relative):
            raise InvalidInput(f"checkpoint has no {relative}: run the BakingCoordinator first")
        return Dataset.load(self.directory / relative, self.input_names)

    def reference(self, split: str) -> Any:
        if not self.has(REFERENCE):
            raise InvalidInput(f"checkpoint has no {REFERENCE}: run the BakingCoordinator first")
        arrays = load_arrays(self.directory / REFERENCE)
        if split not in arrays:
            raise InvalidInput(f"{REFERENCE} has no {split!r} outputs")
        return arrays[split]

    @property
    def runtime(self) -> dict[str, Any]:
        value = self.manifest.attributes.get("runtime", {})
        return dict(value) if isinstance(value, dict) else {}


def open_input(directory: Path | None) -> InputCheckpoint:
    """Read and verify every file's sha256; any problem is invalid input (exit 2)."""
    if directory is None or not directory.is_dir():
        raise InvalidInput(f"input checkpoint directory {directory} does not exist")
    try:
        manifest = _verify(directory)
    except ChecksumMismatchError as exc:
        raise InvalidInput(
            f"input checkpoint {directory} failed sha256 verification: {exc}"
        ) from exc
    except ManifestError as exc:
        raise InvalidInput(str(exc)) from exc
    if not any(entry.path == manifest.artifact for entry in manifest.files):
        raise InvalidInput(f"manifest artifact {manifest.artifact!r} is not among its files")
    return InputCheckpoint(directory, manifest)


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


@dataclass
class OutputCheckpoint:
    """Collects the files of the stage's output checkpoint, then writes its manifest."""

    directory: Path
    source: InputCheckpoint | None = None
    _roles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, relative: str) -> Path:
        """Where to write a new file; register it with `add`."""
        target = self.directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add(self, relative: str, role: str) -> Path:
        self._roles[relative] = role
        return self.directory / relative

    def add_copy(self, source: Path, relative: str, role: str) -> Path:
        _place(source, self.directory / relative)
        return self.add(relative, role)

    def carry_forward(self, keep_model: bool = False, roles: tuple[str, ...] | None = None) -> None:
        """Carry the input's files: data, reports and the original model (not its artifact)."""
        if self.source is None:
            return
        original, _ = self.source.original()
        for entry in self.source.manifest.files:
            src = self.source.directory / entry.path
            is_artifact = entry.path == self.source.manifest.artifact
            role = entry.role
            if src == original:
                role = ROLE_ORIGINAL
            elif is_artifact and not keep_model:
                continue
            if roles is not None and role not in roles:
                continue
            self.add_copy(src, entry.path, role)

    def finish(
        self,
        *,
        agent: str,
        stage: str,
        artifact: str,
        format: ArtifactFormat,
        params: dict[str, Any],
        metrics: dict[str, float],
        started_at: str,
        attributes: dict[str, Any] | None = None,
        inputs: list[TensorSpec] | None = None,
        outputs: list[TensorSpec] | None = None,
        model_name: str | None = None,
        task: str | None = None,
    ) -> Manifest:
        if artifact not in self._roles:
            raise ValueError(f"artifact {artifact} was not added to the checkpoint")
        self._roles[artifact] = ROLE_MODEL
        files = [file_entry(self.directory, rel, role) for rel, role in sorted(self._roles.items())]
        artifact_sha = next(f.sha256 for f in files if f.path == artifact)
        src = self.source.manifest if self.source else None
        lineage = list(src.lineage) if src else []
        lineage.append(
            LineageEntry(
                stage=stage,
                agent=agent,
                agent_version=agent_version(),
                params=params,
                input_sha256=src.artifact_sha256 if src else None,
                output_sha256=artifact_sha,
                started_at=started_at,
                finished_at=utc_now(),
                metrics=metrics,
            )
        )
        merged = dict(src.attributes) if src else {}
        merged.update(attributes or {})
        manifest = Manifest(
            model_name=model_name or (src.model_name if src else "model"),
            task=task if task is not None else (src.task if src else ""),
            artifact=artifact,
            format=format,
            files=files,
            inputs=inputs if inputs is not None else (list(src.inputs) if src else []),
            outputs=outputs if outputs is not None else (list(src.outputs) if src else []),
            lineage=lineage,
            metrics=metrics,
            attributes=merged,
        )
        write_manifest(self.directory, manifest)
        return manifest


def artifact_name(format: ArtifactFormat, stem: str = "model") -> str:
    return stem + EXTENSIONS.get(format, ".bin")
