"""Reconcile one BakingJob: admit it, observe its pods, ask the engine, apply, write status.

A plain function over `Kube`, called by the thin kopf handlers in `bakeline.handlers.app` on
every change of the job or of its pods, and by a ticker for backoff and deadlines. Every step is
idempotent: pods and checkpoint records have deterministic names, and the run state is rebuilt
each time from the job's status and its checkpoint records, so a pass can be interrupted (an
operator restart) anywhere and simply run again.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from bakeline.api import bakingjob as bj
from bakeline.api.defaults import default_workflow
from bakeline.api.validation import validate_workflow
from bakeline.api.workflow import WorkflowSpec
from bakeline.engine import lanes as admission
from bakeline.engine import pipeline as engine
from bakeline.engine.cache import HARDWARE_DEPENDENT_AGENTS
from bakeline.engine.predict import latest_model_bytes
from bakeline.engine.result import first_failed_stage
from bakeline.engine.retry import AttemptOutcome
from bakeline.handlers import job_admission, job_delivery, job_export, job_pods
from bakeline.handlers.config import OperatorConfig
from bakeline.kube import blocked_pods
from bakeline.kube.circuits import StageOutcome, count_outcomes, lane_circuits, trial_started
from bakeline.kube.client import Kube, status_changes
from bakeline.kube.clock import epoch, timestamp
from bakeline.kube.conditions import set_condition
from bakeline.kube.durations import (
    duration_history,
    model_identity,
    namespace_predictor,
    remember_durations,
)
from bakeline.kube.job_status import (
    TERMINAL,
    repair_status,
    run_state_from_status,
    status_from_run_state,
)
from bakeline.kube.ledger import ledger_key, outcome_entry, record_outcome
from bakeline.kube.retention import prune_checkpoints
from bakeline.metrics.collectors import (
    CACHE_HITS,
    ROLLBACKS,
    STAGE_RETRIES,
    track_job_phase,
)
from bakeline.runtime import pods as manifests
from bakeline.runtime.pods import ANNOTATION_RERUN

log = logging.getLogger("bakeline.jobs")

# A safety net only: pod events wake a running job, and kopf re-lists after a watch breaks.
# Polling often costs more than it saves (each look is a full reconcile on a small machine).
POLL_RUNNING_S = 30.0


def reconcile_job(
    kube: Kube, config: OperatorConfig, obj: dict[str, Any], now: float
) -> float | None:
    """One pass over the job; returns seconds until it wants another look (None: never)."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    status = copy.deepcopy(obj.get("status") or {})
    observed = copy.deepcopy(status)
    rerun = (meta.get("annotations") or {}).get(ANNOTATION_RERUN)
    if status.get("phase") in TERMINAL and (not rerun or rerun == status.get("rerunRequest")):
        job_export.reconcile_export(kube, config, obj)
        if job_delivery.needs_delivery(obj):
            return job_delivery.reconcile_delivery(kube, config, obj, now)
        return None
    try:
        job = bj.BakingJob.model_validate(obj)
    except ValidationError as exc:
        # The CRD schema refuses most of this; what slips through fails the job with the reason.
        _fail_now(kube, obj, status, "InvalidSpec", f"the job does not parse: {exc}")
        return None
    spec = job.spec
    if spec.suspend:
        if status.get("phase") != "Suspended":
            status["phase"] = "Suspended"
            set_condition(status, "Progressing", "False", "Suspended", "spec.suspend is true", meta)
            kube.patch_status("BakingJob", namespace, name, status)
            kube.post_event(obj, "Normal", "Suspended", "job suspended; running pods finish")
        return None

    try:
        manifests.model_source_mount(spec.model.source.to_wire(), spec.model.format)
    except ValueError as exc:
        _fail_now(kube, obj, status, "ModelSourceUnsupported", str(exc))
        return None
    found = _workflow(kube, namespace, spec.workflow_ref)
    if found is None:
        return job_admission.wait(
            kube,
            obj,
            status,
            "Pending",
            "WorkflowNotFound",
            f"workflow {spec.workflow_ref!r} does not exist in {namespace}",
            warning=True,
        )
    # Checked in wire form first: what fails the model's own validation is a problem too.
    problems = [f"{p.path}: {p.message}" for p in validate_workflow(found)]
    if problems:
        _fail_now(
            kube,
            obj,
            status,
            "WorkflowInvalid",
            f"workflow {spec.workflow_ref or 'default'} is invalid: " + "; ".join(problems),
        )
        return None
    plan = engine.Plan.from_workflow(WorkflowSpec.model_validate(found), spec.quality)

    rerun_stage = (rerun or "").split("@", 1)[0]
    if (
        rerun != status.get("rerunRequest")
        and status.get("phase") in TERMINAL
        and rerun_stage in plan.order  # (a stage it lacks is refused below)
    ):
        # A rerun of a finished job is a run of its own: it waits for room in its lane.
        status.update(lane=None, queuedAt=None, admittedAt=None)
    if not status.get("lane"):
        wait = job_admission.admit(kube, obj, status, now, config.max_running_jobs)
        if wait is not None:
            return wait

    events: list[engine.Event] = []
    records = {
        r["data"]["checkpoint"]: r
        for r in kube.job_records(namespace, name)
        if "checkpoint" in (r.get("data") or {})
    }
    pods = kube.job_pods(namespace, name)
    if job_pods.running_pods_unseen(status, pods, name):
        # The watch shows every ending pod; a running stage whose pod is missing or still
        # running here is a periodic look (or a watch that missed something): ask the API.
        pods = kube.job_pods(namespace, name, fresh=True)
    if not status.get("stages") and (records or pods):
        status = repair_status(plan, status, records, pods)
        events = [engine.Event(now, "", "Repaired", "status rebuilt from checkpoints and pods")]
    state = run_state_from_status(plan, status, records, spec.deadline_seconds)
    if rerun and rerun != status.get("rerunRequest"):
        state, events = _rerun(plan, state, status, rerun, spec.deadline_seconds, now)
    bypass = _rerun_stages(plan, status.get("rerunRequest"))
    new_records: list[dict[str, Any]] = []
    outcomes: list[StageOutcome] = []
    for stage_name, stage_state in state.stages.items():
        if stage_state.phase is engine.StagePhase.RUNNING:
            state, happened = job_pods.observe(
                obj, plan, state, stage_name, pods, new_records, outcomes, now
            )
            events += happened
            for body in new_records:
                # Readable at once by this pass's cache lookups and status.
                records[body["data"]["checkpoint"]] = body
    lane_name = str(status.get("lane") or spec.lane_ref)
    lane_obj = kube.get("Lane", namespace, lane_name)
    lane_spec = job_admission.lane_spec(lane_obj)
    policy = lane_spec.circuit_breaker
    if outcomes:
        circuits = count_outcomes(kube, namespace, lane_name, policy, outcomes, now)
    else:
        circuits = lane_circuits(kube.circuits(namespace), lane_name)
    blocked = admission.blocked_agents(circuits, now, policy)
    freeze = job_admission.freeze_in_force(lane_obj)
    draining = admission.lane_drains(lane_spec, freeze)

    cache = engine.CacheContext(
        model_sha256=(spec.model.source.url.sha256 if spec.model.source.url else None),
        agent_version=config.agent_version,
        job=job_pods.job_document(job),
        # A pod may land on another node than the one that measured: never reuse those.
        bypass=bypass | {s.name for s in plan.stages if s.agent in HARDWARE_DEPENDENT_AGENTS},
    )
    wake: float | None = None
    pods_wait = blocked_pods.wait_seconds(status, now)
    for action in engine.next_actions(plan, state, now, cache, blocked):
        if isinstance(action, engine.StartStage):
            if draining:
                continue  # the lane drains: no new stage; the job goes back to the queue below
            if pods_wait is not None or job_pods.pods_in_trouble(events):
                # Stage pods were refused or did not start, earlier or in this very pass: back
                # off (the delay is set below, once the condition says how long it has lasted).
                if pods_wait is not None:
                    wake = pods_wait if wake is None else min(wake, pods_wait)
                continue
            if circuits.get(action.agent, admission.Circuit()).opened_at is not None:
                trial_started(kube, namespace, lane_name, action.agent, now)
                events.append(
                    engine.Event(now, action.stage, "CircuitTrial", f"trial run of {action.agent}")
                )
            state, happened = job_pods.start(
                kube, config, obj, job, plan, state, action, records, lane_spec, now
            )
            events += happened
        elif isinstance(action, engine.WaitUntil):
            wake = max(0.5, action.at - now)
        elif isinstance(action, engine.FinishJob):
            state = engine.finish(state, action)
            events.append(engine.Event(now, "", action.phase.value, action.reason))
    # Records after the next pods: the next stage reads its input from the volume, not from
    # the record, and a crash in between only repeats this pass (creation is idempotent).
    for body in new_records:
        kube.create_record(body)

    _count(namespace, plan, events)
    by_checkpoint = {cid: records[cid] for cid in records}
    new_status = status_from_run_state(
        obj,
        plan,
        state,
        status,
        by_checkpoint.get,
        namespace_predictor(kube, namespace),
        0 if state.current_checkpoint(plan) else _model_bytes(kube, obj),
        _failed_outcome(plan, state, name, outcomes),
    )
    pod_trouble = job_pods.pods_in_trouble(events)
    if pod_trouble is not None:
        delay = blocked_pods.block(new_status, pod_trouble, now, meta)
        wake = delay if wake is None else min(wake, delay)
    elif any(e.kind == "Started" for e in events):
        blocked_pods.unblock(new_status, meta)
    running = any(s.phase is engine.StagePhase.RUNNING for s in state.stages.values())
    if draining and not running and new_status.get("phase") not in TERMINAL:
        why = (
            "an SLOPolicy's HoldAndDrain" if freeze == "HoldAndDrain" else "stopPolicy HoldAndDrain"
        )
        job_admission.requeue(new_status, lane_name, why, meta)
        events.append(
            engine.Event(now, "", "Drained", f"lane {lane_name} drains ({why}): back in the queue")
        )
        wake = job_admission.POLL_QUEUED_S
    if new_status.get("phase") in TERMINAL and running:
        # Failed with stages still running (the deadline passed, a branch failed): stop them.
        for pod in job_pods.unfinished(pods):
            kube.delete_pod(namespace, pod)
            events.append(engine.Event(now, "", "PodStopped", f"deleted {pod}: the job ended"))
    if state.deadline is not None and new_status.get("phase") not in TERMINAL:
        wake = min(wake if wake is not None else POLL_RUNNING_S, max(0.5, state.deadline - now))
    finished_now = new_status.get("phase") in TERMINAL and observed.get("phase") not in TERMINAL
    if finished_now:
        remember_durations(kube, obj, plan, state, now)
        # The ledger first: if the status write is lost, the next pass writes the same key.
        lane = str(new_status.get("lane") or spec.lane_ref)
        entry = outcome_entry(lane, new_status, now)
        try:
            key = ledger_key(lane, obj, epoch(new_status.get("rerunAt")))
            record_outcome(kube, namespace, key, entry, now)
        except ApiException as exc:
            if exc.status not in (413, 422):
                raise
            # The ledger ConfigMap is at its 1 MiB limit even folded: the job still ends (a job
            # stuck Running for want of a metric is worse); the lost outcome is said out loud.
            log.warning("SLO ledger of %s refused %s's outcome: %s", namespace, name, exc.reason)
            events.append(
                engine.Event(
                    now,
                    "",
                    "OutcomeNotRecorded",
                    "the SLO ledger ConfigMap refused this outcome "
                    f"({blocked_pods.api_message(exc)}); "
                    "SLOPolicies do not count it",
                )
            )
    if finished_now:
        # retain counts once the job has finished: while it runs a rollback may need any.
        needed = {str(new_status.get("currentCheckpoint") or "")}
        retain = spec.checkpoints.retain
        events += prune_checkpoints(kube, obj, plan, records, retain, needed, now)
    if status_changes(new_status, observed):
        kube.patch_status("BakingJob", namespace, name, new_status)
    for event in events:
        _post(kube, obj, event)
    track_job_phase(namespace, name, new_status.get("phase"))
    if new_status.get("phase") in TERMINAL:
        # A package to deliver: the next pass starts it (this one's status write wakes none).
        return 0.5 if new_status.get("phase") == "Succeeded" and spec.output else None
    return wake if wake is not None else POLL_RUNNING_S


