"""Checkpoint write and restore time per store, against the stage's own runtime: ONE JSON line.

A bake of `examples/bakingjob-minilm.yaml` (`bakeline run`, fresh unless --reuse) gives the
nine checkpoints and, from the same run, each stage's own duration. Every checkpoint is then
written to and restored from each store the operator and `bakeline run` use:

- local: `LocalStore` on this disk (`bakeline run`): put copies and verifies, restore copies
  and verifies;
- volume: the job's claim on Volume lanes; the agent writes its output in place, so a write is
  the stage wrapper's check of every file against the manifest (`bakeline stage`) and a restore
  is the next agent's verified read of its input (both sha256 every byte);
- configmap: `ConfigMapStore` through the stage pods' own client (`KubeConfigMapClient`) on the
  local control plane (etcd and kube-apiserver from pinned Go modules, DESIGN.md section 5),
  as the stage pods use it: each checkpoint is restored as the next stage's pod restores it
  (without the original model where that agent never opens it), and put as its own pod puts
  it (carrying the original by reference where its input was restored without it); the last
  checkpoint, which no stage reads, is restored whole.

Checkpoints are written in stage order and kept, as in a bake (the ConfigMap store writes a
file that an earlier checkpoint of the job holds only once), then each is restored.
Per store: total and per-stage write and restore seconds, overhead (write + restore) as a
fraction of the stage's runtime (target <= 5%), and restore versus recompute (restore seconds
over the stage's runtime: below 1 a rollback target is cheaper to restore than to bake again).

Usage: python benchmarks/checkpoints.py [--workdir DIR] [--reuse] [--stores local,volume,configmap]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
# The control plane is test infrastructure; never put ROOT itself on sys.path (operator/ would
# shadow the standard library's `operator`).
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]

import bakeline_run  # noqa: E402
from kubernetes import client  # noqa: E402

from bakeline.agents.reads import roles_left_in_store  # noqa: E402
from bakeline.checkpoints.configmap import ConfigMapStore  # noqa: E402
from bakeline.checkpoints.manifest import (  # noqa: E402
    read_carried,
    read_manifest,
    verify_checkpoint,
    write_carried,
)
from bakeline.checkpoints.store import CheckpointStore, LocalStore  # noqa: E402
from controlplane import running  # noqa: E402
from support.kube import stage_configmaps  # noqa: E402

JOB = ROOT / "examples" / "bakingjob-minilm.yaml"
TARGET_OVERHEAD = 0.05
NAMESPACE = "bench"


def bake(workdir: Path, reuse: bool) -> dict[str, Any]:
    if not reuse:
        bakeline_run.bake(JOB, workdir, "--no-cache")
    return bakeline_run.report(workdir)


class Stage(NamedTuple):
    name: str
    agent: str
    seconds: float  # its own, in this run
    checkpoint: Path


def stage_checkpoints(report: dict[str, Any]) -> list[Stage]:
    """The stages that ran, in order, with their checkpoint directories."""
    found = []
    for stage in report["stages"]:
        checkpoint = stage.get("checkpoint") or {}
        seconds = float(stage.get("durationSeconds") or 0)
        if checkpoint.get("path") and seconds > 0:
            found.append(Stage(stage["name"], stage["agent"], seconds, Path(checkpoint["path"])))
    return found


def through_store(
    store: CheckpointStore, checkpoints: list[Stage], scratch: Path
) -> dict[str, dict[str, float]]:
    """Put every checkpoint in stage order, as a bake does (what a store shares between a job's
    checkpoints is written once), restore each, then delete them all."""
    per_stage: dict[str, dict[str, float]] = {}
    ids: list[str] = []
    for stage in checkpoints:
        start = time.perf_counter()
        ids.append(store.put(stage.checkpoint, stage=stage.name).id)
        per_stage[stage.name] = {"writeSeconds": time.perf_counter() - start}
    for stage, checkpoint_id in zip(checkpoints, ids, strict=True):
        target = scratch / f"restore-{stage.name}"
        start = time.perf_counter()
        store.restore(checkpoint_id, target)
        per_stage[stage.name]["restoreSeconds"] = time.perf_counter() - start
        shutil.rmtree(target)
    for checkpoint_id in ids:
        store.delete(checkpoint_id)
    return per_stage


def as_stage_pods(
    store: ConfigMapStore, checkpoints: list[Stage], scratch: Path
) -> dict[str, dict[str, float]]:
    """Each checkpoint put as its pod puts it and restored as the next stage's pod does."""
    per_stage: dict[str, dict[str, float]] = {}
    ids: list[str] = []
    left: frozenset[str] = frozenset()  # what the current stage's input was restored without
    for index, stage in enumerate(checkpoints):
        written = _carrying_by_reference(stage.checkpoint, left, scratch / f"out-{stage.name}")
        start = time.perf_counter()
        ids.append(store.put(written, stage=stage.name).id)
        per_stage[stage.name] = {"writeSeconds": time.perf_counter() - start}
        following = checkpoints[index + 1].agent if index + 1 < len(checkpoints) else None
        target = scratch / f"restore-{stage.name}"
        start = time.perf_counter()
        store.restore(ids[-1], target, roles_left_in_store(following))
        per_stage[stage.name]["restoreSeconds"] = time.perf_counter() - start
        left = read_carried(target)
        shutil.rmtree(target)
    for checkpoint_id in ids:
        store.delete(checkpoint_id)
    return per_stage


