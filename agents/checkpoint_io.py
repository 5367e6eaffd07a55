"""Reading an input checkpoint (sha256-verified) and writing the output checkpoint of a stage.

Every checkpoint carries forward what later stages need: the reference outputs, calibration and
evaluation data, the tokenizer, earlier reports and the original model (the yardstick for quality
and speed). Carried files are hard-linked when possible: they are never modified in place. A
file the input carries by reference (left in the ConfigMap store it was restored from, named in
its carried marker) is carried the same way: listed in the output's manifest and marker, never
read.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import Dataset, load_arrays
from bakeline.agents.reads import ROLE_ORIGINAL
from bakeline.agents.version import agent_version
from bakeline.checkpoints.manifest import (
    ArtifactFormat,
    ChecksumMismatchError,
    FileEntry,
    LineageEntry,
    Manifest,
    ManifestError,
    TensorSpec,
    file_entry,
    read_carried,
    utc_now,
    write_carried,
    write_manifest,
)
from bakeline.checkpoints.manifest import verify_checkpoint as _verify

# File names and roles every agent agrees on.
CALIBRATION = "calibration.safetensors"
EVALUATION = "evaluation.safetensors"
# Reference outputs: arrays "calibration" and "evaluation" hold the primary (first) output; each
# further output of a several-output model is "<split>/<output name>".
REFERENCE = "reference.safetensors"
# Manifest attribute: the outputs that are token-level ([batch, sequence, ...] following the
# attention mask), compared on real positions only.
TOKEN_OUTPUTS = "tokenOutputs"  # noqa: S105 - an attribute name
TOKENIZER = "tokenizer.json"
ROLE_MODEL = "model"
ROLE_REPORT = "report"
ROLE_TOKENIZER = "tokenizer"
# How an image or waveform model's media files become its input (preprocessor_config.json).
ROLE_PREPROCESSOR = "preprocessor"

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
    carried: frozenset[str] = frozenset()  # manifest paths left in the store, not here

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
    def output_names(self) -> list[str]:
        """The model's outputs in order, the primary first (as the import stage named them)."""
        return [spec.name for spec in self.manifest.outputs] or ["output"]

    @property
    def token_outputs(self) -> frozenset[str]:
        value = self.manifest.attributes.get(TOKEN_OUTPUTS) or []
        return frozenset(str(name) for name in value) if isinstance(value, list) else frozenset()

    @property
    def task(self) -> str:
        return self.manifest.task

    def has(self, relative: str) -> bool:
        return any(entry.path == relative for entry in self.manifest.files)

    def original(self) -> tuple[Path, ArtifactFormat]:
        """The model as imported (checkpoint 0): the yardstick for speed comparisons."""
        relative, format = self._original()
        if relative in self.carried:
            raise InvalidInput(
                f"the original model {relative} was left in the checkpoint store when this "
                "input was restored: agents in bakeline.agents.reads.ORIGINAL_UNREAD never open it"
            )
        return self.directory / relative, format

    def _original(self) -> tuple[str, ArtifactFormat]:
        original = self.manifest.attributes.get("original")
        if not isinstance(original, dict):
            return self.manifest.artifact, self.format
        return str(original["path"]), original["format"]

    def files(self) -> Iterator[tuple[FileEntry, str, bool]]:
        """Each file with its role as carried forward (the original model's is `original`) and
        whether it is the artifact."""
        original, _ = self._original()
        for entry in self.manifest.files:
            role = ROLE_ORIGINAL if entry.path == original else entry.role
            yield entry, role, entry.path == self.manifest.artifact

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

    def reference_outputs(self, split: str) -> dict[str, Any]:
        """Every reference output of `split` by output name, the primary first (an output the
        reference does not hold, as in a checkpoint from before several outputs, is left out)."""
        primary = self.reference(split)
        arrays = load_arrays(self.directory / REFERENCE)
        names = self.output_names
        found = {names[0]: primary}
        found.update({n: arrays[f"{split}/{n}"] for n in names[1:] if f"{split}/{n}" in arrays})
        return found

    @property
    def runtime(self) -> dict[str, Any]:
        value = self.manifest.attributes.get("runtime", {})
        return dict(value) if isinstance(value, dict) else {}


def open_input(directory: Path | None) -> InputCheckpoint:
    """Read and verify every file's sha256; any problem is invalid input (exit 2)."""
    if directory is None or not directory.is_dir():
        raise InvalidInput(f"input checkpoint directory {directory} does not exist")
    try:
        manifest = _verify(directory, carried_ok=True)
        carried = read_carried(directory)
    except ChecksumMismatchError as exc:
        raise InvalidInput(
            f"input checkpoint {directory} failed sha256 verification: {exc}"
        ) from exc
    except ManifestError as exc:
        raise InvalidInput(str(exc)) from exc
    if not any(entry.path == manifest.artifact for entry in manifest.files):
        raise InvalidInput(f"manifest artifact {manifest.artifact!r} is not among its files")
    if manifest.artifact in carried:
        raise InvalidInput(f"the artifact {manifest.artifact!r} was not restored")
    return InputCheckpoint(directory, manifest, carried)


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
    _carried: dict[str, FileEntry] = field(default_factory=dict)  # by reference, not here

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, relative: str) -> Path:
        """Where to write a new file; register it with `add`."""
        target = self.directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add(self, relative: str, role: str) -> Path:
        self._roles[relative] = role
        self._carried.pop(relative, None)
        return self.directory / relative

    def add_copy(self, source: Path, relative: str, role: str) -> Path:
        _place(source, self.directory / relative)
        return self.add(relative, role)

    def carry_forward(self, keep_model: bool = False, roles: tuple[str, ...] | None = None) -> None:
        """Carry the input's files: data, reports and the original model (not its artifact)."""
        if self.source is None:
            return
        for entry, role, is_artifact in self.source.files():
            if is_artifact and role != ROLE_ORIGINAL and not keep_model:
                continue
            if roles is not None and role not in roles:
                continue
            if entry.path in self.source.carried:
                self._roles.pop(entry.path, None)
                self._carried[entry.path] = msgspec.structs.replace(entry, role=role)
            else:
                self.add_copy(self.source.directory / entry.path, entry.path, role)

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
        files = [file_entry(self.directory, rel, role) for rel, role in self._roles.items()]
        files = sorted([*files, *self._carried.values()], key=lambda entry: entry.path)
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
        write_carried(self.directory, self._carried)
        write_manifest(self.directory, manifest)
        return manifest


def reference_arrays(split: str, outputs: dict[str, Any]) -> dict[str, Any]:
    """The arrays of REFERENCE for one split's outputs (the primary under the split's name)."""
    items = list(outputs.items())
    return {split: items[0][1], **{f"{split}/{name}": value for name, value in items[1:]}}


def artifact_name(format: ArtifactFormat, stem: str = "model") -> str:
    return stem + EXTENSIONS.get(format, ".bin")
