"""A checkpoint store in ConfigMaps: for clusters with no volume to share between stage pods.

One checkpoint is several ConfigMaps, all named from the store's `prefix` and the checkpoint id:

    PREFIX-ID-0, PREFIX-ID-1, ...   data: small files' bytes as binaryData, packed, at most
                                    `part_bytes` (about 900 KiB) per ConfigMap; the API server
                                    refuses a ConfigMap over 1 MiB
    PREFIX-blob-SHA-0, ...          a file larger than `blob_bytes`, by content: its chunks of
    PREFIX-blob-SHA                 `part_bytes`, then its index (sha256 and chunk sizes),
                                    written last; shared by every checkpoint of the store that
                                    holds the same bytes
    PREFIX-ID                       index, written last: manifest.json (the checkpoint's own
                                    manifest, every file with its sha256), layout.json (where
                                    each file's chunks are), ref.json (the CheckpointRef)
    PREFIX-key-CACHEKEY             the id stored under a cache key

A stage whose agent never opens the original model restores its input without it
(`restore(..., leave_roles=...)`): the directory's carried marker names what was left, and a
`put` of the stage's output refers to the blob already stored instead of reading the file. Of a
MiniLM bake's eight restores, six need not fetch its 90 MB fp32 original.

The index is the commit point: a checkpoint whose index is missing does not exist, whatever
data ConfigMaps a crashed writer left. Restore reassembles every file, checks its sha256
against the manifest and refuses any mismatch; nothing half-restored is left behind.

Blobs exist because stages carry files forward: every checkpoint of a bake holds the original
model and the data splits, so a nine-stage MiniLM bake wrote 1 GB through the API server (and
into etcd, whose default quota is 2 GiB) for about 280 MB of distinct bytes. Deleting a
checkpoint deletes the blobs no other checkpoint of the store lists; the store's ConfigMaps are
owned by the job, so deleting the job deletes them all.

This layer does not import kubernetes: callers hand the store a `ConfigMapClient` bound to one
namespace (the operator's implements it with the kubernetes client, tests with a dict).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import shutil
import string
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bakeline.checkpoints.manifest import (
    MANIFEST_NAME,
    ChecksumMismatchError,
    Manifest,
    ManifestError,
    parse_manifest,
    read_carried,
    verify_checkpoint,
    write_carried,
)
from bakeline.checkpoints.store import CheckpointNotFoundError, CheckpointRef

# Below the API server's 1 MiB limit on a ConfigMap's data, with room for keys and metadata.
PART_BYTES = 900 * 1024
# Data ConfigMaps created at once: the API server overlaps concurrent writes (measured against
# the test control plane: 17.7 MB/s one at a time, 25 with two, 29 with four).
WRITERS = 4
# Blob chunks fetched ahead of the one being checked and written, so that the API server
# encodes the next while this process decodes, hashes and writes the last.
READERS = 2
LABEL_COMPONENT = "bakeline.io/component"
LABEL_STORE = "bakeline.io/checkpoint-store"
LABEL_CHECKPOINT = "bakeline.io/checkpoint"
# Not "checkpoint": that label value marks the operator's own checkpoint records, which it
# watches; a store's ConfigMaps must not wake it.
COMPONENT_INDEX = "checkpoint-store-index"
COMPONENT_DATA = "checkpoint-store-data"
COMPONENT_CACHE = "checkpoint-store-cache"
COMPONENT_BLOB = "checkpoint-store-blob"
LABEL_BLOB = "bakeline.io/blob"
BLOB_KEY = "chunk"
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

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> ConfigMapData:
        """From a ConfigMap as the API server's JSON has it (binaryData base64-encoded)."""
        meta = item.get("metadata") or {}
        binary = item.get("binaryData") or {}
        return cls(
            name=str(meta.get("name")),
            labels=dict(meta.get("labels") or {}),
            data=dict(item.get("data") or {}),
            binary_data={key: base64.b64decode(value) for key, value in binary.items()},
        )


class StoreReader:
    """The part of a ConfigMapClient that only reads: `create` is refused, and so is `delete`
    unless a subclass allows it (the operator prunes; `bakeline fetch` never writes)."""

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not write the checkpoint store")

    def delete(self, name: str) -> None:
        raise NotImplementedError(f"{type(self).__name__} removes nothing from the store")


