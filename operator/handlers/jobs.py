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
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from bakeline import __version__, contract
from bakeline.api import bakingjob as bj
from bakeline.api.defaults import default_workflow
from bakeline.api.lane import Lane, LaneSpec
from bakeline.api.validation import validate_workflow
from bakeline.api.workflow import WorkflowSpec
from bakeline.contract import parse_termination
from bakeline.engine import lanes as admission
from bakeline.engine import pipeline as engine
from bakeline.engine.cache import HARDWARE_DEPENDENT_AGENTS
from bakeline.engine.dag import descendants
from bakeline.engine.predict import latest_model_bytes
from bakeline.engine.result import first_failed_stage
from bakeline.engine.retry import AttemptOutcome, classify_exit
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
from bakeline.kube.informer import Informer
from bakeline.kube.job_status import (
    repair_status,
    run_state_from_status,
    status_from_run_state,
)
from bakeline.kube.ledger import ledger_key, outcome_entry, record_outcome
from bakeline.kube.retention import prune_checkpoints
from bakeline.metrics.collectors import (
    CACHE_HITS,
    ROLLBACKS,
    STAGE_DURATION,
    STAGE_RETRIES,
    track_job_phase,
)
from bakeline.runtime import pods as manifests
from bakeline.runtime.pods import ANNOTATION_RERUN

log = logging.getLogger("bakeline.jobs")

# A safety net only: pod events wake a running job, and kopf re-lists after a watch breaks.
# Polling often costs more than it saves (each look is a full reconcile on a small machine).
POLL_RUNNING_S = 30.0
# Queued jobs are woken when room opens (app.wake_admitted); this is the safety net, and how
# often queuePosition is refreshed.
POLL_QUEUED_S = 15.0
# Admission decisions by informer and namespace, with the change counters they were made at.
_DECISIONS: weakref.WeakKeyDictionary[
    Informer, dict[str, tuple[tuple[int, int], admission.Admission]]
] = weakref.WeakKeyDictionary()
_DECISIONS_LOCK = threading.Lock()
TERMINAL = {"Succeeded", "Failed"}


