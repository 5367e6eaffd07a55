"""A dataset that is a zip of media files, one sample a file: images (`bakeline.agents.images`)
or audio clips (`bakeline.agents.audio`), read for a model that declares how it prepares them.

What every kind shares is here: which kind a zip holds (by its members' names; each file is
then vetted from its bytes by its kind's module), bounds on what is read before it is read,
labels from folders, and preprocessing a batch of decoded files at a time so that memory holds
one batch of decoded media, not the whole set.

Labels come from folders: `CLASS/FILE` (at any depth) is labelled CLASS, where CLASS is a class
index (`3`) or a label of the model's config (`label2id`, Hugging Face's); files at the
archive's top level, or all in one folder that names no class (a zipped folder), are
unlabelled. Labelled and unlabelled files do not mix.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np

from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import LABELS
from bakeline.agents.vetting import HF_PREPROCESSOR

# The kinds of media file read, by the suffixes their members carry.
SUFFIXES = {"images": (".png", ".jpg", ".jpeg"), "audio": (".wav",)}
MAX_FILES = 100_000
MAX_FILE_BYTES = 256 * 1024**2  # one file, inflated, before it is read
MAX_ARRAY_BYTES = 2 * 1024**3  # what the prepared samples may fill, as any dataset
BATCH = 32  # files decoded and prepared at once


@dataclass(frozen=True)
class MediaReading:
    """How a Hugging Face model reads one kind of media file: its vetted preprocessor config
    and model config (the processor's class where the first does not name it; the label
    names). Each kind (images.ImageReading, audio.AudioReading) names its kind and its
    transformers loader, and makes a batch of (member name, bytes) into the model's input."""

    preprocessor: dict[str, Any]
    config: dict[str, Any]
    kind: ClassVar[str]
    loader: ClassVar[str]  # AutoImageProcessor, AutoFeatureExtractor
    options: ClassVar[tuple[tuple[str, str], ...]] = ()  # more arguments to from_pretrained

    @property
    def labels(self) -> dict[str, int]:
        return config_labels(self.config)

    @cached_property
    def processor(self) -> Any:
        """transformers' processor of the model, built once per reading."""
        return hf_processor(self.loader, self.preprocessor, self.config, **dict(self.options))

    def prepare(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        raise NotImplementedError


def media_kind(names: list[str]) -> str | None:
    """The kind of media every one of `names` is, by suffix; None where they are not all one."""
    for kind, suffixes in SUFFIXES.items():
        if names and all(name.lower().endswith(suffixes) for name in names):
            return kind
    return None


def config_labels(config: Mapping[str, object]) -> dict[str, int]:
    """A Hugging Face config's label names and their class indices (label2id)."""
    raw = config.get("label2id") or {}
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, int)}


def _class(folder: str, labels: Mapping[str, int]) -> int | None:
    if folder in labels:
        return labels[folder]
    return int(folder) if folder.isdigit() else None


def label_of(member: str, labels: Mapping[str, int]) -> int | None:
    """The class of an archive member: its folder's name, a class index or a config label."""
    parent = PurePosixPath(member).parent
    if parent == PurePosixPath("."):
        return None
    found = _class(parent.name, labels)
    if found is not None:
        return found
    known = ", ".join(sorted(labels)[:8]) or "none"
    raise InvalidInput(
        f"{member} is in folder {parent.name!r}, which is neither a class index nor a label "
        f"of the model's config (label2id: {known}): name each folder by its class"
    )


def labels_of(files: list[zipfile.ZipInfo], labels: Mapping[str, int]) -> list[int | None]:
    """Each file's class, or None for every file where the archive is unlabelled."""
    parents = {PurePosixPath(m.filename).parent for m in files}
    if len(parents) == 1 and _class(next(iter(parents)).name, labels) is None:
        return [None] * len(files)  # one folder of files, no class
    found = [label_of(m.filename, labels) for m in files]
    if any(label is None for label in found) and any(label is not None for label in found):
        raise InvalidInput(
            "the dataset has files in class folders and files at its top level: put every "
            "file in its class's folder, or none"
        )
    return found


def read_archive(
    path: Path,
    members: list[zipfile.ZipInfo],
    input_names: list[str],
    reading: MediaReading,
) -> dict[str, np.ndarray]:
    """The archive's files as the model's one input (and `__labels__` where labelled), in
    member-name order, prepared a batch at a time by `reading`."""
    if len(input_names) != 1:
        raise InvalidInput(
            f"dataset {path.name} is {reading.kind}, but the model takes {len(input_names)} "
            f"inputs ({', '.join(input_names)}): give its inputs as arrays (npz or safetensors)"
        )
    files = sorted((m for m in members if not m.is_dir()), key=lambda m: m.filename)
    if len(files) > MAX_FILES:
        raise InvalidInput(f"dataset {path.name} holds {len(files)} files; limit {MAX_FILES}")
    large = next((m for m in files if m.file_size > MAX_FILE_BYTES), None)
    if large is not None:
        raise InvalidInput(
            f"{large.filename} inflates to {large.file_size} bytes; the limit is "
            f"{MAX_FILE_BYTES} per file"
        )
    labels = labels_of(files, reading.labels)
    batches: list[np.ndarray] = []
    with zipfile.ZipFile(path) as archive:
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            batches.append(reading.prepare([(m.filename, archive.read(m)) for m in chunk]))
            total = batches[0][0].nbytes * len(files)
            if start == 0 and total > MAX_ARRAY_BYTES:  # every sample prepares to one size
                raise InvalidInput(
                    f"dataset {path.name}'s {len(files)} files prepare to {total} bytes; the "
                    f"limit is {MAX_ARRAY_BYTES}"
                )
    arrays = {input_names[0]: np.concatenate(batches)}
    if labels and labels[0] is not None:
        arrays[LABELS] = np.asarray(labels, dtype=np.int64)
    return arrays


def hf_processor(
    loader: str, preprocessor: Mapping[str, Any], config: Mapping[str, Any], **options: Any
) -> Any:
    """transformers' processor of the model (`loader`: AutoImageProcessor,
    AutoFeatureExtractor), built from the vetted preprocessor and model configs alone, in a
    scratch folder holding nothing else; local files only, never remote code."""
    import transformers

    with tempfile.TemporaryDirectory(prefix="bakeline-processor-") as scratch:
        folder = Path(scratch)
        (folder / HF_PREPROCESSOR).write_text(json.dumps(dict(preprocessor)))
        (folder / "config.json").write_text(json.dumps(dict(config)))
        try:
            return getattr(transformers, loader).from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, **options
            )
        except Exception as exc:
            raise InvalidInput(f"{HF_PREPROCESSOR} does not build a processor: {exc}") from exc