def _rerun(
    plan: engine.Plan,
    state: engine.RunState,
    status: dict[str, Any],
    request: str,
    deadline_seconds: int | None,
    now: float,
) -> tuple[engine.RunState, list[engine.Event]]:
    """Act once on a `bakeline.io/rerun-from: STAGE@TIME` annotation. The rerun is a run of its
    own: its deadline window starts now, and the last run's end and result are cleared."""
    status["rerunRequest"] = request
    stage = request.split("@", 1)[0]
    if stage not in plan.order:
        known = ", ".join(plan.order)
        return state, [
            engine.Event(now, "", "RerunRefused", f"no stage {stage!r}; stages: {known}")
        ]
    # None, not absent: the status is merge-patched, and an absent key would keep the old value.
    status.update(finishedAt=None, result=None, rerunAt=timestamp(now))
    status["conditions"] = [
        c for c in status.get("conditions") or [] if c.get("type") not in ("Succeeded", "Failed")
    ]
    state = engine.reset_from(plan, state, stage)
    state = replace(state, deadline=engine.run_deadline(deadline_seconds, now))
    return state, [engine.Event(now, stage, "Rerun", f"running {stage} and what follows again")]


def _rerun_stages(plan: engine.Plan, request: str | None) -> frozenset[str]:
    """The stages the job's latest rerun request runs again (engine.rerun_set)."""
    stage = (request or "").split("@", 1)[0]
    return engine.rerun_set(plan, stage) if stage in plan.order else frozenset()


