"""The checkpoint manifest: what a stage leaves behind, shared by agents, stores and the operator.

A checkpoint is a directory holding `manifest.json` and the files it lists. Every file carries
its sha256; a checkpoint whose files do not match is never restored or consumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import msgspec

MANIFEST_NAME = "manifest.json"
# Not in the manifest: which of its files are not in this directory but left in the checkpoint
# store the directory was restored from, and carried by reference (bakeline.checkpoints.configmap).
CARRIED_NAME = "carried.json"
SCHEMA_VERSION = 1

ArtifactFormat = Literal["exported-program", "torchscript", "onnx", "safetensors", "package"]


class ChecksumMismatchError(ValueError):
    """A file's bytes do not match the sha256 its manifest records."""

    def __init__(self, message: str, sha256: str | None = None) -> None:
        super().__init__(message)
        self.sha256 = sha256  # what the manifest records for the file that differs, if one does


class ManifestError(ValueError):
    """A checkpoint directory has no manifest, or one that does not parse."""


# msgspec, not pydantic: every stage pod's wrapper reads and writes manifests, and importing
# pydantic and building these models cost it 115 ms of CPU, more than the rest of a no-op
# stage pod (issue 8 section 2's throughput); msgspec's import is 15 ms. The wire format is
# camelCase, unknown fields are refused, and types are checked whenever a manifest is read or
# written (`parse_manifest`, `Manifest.to_json`), not when one is built in Python.
class _Struct(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class TensorSpec(_Struct, kw_only=True):
    """One named input or output of the model."""

    name: str
    dtype: str  # torch/numpy dtype name, e.g. int64, float32
    shape: list[int | str] = []  # dimensions; strings name dynamic axes such as 'batch'
    description: str = ""


class FileEntry(_Struct, kw_only=True):
    """A file of the checkpoint, relative to its directory."""

    path: str
    sha256: str
    size_bytes: int
    role: str = "data"  # model | reference | calibration | evaluation | tokenizer | report | data


class LineageEntry(_Struct, kw_only=True):
    """One stage applied on the way to this checkpoint."""

    stage: str
    agent: str
    agent_version: str
    params: dict[str, Any] = {}
    input_sha256: str | None = None
    output_sha256: str
    started_at: str
    finished_at: str
    metrics: dict[str, float] = {}


class Manifest(_Struct, kw_only=True):
    """The manifest of one checkpoint."""

    schema_version: int = SCHEMA_VERSION
    model_name: str  # e.g. minilm-l6, digits-cnn
    task: str = ""  # e.g. sentence-embedding, image-classification
    artifact: str  # path of the primary model file among `files`
    format: ArtifactFormat
    files: list[FileEntry]
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    lineage: list[LineageEntry] = []
    metrics: dict[str, float] = {}
    attributes: dict[str, Any] = {}  # agent-specific facts, e.g. dtype, backend, threads
    created_at: str = msgspec.field(default_factory=lambda: utc_now())

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ManifestError(f"manifest lists no file {path!r}")

    @property
    def artifact_sha256(self) -> str:
        return self.file(self.artifact).sha256

    def to_json(self) -> str:
        """The manifest as written, indented; ManifestError if a field has the wrong type (numpy
        scalars are written as the Python numbers they hold)."""
        try:
            encoded = msgspec.json.encode(self, enc_hook=_python_scalar)
            checked = msgspec.json.encode(msgspec.json.decode(encoded, type=Manifest))
        except (msgspec.ValidationError, TypeError) as exc:
            raise ManifestError(f"manifest of {self.model_name!r} is not valid: {exc}") from exc
        return msgspec.json.format(checked, indent=2).decode()


def _python_scalar(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    raise NotImplementedError(f"{type(value).__name__} is not JSON")


def parse_manifest(data: bytes | str) -> Manifest:
    """A manifest from its JSON; ManifestError naming the first field that does not fit."""
    try:
        return msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as exc:
        raise ManifestError(f"manifest does not parse: {exc}") from exc


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def tree_files(root: Path) -> list[str]:
    """The files a folder's digest covers: every file under `root` (links to files followed),
    as POSIX paths relative to it, in byte order; names starting with '.' (a `.git` or `.cache`
    folder, `.gitattributes`) are left out at every level."""
    found: list[str] = []
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if not name.startswith(".")]
        base = Path(folder)
        for name in files:
            if not name.startswith(".") and (base / name).is_file():
                found.append((base / name).relative_to(root).as_posix())
    return sorted(found, key=lambda relative: relative.encode())


def sha256_tree(root: Path) -> str:
    """A folder's sha256 (a Hugging Face model directory's `sha256`): the sha256 of one line
    `<file's sha256>  <relative path>\n` per file of `tree_files`, in that order, i.e. what
    `sha256sum` prints for those files, hashed again. `bakeline digest DIR` prints it."""
    lines = "".join(
        f"{sha256_file(root / relative)}  {relative}\n" for relative in tree_files(root)
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_path(path: Path) -> str:
    """A model source's sha256: the file's bytes, or a folder's `sha256_tree`."""
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


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
        return parse_manifest(path.read_bytes())
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc


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
    directory: Path,
    manifest: Manifest | None = None,
    *,
    carried_ok: bool = False,
    contents: bool = True,
) -> Manifest:
    """Check every listed file against its sha256; raise ChecksumMismatchError on any difference.

    With `carried_ok`, a file that is missing but named in the directory's carried marker
    passes: the store it came from holds it, checked there (a present file is always checked).
    Without `contents`, only that every listed file is there: for a caller that hashes each
    file as it reads it to store it (the ConfigMap store), so the bytes are read once.
    """
    manifest = manifest or read_manifest(directory)
    carried = read_carried(directory) if carried_ok else frozenset()
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            if entry.path in carried:
                continue
            raise ChecksumMismatchError(
                f"{entry.path}: listed in the manifest but missing", entry.sha256
            )
        if not contents:
            continue
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ChecksumMismatchError(
                f"{entry.path}: sha256 {actual} does not match the manifest's {entry.sha256}",
                entry.sha256,
            )
    return manifest