@dataclass(frozen=True)
class OperatorConfig:
    image: str = f"bakeline:{__version__}"
    agent_version: str = __version__
    service_account: str | None = None  # for stage pods; None: the namespace default
    slo_interval_s: float = 30.0  # how often SLOPolicies are evaluated


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
        manifests.model_source_mount(spec.model.source.to_wire())
    except ValueError as exc:
        _fail_now(kube, obj, status, "ModelSourceUnsupported", str(exc))
        return None
    found = _workflow(kube, namespace, spec.workflow_ref)
    if found is None:
        return _wait(
            kube,
            obj,
            status,
            "Pending",
            "WorkflowNotFound",
            f"workflow {spec.workflow_ref!r} does not exist in {namespace}",
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

    if not status.get("lane"):
        wait = _admit(kube, obj, status, now)
        if wait is not None:
            return wait

    events: list[engine.Event] = []
    records = {
        r["data"]["checkpoint"]: r
        for r in kube.job_records(namespace, name)
        if "checkpoint" in (r.get("data") or {})
    }
    pods = kube.job_pods(namespace, name)
    if _running_pods_unseen(status, pods, name):
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
            state, happened = _observe(
                obj, plan, state, stage_name, pods, new_records, outcomes, now
            )
            events += happened
            for body in new_records:
                # Readable at once by this pass's cache lookups and status.
                records[body["data"]["checkpoint"]] = body
    lane_name = str(status.get("lane") or spec.lane_ref)
    lane_obj = kube.get("Lane", namespace, lane_name)
    lane_spec = _lane_spec(lane_obj)
    policy = lane_spec.circuit_breaker
    if outcomes:
        circuits = count_outcomes(kube, namespace, lane_name, policy, outcomes, now)
    else:
        circuits = lane_circuits(kube.circuits(namespace), lane_name)
    blocked = admission.blocked_agents(circuits, now, policy)
    freeze = _freeze_in_force(lane_obj)
    draining = admission.lane_drains(lane_spec, freeze)

    cache = engine.CacheContext(
        model_sha256=(spec.model.source.url.sha256 if spec.model.source.url else None),
        agent_version=config.agent_version,
        job=_job_document(job),
        # A pod may land on another node than the one that measured: never reuse those.
        bypass=bypass | {s.name for s in plan.stages if s.agent in HARDWARE_DEPENDENT_AGENTS},
    )
    wake: float | None = None
    pods_wait = blocked_pods.wait_seconds(status, now)
    for action in engine.next_actions(plan, state, now, cache, blocked):
        if isinstance(action, engine.StartStage):
            if draining:
                continue  # the lane drains: no new stage; the job goes back to the queue below
            if pods_wait is not None or _pods_in_trouble(events):
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
            state, happened = _start(
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
    pod_trouble = _pods_in_trouble(events)
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
        _requeue(new_status, lane_name, why, meta)
        events.append(
            engine.Event(now, "", "Drained", f"lane {lane_name} drains ({why}): back in the queue")
        )
        wake = POLL_QUEUED_S
    if new_status.get("phase") in TERMINAL and running:
        # Failed with stages still running (the deadline passed, a branch failed): stop them.
        for pod in _unfinished(pods):
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
        return None
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
    """Stages a rerun runs again: they bypass the cache that would otherwise answer at once."""
    if not request:
        return frozenset()
    stage = request.split("@", 1)[0]
    if stage not in plan.order:
        return frozenset()
    return frozenset({stage} | descendants(plan.graph, [stage]))


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


# ---------------------------------------------------------------------------- admission


def _admit(kube: Kube, obj: dict[str, Any], status: dict[str, Any], now: float) -> float | None:
    """Admit the job to its lane, or record why it waits. None: admitted, go on."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if not status.get("queuedAt"):
        # Enter the queue first, visibly (phase Queued); admission is the next pass's decision.
        lane = obj["spec"].get("laneRef", "standard")
        return _wait(kube, obj, status, "Queued", "Queued", f"queued in lane {lane}")
    decision = admission_decision(kube, namespace, now)
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
        admission.UNKNOWN_LANE: f"lane {obj['spec'].get('laneRef')!r} does not exist",
        admission.LANE_HELD: "the lane holds admission (stopPolicy)",
        admission.LANE_FROZEN: "the lane is frozen by an SLOPolicy (Freeze or HoldAndDrain)",
        admission.NO_FALLBACK: "an SLOPolicy routes the lane's jobs to its fallback lane "
        "(Fallback), and it has none",
    }.get(reason, f"waiting in lane {obj['spec'].get('laneRef')}: {reason}")
    return _wait(kube, obj, status, "Queued", reason, message, position)


def admission_decision(kube: Kube, namespace: str, now: float) -> admission.Admission:
    """The lanes' admission decision over every job of the namespace. With the operator's
    informer it is computed once per change of a job or lane, not once per queued job's pass:
    with 1,000 jobs queued, each of their passes listed and sorted all 1,000."""
    informer = kube.informer
    if informer is None:
        return _decide(kube, namespace, now)
    key = (informer.changes("BakingJob", namespace), informer.changes("Lane", namespace))
    with _DECISIONS_LOCK:
        known = _DECISIONS.setdefault(informer, {}).get(namespace)
    if known is not None and known[0] == key:
        return known[1]
    decision = _decide(kube, namespace, now)
    with _DECISIONS_LOCK:
        _DECISIONS[informer][namespace] = (key, decision)
    return decision


def _decide(kube: Kube, namespace: str, now: float) -> admission.Admission:
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
        else:
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
                lane_name, lane.spec, tuple(running.get(lane_name, ())), _freeze_in_force(lane_obj)
            )
        )
    return admission.admit(lanes, queued)


def _wait(
    kube: Kube,
    obj: dict[str, Any],
    status: dict[str, Any],
    phase: str,
    reason: str,
    message: str,
    position: int | None = None,
) -> float:
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
            kube.post_event(obj, "Normal", reason, message)
    return wake


# ---------------------------------------------------------------------------- stages


def _observe(
    obj: dict[str, Any],
    plan: engine.Plan,
    state: engine.RunState,
    stage: str,
    pods: Mapping[str, Any],
    new_records: list[dict[str, Any]],
    outcomes: list[StageOutcome],
    now: float,
) -> tuple[engine.RunState, list[engine.Event]]:
    """Turn a running attempt's pod into the stage's outcome; its checkpoint record, if any,
    goes to `new_records` for the caller to create, the attempt's outcome to `outcomes`."""
    meta = obj["metadata"]
    stage_state = state.stages[stage]
    pod_name = manifests.stage_pod_name(meta["name"], stage, stage_state.attempts_total)
    pod = pods.get(pod_name)
    if pod is None:
        return engine.stage_finished(
            plan,
            state,
            stage,
            AttemptOutcome.TRANSIENT,
            now,
            message=f"pod {pod_name} disappeared (deleted or evicted) before it finished",
        )
    pod_status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp"):
        return state, []  # being deleted: the next pass sees it gone
    if pod_status.get("phase") not in ("Succeeded", "Failed"):
        return state, []
    cause = blocked_pods.not_started(pod)
    if cause is not None:  # the installation's gap, not the agent's: no outcome is counted
        return engine.stage_not_started(state, stage, now, cause)
    terminated = _terminated(pod)
    code = terminated.get("exitCode")
    text = str(terminated.get("message") or "")
    result = _parse_result(text)
    reason = str(pod_status.get("reason") or terminated.get("reason") or "")
    outcome = classify_exit(code, timed_out=reason == "DeadlineExceeded")
    message = str(result.get("message") or "") if result else text[-512:]
    if reason in ("DeadlineExceeded", "Evicted", "OOMKilled") or (
        terminated.get("reason") == "OOMKilled"
    ):
        outcome = AttemptOutcome.TRANSIENT
        message = f"{reason}: {pod_status.get('message') or message}".strip(": ")
    metrics = {
        k: float(v)
        for k, v in (result.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    checkpoint = None
    if outcome is AttemptOutcome.SUCCEEDED and result.get("artifactSha256"):
        checkpoint = engine.CheckpointInfo(
            manifests.checkpoint_id(stage, stage_state.attempts_total),
            str(result["artifactSha256"]),
            int(result.get("sizeBytes") or 0),
        )
    finished_at = epoch(terminated.get("finishedAt"))
    outcomes.append(StageOutcome(plan.stage(stage).agent, outcome, pod_name, message))
    if stage_state.started_at is not None:
        seconds = max(0.0, (finished_at or now) - stage_state.started_at)
        STAGE_DURATION.labels(plan.stage(stage).agent, outcome.value).observe(seconds)
    state, events = engine.stage_finished(
        plan, state, stage, outcome, finished_at or now, checkpoint, metrics, message
    )
    if checkpoint is not None and state.stages[stage].phase is engine.StagePhase.SUCCEEDED:
        # Recorded only once the engine accepted it (its gate passed): a record is a
        # checkpoint later stages, rollbacks and the cache may use.
        key = (pod["metadata"].get("annotations") or {}).get(manifests.ANNOTATION_CACHE_KEY)
        new_records.append(
            manifests.build_checkpoint_record(
                obj, stage=stage, attempt=stage_state.attempts_total, result=result, cache_key=key
            )
        )
    return state, events


def _start(
    kube: Kube,
    config: OperatorConfig,
    obj: dict[str, Any],
    job: bj.BakingJob,
    plan: engine.Plan,
    state: engine.RunState,
    action: engine.StartStage,
    records: Mapping[str, Any],
    lane_spec: LaneSpec,
    now: float,
) -> tuple[engine.RunState, list[engine.Event]]:
    if action.cache_key:
        for record in records.values():
            data = record.get("data") or {}
            if data.get("cacheKey") == action.cache_key:
                info = engine.CheckpointInfo(data["checkpoint"], data.get("artifactSha256", ""), 0)
                return engine.stage_cached(state, action.stage, info, now)
    lane_wire = lane_spec.to_wire()
    storage, input_store_id = _storage_for(lane_spec, records, action.input)
    if action.input is None and storage == "Volume":  # the first stage (or a rollback to it)
        kube.ensure_claim(manifests.build_checkpoint_claim(obj, lane_wire.get("storage")))
    attempt = state.stages[action.stage].attempts_total + 1
    document = _job_document(job)
    model_mount = None
    if action.input is None:
        model_mount = manifests.model_source_mount(document["model"]["source"])
        if model_mount is not None:
            document["model"]["localPath"] = model_mount[2]
    pod = manifests.build_stage_pod(
        obj,
        stage=action.stage,
        agent=action.agent,
        attempt=attempt,
        params=action.params,
        job_document=document,
        input_checkpoint=action.input.id if action.input else None,
        image=config.image,
        stage_defaults=lane_wire.get("stageDefaults"),
        timeout_seconds=action.timeout_seconds,
        service_account=config.service_account,
        model_mount=model_mount,
        storage=storage,
        input_store_id=input_store_id,
    )
    annotations = pod["metadata"]["annotations"]
    annotations[manifests.ANNOTATION_FALLBACK] = str(action.fallback)
    if action.cache_key:
        annotations[manifests.ANNOTATION_CACHE_KEY] = action.cache_key
    try:
        kube.create_pod(pod)
    except ApiException as exc:
        refused = blocked_pods.refusal(exc, pod["metadata"]["name"])
        if refused is None:
            raise
        # The cluster's configuration refused it (RBAC, a ServiceAccount, a quota, a policy):
        # not the agent's failure and not the job's; the job says why and tries again later.
        return state, [engine.Event(now, action.stage, "PodNotCreated", refused)]
    return engine.stage_started(state, action.stage, now)


def _storage_for(
    lane: LaneSpec, records: Mapping[str, Any], given: engine.CheckpointInfo | None
) -> tuple[str, str | None]:
    """Where a stage attempt's checkpoints live (and its input's id in the ConfigMap store):
    the lane's store for a job's first stage; afterwards wherever its input checkpoint is (a
    lane edited mid-job moves nothing)."""
    if given is None:
        return lane.storage.type, None
    data = (records.get(given.id) or {}).get("data") or {}
    if data.get("storage") == "ConfigMap":
        return "ConfigMap", str(data.get("storeId") or "")
    return "Volume", None


def _model_bytes(kube: Kube, obj: Mapping[str, Any]) -> int:
    """The job's model size before its first checkpoint tells: what an earlier job of the same
    model imported (0 when none did)."""
    source = ((obj.get("spec") or {}).get("model") or {}).get("source") or {}
    history = duration_history(kube, obj["metadata"]["namespace"])
    return latest_model_bytes(history, model=model_identity(source)) or 0


def _freeze_in_force(lane: Mapping[str, Any] | None) -> admission.FreezeAction | None:
    """What the SLOPolicies that froze the lane make it do (None: not frozen)."""
    frozen_by = ((lane or {}).get("status") or {}).get("frozenBy") or []
    return admission.freeze_in_force(entry.get("action") for entry in frozen_by)


def _lane_spec(lane: Mapping[str, Any] | None) -> LaneSpec:
    """The lane's spec; defaults when it vanished after admission or does not parse."""
    try:
        return Lane.model_validate(lane).spec if lane else LaneSpec()
    except ValidationError:
        return LaneSpec()


def _requeue(status: dict[str, Any], lane: str, why: str, meta: Mapping[str, Any]) -> None:
    """A drained job leaves its lane at a stage boundary; its stages and checkpoints stay, so
    it resumes where it stopped when admitted again."""
    status.update(phase="Queued", lane=None, admittedAt=None)
    message = f"lane {lane} is draining ({why}); resumes from its checkpoints"
    set_condition(status, "Admitted", "False", "Drained", message, dict(meta))


def _unfinished(pods: Mapping[str, Any]) -> list[str]:
    """Stage pods still running (or starting) and not already being deleted."""
    return [
        name
        for name, pod in pods.items()
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and not pod["metadata"].get("deletionTimestamp")
    ]


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


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The attempt's terminated state ({} while it has none): on ConfigMap lanes, a failed
    restore's, a failed agent's or the store container's (manifests.terminated_state)."""
    return manifests.terminated_state(pod)


def _pods_in_trouble(events: list[engine.Event]) -> str | None:
    """Why a stage pod of this pass was refused or did not start; None when none was."""
    return next((e.message for e in events if e.kind in blocked_pods.EVENT_KINDS), None)


def _running_pods_unseen(status: Mapping[str, Any], pods: Mapping[str, Any], job: str) -> bool:
    """Whether a stage the status calls Running has no finished pod in `pods`."""
    for entry in status.get("stages") or []:
        if entry.get("phase") != "Running":
            continue
        name = manifests.stage_pod_name(job, str(entry.get("name")), int(entry.get("attempt") or 0))
        pod = pods.get(name)
        if pod is None or (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            return True
    return False


def _parse_result(text: str) -> dict[str, Any]:
    """The termination message in wire form, as the contract's one parser reads it."""
    parsed = parse_termination(text)
    return parsed.to_wire() if parsed is not None else {}


def _job_document(job: bj.BakingJob) -> dict[str, Any]:
    return contract.job_document(job.metadata.name or "", job.spec.to_wire())


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