def _carrying_by_reference(directory: Path, left: frozenset[str], target: Path) -> Path:
    """`directory` as written by an agent whose input lacked `left`: hard links of the rest."""
    if not left:
        return directory
    manifest = read_manifest(directory)
    carried = [entry.path for entry in manifest.files if entry.path in left]
    if not carried:
        return directory
    for path in directory.rglob("*"):
        relative = path.relative_to(directory).as_posix()
        if path.is_file() and relative not in carried:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / relative)
    write_carried(target, carried)
    return target


def on_volume(checkpoints: list[Stage]) -> dict[str, dict[str, float]]:
    """The wrapper verifies the output in place; the next agent verifies it again as input."""
    per_stage: dict[str, dict[str, float]] = {}
    for stage in checkpoints:
        start = time.perf_counter()
        verify_checkpoint(stage.checkpoint)  # bakeline stage, after the agent wrote it
        written = time.perf_counter()
        verify_checkpoint(stage.checkpoint)  # the next agent's open_input
        per_stage[stage.name] = {
            "writeSeconds": written - start,
            "restoreSeconds": time.perf_counter() - written,
        }
    return per_stage


def on_configmaps(checkpoints: list[Stage], scratch: Path) -> dict[str, dict[str, float]]:
    with running(scratch / "cp", log=lambda _: None) as plane:
        core = client.CoreV1Api(plane.api_client())
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        owner = core.create_namespaced_config_map(
            NAMESPACE, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bench-owner"))
        )
        assert owner.metadata is not None
        owner_ref = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "bench-owner",
            "uid": owner.metadata.uid,
        }
        kube = stage_configmaps(plane, NAMESPACE, owner_ref)
        return as_stage_pods(ConfigMapStore(kube, prefix="bench"), checkpoints, scratch)


def summarise(per_stage: dict[str, dict[str, float]], checkpoints: list[Stage]) -> dict[str, Any]:
    runtime = {stage.name: stage.seconds for stage in checkpoints}
    sizes = {stage.name: _bytes(stage.checkpoint) for stage in checkpoints}
    write = sum(s["writeSeconds"] for s in per_stage.values())
    restore = sum(s["restoreSeconds"] for s in per_stage.values())
    total_runtime = sum(runtime[s] for s in per_stage)
    overhead = (write + restore) / total_runtime
    return {
        "writeSeconds": round(write, 2),
        "restoreSeconds": round(restore, 2),
        "overheadFraction": round(overhead, 4),
        "overheadMet": overhead <= TARGET_OVERHEAD,
        "writeMBps": round(sum(sizes[s] for s in per_stage) / 1e6 / write, 1),
        "stages": {
            stage: {
                "sizeMB": round(sizes[stage] / 1e6, 1),
                "stageSeconds": round(runtime[stage], 2),
                "writeSeconds": round(times["writeSeconds"], 3),
                "restoreSeconds": round(times["restoreSeconds"], 3),
                "overheadFraction": round(
                    (times["writeSeconds"] + times["restoreSeconds"]) / runtime[stage], 4
                ),
                "restoreVersusRecompute": round(times["restoreSeconds"] / runtime[stage], 4),
            }
            for stage, times in per_stage.items()
        },
    }


def _bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--reuse", action="store_true", help="use the bake already in --workdir")
    parser.add_argument("--stores", default="local,volume,configmap")
    args = parser.parse_args()
    stores = args.stores.split(",")
    unknown = set(stores) - {"local", "volume", "configmap"}
    if unknown:
        parser.error(f"unknown stores: {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="bakeline-ckpt-bench-") as tmp_text:
        tmp = Path(tmp_text)
        workdir = args.workdir or tmp / "bake"
        try:
            report = bake(workdir, args.reuse)
        except RuntimeError as exc:
            print(json.dumps({"benchmark": "checkpoints", "ok": False, "error": str(exc)}))
            return 1
        checkpoints = stage_checkpoints(report)
        if not checkpoints:
            print(json.dumps({"benchmark": "checkpoints", "ok": False, "error": "no stage ran"}))
            return 1
        measured: dict[str, dict[str, dict[str, float]]] = {}
        if "local" in stores:
            measured["local"] = through_store(LocalStore(tmp / "local"), checkpoints, tmp)
        if "volume" in stores:
            measured["volume"] = on_volume(checkpoints)
        if "configmap" in stores:
            measured["configmap"] = on_configmaps(checkpoints, tmp)
    result = {
        "benchmark": "checkpoints",
        "ok": True,
        "job": str(JOB.relative_to(ROOT)),
        "stagesSeconds": round(sum(stage.seconds for stage in checkpoints), 1),
        "targetOverheadFraction": TARGET_OVERHEAD,
        **{store: summarise(per_stage, checkpoints) for store, per_stage in measured.items()},
    }
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
