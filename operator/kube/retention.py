"""spec.checkpoints.retain, carried out when a job finishes: the checkpoints the engine lets go
lose their records and, on ConfigMap lanes, their objects in the checkpoint store.

Bytes on a job's volume (Volume lanes) stay until the job and its claim are deleted: the
operator runs no pod to remove them, and without its record no stage, rollback or cache
lookup reads a pruned checkpoint again (a rerun runs its stage afresh).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from bakeline.checkpoints.configmap import (
    ConfigMapData,
    ConfigMapStore,
    StoreReader,
    label_selector,
)
from bakeline.engine import pipeline as engine
from bakeline.engine.retention import RecordedCheckpoint, checkpoints_to_prune
from bakeline.kube.client import Kube
from bakeline.kube.clock import epoch


def prune_checkpoints(
    kube: Kube,
    obj: Mapping[str, Any],
    plan: engine.Plan,
    records: Mapping[str, Mapping[str, Any]],
    retain: int,
    needed: Collection[str],
    now: float,
) -> list[engine.Event]:
    """Delete the finished job's checkpoints beyond `retain` (never one in `needed`); an Event
    says which. `records` are the job's checkpoint records by checkpoint id."""
    namespace = obj["metadata"]["namespace"]
    rank = {name: i for i, name in enumerate(plan.order)}
    recorded = [
        RecordedCheckpoint(
            checkpoint_id,
            # A record created in this pass has no creationTimestamp in hand yet: it is new.
            epoch(record.get("metadata", {}).get("creationTimestamp")) or now,
            rank.get(str((record.get("data") or {}).get("stage")), len(rank)),
            int((record.get("data") or {}).get("attempt") or 0),
        )
        for checkpoint_id, record in records.items()
    ]
    pruned = checkpoints_to_prune(recorded, retain, needed)
    stored: dict[str, list[str]] = {}  # store prefix -> its objects' checkpoint ids
    for checkpoint_id in pruned:
        data = records[checkpoint_id].get("data") or {}
        if data.get("storage") == "ConfigMap" and data.get("storeId"):
            stored.setdefault(str(data["storePrefix"]), []).append(str(data["storeId"]))
    # The records first: a crash in between leaves store objects that no record names (owned
    # by the job, deleted with it), never a record of a checkpoint that is gone.
    for checkpoint_id in pruned:
        kube.delete_configmap(namespace, records[checkpoint_id]["metadata"]["name"])
    for prefix, store_ids in stored.items():
        # Each index, then what only it listed: a blob another checkpoint lists stays.
        ConfigMapStore(_StoreObjects(kube, namespace), prefix=prefix).delete_all(store_ids)
    if not pruned:
        return []
    message = f"pruned {len(pruned)} checkpoints (retain {retain}): {', '.join(pruned)}"
    return [engine.Event(now, "", "CheckpointsPruned", message)]


@dataclass(frozen=True)
class _StoreObjects(StoreReader):
    """The checkpoint store's ConfigMaps as the operator reads and deletes them (it never
    writes them: stage pods do)."""

    kube: Kube
    namespace: str

    def get(self, name: str) -> ConfigMapData | None:
        found = self.kube.list_configmaps(self.namespace, fields=f"metadata.name={name}")
        return ConfigMapData.from_api(found[0]) if found else None

    def list(self, labels: Mapping[str, str]) -> list[ConfigMapData]:
        found = self.kube.list_configmaps(self.namespace, label_selector(labels))
        return [ConfigMapData.from_api(item) for item in found]

    def delete(self, name: str) -> None:
        self.kube.delete_configmap(self.namespace, name)
