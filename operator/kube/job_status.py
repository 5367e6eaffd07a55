"""BakingJob status <-> the engine's RunState.

The status is what a person reads with kubectl and what the next reconcile pass starts from;
the checkpoint records (ConfigMaps) supply each checkpoint's sha256, so a checkpoint id in
status that has no record is not trusted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from bakeline.api.bakingjob import Quality, Target
from bakeline.contract import TerminationMessage, parse_termination
from bakeline.engine import pipeline as engine
from bakeline.engine.predict import DurationModel, estimate_remaining, fit_durations
from bakeline.engine.result import FinalArtifact, job_verdict, quality_evidence, result_document
from bakeline.engine.retry import AttemptOutcome
from bakeline.kube.clock import epoch, now_timestamp, timestamp
from bakeline.kube.conditions import set_condition
from bakeline.runtime import pods as manifests

RecordLoader = Callable[[str], Mapping[str, Any] | None]


# A job in one of these phases has ended (a rerun starts it again).
TERMINAL = frozenset({"Succeeded", "Failed"})


def run_state_from_status(
    plan: engine.Plan,
    status: Mapping[str, Any],
    records: Mapping[str, Any],
    deadline_seconds: int | None,
) -> engine.RunState:
    """Rebuild the run state from the job's status and its checkpoint records."""
    by_name = {s.get("name"): s for s in status.get("stages") or []}
    stages: dict[str, engine.StageState] = {}
    for stage in plan.stages:
        entry = by_name.get(stage.name) or {}
        phase = engine.StagePhase(entry.get("phase", "Pending"))
        checkpoint = None
        record = records.get(entry.get("checkpoint") or "")
        if record is not None:
            data = record.get("data") or {}
            result = data.get("result.json")
            size = 0
            if result:
                size = int(json.loads(result).get("sizeBytes") or 0)
            checkpoint = engine.CheckpointInfo(
                data["checkpoint"], data.get("artifactSha256", ""), size
            )
        elif phase in (engine.StagePhase.SUCCEEDED, engine.StagePhase.CACHED):
            phase = engine.StagePhase.PENDING  # claimed done, but its checkpoint is gone: redo
        params_attempt = int(entry.get("attemptsWithParams") or 0)
        finished = epoch(entry.get("finishedAt"))
        not_before = 0.0
        if phase is engine.StagePhase.PENDING and params_attempt and finished:
            not_before = finished + stage.retry.delay(params_attempt)
        stages[stage.name] = engine.StageState(
            phase=phase,
            attempt=params_attempt,
            attempts_total=int(entry.get("attempt") or 0),
            fallback=int(entry.get("fallback") or 0),
            checkpoint=checkpoint,
            not_before=not_before,
            started_at=epoch(entry.get("startedAt")),
            finished_at=finished,
            message=str(entry.get("message") or ""),
            metrics=dict(entry.get("metrics") or {}),
        )
    phase_text = status.get("phase") or "Pending"
    known = {p.value for p in engine.JobPhase}
    job_phase = engine.JobPhase(phase_text) if phase_text in known else engine.JobPhase.PENDING
    deadline = engine.run_deadline(
        deadline_seconds, epoch(status.get("admittedAt")), epoch(status.get("rerunAt"))
    )
    return engine.RunState(
        stages=stages,
        phase=job_phase,
        rollbacks=int(status.get("rollbackCount") or 0),
        last_rollback_reason=str(status.get("lastRollbackReason") or ""),
        message="",
        deadline=deadline,
    )


