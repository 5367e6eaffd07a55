"""Reconcile an SLOPolicy: evaluate its objectives from the durable ledger, burn rates, budget
policy; freeze and unfreeze the lanes it selects.

The ledger is a ConfigMap with one entry per finished job (written by the job reconcile before
its final status), so an operator restart loses no counts. A policy's freeze is an entry in
each selected Lane's `status.frozenBy`, written with the lane's resourceVersion so it never
overwrites a concurrent change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bakeline.api.common import window_seconds
from bakeline.api.slopolicy import SLOPolicy, default_burn_rate_alerts
from bakeline.engine import slo
from bakeline.handlers.clock import epoch, timestamp
from bakeline.handlers.conditions import set_condition
from bakeline.handlers.kube import MAX_DATA_KEY, Kube, status_changes
from bakeline.metrics.collectors import BUDGET_REMAINING, BURN_RATE

FREEZING = {"Freeze", "HoldAndDrain", "Fallback"}


# ---------------------------------------------------------------------------- the ledger


MAX_LEDGER_KEY = MAX_DATA_KEY


def ledger_key(lane: str, job: Mapping[str, Any]) -> str:
    """The job's entry in the ledger: readable where the names fit, a digest where they do not
    (the entry itself names the lane; the job's uid keeps keys apart)."""
    meta = job["metadata"]
    key = f"{lane}.{meta['name']}.{meta['uid'][:8]}"
    if len(key) <= MAX_LEDGER_KEY:
        return key
    digest = hashlib.sha256(f"{lane}/{meta['name']}".encode()).hexdigest()[:32]
    return f"{lane[:200]}.{digest}.{meta['uid'][:8]}"


def outcome_entry(lane: str, status: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A finished job as ledger records: its outcome, queue wait, gate and stage times."""
    ok = status.get("phase") == "Succeeded"
    started = epoch(status.get("admittedAt")) or now
    queued = epoch(status.get("queuedAt")) or started
    records: list[dict[str, Any]] = [
        {"kind": slo.RecordKind.JOB, "ok": ok, "seconds": round(now - started, 3)},
        {"kind": slo.RecordKind.QUEUE, "ok": True, "seconds": round(max(0.0, started - queued), 3)},
    ]
    gate_failed = "gate" in (status.get("lastRollbackReason") or "").lower() or any(
        "gate" in (s.get("message") or "").lower()
        for s in status.get("stages") or []
        if s.get("phase") in ("Failed", "RolledBack")
    )
    records.append({"kind": slo.RecordKind.GATE, "ok": not gate_failed})
    for stage in status.get("stages") or []:
        if stage.get("durationSeconds") is not None:
            records.append(
                {"kind": slo.RecordKind.STAGE, "ok": True, "seconds": stage["durationSeconds"]}
            )
    return {"lane": lane, "at": now, "records": records}


def _records(entries: Mapping[str, Mapping[str, Any]], lanes: set[str]) -> list[slo.OutcomeRecord]:
    out = []
    for entry in entries.values():
        if entry.get("lane") not in lanes:
            continue
        at = float(entry["at"])
        for record in entry.get("records") or []:
            out.append(
                slo.OutcomeRecord(
                    at=at,
                    kind=slo.RecordKind(record["kind"]),
                    ok=bool(record.get("ok", True)),
                    seconds=record.get("seconds"),
                )
            )
    return out


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
    entries = kube.ledger(namespace)
    alerts = policy.spec.burn_rate_alerts or default_burn_rate_alerts()
    reports = [
        slo.evaluate_objective(objective, _records(entries, lane_names), now, alerts)
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
    freeze = bool(FREEZING & set(decision.actions))
    worst = min(reports, key=lambda r: r.budget_remaining, default=None)
    for lane in lanes:
        _apply_to_lane(kube, obj, lane, freeze, decision, worst, now)
    _prune(kube, namespace, entries, policy, alerts, now)

    status = dict(obj.get("status") or {})
    status["observedGeneration"] = meta.get("generation")
    status["state"] = decision.state
    status["budgetRemaining"] = round(worst.budget_remaining, 6) if worst else 1.0
    status["objectives"] = [r.to_status().to_wire() for r in reports]
    status["frozenLanes"] = sorted(lane_names) if freeze or (mine and not decision.unfreeze) else []
    status["lastEvaluated"] = timestamp(now)
    set_condition(status, "Ready", "True", "Evaluated", f"{len(lanes)} lanes watched", meta)
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
    return every


def _apply_to_lane(
    kube: Kube,
    policy: dict[str, Any],
    lane: dict[str, Any],
    freeze: bool,
    decision: slo.BudgetDecision,
    worst: slo.ObjectiveReport | None,
    now: float,
) -> None:
    name = policy["metadata"]["name"]
    status = dict(lane.get("status") or {})
    entries = list(status.get("frozenBy") or [])
    mine = [e for e in entries if e.get("policy") == name]
    if freeze and not mine:
        entries.append(
            {
                "policy": name,
                "objective": worst.objective.name if worst else None,
                "reason": decision.reason[:1024],
                "since": timestamp(now),
            }
        )
        event = ("Warning", "Frozen", f"lane {lane['metadata']['name']} frozen: {decision.reason}")
    elif mine and decision.unfreeze:
        entries = [e for e in entries if e.get("policy") != name]
        event = ("Normal", "Unfrozen", f"lane {lane['metadata']['name']}: {decision.reason}")
    else:
        return
    meta = lane["metadata"]
    status["frozenBy"] = entries
    status["frozen"] = bool(entries)
    set_condition(
        status,
        "Frozen",
        "True" if entries else "False",
        "ErrorBudgetBurn" if entries else "Healthy",
        "; ".join(f"{e['policy']}: {e.get('reason', '')}" for e in entries),
        meta,
    )
    kube.patch_status("Lane", meta["namespace"], meta["name"], status, meta.get("resourceVersion"))
    kube.post_event(lane, event[0], event[1], event[2])
    kube.post_event(policy, event[0], event[1], event[2])


def _prune(
    kube: Kube,
    namespace: str,
    entries: Mapping[str, Mapping[str, Any]],
    policy: SLOPolicy,
    alerts: list[Any],
    now: float,
) -> None:
    """Forget entries older than every window this policy reads (others may read longer ones:
    only entries older than 30 days, the longest sensible window, go)."""
    horizon = max(
        [window_seconds(o.window) for o in policy.spec.objectives]
        + [window_seconds(a.long_window) for a in alerts]
        + [30 * 86400]
    )
    stale = [key for key, entry in entries.items() if now - float(entry.get("at", now)) > horizon]
    kube.prune_ledger(namespace, stale)
