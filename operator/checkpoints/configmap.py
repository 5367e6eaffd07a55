"""A checkpoint store in ConfigMaps: for clusters with no volume to share between stage pods.

One checkpoint is several ConfigMaps, all named from the store's `prefix` and the checkpoint id:

    PREFIX-ID-0, PREFIX-ID-1, ...   data: the files' bytes as binaryData, in chunks, at most
                                    `part_bytes` (about 900 KiB) per ConfigMap; the API server
                                    refuses a ConfigMap over 1 MiB
    PREFIX-ID                       index, written last: manifest.json (the checkpoint's own
                                    manifest, every file with its sha256), layout.json (where
                                    each file's chunks are), ref.json (the CheckpointRef)
    PREFIX-key-CACHEKEY             the id stored under a cache key

The index is the commit point: a checkpoint whose index is missing does not exist, whatever
data ConfigMaps a crashed writer left. Restore reassembles every file, checks its sha256
against the manifest and refuses any mismatch; nothing half-restored is left behind.

This layer does not import kubernetes: callers hand the store a `ConfigMapClient` bound to one
namespace (the operator's implements it with the kubernetes client, tests with a dict).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import string
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from bakeline.checkpoints.manifest import (
    MANIFEST_NAME,
    ChecksumMismatchError,
    Manifest,
    ManifestError,
    verify_checkpoint,
)
from bakeline.checkpoints.store import CheckpointNotFoundError, CheckpointRef

# Below the API server's 1 MiB limit on a ConfigMap's data, with room for keys and metadata.
PART_BYTES = 900 * 1024
LABEL_COMPONENT = "bakeline.io/component"
LABEL_STORE = "bakeline.io/checkpoint-store"
LABEL_CHECKPOINT = "bakeline.io/checkpoint"
# Not "checkpoint": that label value marks the operator's own checkpoint records, which it
# watches; a store's ConfigMaps must not wake it.
COMPONENT_INDEX = "checkpoint-store-index"
COMPONENT_DATA = "checkpoint-store-data"
COMPONENT_CACHE = "checkpoint-store-cache"
LAYOUT_NAME = "layout.json"
REF_NAME = "ref.json"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_NAME = 253
_MAX_LABEL = 63


@dataclass(frozen=True)
class ConfigMapData:
    """What the store reads back from one ConfigMap."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    binary_data: Mapping[str, bytes] = field(default_factory=dict)


class ConfigMapExistsError(Exception):
    """`create` found a ConfigMap of that name already (the API's 409)."""


class ConfigMapClient(Protocol):
    """The four calls the store makes, on ConfigMaps of one namespace. Created ConfigMaps
    should be immutable; `binary_data` values are raw bytes (the client base64-encodes them)."""

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        """Create; ConfigMapExistsError when the name is taken."""
        ...

    def get(self, name: str) -> ConfigMapData | None:
        """The ConfigMap, or None when there is none."""
        ...

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        """ConfigMaps carrying all of these labels."""
        ...

    def delete(self, name: str) -> None:
        """Delete; a missing ConfigMap is not an error."""
        ...


@dataclass(frozen=True)
class _Chunk:
    part: int  # which data ConfigMap
    key: str  # its binaryData key
    size: int


