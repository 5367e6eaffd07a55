"""The ConfigMap checkpoint store against an in-memory ConfigMap client: chunking across
ConfigMaps, large files stored once by content, sha256 on restore, the index as commit point,
the cache index and deletion."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bakeline.checkpoints import CheckpointStore, ConfigMapData, ConfigMapStore
from bakeline.checkpoints.configmap import (
    COMPONENT_BLOB,
    COMPONENT_DATA,
    LABEL_COMPONENT,
    ConfigMapExistsError,
)
from bakeline.checkpoints.manifest import (
    ChecksumMismatchError,
    Manifest,
    file_entry,
    read_carried,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)
from bakeline.checkpoints.store import CheckpointNotFoundError

KEY = "c" * 64
LIMIT = 1_048_576  # what the API server allows in one ConfigMap's data


class MemoryConfigMaps:
    """ConfigMaps of one namespace in a dict, refusing what the API server refuses."""

    def __init__(self) -> None:
        self.items: dict[str, ConfigMapData] = {}
        self.creates = 0

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        if name in self.items:
            raise ConfigMapExistsError(name)
        size = sum(len(v.encode()) for v in data.values()) + sum(map(len, binary_data.values()))
        assert size <= LIMIT, f"{name}: {size} bytes, over the API server's limit"
        assert len(name) <= 253 and all(len(v) <= 63 for v in labels.values())
        self.creates += 1
        self.items[name] = ConfigMapData(name, dict(labels), dict(data), dict(binary_data))

    def get(self, name: str) -> ConfigMapData | None:
        return self.items.get(name)

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        return [
            item
            for item in self.items.values()
            if all(item.labels.get(k) == v for k, v in labels.items())
        ]

    def delete(self, name: str) -> None:
        self.items.pop(name, None)


def _checkpoint(directory: Path, payload: bytes = b"weights") -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "sub").mkdir()
    (directory / "sub" / "ref.npy").write_bytes(b"reference")
    (directory / "empty.txt").write_bytes(b"")
    files = [
        file_entry(directory, "model.onnx", "model"),
        file_entry(directory, "sub/ref.npy"),
        file_entry(directory, "empty.txt"),
    ]
    manifest = Manifest(model_name="m", artifact="model.onnx", format="onnx", files=files)
    write_manifest(directory, manifest)
    return directory


def _data_maps(client: MemoryConfigMaps) -> list[ConfigMapData]:
    return client.list({LABEL_COMPONENT: COMPONENT_DATA})


def _blob_chunks(client: MemoryConfigMaps) -> list[ConfigMapData]:
    return [m for m in client.list({LABEL_COMPONENT: COMPONENT_BLOB}) if m.binary_data]


def test_round_trip_of_a_checkpoint_larger_than_one_config_map(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="job-a")
    assert isinstance(store, CheckpointStore)
    payload = bytes(range(256)) * 10_000  # 2.5 MB: a blob of three chunks
    source = _checkpoint(tmp_path / "out", payload)
    ref = store.put(source, stage="Quantize_1", cache_key=KEY)
    assert ref.id.startswith("quantize-1-") and ref.size_bytes == len(payload)
    assert len(_blob_chunks(client)) == 3 and len(_data_maps(client)) == 1  # + the small files
    assert store.get(ref.id) == ref
    assert [r.id for r in store.list()] == [ref.id]
    manifest = store.restore(ref.id, tmp_path / "restored")
    for name in ("model.onnx", "sub/ref.npy", "empty.txt", "manifest.json"):
        assert (tmp_path / "restored" / name).read_bytes() == (source / name).read_bytes()
    assert manifest.artifact_sha256 == ref.artifact_sha256
    assert store.lookup(KEY) == ref
    with pytest.raises(FileExistsError):
        store.restore(ref.id, tmp_path / "restored")


def test_small_files_share_one_config_map(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    ConfigMapStore(client, prefix="s").put(_checkpoint(tmp_path / "out"), stage="a")
    assert len(_data_maps(client)) == 1
    assert len(client.items) == 2  # the data and the index


@pytest.mark.parametrize("damage", ["flip", "cut", "drop-part"])
def test_a_damaged_checkpoint_is_never_restored(tmp_path: Path, damage: str) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096)
    ref = store.put(_checkpoint(tmp_path / "out", b"x" * 10_000), stage="a", cache_key=KEY)
    part = next(m for m in _blob_chunks(client) if m.name.endswith("-1"))
    if damage == "drop-part":
        client.delete(part.name)
    else:
        key = next(iter(part.binary_data))
        data = part.binary_data[key]
        changed = b"y" + data[1:] if damage == "flip" else data[:-1]
        client.items[part.name] = ConfigMapData(
            part.name, part.labels, part.data, {**part.binary_data, key: changed}
        )
    with pytest.raises(ChecksumMismatchError):
        store.restore(ref.id, tmp_path / "restored")
    assert not (tmp_path / "restored").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".restored")]
    with pytest.raises(ChecksumMismatchError):
        store.verify(ref.id)
    # A damaged cache entry is a miss, and is dropped.
    assert store.lookup(KEY) is None
    assert client.get(f"s-key-{KEY}") is None


def test_an_edited_manifest_is_refused(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s")
    ref = store.put(_checkpoint(tmp_path / "out"), stage="a")
    index = client.items[f"s-{ref.id}"]
    forged = index.data["manifest.json"].replace('"modelName": "m"', '"modelName": "n"')
    assert forged != index.data["manifest.json"]
    client.items[index.name] = ConfigMapData(
        index.name, index.labels, {**index.data, "manifest.json": forged}, {}
    )
    with pytest.raises(ChecksumMismatchError, match="does not match its id"):
        store.restore(ref.id, tmp_path / "restored")


@pytest.mark.parametrize("blob_bytes", [1_000_000, 4096], ids=["packed", "by-content"])
def test_a_source_that_does_not_match_its_manifest_is_not_stored(
    tmp_path: Path, blob_bytes: int
) -> None:
    """Each file is hashed as it is stored, so data may be written before the mismatch is
    found; neither the checkpoint's index nor a blob's index commits it."""
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096, blob_bytes=blob_bytes)
    payload = bytes(range(256)) * 80  # 20 KB: several parts, or a blob of several chunks
    source = _checkpoint(tmp_path / "out", payload)
    (source / "model.onnx").write_bytes(payload[:-1] + b"!")
    with pytest.raises(ChecksumMismatchError, match=r"model\.onnx: sha256 .* the manifest's"):
        store.put(source, stage="a")
    assert store.list() == []
    assert not [m.name for m in client.items.values() if m.data]  # no index of any kind
    # What the failed put left does not stand in for the right bytes.
    (source / "model.onnx").write_bytes(payload)
    ref = store.put(source, stage="a")
    store.restore(ref.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "model.onnx").read_bytes() == payload


def test_the_index_is_the_commit_point(tmp_path: Path) -> None:
    """Data left by a writer that died before its index: the checkpoint does not exist, and
    a later put of the same checkpoint completes it (replacing a stale part)."""
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096)
    source = _checkpoint(tmp_path / "out", b"z" * 10_000)
    ref = store.put(source, stage="a")
    index = client.items.pop(f"s-{ref.id}")
    stale = client.items[f"s-{ref.id}-0"]
    client.items[stale.name] = ConfigMapData(stale.name, stale.labels, {}, {"junk": b"1"})
    with pytest.raises(CheckpointNotFoundError):
        store.get(ref.id)
    assert store.list() == []
    again = store.put(source, stage="a")
    assert again.id == ref.id and client.items[f"s-{ref.id}"].data == {
        **index.data,
        "ref.json": client.items[f"s-{ref.id}"].data["ref.json"],
    }
    store.restore(ref.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "model.onnx").read_bytes() == b"z" * 10_000


def test_the_same_checkpoint_stored_twice_is_written_once(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s")
    source = _checkpoint(tmp_path / "out")
    first = store.put(source, stage="a")
    creates = client.creates
    assert store.put(source, stage="a") == first
    assert client.creates == creates


def test_cache_entries_are_replaced_and_delete_removes_everything(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s")
    one = store.put(_checkpoint(tmp_path / "one", b"1"), stage="a", cache_key=KEY)
    two = store.put(_checkpoint(tmp_path / "two", b"2"), stage="a")
    store.remember(KEY, two.id)
    found = store.lookup(KEY)
    assert found is not None and found.id == two.id
    store.delete(two.id)
    assert store.lookup(KEY) is None
    with pytest.raises(CheckpointNotFoundError):
        store.get(two.id)
    assert [r.id for r in store.list()] == [one.id]
    assert all(two.id not in name for name in client.items)
    with pytest.raises(CheckpointNotFoundError):
        store.remember(KEY, two.id)


def test_a_large_file_is_stored_once_for_every_checkpoint_that_carries_it(
    tmp_path: Path,
) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096)
    original = b"o" * 20_000  # carried forward by every stage
    one = _checkpoint(tmp_path / "one", b"1" * 10_000)
    (one / "original.pt2").write_bytes(original)
    two = _checkpoint(tmp_path / "two", b"2" * 10_000)
    (two / "original.pt2").write_bytes(original)
    for directory in (one, two):
        manifest = read_manifest(directory)
        manifest.files.append(file_entry(directory, "original.pt2", "reference"))
        write_manifest(directory, manifest)
    first = store.put(one, stage="a")
    chunks = len(_blob_chunks(client))
    second = store.put(two, stage="b")
    assert len(_blob_chunks(client)) == chunks + 3  # two's model only: 10,000 bytes in 4 KiB
    store.restore(second.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "original.pt2").read_bytes() == original
    # Deleting one checkpoint keeps what the other lists, and drops what only it listed.
    store.delete(first.id)
    assert len(_blob_chunks(client)) == chunks + 3 - 3
    store.restore(second.id, tmp_path / "again")
    assert (tmp_path / "again" / "original.pt2").read_bytes() == original
    store.delete(second.id)
    assert client.items == {}


def test_a_blob_left_without_its_index_is_completed_by_the_next_put(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096)
    source = _checkpoint(tmp_path / "out", b"q" * 10_000)
    ref = store.put(source, stage="a")
    blob_index = next(
        m for m in client.list({LABEL_COMPONENT: COMPONENT_BLOB}) if not m.binary_data
    )
    store.delete(ref.id)
    # A writer died after two chunks, one of them torn: no index, so not a blob yet.
    store.put(source, stage="a")
    client.items.pop(blob_index.name)
    torn = next(m for m in _blob_chunks(client) if m.name.endswith("-1"))
    client.items[torn.name] = ConfigMapData(torn.name, torn.labels, {}, {"chunk": b"q"})
    client.items.pop(f"s-{ref.id}")
    again = store.put(source, stage="a")
    store.restore(again.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "model.onnx").read_bytes() == b"q" * 10_000


def test_ids_and_keys_cannot_name_other_objects(tmp_path: Path) -> None:
    store = ConfigMapStore(MemoryConfigMaps(), prefix="s")
    for bad in ("../x", "A", "", "x" * 64):
        with pytest.raises(ValueError):
            store.get(bad)
    with pytest.raises(ValueError):
        store.lookup("not-a-digest")
    with pytest.raises(ValueError):
        ConfigMapStore(MemoryConfigMaps(), prefix="Bad_Prefix")


class SlowConfigMaps(MemoryConfigMaps):
    """Data creates take a while and may fail; records how many ran at once, and what was
    stored when each index (checkpoint or blob) was created."""

    def __init__(self, fail_chunk: str | None = None) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.fail_chunk = fail_chunk
        self.stored_at_index: dict[str, set[str]] = {}

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """One call in flight for its duration (counted in `most`)."""
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.01)
            yield
        finally:
            with self.lock:
                self.running -= 1

    def create(
        self,
        name: str,
        labels: Mapping[str, str],
        data: Mapping[str, str],
        binary_data: Mapping[str, bytes],
    ) -> None:
        if not binary_data:  # an index: what was there when it committed
            self.stored_at_index[name] = set(self.items)
            super().create(name, labels, data, binary_data)
            return
        with self.busy():
            if name == self.fail_chunk:
                raise ConnectionError(f"{name}: the API server went away")
            with self.lock:
                super().create(name, labels, data, binary_data)


def test_data_config_maps_are_written_concurrently_and_indexes_only_after_them(
    tmp_path: Path,
) -> None:
    client = SlowConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096, writers=4)
    ref = store.put(_checkpoint(tmp_path / "out", bytes(range(256)) * 100), stage="a")
    assert 1 < client.most <= 4
    data = {n for n, m in client.items.items() if m.binary_data}
    blob_index = next(n for n in client.stored_at_index if "-blob-" in n)
    blob_chunks = {n for n in data if n.startswith(blob_index + "-")}
    assert len(blob_chunks) == 7 and blob_chunks <= client.stored_at_index[blob_index]
    assert data <= client.stored_at_index[f"s-{ref.id}"]
    store.restore(ref.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "model.onnx").read_bytes() == bytes(range(256)) * 100


def test_a_failed_data_write_fails_the_put_and_commits_nothing(tmp_path: Path) -> None:
    source = _checkpoint(tmp_path / "out", bytes(range(256)) * 100)
    probe = MemoryConfigMaps()
    ConfigMapStore(probe, prefix="s", part_bytes=4096).put(source, stage="a")
    chunk = sorted(n for n, m in probe.items.items() if "-blob-" in n and m.binary_data)[3]
    client = SlowConfigMaps(fail_chunk=chunk)
    store = ConfigMapStore(client, prefix="s", part_bytes=4096, writers=4)
    with pytest.raises(ConnectionError, match="went away"):
        store.put(source, stage="a")
    assert client.stored_at_index == {} and store.list() == []


class SlowReads(SlowConfigMaps):
    """Gets take a while too."""

    def get(self, name: str) -> ConfigMapData | None:
        with self.busy():
            return super().get(name)


def test_blob_chunks_are_read_ahead_in_order_and_a_missing_one_still_fails(
    tmp_path: Path,
) -> None:
    client = SlowReads()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096, readers=3)
    payload = bytes(range(256)) * 100  # seven chunks
    ref = store.put(_checkpoint(tmp_path / "out", payload), stage="a")
    client.most = 0
    store.restore(ref.id, tmp_path / "restored")
    assert (tmp_path / "restored" / "model.onnx").read_bytes() == payload
    assert 1 < client.most <= 3
    chunk = sorted(n for n, m in client.items.items() if "-blob-" in n and m.binary_data)[5]
    del client.items[chunk]
    with pytest.raises(ChecksumMismatchError, match="blob chunk 5 is missing"):
        store.restore(ref.id, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def _with_original(directory: Path, original: bytes) -> Path:
    """A checkpoint of a later stage: it carries the original model (role original)."""
    (directory / "original.pt2").write_bytes(original)
    manifest = read_manifest(directory)
    manifest.files.append(file_entry(directory, "original.pt2", "original"))
    write_manifest(directory, manifest)
    return directory


def test_a_restore_leaves_the_original_in_the_store_and_the_next_put_refers_to_it(
    tmp_path: Path,
) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096)
    original = b"o" * 20_000  # a blob; the small files of the checkpoint are in a part
    one = _with_original(_checkpoint(tmp_path / "one", b"1" * 10_000), original)
    first = store.put(one, stage="a")
    reads: list[str] = []
    client_get = client.get

    def get(name: str) -> ConfigMapData | None:
        reads.append(name)
        return client_get(name)

    client.get = get  # type: ignore[method-assign]

    restored = tmp_path / "restored"
    store.restore(first.id, restored, leave_roles=frozenset({"original", "data"}))
    assert not any(name.startswith(store._blob_name(_sha(original)) + "-") for name in reads)
    assert not (restored / "original.pt2").exists()
    assert (restored / "sub" / "ref.npy").read_bytes() == b"reference"  # in a part: fetched
    assert read_carried(restored) == {"original.pt2"}
    with pytest.raises(ChecksumMismatchError):
        verify_checkpoint(restored)
    verify_checkpoint(restored, carried_ok=True)

    # The next stage writes a new model and carries the rest, the original by reference.
    (restored / "model.onnx").write_bytes(b"2" * 10_000)
    manifest = read_manifest(restored)
    manifest.files[[f.path for f in manifest.files].index("model.onnx")] = file_entry(
        restored, "model.onnx", "model"
    )
    write_manifest(restored, manifest)
    creates = client.creates
    second = store.put(restored, stage="b")
    assert client.creates - creates == 3 + 1 + 1 + 1  # the model's chunks and index, part, index
    store.delete(first.id)  # the original's blob stays: the second lists it
    store.restore(second.id, tmp_path / "full")
    assert (tmp_path / "full" / "original.pt2").read_bytes() == original
    assert not read_carried(tmp_path / "full")


def test_what_is_carried_by_reference_must_be_in_the_store(tmp_path: Path) -> None:
    client = MemoryConfigMaps()
    store = ConfigMapStore(client, prefix="s", part_bytes=4096)
    source = _with_original(_checkpoint(tmp_path / "one", b"1" * 10_000), b"o" * 20_000)
    ref = store.put(source, stage="a")
    store.restore(ref.id, tmp_path / "sparse", leave_roles=frozenset({"original"}))
    # Another job's store never saw these bytes: the put fails and commits nothing.
    other = ConfigMapStore(client, prefix="t", part_bytes=4096)
    with pytest.raises(ChecksumMismatchError, match=r"original\.pt2: its blob \w+ is not in"):
        other.put(tmp_path / "sparse", stage="b")
    assert [r.id for r in other.list()] == []
    # A blob gone since the checkpoint was written: the restore fails, leaving nothing.
    for name in [n for n in client.items if n.startswith("s-blob-")]:
        client.delete(name)
    with pytest.raises(ChecksumMismatchError):
        store.restore(ref.id, tmp_path / "again", leave_roles=frozenset({"original"}))
    assert not (tmp_path / "again").exists()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
