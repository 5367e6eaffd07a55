"""Job status <-> run state, repair, lane and workflow status: pure functions of the handlers."""

from __future__ import annotations

from typing import Any

from bakeline.api.defaults import default_workflow
from bakeline.engine import pipeline as engine
from bakeline.engine.predict import fit_durations
from bakeline.engine.retry import AttemptOutcome
from bakeline.handlers.lanes import lane_status
from bakeline.handlers.workflows import workflow_status
from bakeline.kube.job_status import repair_status, run_state_from_status, status_from_run_state
from bakeline.kube.ledger import outcome_entry

PLAN = engine.Plan.from_workflow(default_workflow().spec)
JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 2}}


def _record(stage: str, attempt: int) -> Any:
    data = {
        "checkpoint": f"{stage}-{attempt}",
        "stage": stage,
        "attempt": str(attempt),
        "artifactSha256": "ab" * 32,
        "result.json": '{"sizeBytes": 10}',
    }
    return {"metadata": {"name": f"j-ckpt-{stage}-{attempt}"}, "data": data}


def _pod(stage: str, attempt: int, phase: str) -> Any:
    labels = {"bakeline.io/stage": stage, "bakeline.io/attempt": str(attempt)}
    return {"metadata": {"labels": labels}, "status": {"phase": phase}}


def test_status_round_trips_through_the_run_state() -> None:
    state = engine.RunState.initial(PLAN)
    state, _ = engine.stage_started(state, "import", 100.0)
    info = engine.CheckpointInfo("import-1", "ab" * 32, 10)
    state, _ = engine.stage_finished(
        PLAN, state, "import", AttemptOutcome.SUCCEEDED, 105.0, info, {"m": 1.0}
    )
    state, _ = engine.stage_started(state, "graph", 106.0)
    status = status_from_run_state(JOB, PLAN, state, {}, lambda _: None)
    assert status["progress"] == "1/9"
    assert status["stages"][0]["durationSeconds"] == 5.0
    assert status["stages"][1]["pod"] == "j-graph-1"
    assert status["observedGeneration"] == 2
    assert "estimatedCompletion" in status
    rebuilt = run_state_from_status(PLAN, status, {"import-1": _record("import", 1)}, None)
    assert rebuilt.stages["import"].phase is engine.StagePhase.SUCCEEDED
    assert rebuilt.stages["import"].checkpoint == info
    assert rebuilt.stages["graph"].phase is engine.StagePhase.RUNNING
    assert rebuilt.stages["graph"].attempts_total == 1


def test_the_deadline_counts_from_the_latest_rerun_and_a_passed_one_says_so() -> None:
    admitted = {"admittedAt": "2026-01-01T00:00:00Z"}
    state = run_state_from_status(PLAN, admitted, {}, 60)
    assert state.deadline == 1767225600.0 + 60
    rerun = {**admitted, "rerunAt": "2026-01-02T00:00:00Z"}
    assert run_state_from_status(PLAN, rerun, {}, 60).deadline == 1767225600.0 + 86400 + 60
    (end,) = engine.next_actions(PLAN, state, state.deadline or 0.0)
    assert isinstance(end, engine.FinishJob)
    failed = status_from_run_state(JOB, PLAN, engine.finish(state, end), {}, lambda _: None)
    reasons = {c["type"]: c["reason"] for c in failed["conditions"]}
    assert failed["phase"] == "Failed" and reasons["Failed"] == "DeadlineExceeded"


def test_a_claimed_checkpoint_without_its_record_is_not_trusted() -> None:
    status = {"stages": [{"name": "import", "phase": "Succeeded", "checkpoint": "import-1"}]}
    state = run_state_from_status(PLAN, status, {}, None)
    assert state.stages["import"].phase is engine.StagePhase.PENDING