def label_selector(labels: Mapping[str, str]) -> str:
    """`labels` as the API's label selector."""
    return ",".join(f"{key}={value}" for key, value in labels.items())


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


@dataclass(frozen=True)
class _Blob:
    sha256: str  # the file's, naming its ConfigMaps
    sizes: tuple[int, ...]  # each chunk's


_Stored = list[_Chunk] | _Blob


class ConfigMapStore:
    """Checkpoints as ConfigMaps; implements bakeline.checkpoints.store.CheckpointStore."""

    def __init__(
        self,
        client: ConfigMapClient,
        prefix: str = "bakeline-ckpt",
        part_bytes: int = PART_BYTES,
        blob_bytes: int | None = None,
        writers: int = WRITERS,
        readers: int = READERS,
    ) -> None:
        if not _NAME.match(prefix) or len(prefix) > 40:
            raise ValueError(f"store prefix must be a short DNS label, got {prefix!r}")
        if part_bytes <= 0:
            raise ValueError("part_bytes must be positive")
        if writers < 1 or readers < 1:
            raise ValueError("writers and readers must be at least 1")
        self.client, self.prefix, self.part_bytes = client, prefix, part_bytes
        self.writers, self.readers = writers, readers
        # Files above a quarter of a part are stored by content; smaller ones pack into parts.
        self.blob_bytes = part_bytes // 4 if blob_bytes is None else blob_bytes

    # ------------------------------------------------------------------ names
    def _index_name(self, checkpoint_id: str) -> str:
        return f"{self.prefix}-{_check_id(checkpoint_id)}"

    def _part_name(self, checkpoint_id: str, part: int) -> str:
        return f"{self._index_name(checkpoint_id)}-{part}"

    def _cache_name(self, cache_key: str) -> str:
        return f"{self.prefix}-key-{_check_key(cache_key)}"

    def _blob_name(self, sha256: str, chunk: int | None = None) -> str:
        name = f"{self.prefix}-blob-{_check_key(sha256)[:32]}"
        return name if chunk is None else f"{name}-{chunk}"

    def _labels(self, component: str, checkpoint_id: str) -> dict[str, str]:
        return {
            LABEL_COMPONENT: component,
            LABEL_STORE: self.prefix,
            LABEL_CHECKPOINT: checkpoint_id,
        }

    # ------------------------------------------------------------------ writing
    def put(self, source: Path, *, stage: str, cache_key: str | None = None) -> CheckpointRef:
        """Store `source`; a file it carries by reference (restored with `leave_roles`) must be
        a complete blob of this store already, and is not read. Each file is hashed once, as it
        is read to be stored; a mismatch raises before the checkpoint's index commits it."""
        manifest = verify_checkpoint(source, carried_ok=True, contents=False)
        manifest_bytes = (source / MANIFEST_NAME).read_bytes()
        manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
        checkpoint_id = f"{_slug(stage)}-{manifest_sha[:16]}"
        index_name = self._index_name(checkpoint_id)
        if len(self._part_name(checkpoint_id, 9999)) > _MAX_NAME:
            raise ValueError(f"checkpoint name {index_name!r} is too long for a ConfigMap")
        ref = CheckpointRef.of(manifest, checkpoint_id, stage, cache_key)
        if self.client.get(index_name) is None:
            with _Writes(self.writers) as writes:
                layout = self._write_parts(source, manifest, checkpoint_id, writes)
            index = {
                MANIFEST_NAME: manifest_bytes.decode(),
                LAYOUT_NAME: json.dumps(
                    {
                        "manifestSha256": manifest_sha,
                        "files": {path: _dump(stored) for path, stored in layout.items()},
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
        self, source: Path, manifest: Manifest, checkpoint_id: str, writes: _Writes
    ) -> dict[str, _Stored]:
        """Every file's data ConfigMaps, all written (`writes` is drained) when it returns."""
        layout: dict[str, _Stored] = {}
        part: dict[str, bytes] = {}
        size = 0
        parts = 0
        carried = read_carried(source)
        for file_index, entry in enumerate(manifest.files):
            if entry.path in carried and not (source / entry.path).is_file():
                layout[entry.path] = self._stored_blob(entry.path, entry.sha256)
                continue
            if entry.size_bytes > self.blob_bytes:
                layout[entry.path] = self._write_blob(
                    source / entry.path, entry.path, entry.sha256, writes
                )
                continue
            chunks: list[_Chunk] = []
            digest = hashlib.sha256()
            for chunk_index, data in enumerate(_read_chunks(source / entry.path, self.part_bytes)):
                digest.update(data)
                if part and size + len(data) > self.part_bytes:
                    writes.submit(self._create_part, checkpoint_id, parts, part)
                    parts, part, size = parts + 1, {}, 0
                key = f"f{file_index:04d}.{chunk_index:05d}"
                part[key] = data
                size += len(data)
                chunks.append(_Chunk(parts, key, len(data)))
            # The hash of what was read and stored: a source may be changing as it is read.
            _check(entry.path, digest.hexdigest(), entry.sha256)
            layout[entry.path] = chunks
        if part:
            writes.submit(self._create_part, checkpoint_id, parts, part)
        writes.drain()
        return layout

    def _write_blob(self, path: Path, relative: str, sha256: str, writes: _Writes) -> _Blob:
        """Store the file by content unless a complete blob of these bytes is there already."""
        index_name = self._blob_name(sha256)
        existing = self.client.get(index_name)
        stored = _matching_blob(existing, sha256)
        if stored is not None:
            return stored
        if existing is not None:
            self.client.delete(index_name)  # another file's prefix, or unreadable: rewrite
        labels = {
            LABEL_COMPONENT: COMPONENT_BLOB,
            LABEL_STORE: self.prefix,
            LABEL_BLOB: sha256[:32],
        }
        digest = hashlib.sha256()
        sizes = []
        for chunk, data in enumerate(_read_chunks(path, self.part_bytes)):
            digest.update(data)
            writes.submit(
                self._create_or_replace, self._blob_name(sha256, chunk), labels, {BLOB_KEY: data}
            )
            sizes.append(len(data))
        _check(relative, digest.hexdigest(), sha256)
        writes.drain()  # the blob's index commits it: only once every chunk is there
        index = {"sha256": sha256, "sizes": json.dumps(sizes)}
        # ConfigMapExistsError: a concurrent writer stored the same bytes.
        with contextlib.suppress(ConfigMapExistsError):
            self.client.create(index_name, labels, index, {})
        return _Blob(sha256, tuple(sizes))

    def _create_part(self, checkpoint_id: str, part: int, binary: dict[str, bytes]) -> None:
        labels = self._labels(COMPONENT_DATA, checkpoint_id)
        self._create_or_replace(self._part_name(checkpoint_id, part), labels, binary)

    def _create_or_replace(
        self, name: str, labels: Mapping[str, str], binary: dict[str, bytes]
    ) -> None:
        try:
            self.client.create(name, labels, {}, binary)
        except ConfigMapExistsError:
            # Left by a writer that crashed before its index: its bytes are this same
            # checkpoint's (or blob's) only if they are equal; otherwise replace them.
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

    def _load(self, checkpoint_id: str) -> tuple[Manifest, bytes, dict[str, _Stored]]:
        index = self._index(checkpoint_id)
        try:
            manifest_bytes = index.data[MANIFEST_NAME].encode()
            layout = json.loads(index.data[LAYOUT_NAME])
            manifest = parse_manifest(manifest_bytes)
            files = {path: _parse(stored) for path, stored in layout["files"].items()}
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
        self,
        checkpoint_id: str,
        manifest: Manifest,
        files: dict[str, _Stored],
        skip: frozenset[str] = frozenset(),
    ) -> Iterator[tuple[str, Iterator[bytes]]]:
        """Each listed file's chunks but those in `skip`, with every data ConfigMap read once."""
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

        def blob_chunks(path: str, blob: _Blob) -> Iterator[bytes]:
            names = [self._blob_name(blob.sha256, number) for number in range(len(blob.sizes))]
            fetched = _read_ahead(self.client, names, self.readers)
            for number, (size, found) in enumerate(zip(blob.sizes, fetched, strict=True)):
                data = None if found is None else found.binary_data.get(BLOB_KEY)
                if data is None or len(data) != size:
                    raise ChecksumMismatchError(f"{path}: blob chunk {number} is missing or cut")
                yield bytes(data)

        def chunks(path: str) -> Iterator[bytes]:
            stored = files[path]
            if isinstance(stored, _Blob):
                yield from blob_chunks(path, stored)
                return
            for chunk in stored:
                data = part(chunk.part).binary_data.get(chunk.key)
                if data is None or len(data) != chunk.size:
                    raise ChecksumMismatchError(f"{path}: chunk {chunk.key} is missing or cut")
                yield bytes(data)

        for entry in manifest.files:
            if entry.path not in files:
                raise ChecksumMismatchError(f"{entry.path}: listed in the manifest but not stored")
            if entry.path not in skip:
                yield entry.path, chunks(entry.path)

    def verify(self, checkpoint_id: str) -> Manifest:
        manifest, _, files = self._load(checkpoint_id)
        for path, chunks in self._file_chunks(checkpoint_id, manifest, files):
            digest = hashlib.sha256()
            for data in chunks:
                digest.update(data)
            _check(path, digest.hexdigest(), manifest.file(path).sha256)
        return manifest

    def _left(
        self, manifest: Manifest, files: dict[str, _Stored], leave_roles: frozenset[str]
    ) -> frozenset[str]:
        """The files of `leave_roles` a restore may leave in the store: blobs that are there."""
        left = set()
        for entry in manifest.files:
            stored = files.get(entry.path)
            if entry.role in leave_roles and isinstance(stored, _Blob):
                self._stored_blob(entry.path, entry.sha256)  # present, or the restore fails now
                left.add(entry.path)
        return frozenset(left)

    def _stored_blob(self, path: str, sha256: str) -> _Blob:
        """The complete blob of these bytes; ChecksumMismatchError when the store has none."""
        blob = _matching_blob(self.client.get(self._blob_name(sha256)), sha256)
        if blob is None:
            raise ChecksumMismatchError(f"{path}: its blob {sha256[:16]} is not in the store")
        return blob

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

    def restore(
        self, checkpoint_id: str, destination: Path, leave_roles: frozenset[str] = frozenset()
    ) -> Manifest:
        """Reassemble the checkpoint in `destination`, every file checked against its sha256
        as it is written; on any mismatch nothing is left there.

        Blob-stored files of `leave_roles` stay in the store: `destination` lists them in its
        carried marker (CARRIED_NAME), and a `put` of a checkpoint that carries them forward
        refers to the same blobs. A stage pod whose agent never opens the original model
        restores its input this way (bakeline.stagepod.store)."""
        if destination.exists():
            raise FileExistsError(f"restore target {destination} already exists")
        manifest, manifest_bytes, files = self._load(checkpoint_id)
        left = self._left(manifest, files, leave_roles)
        destination.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}-", dir=destination.parent))
        try:
            for path, chunks in self._file_chunks(checkpoint_id, manifest, files, skip=left):
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
            write_carried(staging, left)
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
        self.delete_all([checkpoint_id])

    def delete_all(self, checkpoint_ids: Iterable[str]) -> None:
        """Delete checkpoints, then the blobs no checkpoint left lists (one listing for all)."""
        blobs: set[str] = set()
        for checkpoint_id in checkpoint_ids:
            index = self.client.get(self._index_name(checkpoint_id))
            blobs |= _blobs(index) if index is not None else set()
            # The index first: from then on the checkpoint does not exist, whatever is left.
            self.client.delete(self._index_name(checkpoint_id))
            selector = {LABEL_STORE: self.prefix, LABEL_CHECKPOINT: checkpoint_id}
            for component in (COMPONENT_DATA, COMPONENT_CACHE):
                for found in self.client.list({**selector, LABEL_COMPONENT: component}):
                    self.client.delete(found.name)
        if not blobs:
            return
        indexes = self.client.list({LABEL_COMPONENT: COMPONENT_INDEX, LABEL_STORE: self.prefix})
        listed = set().union(*(_blobs(other) for other in indexes))
        for sha256 in blobs - listed:
            self.client.delete(self._blob_name(sha256))  # its index first, as for checkpoints
            labels = {LABEL_COMPONENT: COMPONENT_BLOB, LABEL_STORE: self.prefix}
            for found in self.client.list({**labels, LABEL_BLOB: sha256[:32]}):
                self.client.delete(found.name)