class ConfigMapStore:
    """Checkpoints as ConfigMaps; implements bakeline.checkpoints.store.CheckpointStore."""

    def __init__(
        self, client: ConfigMapClient, prefix: str = "bakeline-ckpt", part_bytes: int = PART_BYTES
    ) -> None:
        if not _NAME.match(prefix) or len(prefix) > 40:
            raise ValueError(f"store prefix must be a short DNS label, got {prefix!r}")
        if part_bytes <= 0:
            raise ValueError("part_bytes must be positive")
        self.client, self.prefix, self.part_bytes = client, prefix, part_bytes

    # ------------------------------------------------------------------ names
    def _index_name(self, checkpoint_id: str) -> str:
        return f"{self.prefix}-{_check_id(checkpoint_id)}"

    def _part_name(self, checkpoint_id: str, part: int) -> str:
        return f"{self._index_name(checkpoint_id)}-{part}"

    def _cache_name(self, cache_key: str) -> str:
        return f"{self.prefix}-key-{_check_key(cache_key)}"

    def _labels(self, component: str, checkpoint_id: str) -> dict[str, str]:
        return {
            LABEL_COMPONENT: component,
            LABEL_STORE: self.prefix,
            LABEL_CHECKPOINT: checkpoint_id,
        }

    # ------------------------------------------------------------------ writing
    def put(self, source: Path, *, stage: str, cache_key: str | None = None) -> CheckpointRef:
        manifest = verify_checkpoint(source)
        manifest_bytes = (source / MANIFEST_NAME).read_bytes()
        manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
        checkpoint_id = f"{_slug(stage)}-{manifest_sha[:16]}"
        index_name = self._index_name(checkpoint_id)
        if len(self._part_name(checkpoint_id, 9999)) > _MAX_NAME:
            raise ValueError(f"checkpoint name {index_name!r} is too long for a ConfigMap")
        ref = CheckpointRef.of(manifest, checkpoint_id, stage, cache_key)
        if self.client.get(index_name) is None:
            layout = self._write_parts(source, manifest, checkpoint_id)
            index = {
                MANIFEST_NAME: manifest_bytes.decode(),
                LAYOUT_NAME: json.dumps(
                    {
                        "manifestSha256": manifest_sha,
                        "files": {
                            path: [[c.part, c.key, c.size] for c in chunks]
                            for path, chunks in layout.items()
                        },
                    },
                    sort_keys=True,
                ),
                REF_NAME: json.dumps(asdict(ref), sort_keys=True),
            }
            # ConfigMapExistsError: a concurrent writer stored the same manifest bytes.
            with contextlib.suppress(ConfigMapExistsError):
                labels = self._labels(COMPONENT_INDEX, checkpoint_id)
                self.client.create(index_name, labels, index, {})
        else:
            ref = self.get(checkpoint_id)  # already stored: keep its first ref
        if cache_key is not None:
            self.remember(cache_key, checkpoint_id)
            ref = CheckpointRef(**{**asdict(ref), "cache_key": cache_key})
        return ref

    def _write_parts(
        self, source: Path, manifest: Manifest, checkpoint_id: str
    ) -> dict[str, list[_Chunk]]:
        layout: dict[str, list[_Chunk]] = {}
        part: dict[str, bytes] = {}
        size = 0
        parts = 0
        for file_index, entry in enumerate(manifest.files):
            chunks: list[_Chunk] = []
            digest = hashlib.sha256()
            for chunk_index, data in enumerate(_read_chunks(source / entry.path, self.part_bytes)):
                digest.update(data)
                if part and size + len(data) > self.part_bytes:
                    self._create_part(checkpoint_id, parts, part)
                    parts, part, size = parts + 1, {}, 0
                key = f"f{file_index:04d}.{chunk_index:05d}"
                part[key] = data
                size += len(data)
                chunks.append(_Chunk(parts, key, len(data)))
            # What was read is what is stored: check it, since the source may be changing.
            if digest.hexdigest() != entry.sha256:
                raise ChecksumMismatchError(f"{entry.path}: changed while it was being stored")
            layout[entry.path] = chunks
        if part:
            self._create_part(checkpoint_id, parts, part)
        return layout

    def _create_part(self, checkpoint_id: str, part: int, binary: dict[str, bytes]) -> None:
        name = self._part_name(checkpoint_id, part)
        labels = self._labels(COMPONENT_DATA, checkpoint_id)
        try:
            self.client.create(name, labels, {}, binary)
        except ConfigMapExistsError:
            # Left by a writer that crashed before its index: its bytes are this same
            # checkpoint's only if they are equal; otherwise replace them.
            existing = self.client.get(name)
            if existing is not None and dict(existing.binary_data) == binary:
                return
            self.client.delete(name)
            self.client.create(name, labels, {}, binary)

    def remember(self, cache_key: str, checkpoint_id: str) -> None:
        self.get(checkpoint_id)
        name = self._cache_name(cache_key)
        existing = self.client.get(name)
        if existing is not None:
            if existing.data.get("checkpoint") == checkpoint_id:
                return
            self.client.delete(name)  # immutable: replace, never update
        labels = self._labels(COMPONENT_CACHE, checkpoint_id)
        data = {"checkpoint": checkpoint_id, "cacheKey": cache_key}
        # ConfigMapExistsError: a concurrent remember; either id is a valid entry for this key.
        with contextlib.suppress(ConfigMapExistsError):
            self.client.create(name, labels, data, {})

    # ------------------------------------------------------------------ reading
    def _index(self, checkpoint_id: str) -> ConfigMapData:
        index = self.client.get(self._index_name(checkpoint_id))
        if index is None:
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r} in {self.prefix}")
        return index

    def get(self, checkpoint_id: str) -> CheckpointRef:
        return _ref(self._index(checkpoint_id))

    def _load(self, checkpoint_id: str) -> tuple[Manifest, bytes, dict[str, list[_Chunk]]]:
        index = self._index(checkpoint_id)
        try:
            manifest_bytes = index.data[MANIFEST_NAME].encode()
            layout = json.loads(index.data[LAYOUT_NAME])
            manifest = Manifest.model_validate(json.loads(manifest_bytes))
            files = {
                path: [_Chunk(int(p), str(k), int(s)) for p, k, s in chunks]
                for path, chunks in layout["files"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            message = f"checkpoint {checkpoint_id!r}: index does not parse: {exc}"
            raise ManifestError(message) from exc
        actual = hashlib.sha256(manifest_bytes).hexdigest()
        if actual != layout.get("manifestSha256") or not checkpoint_id.endswith(actual[:16]):
            raise ChecksumMismatchError(
                f"checkpoint {checkpoint_id!r}: manifest sha256 {actual} does not match its id"
            )
        return manifest, manifest_bytes, files

    def _file_chunks(
        self, checkpoint_id: str, manifest: Manifest, files: dict[str, list[_Chunk]]
    ) -> Iterator[tuple[str, Iterator[bytes]]]:
        """Each listed file's chunks, with every data ConfigMap read once."""
        cache: dict[int, ConfigMapData] = {}

        def part(number: int) -> ConfigMapData:
            if number not in cache:
                cache.clear()  # parts are read in order: keep one in memory
                found = self.client.get(self._part_name(checkpoint_id, number))
                if found is None:
                    raise ChecksumMismatchError(
                        f"checkpoint {checkpoint_id!r}: data ConfigMap {number} is missing"
                    )
                cache[number] = found
            return cache[number]

        def chunks(path: str) -> Iterator[bytes]:
            for chunk in files.get(path, []):
                data = part(chunk.part).binary_data.get(chunk.key)
                if data is None or len(data) != chunk.size:
                    raise ChecksumMismatchError(f"{path}: chunk {chunk.key} is missing or cut")
                yield bytes(data)

        for entry in manifest.files:
            if entry.path not in files:
                raise ChecksumMismatchError(f"{entry.path}: listed in the manifest but not stored")
            yield entry.path, chunks(entry.path)

    def verify(self, checkpoint_id: str) -> Manifest:
        manifest, _, files = self._load(checkpoint_id)
        for path, chunks in self._file_chunks(checkpoint_id, manifest, files):
            digest = hashlib.sha256()
            for data in chunks:
                digest.update(data)
            _check(path, digest.hexdigest(), manifest.file(path).sha256)
        return manifest

    def lookup(self, cache_key: str) -> CheckpointRef | None:
        entry = self.client.get(self._cache_name(cache_key))
        if entry is None:
            return None
        checkpoint_id = entry.data.get("checkpoint", "")
        try:
            ref = self.get(checkpoint_id)
            self.verify(checkpoint_id)
        except (CheckpointNotFoundError, ChecksumMismatchError, ManifestError, ValueError):
            # A damaged or vanished entry is a miss, and is dropped so it is not tried again.
            self.client.delete(self._cache_name(cache_key))
            return None
        return CheckpointRef(**{**asdict(ref), "cache_key": cache_key})

    def restore(self, checkpoint_id: str, destination: Path) -> Manifest:
        """Reassemble the checkpoint in `destination`, every file checked against its sha256
        as it is written; on any mismatch nothing is left there."""
        if destination.exists():
            raise FileExistsError(f"restore target {destination} already exists")
        manifest, manifest_bytes, files = self._load(checkpoint_id)
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
        try:
            for path, chunks in self._file_chunks(checkpoint_id, manifest, files):
                target = staging / path
                if not target.resolve().is_relative_to(staging.resolve()):
                    raise ManifestError(f"{path}: a manifest path may not leave the checkpoint")
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with target.open("wb") as handle:
                    for data in chunks:
                        digest.update(data)
                        handle.write(data)
                _check(path, digest.hexdigest(), manifest.file(path).sha256)
            (staging / MANIFEST_NAME).write_bytes(manifest_bytes)
            staging.replace(destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def list(self) -> list[CheckpointRef]:
        refs = []
        for index in self.client.list({LABEL_COMPONENT: COMPONENT_INDEX, LABEL_STORE: self.prefix}):
            try:
                refs.append(_ref(index))
            except ManifestError:
                continue
        return sorted(refs, key=lambda ref: (ref.created_at, ref.id))

    def delete(self, checkpoint_id: str) -> None:
        # The index first: from then on the checkpoint does not exist, whatever is left.
        self.client.delete(self._index_name(checkpoint_id))
        selector = {LABEL_STORE: self.prefix, LABEL_CHECKPOINT: checkpoint_id}
        for component in (COMPONENT_DATA, COMPONENT_CACHE):
            for found in self.client.list({**selector, LABEL_COMPONENT: component}):
                self.client.delete(found.name)


def _ref(index: ConfigMapData) -> CheckpointRef:
    try:
        return CheckpointRef(**json.loads(index.data[REF_NAME]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"ConfigMap {index.name}: {REF_NAME} does not parse: {exc}") from exc


def _read_chunks(path: Path, size: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(size):
            yield data


def _check(path: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise ChecksumMismatchError(
            f"{path}: sha256 {actual} does not match the manifest's {expected}"
        )


def _slug(stage: str) -> str:
    allowed = string.ascii_lowercase + string.digits + "-"
    slug = "".join(c if c in allowed else "-" for c in stage.lower()).strip("-")
    # The id is a label value too (at most 63): 40 for the stage, 17 for the digest.
    return slug[:40].strip("-") or "x"


def _check_id(checkpoint_id: str) -> str:
    if not _NAME.match(checkpoint_id) or len(checkpoint_id) > _MAX_LABEL:
        raise ValueError(f"invalid checkpoint id {checkpoint_id!r}")
    return checkpoint_id


def _check_key(cache_key: str) -> str:
    if len(cache_key) != 64 or any(c not in "0123456789abcdef" for c in cache_key):
        raise ValueError(f"cache key must be a sha256 hex digest, got {cache_key!r}")
    return cache_key