def test_repair_rebuilds_stages_from_records_and_pods() -> None:
    records = {"import-1": _record("import", 1), "graph-2": _record("graph", 2)}
    pods = {"j-quantize-1": _pod("quantize", 1, "Running"), "j-graph-1": _pod("graph", 1, "Failed")}
    repaired = {s["name"]: s for s in repair_status(PLAN, {}, records, pods)["stages"]}
    assert repaired["import"]["phase"] == "Succeeded"
    assert repaired["graph"]["checkpoint"] == "graph-2" and repaired["graph"]["attempt"] == 2
    assert repaired["quantize"]["phase"] == "Running" and repaired["quantize"]["attempt"] == 1
    assert repaired["memory"]["phase"] == "Pending"


def test_lane_status_counts_running_and_queued_jobs() -> None:
    lane = {"metadata": {"name": "std", "generation": 1}, "spec": {"maxConcurrentJobs": 2}}
    jobs = [
        {"spec": {"laneRef": "std"}, "status": {"lane": "std", "phase": "Running"}},
        {"spec": {"laneRef": "std"}, "status": {"phase": "Queued"}},
        {"spec": {"laneRef": "std"}, "status": {"lane": "std", "phase": "Succeeded"}},
        {"spec": {"laneRef": "other"}, "status": {"phase": "Queued"}},
    ]
    status = lane_status(lane, jobs)
    assert (status["running"], status["queued"], status["frozen"]) == (1, 1, False)
    frozen = lane_status({**lane, "status": {"frozenBy": [{"policy": "p", "reason": "r"}]}}, [])
    assert frozen["frozen"] is True
    assert {c["type"]: c["status"] for c in frozen["conditions"]}["Frozen"] == "True"


def test_the_frozen_condition_says_what_the_freeze_does() -> None:
    lane: dict[str, Any] = {
        "metadata": {"name": "std", "generation": 1},
        "spec": {"fallbackLane": "batch"},
    }

    def frozen(action: str, **spec: object) -> dict[str, str]:
        body = {**lane, "spec": {**lane["spec"], **spec}}
        entry = {"policy": "p", "reason": "burn", "action": action}
        status = lane_status({**body, "status": {"frozenBy": [entry]}}, [])
        return next(c for c in status["conditions"] if c["type"] == "Frozen")

    assert frozen("Fallback")["message"].startswith("new jobs go to lane batch")
    assert frozen("Freeze")["message"].startswith("new jobs wait")
    assert "stop at their next stage boundary" in frozen("HoldAndDrain")["message"]
    orphan = frozen("Fallback", fallbackLane=None)
    assert orphan["reason"] == "NoFallbackLane" and "as under Freeze" in orphan["message"]


def test_workflow_status_gives_order_or_problems() -> None:
    default = {"metadata": {"generation": 1}, "spec": default_workflow().spec.to_wire()}
    good = workflow_status(default, fit_durations([]))
    assert good["order"][0] == "import" and good["predictedTotalSeconds"] > 0
    # Sized by the model it bakes: the prior's seconds per MB add up.
    bigger = workflow_status(default, fit_durations([]), 100 * 1024 * 1024)
    assert bigger["predictedTotalSeconds"] > good["predictedTotalSeconds"] + 100
    cyclic = {
        "metadata": {"generation": 1},
        "spec": {
            "stages": [
                {"name": "a", "agent": "GraphOptimizer", "dependsOn": ["b"]},
                {"name": "b", "agent": "GraphOptimizer", "dependsOn": ["a"]},
            ]
        },
    }
    bad = workflow_status(cyclic, fit_durations([]))
    assert bad["order"] == [] and any(p["reason"] == "Cycle" for p in bad["problems"])


def test_outcome_entry_records_the_job_queue_and_gate() -> None:
    status = {
        "phase": "Failed",
        "queuedAt": "2026-01-01T00:00:00Z",
        "admittedAt": "2026-01-01T00:00:10Z",
        "stages": [
            {
                "name": "validate",
                "phase": "Failed",
                "message": "quality gate: 0.5 < 0.9",
                "durationSeconds": 2.0,
            }
        ],
    }
    entry = outcome_entry("std", status, 1767225620.0)
    kinds = {r["kind"]: r for r in entry["records"]}
    assert kinds["job"]["ok"] is False and kinds["job"]["seconds"] == 10.0
    assert kinds["queue"]["seconds"] == 10.0
    assert kinds["gate"]["ok"] is False
    assert kinds["stage"]["seconds"] == 2.0
