"""Reconcile a Lane's status: running and queued counts and its conditions.

`frozenBy` belongs to the SLOPolicies that freeze the lane; this pass keeps it as it is and
derives `frozen` and the Frozen condition from it.
"""

from __future__ import annotations

from typing import Any

from bakeline.handlers.conditions import set_condition
from bakeline.handlers.kube import Kube
from bakeline.metrics.collectors import LANE_FROZEN, LANE_RUNNING, QUEUE_DEPTH

TERMINAL = {"Succeeded", "Failed"}


def lane_status(lane: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The status a Lane should have given the namespace's jobs; pure."""
    meta = lane["metadata"]
    name = meta["name"]
    status = dict(lane.get("status") or {})
    live = [j for j in jobs if (j.get("status") or {}).get("phase") not in TERMINAL]
    running = [j for j in live if (j.get("status") or {}).get("lane") == name]
    queued = [
        j
        for j in live
        if not (j.get("status") or {}).get("lane")
        and (j.get("spec") or {}).get("laneRef", "standard") == name
        and not (j.get("spec") or {}).get("suspend")
    ]
    frozen_by = status.get("frozenBy") or []
    status["observedGeneration"] = meta.get("generation")
    status["running"] = len(running)
    status["queued"] = len(queued)
    status["frozen"] = bool(frozen_by)
    stop = (lane.get("spec") or {}).get("stopPolicy", "None")
    if stop != "None":
        set_condition(status, "Ready", "False", stop, f"stopPolicy {stop}: admission held", meta)
    else:
        limit = (lane.get("spec") or {}).get("maxConcurrentJobs", 1)
        message = f"{len(running)}/{limit} running, {len(queued)} queued"
        set_condition(status, "Ready", "True", "Admitting", message, meta)
    if frozen_by:
        why = "; ".join(f"{f.get('policy')}: {f.get('reason', '')}" for f in frozen_by)
        set_condition(status, "Frozen", "True", "ErrorBudgetBurn", why, meta)
    else:
        set_condition(status, "Frozen", "False", "Healthy", "", meta)
    return status


def reconcile_lane(kube: Kube, lane: dict[str, Any]) -> None:
    meta = lane["metadata"]
    status = lane_status(lane, kube.list_objects("BakingJob", meta["namespace"]))
    labels = (meta["namespace"], meta["name"])
    QUEUE_DEPTH.labels(*labels).set(status["queued"])
    LANE_RUNNING.labels(*labels).set(status["running"])
    LANE_FROZEN.labels(*labels).set(1 if status["frozen"] else 0)
    if status != (lane.get("status") or {}):
        # frozenBy is the SLOPolicies': write only over the version this pass read.
        kube.patch_status(
            "Lane", meta["namespace"], meta["name"], status, meta.get("resourceVersion")
        )