class _Writes:
    """Data ConfigMap creates, up to `writers` in flight, at most twice that many queued (each
    holds a part's bytes). `drain` waits for all and raises the first failure; leaving the
    block drains too, or on an error cancels what has not started."""

    def __init__(self, writers: int) -> None:
        self._pool = ThreadPoolExecutor(writers, "configmap-write") if writers > 1 else None
        self._slots = threading.BoundedSemaphore(2 * writers)
        self._pending: list[Future[None]] = []

    def submit(self, create: Callable[..., None], *args: object) -> None:
        if self._pool is None:
            create(*args)
            return
        self._slots.acquire()
        future = self._pool.submit(create, *args)
        future.add_done_callback(lambda _: self._slots.release())
        self._pending.append(future)
        if future.done() and future.exception() is not None:
            self.drain()  # fail early rather than after queueing the rest

    def drain(self) -> None:
        pending, self._pending = self._pending, []
        errors = [e for e in (f.exception() for f in pending) if e is not None]
        if errors:
            raise errors[0]

    def __enter__(self) -> _Writes:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=error is not None)
        if error is None:
            self.drain()


def _read_ahead(
    client: ConfigMapClient, names: list[str], readers: int
) -> Iterator[ConfigMapData | None]:
    """The ConfigMaps `names`, in order, with up to `readers` fetched ahead of the one taken."""
    if readers <= 1:
        yield from map(client.get, names)
        return
    with ThreadPoolExecutor(readers, "configmap-read") as pool:
        pending = [pool.submit(client.get, name) for name in names[:readers]]
        for ahead in names[readers:]:
            found = pending.pop(0).result()
            pending.append(pool.submit(client.get, ahead))
            yield found
        for future in pending:
            yield future.result()


