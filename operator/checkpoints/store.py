"""Checkpoint stores: where stage outputs live between stages, keyed by id and by cache key.

`CheckpointStore` is the interface the engine's drivers use; `LocalStore` keeps checkpoints in a
directory for `bakeline run`, and the operator's ConfigMap and volume stores implement the same
methods. Every read path verifies sha256 first: a checkpoint whose bytes do not match its manifest
is never restored and never served from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bakeline.checkpoints.manifest import (
    MANIFEST_NAME,
    ChecksumMismatchError,
    FileEntry,
    Manifest,
    ManifestError,
    sha256_file,
    utc_now,
    verify_checkpoint,
)


class CheckpointNotFoundError(LookupError):
    """No checkpoint has this id."""


@dataclass(frozen=True)
class CheckpointRef:
    """What a store knows about one checkpoint without reading its files."""

    id: str
    stage: str
    artifact_sha256: str
    size_bytes: int  # of the primary artifact
    format: str
    cache_key: str | None = None
    created_at: str = ""

    @classmethod
    def of(
        cls, manifest: Manifest, checkpoint_id: str, stage: str, cache_key: str | None
    ) -> CheckpointRef:
        """The reference to a checkpoint stored now from `manifest`."""
        return cls(
            id=checkpoint_id,
            stage=stage,
            artifact_sha256=manifest.artifact_sha256,
            size_bytes=manifest.file(manifest.artifact).size_bytes,
            format=manifest.format,
            cache_key=cache_key,
            created_at=utc_now(),
        )


@runtime_checkable
class CheckpointStore(Protocol):
    def put(self, source: Path, *, stage: str, cache_key: str | None = None) -> CheckpointRef:
        """Verify the checkpoint in `source` and keep a copy; index it under `cache_key`."""
        ...

    def get(self, checkpoint_id: str) -> CheckpointRef:
        """The checkpoint's reference; CheckpointNotFoundError when there is none."""
        ...

    def verify(self, checkpoint_id: str) -> Manifest:
        """Check every file against the manifest; ChecksumMismatchError on any difference."""
        ...

    def lookup(self, cache_key: str) -> CheckpointRef | None:
        """A verified checkpoint stored under this cache key, or None."""
        ...

    def remember(self, cache_key: str, checkpoint_id: str) -> None:
        """Index a stored checkpoint under a cache key (once the engine has accepted it)."""
        ...

    def restore(self, checkpoint_id: str, destination: Path) -> Manifest:
        """Copy a verified checkpoint into `destination` (which must not exist yet)."""
        ...

    def list(self) -> list[CheckpointRef]: ...

    def delete(self, checkpoint_id: str) -> None: ...