def _count(namespace: str, plan: engine.Plan, events: list[engine.Event]) -> None:
    """Prometheus counters for what the engine reported in this pass."""
    for event in events:
        agent = plan.stage(event.stage).agent if event.stage else ""
        if event.kind == "Retrying":
            STAGE_RETRIES.labels(agent).inc()
        elif event.kind == "RolledBack":
            ROLLBACKS.labels(namespace).inc()
        elif event.kind == "Cached":
            CACHE_HITS.labels(agent).inc()


def _model_bytes(kube: Kube, obj: Mapping[str, Any]) -> int:
    """The job's model size before its first checkpoint tells: what an earlier job of the same
    model imported (0 when none did)."""
    source = ((obj.get("spec") or {}).get("model") or {}).get("source") or {}
    history = duration_history(kube, obj["metadata"]["namespace"])
    return latest_model_bytes(history, model=model_identity(source)) or 0


def _failed_outcome(
    plan: engine.Plan, state: engine.RunState, job: str, outcomes: list[StageOutcome]
) -> AttemptOutcome | None:
    """How the first failed stage's last attempt ended, when it ended in this pass (the pass
    that fails the job): the verdict's reason, as `bakeline run`'s exit code, depends on it."""
    failed = first_failed_stage(plan, state)
    if failed is None:
        return None
    pod = manifests.stage_pod_name(job, failed, state.stages[failed].attempts_total)
    return next((o.outcome for o in outcomes if o.pod == pod), None)


