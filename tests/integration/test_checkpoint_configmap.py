"""The ConfigMap checkpoint store on the real API server: a checkpoint of several MB across
immutable ConfigMaps under the 1 MiB limit, restored byte for byte; a damaged part refused; a
stage's checkpoint carrying the original model by reference restores whole."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from bakeline.checkpoints import ConfigMapStore
from bakeline.checkpoints.configmap import COMPONENT_BLOB, LABEL_COMPONENT
from bakeline.checkpoints.manifest import (
    ChecksumMismatchError,
    Manifest,
    file_entry,
    read_carried,
    read_manifest,
    verify_checkpoint,
    write_manifest,
)
from bakeline.stagepod.store import KubeConfigMapClient
from controlplane import ControlPlane
from support.kube import stage_configmaps

pytestmark = pytest.mark.cluster


def _configmaps(cluster: ControlPlane, namespace: str) -> KubeConfigMapClient:
    """The client stage pods use; a ConfigMap stands in for the job that owns the checkpoints."""
    core = client.CoreV1Api(cluster.api_client())
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="job-1"))
    meta = core.create_namespaced_config_map(namespace, body).metadata
    assert meta is not None
    uid = meta.uid
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "job-1", "uid": uid}
    return stage_configmaps(cluster, namespace, reference, {"bakeline.io/job": "job-1"})


def _checkpoint(directory: Path, payload: bytes) -> Path:
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "tokenizer.json").write_text('{"vocab": {}}')
    files = [file_entry(directory, "model.onnx", "model"), file_entry(directory, "tokenizer.json")]
    manifest = Manifest(model_name="m", artifact="model.onnx", format="onnx", files=files)
    write_manifest(directory, manifest)
    return directory


def test_checkpoint_across_config_maps_round_trips_and_refuses_damage(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    configmaps = _configmaps(cluster, namespace)
    store = ConfigMapStore(configmaps, prefix="job-1")
    payload = bytes(range(256)) * 12_000  # 3 MB, incompressible enough: four ConfigMaps
    source = _checkpoint(tmp_path / "out", payload)
    ref = store.put(source, stage="quantize", cache_key="a" * 64)
    blob = configmaps.list({LABEL_COMPONENT: COMPONENT_BLOB})
    parts = [m for m in blob if m.binary_data]
    assert len(parts) == 4 and len(blob) == 5  # the chunks, then the blob's index
    # Written in protobuf, read back through the API server's JSON: what the store asked for.
    core = client.CoreV1Api(cluster.api_client())
    for part in parts:
        stored = core.read_namespaced_config_map(part.name, namespace)
        assert stored.immutable and stored.binary_data is not None
        meta = stored.metadata
        assert meta is not None and meta.labels is not None
        assert meta.labels["bakeline.io/job"] == "job-1"
        assert meta.labels[LABEL_COMPONENT] == COMPONENT_BLOB
        [owner] = meta.owner_references or []
        assert (owner.kind, owner.name) == ("ConfigMap", "job-1")

    store.restore(ref.id, tmp_path / "restored")
    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        assert (tmp_path / "restored" / name).read_bytes() == (source / name).read_bytes()
    assert store.lookup("a" * 64) == ref

    # Immutable ConfigMaps cannot be edited; replace one part with other bytes of the same size.
    victim = parts[1]
    key = next(iter(victim.binary_data))
    damaged = {**victim.binary_data, key: b"\0" * len(victim.binary_data[key])}
    configmaps.delete(victim.name)
    configmaps.create(victim.name, victim.labels, {}, damaged)
    with pytest.raises(ChecksumMismatchError):
        store.restore(ref.id, tmp_path / "again")
    assert not (tmp_path / "again").exists()

    store.delete(ref.id)
    assert configmaps.list({"bakeline.io/checkpoint-store": "job-1"}) == []


def test_a_stage_restored_without_the_original_stores_a_checkpoint_that_restores_whole(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    configmaps = _configmaps(cluster, namespace)
    store = ConfigMapStore(configmaps, prefix="job-1")
    original = bytes(range(256)) * 4_000  # 1 MB: a blob of two chunks
    source = _checkpoint(tmp_path / "one", b"model one")
    (source / "original.pt2").write_bytes(original)
    manifest = read_manifest(source)
    manifest.files.append(file_entry(source, "original.pt2", "original"))
    write_manifest(source, manifest)
    first = store.put(source, stage="quantize")

    # The next stage's pod (an agent that never opens the original) restores without it ...
    sparse = tmp_path / "sparse"
    store.restore(first.id, sparse, leave_roles=frozenset({"original"}))
    assert not (sparse / "original.pt2").exists()
    assert read_carried(sparse) == {"original.pt2"}
    # ... writes its own model and stores its checkpoint, the original by reference.
    (sparse / "model.onnx").write_bytes(b"model two")
    manifest = read_manifest(sparse)
    manifest.files = [
        file_entry(sparse, "model.onnx", "model") if f.path == "model.onnx" else f
        for f in manifest.files
    ]
    write_manifest(sparse, manifest)
    blobs = len(configmaps.list({LABEL_COMPONENT: COMPONENT_BLOB}))
    second = store.put(sparse, stage="validate")
    assert len(configmaps.list({LABEL_COMPONENT: COMPONENT_BLOB})) == blobs
    store.delete(first.id)

    store.restore(second.id, tmp_path / "whole")
    assert (tmp_path / "whole" / "original.pt2").read_bytes() == original
    assert (tmp_path / "whole" / "model.onnx").read_bytes() == b"model two"
    stored = store.verify(second.id).file("original.pt2")
    assert (stored.role, stored.sha256) == ("original", manifest.file("original.pt2").sha256)


# A stage's agent: reads its input with the agents' own checkpoint_io, writes a new model and
# carries the rest forward; reports which files its input directory held.
AGENT = """\
import json, os
from pathlib import Path
from bakeline.agents.checkpoint_io import OutputCheckpoint, open_input
source = open_input(Path(os.environ["BAKELINE_INPUT"]))
out = OutputCheckpoint(Path(os.environ["BAKELINE_OUTPUT"]), source)
out.path("model.onnx").write_bytes(b"validated")
out.add("model.onnx", "model")
out.carry_forward()
manifest = out.finish(agent=os.environ["BAKELINE_AGENT"], stage="validate", artifact="model.onnx",
                      format="onnx", params={}, metrics={}, started_at="2026-12-01T00:00:00Z")
