"""Reconcile a Workflow: validity (Ready or Invalid with every problem), order, predictions."""

from __future__ import annotations

from typing import Any

from bakeline.api.validation import topological_order, validate_workflow
from bakeline.engine.predict import DurationSample, critical_path_seconds, fit_durations
from bakeline.handlers.conditions import set_condition
from bakeline.handlers.kube import Kube, status_changes


def duration_samples(jobs: list[dict[str, Any]]) -> list[DurationSample]:
    """Past stage runs of the namespace's jobs: what the duration predictor learns from."""
    samples = []
    for job in jobs:
        for stage in (job.get("status") or {}).get("stages") or []:
            seconds = stage.get("durationSeconds")
            if stage.get("phase") == "Succeeded" and stage.get("agent") and seconds is not None:
                size = int((stage.get("metrics") or {}).get("sizeBytes") or 0)
                samples.append(DurationSample(stage["agent"], size, float(seconds)))
    return samples


def workflow_status(obj: dict[str, Any], samples: list[DurationSample]) -> dict[str, Any]:
    """The status a Workflow should have; pure, so tests check it directly."""
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
    model = fit_durations(samples)
    order = topological_order(spec)
    agents = {s["name"]: s["agent"] for s in stages}
    predicted = {name: round(model.predict(agents[name], 0), 1) for name in order}
    depends = {s["name"]: s.get("dependsOn") or [] for s in stages}
    status["order"] = order
    status["predictedDurations"] = predicted
    status["predictedTotalSeconds"] = round(critical_path_seconds(depends, predicted), 1)
    set_condition(status, "Ready", "True", "Valid", f"{len(order)} stages in order", meta)
    set_condition(status, "Invalid", "False", "Valid", "", meta)
    return status


def reconcile_workflow(kube: Kube, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    samples = duration_samples(kube.list_objects("BakingJob", meta["namespace"]))
    status = workflow_status(obj, samples)
    if status_changes(status, obj.get("status") or {}):
        kube.patch_status("Workflow", meta["namespace"], meta["name"], status)
        if status["problems"]:
            kube.post_event(obj, "Warning", "Invalid", status["conditions"][0]["message"][:1024])
