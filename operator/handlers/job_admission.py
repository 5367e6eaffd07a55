"""A BakingJob's way into a Lane: the queue, the namespace's admission decision (computed once
per change of a job or lane), and the reasons a job waits. Part of the job pass
(`handlers/jobs.py`)."""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bakeline.api.lane import Lane, LaneSpec
from bakeline.engine import lanes as admission
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.clock import epoch, timestamp
from bakeline.kube.conditions import set_condition
from bakeline.kube.informer import Informer
from bakeline.kube.job_status import TERMINAL

# Queued jobs are woken when room opens (app.wake_admitted); this is the safety net, and how
# often queuePosition is refreshed.
POLL_QUEUED_S = 15.0
# Reasons to wait that name something missing: the user's to fix, so a Warning Event.
_MISSING = frozenset({admission.UNKNOWN_LANE})


# Admission decisions by informer and namespace, with the change counters they were made at.
_DECISIONS: weakref.WeakKeyDictionary[
    Informer, dict[str, tuple[tuple[int, int, int | None], admission.Admission]]
] = weakref.WeakKeyDictionary()
_DECISIONS_LOCK = threading.Lock()


def admit(
    kube: Kube, obj: dict[str, Any], status: dict[str, Any], now: float, capacity: int | None
) -> float | None:
    """Admit the job to its lane, or record why it waits. None: admitted, go on."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    lane = obj["spec"].get("laneRef", "standard")
    if kube.get("Lane", namespace, lane) is None:
        # Pending, in no lane's queue (a lane deleted under a queued job takes it out too):
        # creating the lane wakes the job (app.wake_admitted).
        if status.get("queuedAt"):
            status["queuedAt"] = None  # null: the merge patch removes it
        message = f"lane {lane!r} does not exist in {namespace}; the job waits for it"
        return wait(kube, obj, status, "Pending", admission.UNKNOWN_LANE, message, warning=True)
    if not status.get("queuedAt"):
        # Enter the queue first, visibly (phase Queued); admission is the next pass's decision.
        return wait(kube, obj, status, "Queued", "Queued", f"queued in lane {lane}")
    decision = admission_decision(kube, namespace, now, capacity)
    if name in decision.admit:
        admitted = decision.admit[name]
        status.update(
            {
                "phase": "Running",
                "lane": admitted,
                "admittedAt": timestamp(now),
                "queuePosition": None,
            }
        )
        status.setdefault("queuedAt", timestamp(now))
        routed = f" (routed from {obj['spec'].get('laneRef')})" if name in decision.route else ""
        set_condition(
            status, "Admitted", "True", "Admitted", f"admitted to lane {admitted}{routed}", meta
        )
        kube.post_event(obj, "Normal", "Admitted", f"admitted to lane {admitted}{routed}")
        return None
    reason = decision.waiting.get(name, admission.LANE_FULL)
    position = decision.positions.get(name)
    message = {
        # The job's own lane exists (above): a lane on its fallback chain does not.
        admission.UNKNOWN_LANE: f"lane {lane}'s jobs go to its fallback lane, which does not exist",
        admission.LANE_HELD: "the lane holds admission (stopPolicy)",
        admission.CAPACITY: f"the operator runs at most {capacity} jobs in {namespace} at once "
        "(--max-running-jobs); lanes with a higher priority are served first",
        admission.LANE_FROZEN: "the lane is frozen by an SLOPolicy (Freeze or HoldAndDrain)",
        admission.NO_FALLBACK: "an SLOPolicy routes the lane's jobs to its fallback lane "
        "(Fallback), and it has none",
    }.get(reason, f"waiting in lane {lane}: {reason}")
    return wait(kube, obj, status, "Queued", reason, message, position, warning=reason in _MISSING)


def admission_decision(
    kube: Kube, namespace: str, now: float, capacity: int | None
) -> admission.Admission:
    """The lanes' admission decision over every job of the namespace. With the operator's
    informer it is computed once per change of a job or lane, not once per queued job's pass:
    with 1,000 jobs queued, each of their passes listed and sorted all 1,000."""
    informer = kube.informer
    if informer is None:
        return _decide(kube, namespace, now, capacity)
    key = (
        informer.changes("BakingJob", namespace),
        informer.changes("Lane", namespace),
        capacity,
    )
    with _DECISIONS_LOCK:
        known = _DECISIONS.setdefault(informer, {}).get(namespace)
    if known is not None and known[0] == key:
        return known[1]
    decision = _decide(kube, namespace, now, capacity)
    with _DECISIONS_LOCK:
        _DECISIONS[informer][namespace] = (key, decision)
    return decision


def _decide(kube: Kube, namespace: str, now: float, capacity: int | None) -> admission.Admission:
    lanes: list[admission.LaneView] = []
    jobs = kube.list_objects("BakingJob", namespace)
    running: dict[str, list[str]] = {}
    queued: list[admission.QueuedJob] = []
    for other in jobs:
        other_status = other.get("status") or {}
        if other_status.get("phase") in TERMINAL or other["spec"].get("suspend"):
            continue
        if other_status.get("lane"):
            running.setdefault(other_status["lane"], []).append(other["metadata"]["name"])
        elif other_status.get("phase") == "Queued":  # not Pending: that waits for no lane's room
            queued.append(
                admission.QueuedJob(
                    name=other["metadata"]["name"],
                    lane=other["spec"].get("laneRef", "standard"),
                    priority=int(other["spec"].get("priority", 0)),
                    created_at=epoch(other["metadata"].get("creationTimestamp")) or now,
                )
            )
    for lane_obj in kube.list_objects("Lane", namespace):
        try:
            lane = Lane.model_validate(lane_obj)
        except ValidationError:
            continue
        lane_name = lane_obj["metadata"]["name"]
        lanes.append(
            admission.LaneView(
                lane_name, lane.spec, tuple(running.get(lane_name, ())), freeze_in_force(lane_obj)
            )
        )
    return admission.admit(lanes, queued, capacity)


def wait(
    kube: Kube,
    obj: dict[str, Any],
    status: dict[str, Any],
    phase: str,
    reason: str,
    message: str,
    position: int | None = None,
    warning: bool = False,
) -> float:
    """Record why the job waits (phase, the Admitted condition, an Event when that changed);
    returns seconds until the next look. `warning`: the user's to fix (a missing reference)."""
    meta = obj["metadata"]
    wake = POLL_QUEUED_S
    before = copy.deepcopy(status)
    status["phase"] = phase
    status["queuePosition"] = position
    if phase == "Queued" and not status.get("queuedAt"):
        status["queuedAt"] = timestamp(time.time())
        wake = 0.2  # just queued: decide admission at once
    set_condition(status, "Admitted", "False", reason, message, meta)
    status["observedGeneration"] = meta.get("generation")
    if status_changes(status, before):
        kube.patch_status("BakingJob", meta["namespace"], meta["name"], status)
        if reason != "Queued":
            # Entering the queue is in the status; an Event comes with admission or with
            # the reason it waits (a request per job saved: 0.11 per stage of nine).
            kube.post_event(obj, "Warning" if warning else "Normal", reason, message)
    return wake


def freeze_in_force(lane: Mapping[str, Any] | None) -> admission.FreezeAction | None:
    """What the SLOPolicies that froze the lane make it do (None: not frozen)."""
    frozen_by = ((lane or {}).get("status") or {}).get("frozenBy") or []
    return admission.freeze_in_force(entry.get("action") for entry in frozen_by)


def lane_spec(lane: Mapping[str, Any] | None) -> LaneSpec:
    """The lane's spec; defaults when it vanished after admission or does not parse."""
    try:
        return Lane.model_validate(lane).spec if lane else LaneSpec()
    except ValidationError:
        return LaneSpec()


def requeue(status: dict[str, Any], lane: str, why: str, meta: Mapping[str, Any]) -> None:
    """A drained job leaves its lane at a stage boundary; its stages and checkpoints stay, so
    it resumes where it stopped when admitted again."""
    status.update(phase="Queued", lane=None, admittedAt=None)
    message = f"lane {lane} is draining ({why}); resumes from its checkpoints"
    set_condition(status, "Admitted", "False", "Drained", message, dict(meta))
