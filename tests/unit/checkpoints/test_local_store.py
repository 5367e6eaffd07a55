"""The local-directory checkpoint store: put, get, verify, cache lookup and restore."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bakeline.checkpoints.manifest import (
    ChecksumMismatchError,
    Manifest,
    file_entry,
    write_manifest,
)
from bakeline.checkpoints.store import CheckpointNotFoundError, CheckpointStore, LocalStore

KEY = "c" * 64


def _checkpoint(directory: Path, payload: bytes = b"weights", extra: bool = False) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "sub").mkdir()
    (directory / "sub" / "ref.npy").write_bytes(b"reference")
    files = [file_entry(directory, "model.onnx", "model"), file_entry(directory, "sub/ref.npy")]
    if extra:
        (directory / "scratch.tmp").write_bytes(b"not listed")
    manifest = Manifest(model_name="m", artifact="model.onnx", format="onnx", files=files)
    write_manifest(directory, manifest)
    return directory


def test_put_get_and_restore_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert isinstance(store, CheckpointStore)
    ref = store.put(_checkpoint(tmp_path / "out", extra=True), stage="quantize", cache_key=KEY)
    assert ref.id.startswith("quantize-") and ref.stage == "quantize" and ref.format == "onnx"
    assert ref.size_bytes == len(b"weights") and ref.cache_key == KEY
    assert store.get(ref.id) == ref
    assert [r.id for r in store.list()] == [ref.id]
    # Only what the manifest lists is kept.
    assert not (store.path(ref.id) / "scratch.tmp").exists()
    manifest = store.restore(ref.id, tmp_path / "restored")
    assert manifest.artifact_sha256 == ref.artifact_sha256
    assert (tmp_path / "restored" / "sub" / "ref.npy").read_bytes() == b"reference"
    with pytest.raises(FileExistsError):
        store.restore(ref.id, tmp_path / "restored")


def test_the_same_checkpoint_stored_twice_is_kept_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source = _checkpoint(tmp_path / "out")
    assert store.put(source, stage="a").id == store.put(source, stage="a").id
    assert len(store.list()) == 1


def test_a_source_that_does_not_match_its_manifest_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    source = _checkpoint(tmp_path / "out")
    (source / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError):
        store.put(source, stage="a")
    assert store.list() == []


def test_a_corrupted_checkpoint_is_never_restored_nor_served_from_the_cache(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    ref = store.put(_checkpoint(tmp_path / "out"), stage="a", cache_key=KEY)
    assert store.lookup(KEY) == ref
    (store.path(ref.id) / "model.onnx").write_bytes(b"bit rot")
    with pytest.raises(ChecksumMismatchError, match="does not match"):
        store.verify(ref.id)
    with pytest.raises(ChecksumMismatchError):
        store.restore(ref.id, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    assert store.lookup(KEY) is None
    assert store.lookup(KEY) is None  # the damaged entry was dropped


def test_lookup_misses_and_unknown_ids(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert store.lookup(KEY) is None
    with pytest.raises(CheckpointNotFoundError):
        store.get("nope-0123")
    with pytest.raises(ValueError, match="invalid checkpoint id"):
        store.get("../escape")
    with pytest.raises(ValueError, match="sha256"):
        store.lookup("not-a-key")


def test_remember_indexes_an_accepted_checkpoint(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ref = store.put(_checkpoint(tmp_path / "out"), stage="a")
    assert store.lookup(KEY) is None
    store.remember(KEY, ref.id)
    assert store.lookup(KEY) == ref
    with pytest.raises(CheckpointNotFoundError):
        store.remember(KEY, "a-0000")


def test_delete_removes_the_checkpoint_and_its_cache_entries(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ref = store.put(_checkpoint(tmp_path / "out"), stage="a", cache_key=KEY)
    store.delete(ref.id)
    assert store.list() == [] and store.lookup(KEY) is None
    with pytest.raises(CheckpointNotFoundError):
        store.get(ref.id)


def test_bytes_two_checkpoints_share_are_stored_once_and_kept_while_one_lists_them(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "store")
    first = store.put(_checkpoint(tmp_path / "a", b"weights-a"), stage="a")
    second = store.put(_checkpoint(tmp_path / "b", b"weights-b"), stage="b")
    objects = tmp_path / "store" / "objects"
    # model.onnx differs, sub/ref.npy is the same bytes: three objects, not four.
    assert len(list(objects.iterdir())) == 3
    shared = store.path(first.id) / "sub" / "ref.npy"
    assert shared.samefile(store.path(second.id) / "sub" / "ref.npy")
    store.delete(first.id)
    assert len(list(objects.iterdir())) == 2  # first's model went; the shared file stayed
    store.restore(second.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "sub" / "ref.npy").read_bytes() == b"reference"
    assert not (tmp_path / "restored" / "sub" / "ref.npy").samefile(
        store.path(second.id) / "sub" / "ref.npy"
    ), "a restore is a copy: writing it must not change the store"
    store.delete(second.id)
    assert list(objects.iterdir()) == []


def test_a_source_changed_after_its_check_is_refused_and_leaves_no_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    source = _checkpoint(tmp_path / "out")
    real_copy = shutil.copyfile

    def copy_then_change(src: Path, dst: Path) -> Path:
        if Path(src).name == "model.onnx":
            Path(src).write_bytes(b"changed")
        return Path(real_copy(src, dst))

    monkeypatch.setattr(shutil, "copyfile", copy_then_change)
    with pytest.raises(ChecksumMismatchError, match="changed while it was being stored"):
        store.put(source, stage="a")
    assert store.list() == []
    assert list((tmp_path / "store" / "objects").iterdir()) == []


def test_damaged_bytes_are_never_linked_into_a_new_checkpoint(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = store.put(_checkpoint(tmp_path / "a", b"weights-a"), stage="a")
    # Written in place through the hard link: the stored object is damaged too, same size.
    (store.path(first.id) / "sub" / "ref.npy").write_bytes(b"refer3nce")
    with pytest.raises(ChecksumMismatchError, match=r"sub/ref\.npy"):
        store.verify(first.id)
    # Another stage's output with that file stores it afresh instead of linking the damage.
    second = store.put(_checkpoint(tmp_path / "b", b"weights-b"), stage="b")
    store.verify(second.id)
    # The same output again replaces the damaged checkpoint under its id.
    again = store.put(_checkpoint(tmp_path / "a2", b"weights-a"), stage="a")
    assert again.id == first.id
    store.verify(again.id)
    assert (store.path(again.id) / "sub" / "ref.npy").samefile(
        store.path(second.id) / "sub" / "ref.npy"
    )