class LocalStore:
    """Checkpoints as directories under `root`:

    root/checkpoints/<id>/        manifest.json and the files it lists
    root/checkpoints/<id>.json    the CheckpointRef (stage, cache key, ...)
    root/cache/<key>              the id stored under a cache key
    root/objects/<sha256>         each distinct file's bytes, once

    A checkpoint's files are hard links to objects: stages carry the original model and the
    data splits forward, so a MiniLM bake lists 1 GB of files for about 400 MB of distinct
    bytes, and copying and checking all of it was 5% of the bake's stage time. An object is
    checked against its sha256 once, when it is first stored; every read path still checks
    each checkpoint's files (restore, verify, lookup), and bytes found damaged there leave the
    objects, so no later checkpoint links them.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checkpoints = root / "checkpoints"
        self._cache = root / "cache"
        self._objects = root / "objects"
        for directory in (self._checkpoints, self._cache, self._objects):
            directory.mkdir(parents=True, exist_ok=True)

    def path(self, checkpoint_id: str) -> Path:
        """The directory holding the checkpoint (read it, never write it)."""
        _check_id(checkpoint_id)
        return self._checkpoints / checkpoint_id

    def put(self, source: Path, *, stage: str, cache_key: str | None = None) -> CheckpointRef:
        manifest = verify_checkpoint(source)
        staging = Path(tempfile.mkdtemp(prefix=".put-", dir=self._checkpoints))
        try:
            for entry in manifest.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(self._object(source / entry.path, entry), target)
            shutil.copyfile(source / MANIFEST_NAME, staging / MANIFEST_NAME)
            checkpoint_id = f"{_slug(stage)}-{_manifest_digest(staging)[:16]}"
            final = self._checkpoints / checkpoint_id
            if final.exists() and _same_files(staging, final, manifest):
                shutil.rmtree(staging)  # same manifest bytes and stored bytes: already stored
            else:
                # New, or stored before from bytes since found damaged (`verify` dropped them
                # from the objects): the fresh copy takes its place.
                shutil.rmtree(final, ignore_errors=True)
                staging.replace(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        ref = CheckpointRef.of(manifest, checkpoint_id, stage, cache_key)
        _write_atomic(self._checkpoints / f"{checkpoint_id}.json", json.dumps(asdict(ref)))
        if cache_key is not None:
            _write_atomic(self._cache / _check_key(cache_key), checkpoint_id)
        return ref

    def _object(self, source: Path, entry: FileEntry) -> Path:
        """The stored bytes of `entry`, copied from `source` unless an object of the same
        sha256 and size is there already."""
        stored = self._objects / _check_key(entry.sha256)
        if stored.is_file() and stored.stat().st_size == entry.size_bytes:
            return stored
        staging = self._objects / f".{entry.sha256}.{os.getpid()}.tmp"
        try:
            shutil.copyfile(source, staging)
            # Check the copy: the source may have changed since it was verified.
            actual = sha256_file(staging)
            if actual != entry.sha256:
                raise ChecksumMismatchError(
                    f"{entry.path}: changed while it was being stored "
                    f"(sha256 {actual}, the manifest's {entry.sha256})"
                )
            staging.replace(stored)
        finally:
            staging.unlink(missing_ok=True)
        return stored

    def get(self, checkpoint_id: str) -> CheckpointRef:
        meta = self._checkpoints / f"{_check_id(checkpoint_id)}.json"
        if not meta.is_file() or not (self._checkpoints / checkpoint_id).is_dir():
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r} in {self.root}")
        try:
            return CheckpointRef(**json.loads(meta.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ManifestError(f"{meta} does not parse: {exc}") from exc

    def verify(self, checkpoint_id: str) -> Manifest:
        self.get(checkpoint_id)
        try:
            return verify_checkpoint(self.path(checkpoint_id))
        except ChecksumMismatchError as exc:
            # Checkpoints share objects by hard link: damaged bytes found here are dropped from
            # the objects, so the next put of that file stores it afresh instead of linking them.
            if exc.sha256 is not None:
                (self._objects / _check_key(exc.sha256)).unlink(missing_ok=True)
            raise

    def lookup(self, cache_key: str) -> CheckpointRef | None:
        entry = self._cache / _check_key(cache_key)
        if not entry.is_file():
            return None
        checkpoint_id = entry.read_text().strip()
        try:
            ref = self.get(checkpoint_id)
            self.verify(checkpoint_id)
        except (CheckpointNotFoundError, ChecksumMismatchError, ManifestError, ValueError):
            # A damaged or vanished entry is a miss, and is dropped so it is not tried again.
            entry.unlink(missing_ok=True)
            return None
        return ref

    def remember(self, cache_key: str, checkpoint_id: str) -> None:
        self.get(checkpoint_id)
        _write_atomic(self._cache / _check_key(cache_key), checkpoint_id)

    def restore(self, checkpoint_id: str, destination: Path) -> Manifest:
        if destination.exists():
            raise FileExistsError(f"restore target {destination} already exists")
        manifest = self.verify(checkpoint_id)
        source = self.path(checkpoint_id)
        destination.mkdir(parents=True)
        try:
            for entry in manifest.files:
                target = destination / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / entry.path, target)
            shutil.copyfile(source / MANIFEST_NAME, destination / MANIFEST_NAME)
            verify_checkpoint(destination, manifest)
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
        return manifest

    def list(self) -> list[CheckpointRef]:
        refs = []
        for meta in sorted(self._checkpoints.glob("*.json")):
            try:
                refs.append(self.get(meta.stem))
            except (CheckpointNotFoundError, ManifestError, ValueError):
                continue
        return sorted(refs, key=lambda ref: (ref.created_at, ref.id))

    def delete(self, checkpoint_id: str) -> None:
        shutil.rmtree(self.path(checkpoint_id), ignore_errors=True)
        (self._checkpoints / f"{checkpoint_id}.json").unlink(missing_ok=True)
        for entry in self._cache.iterdir():
            if entry.is_file() and entry.read_text().strip() == checkpoint_id:
                entry.unlink(missing_ok=True)
        for stored in self._objects.iterdir():
            # No checkpoint links it any more (a put in progress links what it finds first).
            if stored.is_file() and stored.stat().st_nlink == 1 and not stored.name.startswith("."):
                stored.unlink(missing_ok=True)


def _same_files(a: Path, b: Path, manifest: Manifest) -> bool:
    """Whether two checkpoint directories link the same stored file for every entry."""
    try:
        return all((a / e.path).samefile(b / e.path) for e in manifest.files)
    except OSError:
        return False


def _link_or_copy(stored: Path, target: Path) -> None:
    try:
        os.link(stored, target)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(stored, target)


def _manifest_digest(directory: Path) -> str:
    return hashlib.sha256((directory / MANIFEST_NAME).read_bytes()).hexdigest()


def _slug(stage: str) -> str:
    return "".join(c if c.isalnum() or c == "-" else "-" for c in stage.lower()).strip("-") or "x"


def _check_id(checkpoint_id: str) -> str:
    # Ids become path components: refuse anything that could walk out of the store.
    if (
        not checkpoint_id
        or not all(c.isalnum() or c in "-_." for c in checkpoint_id)
        or (checkpoint_id.startswith("."))
    ):
        raise ValueError(f"invalid checkpoint id {checkpoint_id!r}")
    return checkpoint_id


def _check_key(cache_key: str) -> str:
    if len(cache_key) != 64 or any(c not in "0123456789abcdef" for c in cache_key):
        raise ValueError(f"cache key must be a sha256 hex digest, got {cache_key!r}")
    return cache_key


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