Path(os.environ["BAKELINE_TERMINATION_MESSAGE_PATH"]).write_text(json.dumps({
    "status": "succeeded", "artifactSha256": manifest.artifact_sha256,
    "message": " ".join(sorted(p.name for p in source.directory.iterdir())),
}))
"""


@pytest.mark.parametrize(
    ("agent", "restored_original"), [("QualityValidator", False), ("PerformanceProfiler", True)]
)
def test_bakeline_stage_restores_what_its_agent_reads_and_stores_a_whole_checkpoint(
    cluster: ControlPlane,
    namespace: str,
    tmp_path: Path,
    agent: str,
    restored_original: bool,
) -> None:
    configmaps = _configmaps(cluster, namespace)
    store = ConfigMapStore(configmaps, prefix="job-1")
    original = bytes(range(256)) * 4_000
    source = _checkpoint(tmp_path / "one", b"model one")
    (source / "original.pt2").write_bytes(original)
    manifest = read_manifest(source)
    manifest.files.append(file_entry(source, "original.pt2", "original"))
    manifest.attributes["original"] = {"path": "original.pt2", "format": "exported-program"}
    write_manifest(source, manifest)
    first = store.put(source, stage="accelerate")

    account = tmp_path / "serviceaccount"  # what kubelet mounts; the admin's token here
    account.mkdir()
    (account / "token").write_text(cluster.admin_token)
    (account / "namespace").write_text(namespace)
    shutil.copy(cluster.ca_file, account / "ca.crt")
    (tmp_path / "agent.py").write_text(AGENT)
    owner = configmaps.owner
    (tmp_path / "handoff").mkdir()
    common = {
        "BAKELINE_AGENT": agent,
        "BAKELINE_STAGE": "validate",
        "BAKELINE_INPUT": str(tmp_path / "input"),
        "BAKELINE_OUTPUT": str(tmp_path / "output"),
        "BAKELINE_HANDOFF": str(tmp_path / "handoff"),
    }
    # The store's containers: the token, the store's settings, a termination log each.
    store_env = {
        **os.environ,
        **common,
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": cluster.server.rsplit(":", 1)[1],
        "BAKELINE_SERVICE_ACCOUNT_DIR": str(account),
        "BAKELINE_STORE_PREFIX": "job-1",
        "BAKELINE_STORE_INPUT_ID": first.id,
        "BAKELINE_STORE_OWNER": json.dumps(dict(owner)),
        "BAKELINE_STORE_LABELS": json.dumps({"bakeline.io/job": "job-1"}),
    }
    # The agent's container: none of that.
    agent_env = {**os.environ, **common}
    (tmp_path / "output").mkdir()

    def step(env: dict[str, str], log: str, *command: str) -> None:
        env = {**env, "BAKELINE_TERMINATION_MESSAGE_PATH": str(tmp_path / log)}
        done = subprocess.run(
            ["bakeline", "stage", *command], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr

    step(store_env, "restore-log", "restore")
    step(agent_env, "agent-log", "--", sys.executable, str(tmp_path / "agent.py"))
    step(store_env, "termination-log", "store")
    result = json.loads((tmp_path / "termination-log").read_text())
    assert ("original.pt2" in result["message"].split()) is restored_original
    assert ("carried.json" in result["message"].split()) is not restored_original

    store.delete(first.id)  # the stage's checkpoint alone must still hold every byte
    store.restore(result["store"]["id"], tmp_path / "whole")
    assert (tmp_path / "whole" / "original.pt2").read_bytes() == original
    assert (tmp_path / "whole" / "model.onnx").read_bytes() == b"validated"
    assert verify_checkpoint(tmp_path / "whole").file("original.pt2").role == "original"
