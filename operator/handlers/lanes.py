"""Reconcile a Lane's status: running and queued counts and its conditions.

`frozenBy` belongs to the SLOPolicies that freeze the lane; this pass keeps it as it is and
derives `frozen` and the Frozen condition from it (`set_frozen`, which the SLOPolicy pass uses
too). A lane with a `fallbackLane` says whether that lane exists (FallbackLaneFound); the
operator re-runs this pass when a lane of the namespace appears or goes (handlers/app.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from bakeline.api.lane import Lane, LaneSpec
from bakeline.engine import lanes as admission
from bakeline.kube.circuits import open_circuits
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.conditions import condition_event, set_condition
from bakeline.metrics.collectors import LANE_FROZEN, LANE_RUNNING, QUEUE_DEPTH

TERMINAL = {"Succeeded", "Failed"}
FALLBACK_FOUND = "FallbackLaneFound"  # the condition type, and its reason when True
FALLBACK_NOT_FOUND = "FallbackLaneNotFound"


def lane_status(
    lane: dict[str, Any],
    jobs: list[dict[str, Any]],
    circuits: Mapping[str, Mapping[str, Any]] | None = None,
    now: float = 0.0,
    lanes: Collection[str] | None = None,
) -> dict[str, Any]:
    """The status a Lane should have given the namespace's jobs and circuit entries, and the
    names of the namespace's lanes (None: not known, FallbackLaneFound is left as it is); pure."""
    meta = lane["metadata"]
    name = meta["name"]
    status = dict(lane.get("status") or {})
    live = [j for j in jobs if (j.get("status") or {}).get("phase") not in TERMINAL]
    running = [j for j in live if (j.get("status") or {}).get("lane") == name]
    queued = [  # Queued, not Pending: a job waiting for its workflow is in no queue yet
        j
        for j in live
        if (j.get("status") or {}).get("phase") == "Queued"
        and (j.get("spec") or {}).get("laneRef", "standard") == name
        and not (j.get("spec") or {}).get("suspend")
    ]
    spec = lane_spec(lane)
    policy = spec.circuit_breaker
    status["openCircuits"] = open_circuits(circuits or {}, name, policy, now)
    status["observedGeneration"] = meta.get("generation")
    status["running"] = len(running)
    status["queued"] = len(queued)
    stop = (lane.get("spec") or {}).get("stopPolicy", "None")
    if stop != "None":
        set_condition(status, "Ready", "False", stop, f"stopPolicy {stop}: admission held", meta)
    else:
        limit = (lane.get("spec") or {}).get("maxConcurrentJobs", 1)
        message = f"{len(running)}/{limit} running, {len(queued)} queued"
        set_condition(status, "Ready", "True", "Admitting", message, meta)
    set_frozen(status, spec, meta)
    if lanes is not None:
        set_fallback_found(status, spec, meta, lanes)
    return status


def set_fallback_found(
    status: dict[str, Any], spec: LaneSpec, meta: Mapping[str, Any], lanes: Collection[str]
) -> None:
    """FallbackLaneFound: whether the lane `spec.fallbackLane` names exists among `lanes` (the
    namespace's); False, reason FallbackLaneNotFound, naming it while it does not. A lane
    without a fallbackLane has no such condition (an earlier one is dropped)."""
    fallback = spec.fallback_lane
    if fallback is None:
        kept = [c for c in status.get("conditions") or [] if c.get("type") != FALLBACK_FOUND]
        status["conditions"] = kept
        return
    if fallback in lanes:
        message = f"fallbackLane {fallback} exists"
        set_condition(status, FALLBACK_FOUND, "True", FALLBACK_FOUND, message, dict(meta))
        return
    message = (
        f"fallbackLane {fallback} does not exist in namespace {meta.get('namespace')}: while "
        "this lane is held or frozen with Fallback, its new jobs wait here"
    )
    set_condition(status, FALLBACK_FOUND, "False", FALLBACK_NOT_FOUND, message, dict(meta))


