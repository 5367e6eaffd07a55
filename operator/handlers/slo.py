"""Reconcile an SLOPolicy: evaluate its objectives from the durable ledger, burn rates, budget
policy; freeze and unfreeze the lanes it selects.

The outcomes come from the namespace's ledger (kube/ledger.py), durable across restarts;
each evaluation also folds the ledger's aged entries and drops those no window reads. A
policy's freeze is an entry in each selected Lane's `status.frozenBy`, with the action it takes
(Freeze, HoldAndDrain or Fallback: admission reads it), written with the lane's resourceVersion
so it never overwrites a concurrent change. LanesFound says whether the lanes the policy names
exist (or its label selector selects any); the operator re-runs the policy when a lane of the
namespace appears, goes or is relabelled (handlers/app.py), besides its periodic evaluation.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import ValidationError

from bakeline.api.slopolicy import LaneSelector, SLOPolicy, default_burn_rate_alerts
from bakeline.engine import slo
from bakeline.handlers.lanes import lane_spec, set_frozen
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.clock import epoch, timestamp
from bakeline.kube.conditions import condition_event, set_condition
from bakeline.kube.ledger import fold_ledger, read_ledger, records
from bakeline.metrics.collectors import BUDGET_REMAINING, BURN_RATE

LANES_FOUND = "LanesFound"  # the condition type, and its reason when True
LANE_NOT_FOUND = "LaneNotFound"  # a lane named in laneSelector.names does not exist
NO_LANE_SELECTED = "NoLaneSelected"  # the label selector matches no lane of the namespace

# ---------------------------------------------------------------------------- the policy


def selected_lanes(kube: Kube, policy: SLOPolicy, namespace: str) -> list[dict[str, Any]]:
    selector = policy.spec.lane_selector
    if selector.names is not None:
        wanted = set(selector.names)
        return [
            lane
            for lane in kube.list_objects("Lane", namespace)
            if lane["metadata"]["name"] in wanted
        ]
    parts = [f"{k}={v}" for k, v in (selector.match_labels or {}).items()]
    for req in selector.match_expressions or []:
        values = ",".join(req.values or [])
        parts.append(
            {
                "In": f"{req.key} in ({values})",
                "NotIn": f"{req.key} notin ({values})",
                "Exists": req.key,
                "DoesNotExist": f"!{req.key}",
            }[req.operator]
        )
    return kube.list_lanes(namespace, ",".join(parts))


def set_lanes_found(
    status: dict[str, Any],
    selector: LaneSelector,
    found: Collection[str],
    meta: Mapping[str, Any],
) -> None:
    """LanesFound from the lanes the policy found (`found`, the selected lanes that exist):
    False with reason LaneNotFound naming every lane of `names` that does not exist, or
    NoLaneSelected when a label selector matches no lane; True otherwise. The policy goes on
    watching the lanes it found."""
    namespace = meta.get("namespace")
    missing = sorted(set(selector.names or ()) - set(found))
    if missing:
        names = ", ".join(missing)
        message = (
            f"lane {names} does not exist in namespace {namespace}"
            if len(missing) == 1
            else f"lanes {names} do not exist in namespace {namespace}"
        )
        set_condition(status, LANES_FOUND, "False", LANE_NOT_FOUND, message, dict(meta))
    elif not found:
        message = f"laneSelector selects no lane in namespace {namespace}"
        set_condition(status, LANES_FOUND, "False", NO_LANE_SELECTED, message, dict(meta))
    else:
        message = "watching lanes " + ", ".join(sorted(found))
        set_condition(status, LANES_FOUND, "True", LANES_FOUND, message, dict(meta))


def policies_watching(policies: list[dict[str, Any]], lane: str) -> list[str]:
    """The policies whose selection may change with lane `lane`: those naming it, and every one
    with a label selector (which lanes it matches is the API server's to say)."""
    watching = []
    for policy in policies:
        names = ((policy.get("spec") or {}).get("laneSelector") or {}).get("names")
        if names is None or lane in names:
            watching.append(policy["metadata"]["name"])
    return sorted(watching)


def reconcile_slo(kube: Kube, obj: dict[str, Any], now: float, every: float) -> float:
    """Evaluate the policy now; returns `every`, the seconds until the next evaluation."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    try:
        policy = SLOPolicy.model_validate(obj)
    except ValidationError as exc:
        status = dict(obj.get("status") or {})
        set_condition(status, "Ready", "False", "InvalidSpec", str(exc)[:1024], meta)
        kube.patch_status("SLOPolicy", namespace, name, status)
        return every
    lanes = selected_lanes(kube, policy, namespace)
    lane_names = {lane["metadata"]["name"] for lane in lanes}
    ledger = read_ledger(kube, namespace)
    alerts = policy.spec.burn_rate_alerts or default_burn_rate_alerts()
    outcomes = records(ledger[0], lane_names)
    reports = [
        slo.evaluate_objective(objective, outcomes, now, alerts)
        for objective in policy.spec.objectives
    ]
    mine = [
        entry
        for lane in lanes
        for entry in (lane.get("status") or {}).get("frozenBy") or []
        if entry.get("policy") == name
    ]
    frozen_since = min((epoch(e.get("since")) or now for e in mine), default=None)
    decision = slo.decide_budget_policy(reports, policy.spec.budget_policy, frozen_since, now)
    freeze = decision.freeze is not None
    worst = min(reports, key=lambda r: r.budget_remaining, default=None)

    status = dict(obj.get("status") or {})
    status["observedGeneration"] = meta.get("generation")
    status["state"] = decision.state
    status["budgetRemaining"] = round(worst.budget_remaining, 6) if worst else 1.0
    status["objectives"] = [r.to_status().to_wire() for r in reports]
    status["frozenLanes"] = sorted(lane_names) if freeze or (mine and not decision.unfreeze) else []
    status["lastEvaluated"] = timestamp(now)
    set_condition(status, "Ready", "True", "Evaluated", f"{len(lanes)} lanes watched", meta)
    set_lanes_found(status, policy.spec.lane_selector, lane_names, meta)
    burning = decision.state != "Healthy"
    set_condition(
        status,
        "Burning",
        "True" if burning else "False",
        decision.state if burning else "Healthy",
        decision.reason[:32768],
        meta,
    )
    exhausted = decision.state == "Exhausted"
    set_condition(
        status,
        "BudgetExhausted",
        "True" if exhausted else "False",
        "Exhausted" if exhausted else "BudgetLeft",
        decision.reason[:32768],
        meta,
    )
    for report in reports:
        labels = (namespace, name, report.objective.name)
        BUDGET_REMAINING.labels(*labels).set(report.budget_remaining)
        for window, rate in report.burn_rates.items():
            BURN_RATE.labels(*labels, window).set(rate)
    if status_changes(status, obj.get("status") or {}):
        kube.patch_status("SLOPolicy", namespace, name, status)
        # Each pass writes lastEvaluated: the Event follows the condition, not the write.
        event = condition_event(obj.get("status") or {}, status, LANES_FOUND)
        if event is not None:
            kube.post_event(obj, *event)
    # The lanes change after the policy's status is written: whoever sees a lane frozen by this
    # policy finds the policy already saying why (its state, burn rates and budget).
    for lane in lanes:
        _apply_to_lane(kube, obj, lane, decision, worst, now)
    fold_ledger(kube, namespace, now, ledger)
    return every


def _apply_to_lane(
    kube: Kube,
    policy: dict[str, Any],
    lane: dict[str, Any],
    decision: slo.BudgetDecision,
    worst: slo.ObjectiveReport | None,
    now: float,
) -> None:
    """Set, change or lift this policy's `frozenBy` entry on the lane; its `action` is what
    admission and the lane's jobs read (engine/lanes.py)."""
    name = policy["metadata"]["name"]
    status = dict(lane.get("status") or {})
    entries = list(status.get("frozenBy") or [])
    mine = [e for e in entries if e.get("policy") == name]
    action = decision.freeze
    lane_name = lane["metadata"]["name"]
    if action is not None and not mine:
        entries.append(
            {
                "policy": name,
                "objective": worst.objective.name if worst else None,
                "reason": decision.reason[:1024],
                "since": timestamp(now),
                "action": action,
            }
        )
        event = ("Warning", "Frozen", f"lane {lane_name} frozen ({action}): {decision.reason}")
    elif action is not None and (mine[0].get("action") or "Freeze") != action:
        # Still frozen, now with another action (an alert escalated): the freeze keeps its age.
        entries = [
            {**e, "action": action, "reason": decision.reason[:1024]}
            if e.get("policy") == name
            else e
            for e in entries
        ]
        event = ("Warning", "Frozen", f"lane {lane_name} now {action}: {decision.reason}")
    elif mine and decision.unfreeze:
        entries = [e for e in entries if e.get("policy") != name]
        event = ("Normal", "Unfrozen", f"lane {lane_name}: {decision.reason}")
    else:
        return
    meta = lane["metadata"]
    status["frozenBy"] = entries
    set_frozen(status, lane_spec(lane), meta)
    kube.patch_status("Lane", meta["namespace"], meta["name"], status, meta.get("resourceVersion"))
    kube.post_event(lane, event[0], event[1], event[2])
    kube.post_event(policy, event[0], event[1], event[2])
