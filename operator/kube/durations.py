"""Finished jobs' stage durations, kept per namespace for the duration predictor.

One ConfigMap per namespace (`bakeline-stage-durations`), one key per finished job (like the
SLO ledger's), holding what the job teaches the predictor: each stage's agent, the size of the
model it read and its seconds, and the job's model and workflow. Only the newest `KEEP_JOBS`
jobs stay, so the ConfigMap is bounded (about 40 KiB) and the predictor follows the agents as
they change. The predictor is fitted from it for every job's `estimatedCompletion` and every
Workflow's `predictedDurations`, so it learns across jobs and operator restarts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from bakeline.engine import pipeline as engine
from bakeline.engine.cache import canonical_json
from bakeline.engine.predict import (
    DurationModel,
    DurationSample,
    JobDurations,
    entries_to_drop,
    fit_durations,
    imported_size,
    stage_samples,
)
from bakeline.kube.client import MAX_DATA_KEY, Kube

log = logging.getLogger("bakeline.durations")

KEEP_JOBS = 100  # nine stages each: 900 samples, about 40 KiB
# The fitted model per namespace, with the history it was fitted from: refitted only when the
# history changed, not on every job pass.
_FITTED: dict[str, tuple[Mapping[str, str], tuple[JobDurations, ...], DurationModel]] = {}
_FITTED_LOCK = threading.Lock()


def model_identity(source: Mapping[str, Any]) -> str:
    """A model source's identity (builtin name, URL and sha256, ConfigMap or claim path) as a
    short digest: the same model in two jobs has the same one."""
    return hashlib.sha256(canonical_json(dict(source)).encode()).hexdigest()[:16]


def job_durations(
    job: Mapping[str, Any], plan: engine.Plan, state: engine.RunState, now: float
) -> JobDurations:
    """What the finished job teaches the predictor."""
    spec = job.get("spec") or {}
    return JobDurations(
        at=now,
        workflow=str(spec.get("workflowRef") or ""),
        model=model_identity((spec.get("model") or {}).get("source") or {}),
        model_bytes=imported_size(plan, state),
        samples=stage_samples(plan, state),
    )


def remember_durations(
    kube: Kube, job: Mapping[str, Any], plan: engine.Plan, state: engine.RunState, now: float
) -> None:
    """Add the finished job to its namespace's history and drop the oldest beyond KEEP_JOBS.
    A history that cannot be written loses this job's lesson, never the job (logged)."""
    meta = job["metadata"]
    namespace = meta["namespace"]
    learned = job_durations(job, plan, state, now)
    if not learned.samples:
        return
    key = f"{meta['name']}.{str(meta.get('uid') or '')[:8]}"[-MAX_DATA_KEY:]
    try:
        history = kube.durations(namespace)
        ended = {k: _ended_at(v) for k, v in history.items() if k != key}
        ended[key] = now
        changes: dict[str, str | None] = {k: None for k in entries_to_drop(ended, KEEP_JOBS)}
        if key not in changes:
            changes[key] = _to_wire(learned)
        kube.save_durations(namespace, changes)
    except ApiException as exc:
        log.warning("stage durations of %s not kept for %s: %s", namespace, meta["name"], exc)


def duration_history(kube: Kube, namespace: str) -> list[JobDurations]:
    """The namespace's kept jobs; entries that do not parse are skipped."""
    return list(_learned(kube, namespace)[0])


def namespace_predictor(kube: Kube, namespace: str) -> DurationModel:
    """The duration predictor fitted to the namespace's history (the prior alone when empty)."""
    return _learned(kube, namespace)[1]


def _learned(kube: Kube, namespace: str) -> tuple[tuple[JobDurations, ...], DurationModel]:
    """The parsed history and the model fitted to it, parsed and fitted again only when the
    history changed (every running job's pass asks)."""
    try:
        data = kube.durations(namespace)
    except ApiException as exc:
        # Estimates are no reason to stop a job (an operator newer than its RBAC, say): the
        # prior answers until the history can be read.
        log.warning("stage durations of %s unreadable: %s", namespace, exc.reason)
        data = {}
    with _FITTED_LOCK:
        known = _FITTED.get(namespace)
    if known is not None and known[0] == data:
        return known[1], known[2]
    history = tuple(job for job in map(_from_wire, data.values()) if job is not None)
    model = fit_durations(sample for job in history for sample in job.samples)
    with _FITTED_LOCK:
        _FITTED[namespace] = (data, history, model)
    return history, model


def _to_wire(job: JobDurations) -> str:
    return json.dumps(
        {
            "at": round(job.at, 3),
            "workflow": job.workflow,
            "model": job.model,
            "modelBytes": job.model_bytes,
            # [agent, bytes read, seconds] per stage: compact, the history is kept whole.
            "stages": [[s.agent, s.size_bytes, round(s.seconds, 3)] for s in job.samples],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def _from_wire(value: str) -> JobDurations | None:
    try:
        raw = json.loads(value)
        return JobDurations(
            at=float(raw["at"]),
            workflow=str(raw.get("workflow") or ""),
            model=str(raw.get("model") or ""),
            model_bytes=None if raw.get("modelBytes") is None else int(raw["modelBytes"]),
            samples=tuple(
                DurationSample(str(agent), int(size), float(seconds))
                for agent, size, seconds in raw.get("stages") or []
            ),
        )
    except (TypeError, ValueError, KeyError):
        return None


def _ended_at(value: str) -> float:
    parsed = _from_wire(value)
    return parsed.at if parsed is not None else 0.0
