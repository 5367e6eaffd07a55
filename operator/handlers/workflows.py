"""Reconcile a Workflow: validity (Ready or Invalid with every problem), order, predictions
(from the namespace's finished jobs, kube/durations.py)."""

from __future__ import annotations

from typing import Any

from bakeline.api.validation import topological_order, validate_workflow
from bakeline.engine.predict import DurationModel, critical_path_seconds, latest_model_bytes
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.conditions import set_condition
from bakeline.kube.durations import duration_history, namespace_predictor


def workflow_status(
    obj: dict[str, Any], durations: DurationModel, model_bytes: int = 0
) -> dict[str, Any]:
    """The status a Workflow should have; pure, so tests check it directly. Stage durations are
    predicted by `durations` for a model of `model_bytes`."""
    meta = obj["metadata"]
    spec = obj.get("spec") or {}
    status = dict(obj.get("status") or {})
    problems = validate_workflow(spec)
    stages = spec.get("stages") or []
    status["observedGeneration"] = meta.get("generation")
    status["stageCount"] = len(stages)
    status["problems"] = [p.to_wire() for p in problems]
    if problems:
        message = "; ".join(f"{p.path}: {p.message}" for p in problems)[:32768]
        status["order"] = []
        status["predictedDurations"] = {}
        status.pop("predictedTotalSeconds", None)
        set_condition(status, "Ready", "False", "Invalid", message, meta)
        set_condition(status, "Invalid", "True", problems[0].reason, message, meta)
        return status
    order = topological_order(spec)
    agents = {s["name"]: s["agent"] for s in stages}
    predicted = {name: round(durations.predict(agents[name], model_bytes), 1) for name in order}
    depends = {s["name"]: s.get("dependsOn") or [] for s in stages}
    status["order"] = order
    status["predictedDurations"] = predicted
    status["predictedTotalSeconds"] = round(critical_path_seconds(depends, predicted), 1)
    set_condition(status, "Ready", "True", "Valid", f"{len(order)} stages in order", meta)
    set_condition(status, "Invalid", "False", "Valid", "", meta)
    return status


def reconcile_workflow(kube: Kube, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    # Sized as the model of the newest job that ran this workflow: what it bakes here.
    history = duration_history(kube, meta["namespace"])
    size = latest_model_bytes(history, workflow=meta["name"]) or 0
    status = workflow_status(obj, namespace_predictor(kube, meta["namespace"]), size)
    if status_changes(status, obj.get("status") or {}):
        kube.patch_status("Workflow", meta["namespace"], meta["name"], status)
        if status["problems"]:
            kube.post_event(obj, "Warning", "Invalid", status["conditions"][0]["message"][:1024])