def status_from_run_state(
    obj: Mapping[str, Any],
    plan: engine.Plan,
    state: engine.RunState,
    previous: Mapping[str, Any],
    load_record: RecordLoader,
    durations: DurationModel | None = None,
    model_bytes: int = 0,
    failed_outcome: AttemptOutcome | None = None,
) -> dict[str, Any]:
    """The job's new status: stages, progress, phase, conditions and, at the end, the result.

    `durations` predicts `estimatedCompletion` (the prior alone when None); `model_bytes` is
    the job's model size until its first checkpoint tells."""
    meta = obj["metadata"]
    status = dict(previous)
    stages = []
    for stage in plan.stages:
        s = state.stages[stage.name]
        entry: dict[str, Any] = {
            "name": stage.name,
            "agent": stage.agent,
            "phase": s.phase.value,
            "attempt": s.attempts_total,
            "attemptsWithParams": s.attempt,
            "fallback": s.fallback,
        }
        if s.attempts_total:
            entry["pod"] = manifests.stage_pod_name(meta["name"], stage.name, s.attempts_total)
        if s.started_at is not None:
            entry["startedAt"] = timestamp(s.started_at)
        if s.finished_at is not None:
            entry["finishedAt"] = timestamp(s.finished_at)
            if s.started_at is not None and s.phase is not engine.StagePhase.RUNNING:
                entry["durationSeconds"] = round(max(0.0, s.finished_at - s.started_at), 3)
        if s.checkpoint is not None:
            entry["checkpoint"] = s.checkpoint.id
        if s.metrics:
            entry["metrics"] = dict(list(s.metrics.items())[:32])
        if s.message:
            entry["message"] = s.message[:4096]
        stages.append(entry)
    status["stages"] = stages
    status["progress"] = state.progress
    status["observedGeneration"] = meta.get("generation")
    status["rollbackCount"] = state.rollbacks
    if state.last_rollback_reason:
        status["lastRollbackReason"] = state.last_rollback_reason[:1024]
    current = state.current_checkpoint(plan)
    status["currentCheckpoint"] = current.id if current else None
    started = [s.started_at for s in state.stages.values() if s.started_at]
    if started and not status.get("startedAt"):
        status["startedAt"] = timestamp(min(started))
    phase = state.phase
    if phase in (engine.JobPhase.PENDING, engine.JobPhase.QUEUED):
        phase = engine.JobPhase.RUNNING
    status["phase"] = phase.value
    if phase in (engine.JobPhase.SUCCEEDED, engine.JobPhase.FAILED):
        status.pop("estimatedCompletion", None)
    if phase is engine.JobPhase.SUCCEEDED:
        status["finishedAt"] = status.get("finishedAt") or now_timestamp()
        record = load_record(current.id) if current else None
        status["result"] = _result(obj, plan, state, record, current)
        final = _final_message(record)
        quality = Quality.model_validate((obj.get("spec") or {}).get("quality") or {})
        evidence = quality_evidence(plan, state, quality, final.metrics)
        verdict = job_verdict(phase, evidence=evidence)
        message = f"artifact {current.id if current else ''}"
        if not verdict.verified:  # a success all the same, but its quality was never checked
            message += f"; {verdict.note}"
        set_condition(status, "Succeeded", "True", verdict.reason, message, meta)
        set_condition(status, "Progressing", "False", "Succeeded", "all stages done", meta)
    elif phase is engine.JobPhase.FAILED:
        status["finishedAt"] = status.get("finishedAt") or now_timestamp()
        # The same verdict `bakeline run` gives (its exit code), in the condition's words.
        deadline = state.message == engine.DEADLINE_EXCEEDED
        verdict = job_verdict(phase, failed_outcome, deadline_exceeded=deadline)
        message = state.message or "a stage failed"
        set_condition(status, "Failed", "True", verdict.reason, message, meta)
        set_condition(
            status, "Progressing", "False", "Failed", state.message or "a stage failed", meta
        )
    else:
        durations = durations or fit_durations([])
        status["estimatedCompletion"] = timestamp(
            _estimate_end(plan, state, durations, model_bytes)
        )
        running = [n for n, s in state.stages.items() if s.phase is engine.StagePhase.RUNNING]
        reason = "RollingBack" if phase is engine.JobPhase.ROLLING_BACK else "StagesRunning"
        what = f"running {', '.join(running)}" if running else "between stages"
        set_condition(status, "Progressing", "True", reason, f"{state.progress} done; {what}", meta)
    return status