def _workflow(kube: Kube, namespace: str, ref: str | None) -> dict[str, Any] | None:
    """The named workflow's spec as the API holds it (the default's when none is named)."""
    if not ref:
        return default_workflow().spec.to_wire()
    obj = kube.get("Workflow", namespace, ref)
    return dict(obj.get("spec") or {}) if obj else None


def _fail_now(
    kube: Kube, obj: dict[str, Any], status: dict[str, Any], reason: str, message: str
) -> None:
    meta = obj["metadata"]
    status["phase"] = "Failed"
    status["finishedAt"] = timestamp(time.time())
    status["observedGeneration"] = meta.get("generation")
    set_condition(status, "Failed", "True", reason, message, meta)
    set_condition(status, "Progressing", "False", reason, message, meta)
    kube.patch_status("BakingJob", meta["namespace"], meta["name"], status)
    kube.post_event(obj, "Warning", reason, message)


def _post(kube: Kube, obj: dict[str, Any], event: engine.Event) -> None:
    warning = event.kind in (
        "Failed",
        "Retrying",
        "RolledBack",
        "Fallback",
        "RerunRefused",
        "OutcomeNotRecorded",
        *blocked_pods.EVENT_KINDS,
    )
    prefix = f"stage {event.stage}: " if event.stage else ""
    kube.post_event(obj, "Warning" if warning else "Normal", event.kind, prefix + event.message)
