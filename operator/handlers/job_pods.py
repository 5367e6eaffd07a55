"""A BakingJob's stage pods: starting an attempt (or answering it from the cache), and reading a
finished pod back into the stage's outcome. Part of the job pass (`handlers/jobs.py`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from bakeline import contract
from bakeline.api import bakingjob as bj
from bakeline.api.lane import LaneSpec
from bakeline.contract import parse_termination
from bakeline.engine import pipeline as engine
from bakeline.engine.retry import AttemptOutcome, classify_exit
from bakeline.handlers.config import OperatorConfig
from bakeline.kube import blocked_pods
from bakeline.kube.circuits import StageOutcome
from bakeline.kube.client import Kube
from bakeline.kube.clock import epoch
from bakeline.metrics.collectors import STAGE_DURATION
from bakeline.runtime import pods as manifests


def observe(
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


def start(
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
    document = contract.job_view(job_document(job), action.agent)
    model_mount = None
    if action.input is None and "model" in document:
        model_mount = manifests.model_source_mount(
            document["model"]["source"], document["model"].get("format")
        )
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


def _terminated(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The attempt's terminated state ({} while it has none): on ConfigMap lanes, a failed
    restore's, a failed agent's or the store container's (manifests.terminated_state)."""
    return manifests.terminated_state(pod)


def pods_in_trouble(events: list[engine.Event]) -> str | None:
    """Why a stage pod of this pass was refused or did not start; None when none was."""
    return next((e.message for e in events if e.kind in blocked_pods.EVENT_KINDS), None)


def running_pods_unseen(status: Mapping[str, Any], pods: Mapping[str, Any], job: str) -> bool:
    """Whether a stage the status calls Running has no finished pod in `pods`."""
    for entry in status.get("stages") or []:
        if entry.get("phase") != "Running":
            continue
        name = manifests.stage_pod_name(job, str(entry.get("name")), int(entry.get("attempt") or 0))
        pod = pods.get(name)
        if pod is None or (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            return True
    return False


def unfinished(pods: Mapping[str, Any]) -> list[str]:
    """Stage pods still running (or starting) and not already being deleted."""
    return [
        name
        for name, pod in pods.items()
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and not pod["metadata"].get("deletionTimestamp")
    ]


def _parse_result(text: str) -> dict[str, Any]:
    """The termination message in wire form, as the contract's one parser reads it."""
    parsed = parse_termination(text)
    return parsed.to_wire() if parsed is not None else {}


def job_document(job: bj.BakingJob) -> dict[str, Any]:
    return contract.job_document(job.metadata.name or "", job.spec.to_wire())