def _ref(index: ConfigMapData) -> CheckpointRef:
    try:
        return CheckpointRef(**json.loads(index.data[REF_NAME]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"ConfigMap {index.name}: {REF_NAME} does not parse: {exc}") from exc


def _dump(stored: _Stored) -> object:
    if isinstance(stored, _Blob):
        return {"blob": stored.sha256, "sizes": list(stored.sizes)}
    return [[c.part, c.key, c.size] for c in stored]


def _parse(stored: object) -> _Stored:
    """One file's entry of layout.json; ValueError / KeyError / TypeError when malformed."""
    if isinstance(stored, dict):
        return _Blob(_check_key(str(stored["blob"])), tuple(int(s) for s in stored["sizes"]))
    if not isinstance(stored, list):
        raise TypeError(f"a file's layout is a list or a blob, not {type(stored).__name__}")
    return [_Chunk(int(p), str(k), int(s)) for p, k, s in stored]


def _blob(index: ConfigMapData) -> _Blob:
    try:
        sizes = tuple(int(s) for s in json.loads(index.data["sizes"]))
        return _Blob(_check_key(index.data["sha256"]), sizes)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"ConfigMap {index.name}: blob index does not parse: {exc}") from exc


def _matching_blob(index: ConfigMapData | None, sha256: str) -> _Blob | None:
    """The blob this index commits, if it parses and holds these bytes (names keep only 32 of
    the sha256's 64 digits)."""
    if index is None:
        return None
    with contextlib.suppress(ManifestError):
        blob = _blob(index)
        if blob.sha256 == sha256:
            return blob
    return None


def _blobs(index: ConfigMapData) -> set[str]:
    """The blobs a checkpoint index lists (none when it does not parse)."""
    try:
        files = json.loads(index.data[LAYOUT_NAME])["files"].values()
        return {stored.sha256 for stored in map(_parse, files) if isinstance(stored, _Blob)}
    except (KeyError, TypeError, ValueError, AttributeError):
        return set()


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


def _check_key(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"cache keys and blobs are sha256 hex digests, got {digest!r}")
    return digest