def set_frozen(status: dict[str, Any], spec: LaneSpec, meta: Mapping[str, Any]) -> None:
    """`frozen` and the Frozen condition from `frozenBy` (the SLOPolicies'): which policies
    froze the lane and what the freeze in force does; a Fallback freeze on a lane without a
    fallbackLane says that its new jobs wait instead (reason NoFallbackLane)."""
    frozen_by = status.get("frozenBy") or []
    status["frozen"] = bool(frozen_by)
    action = admission.freeze_in_force(f.get("action") for f in frozen_by)
    if action is None:
        set_condition(status, "Frozen", "False", "Healthy", "", dict(meta))
        return
    why = "; ".join(
        f"{f.get('policy')} ({f.get('action') or 'Freeze'}): {f.get('reason', '')}"
        for f in frozen_by
    )
    reason = "ErrorBudgetBurn"
    if action == "Fallback" and spec.fallback_lane is None:
        reason = "NoFallbackLane"
        effect = "Fallback without a fallbackLane: new jobs wait, as under Freeze"
    else:
        effect = {
            "Freeze": "new jobs wait",
            "HoldAndDrain": "new jobs wait; running jobs stop at their next stage boundary",
            "Fallback": f"new jobs go to lane {spec.fallback_lane}",
        }[action]
    set_condition(status, "Frozen", "True", reason, f"{effect}. {why}", dict(meta))


def lane_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(type, reason, message) for each change of admission a person would want to see."""
    events = []
    was, now = _ready(before), _ready(after)
    if was is not None and now is not None and was[0] != now[0]:
        kind = "Normal" if now[0] == "Admitting" else "Warning"
        events.append((kind, now[0], now[1]))
    opened_before = {c["agent"] for c in before.get("openCircuits") or []}
    for circuit in after.get("openCircuits") or []:
        if circuit["agent"] not in opened_before:
            message = (
                f"agent {circuit['agent']} quarantined after {circuit['consecutiveFailures']} "
                f"failures in a row, until {circuit['retryAfter']}: {circuit.get('lastFailure')}"
            )
            events.append(("Warning", "CircuitOpened", message))
    opened_after = {c["agent"] for c in after.get("openCircuits") or []}
    for agent in sorted(opened_before - opened_after):
        events.append(("Normal", "CircuitClosed", f"agent {agent} succeeded again"))
    fallback = condition_event(before, after, FALLBACK_FOUND)
    if fallback is not None:
        events.append(fallback)
    return events


def _ready(status: Mapping[str, Any]) -> tuple[str, str] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("reason")), str(condition.get("message"))
    return None


def lane_spec(lane: Mapping[str, Any]) -> LaneSpec:
    """The lane's spec; the defaults when it does not parse."""
    try:
        return Lane.model_validate(lane).spec
    except ValidationError:
        return LaneSpec()


def reconcile_lane(kube: Kube, lane: dict[str, Any], now: float) -> None:
    meta = lane["metadata"]
    before = lane.get("status") or {}
    status = lane_status(
        lane,
        kube.list_objects("BakingJob", meta["namespace"]),
        kube.circuits(meta["namespace"]),
        now,
        {other["metadata"]["name"] for other in kube.list_objects("Lane", meta["namespace"])},
    )
    labels = (meta["namespace"], meta["name"])
    QUEUE_DEPTH.labels(*labels).set(status["queued"])
    LANE_RUNNING.labels(*labels).set(status["running"])
    LANE_FROZEN.labels(*labels).set(1 if status["frozen"] else 0)
    if status_changes(status, lane.get("status") or {}):
        # frozenBy is the SLOPolicies': write only over the version this pass read.
        kube.patch_status(
            "Lane", meta["namespace"], meta["name"], status, meta.get("resourceVersion")
        )
        for event in lane_events(before, status):
            kube.post_event(lane, *event)


def lane_presence_changed(
    event_type: str | None, before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> bool:
    """Whether a Lane's watch event changes what other objects see of it: it appeared (the
    operator's first sight of it included), went, or its labels changed (an SLOPolicy's label
    selector reads them). Its own status writes do none of these, so the passes this wakes
    (`wake_lane_referrers` in app.py) are bounded by what people do to lanes."""
    if event_type in (None, "", "ADDED", "DELETED") or before is None:
        return True  # ADDED even when a LIST already brought it: the referrers may predate it
    labels = (
        (before.get("metadata") or {}).get("labels") or {},
        (after.get("metadata") or {}).get("labels") or {},
    )
    return labels[0] != labels[1]


def lanes_falling_back_to(lanes: list[dict[str, Any]], name: str) -> list[str]:
    """The lanes whose fallbackLane is `name`: their FallbackLaneFound follows its presence."""
    return sorted(
        lane["metadata"]["name"]
        for lane in lanes
        if (lane.get("spec") or {}).get("fallbackLane") == name
    )