def _estimate_end(
    plan: engine.Plan, state: engine.RunState, durations: DurationModel, model_bytes: int
) -> float:
    """When the job should end: the duration predictor over the stages still to run, sized by
    the latest checkpoint (the model as it is now), or `model_bytes` before there is one."""
    now = time.time()
    current = state.current_checkpoint(plan)
    size = current.size_bytes if current else model_bytes
    pending = [
        stage.agent
        for stage in plan.stages
        if state.stages[stage.name].phase
        in (engine.StagePhase.PENDING, engine.StagePhase.ROLLED_BACK)
    ]
    running = next(
        (
            (stage.agent, now - (state.stages[stage.name].started_at or now))
            for stage in plan.stages
            if state.stages[stage.name].phase is engine.StagePhase.RUNNING
        ),
        None,
    )
    return now + estimate_remaining(durations, pending, size, running)


def _result(
    obj: Mapping[str, Any],
    plan: engine.Plan,
    state: engine.RunState,
    record: Mapping[str, Any] | None,
    current: engine.CheckpointInfo | None,
) -> dict[str, Any]:
    """status.result, decided by the engine as `bakeline run` decides it, from the final
    checkpoint's record (the final stage's termination message) and the stages' metrics."""
    data = (record or {}).get("data") or {}
    final = _final_message(record)
    spec = obj.get("spec") or {}
    artifact = FinalArtifact(
        location=data.get("path") or (current.id if current else ""),
        format=final.format or "unknown",
        sha256=data.get("artifactSha256") or final.artifact_sha256,
        size_bytes=final.size_bytes,
    )
    return result_document(
        plan,
        state,
        Target.model_validate(spec.get("target") or {}),
        Quality.model_validate(spec.get("quality") or {}),
        artifact,
        final.metrics,
    )


def _final_message(record: Mapping[str, Any] | None) -> TerminationMessage:
    """The final stage's termination message, as its checkpoint record keeps it."""
    data = (record or {}).get("data") or {}
    return parse_termination(data.get("result.json")) or TerminationMessage()


def repair_status(
    plan: engine.Plan,
    status: Mapping[str, Any],
    records: Mapping[str, Any],
    pods: Mapping[str, Any],
) -> dict[str, Any]:
    """Rebuild lost stage status (a restore from backup, a re-created object) from what the
    cluster still holds: the checkpoint records and the stage pods are the source of truth.

    Per stage: the highest attempt any pod or record shows; Succeeded with the latest recorded
    checkpoint; Running if that attempt's pod still runs; otherwise Pending, to run again.
    """
    repaired = dict(status)
    latest: dict[str, dict[str, Any]] = {}
    for stage in plan.stages:
        latest[stage.name] = {"name": stage.name, "agent": stage.agent, "phase": "Pending"}
    attempts: dict[str, int] = {}
    for pod in pods.values():
        labels = pod["metadata"].get("labels") or {}
        stage_name = _stage_of(plan, labels.get(manifests.LABEL_STAGE, ""))
        if stage_name is None:
            continue
        attempt = int(labels.get(manifests.LABEL_ATTEMPT, "0") or 0)
        attempts[stage_name] = max(attempts.get(stage_name, 0), attempt)
        running = (pod.get("status") or {}).get("phase") in (None, "Pending", "Running")
        if running and attempt >= attempts[stage_name]:
            latest[stage_name].update(phase="Running", attempt=attempt)
    best: dict[str, tuple[int, Any]] = {}
    for record in records.values():
        data = record.get("data") or {}
        stage_name = data.get("stage")
        attempt = int(data.get("attempt") or 0)
        if stage_name in latest and attempt >= best.get(stage_name, (0, None))[0]:
            best[stage_name] = (attempt, data)
        if stage_name in latest:
            attempts[stage_name] = max(attempts.get(stage_name, 0), attempt)
    for stage_name, entry in latest.items():
        entry.setdefault("attempt", attempts.get(stage_name, 0))
        entry["attempt"] = max(int(entry["attempt"]), attempts.get(stage_name, 0))
        if entry["phase"] != "Running" and stage_name in best:
            entry.update(phase="Succeeded", checkpoint=best[stage_name][1]["checkpoint"])
    repaired["stages"] = list(latest.values())
    repaired["phase"] = "Running"
    return repaired


def _stage_of(plan: engine.Plan, label: str) -> str | None:
    for stage in plan.stages:
        if manifests.label_value(stage.name) == label:
            return stage.name
    return None
