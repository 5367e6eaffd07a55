"""The operator's orchestration on the real API server, with a scripted agent in the pods."""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bakeline.api.defaults import default_workflow
from bakeline.engine.predict import (
    DurationModel,
    DurationSample,
    estimate_remaining,
    fit_durations,
)
from controlplane import ControlPlane
from support.kube import apply, condition, get, wait_for, wait_for_condition

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LANE = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "Lane",
    "metadata": {"name": "standard"},
    "spec": {"maxConcurrentJobs": 2},
}


def _job(name: str, **spec: Any) -> dict[str, Any]:
    body = {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": "standard"}
    body.update(spec)
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": body,
    }


def _job_success_policy(name: str, target: float, window: str, **spec: Any) -> dict[str, Any]:
    """An SLOPolicy on the standard lane's job success."""
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "SLOPolicy",
        "metadata": {"name": name},
        "spec": {
            "laneSelector": {"names": ["standard"]},
            "objectives": [
                {"name": "job-success", "sli": "JobSuccess", "target": target, "window": window}
            ],
            **spec,
        },
    }


def _terminal(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any] | None:
    job = get(cluster, "bakingjob", name, namespace)
    phase = ((job or {}).get("status") or {}).get("phase")
    return job if phase in ("Succeeded", "Failed") else None


def _wait_terminal(
    cluster: ControlPlane, name: str, namespace: str, timeout: float = 120
) -> dict[str, Any]:
    return wait_for(lambda: _terminal(cluster, name, namespace), timeout, what=f"{name} to end")


def test_job_runs_nine_stages_and_records_checkpoints(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [LANE, _job("bake")], namespace)
    job = wait_for(lambda: _terminal(cluster, "bake", namespace), 120, what="job bake to finish")
    status = job["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["progress"] == "9/9"
    assert [s["phase"] for s in status["stages"]] == ["Succeeded"] * 9
    assert all(s["durationSeconds"] >= 0 for s in status["stages"])
    assert status["result"]["speedup"] == 2.0  # the scripted agent's b1.speedup
    assert status["result"]["speedups"] == {"1": 2.0}
    assert status["result"]["quality"]["passed"]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    names = sorted(p["metadata"]["name"] for p in pods["items"])
    assert names == sorted(f"bake-{s['name']}-1" for s in status["stages"])
    records = cluster.kubectl(
        "get", "configmaps", "-n", namespace, "-l", "bakeline.io/component=checkpoint", "-o", "name"
    ).stdout.split()
    assert len(records) == 3  # the newest 3 of 9: spec.checkpoints.retain's default
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    reasons = [e["reason"] for e in json.loads(events)["items"]]
    assert reasons.count("Started") == 9 and reasons.count("Succeeded") >= 9


def test_transient_failure_is_retried_and_gate_failure_falls_back(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    # graph fails once (transient: retried); validate fails its gate once (exit 3), which the
    # default workflow answers by rolling back to the nearest stage with a fallback: memory.
    scripted_agent({"graph": [1, 0], "validate": [3, 0]})
    apply(cluster, [LANE, _job("faulty")], namespace)
    job = wait_for(
        lambda: _terminal(cluster, "faulty", namespace), 180, what="job faulty to finish"
    )
    status = job["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + operator.log()
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["graph"]["attempt"] == 2
    assert status["rollbackCount"] == 1
    assert stages["memory"]["fallback"] == 1
    assert stages["quantize"]["fallback"] == 0
    assert "validate" in status["lastRollbackReason"]


def test_workflow_status_reports_order_or_every_problem(
    cluster: ControlPlane, namespace: str, operator: Any, repo_root: Path
) -> None:
    cluster.kubectl(
        "apply", "-n", namespace, "-f", str(repo_root / "examples/workflow-default.yaml")
    )
    cyclic = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "cyclic"},
        "spec": {
            "stages": [
                {"name": "a", "agent": "BakingCoordinator", "dependsOn": ["b"]},
                {"name": "b", "agent": "GraphOptimizer", "dependsOn": ["a"]},
            ]
        },
    }
    apply(cluster, cyclic, namespace)
    good = wait_for_condition(cluster, "workflow", "default", namespace, "Ready", timeout=60)
    assert good["status"]["order"][0] == "import" and len(good["status"]["order"]) == 9
    assert good["status"]["predictedTotalSeconds"] > 0
    bad = wait_for_condition(cluster, "workflow", "cyclic", namespace, "Invalid", timeout=60)
    assert any(p["reason"] == "Cycle" for p in bad["status"]["problems"])
    table = cluster.kubectl("get", "bwf", "-n", namespace).stdout
    assert "cyclic" in table and "False" in table


def test_lane_of_one_runs_jobs_one_at_a_time_by_priority(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"sleep": {"import": 1.0}})
    lane = {**LANE, "metadata": {"name": "single"}, "spec": {"maxConcurrentJobs": 1}}
    apply(cluster, lane, namespace)
    # The first job takes the slot; the other two queue and must then go by priority.
    apply(cluster, _job("first", laneRef="single"), namespace)
    wait_for(
        lambda: (get(cluster, "bj", "first", namespace) or {}).get("status", {}).get("lane"),
        30,
        what="first to be admitted",
    )
    apply(
        cluster,
        [_job("low", laneRef="single", priority=1), _job("high", laneRef="single", priority=50)],
        namespace,
    )
    queued = wait_for(
        lambda: (
            (get(cluster, "lane", "single", namespace) or {}).get("status", {}).get("queued") == 2
            or None
        ),
        30,
        what="two jobs queued in the lane",
    )
    assert queued
    spans = {}
    for name in ("first", "low", "high"):
        status = _wait_terminal(cluster, name, namespace, 240)["status"]
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        spans[name] = (_epoch(status["stages"][0]["startedAt"]), _epoch(status["finishedAt"]))
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    assert [name for name, _ in ordered] == ["first", "high", "low"]
    for (_, (_, end)), (_, (start, _)) in itertools.pairwise(ordered):
        assert start >= end, f"jobs overlapped: {spans}"


def test_held_lane_admits_nothing(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    held = {**LANE, "spec": {"maxConcurrentJobs": 2, "stopPolicy": "Hold"}}
    apply(cluster, [held, _job("waits")], namespace)

    def waiting_on_hold() -> dict[str, Any] | None:
        job = get(cluster, "bj", "waits", namespace)
        return job if (condition(job, "Admitted") or {}).get("reason") == "LaneHeld" else None

    job = wait_for(waiting_on_hold, 30, what="the job to wait on the held lane")
    assert job["status"]["phase"] == "Queued"
    assert "stopPolicy" in (condition(job, "Admitted") or {}).get("message", "")
    assert cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip() == ""
    apply(cluster, LANE, namespace)  # stopPolicy back to None
    done = wait_for(lambda: _terminal(cluster, "waits", namespace), 120, what="waits to finish")
    assert done["status"]["phase"] == "Succeeded"


def _single_stage_job_against_ledger(
    cluster: ControlPlane, namespace: str, name: str, ledger: dict[str, str], last_event: str
) -> list[dict[str, Any]]:
    """Run a one-stage job `name` with the SLO ledger pre-filled; it must succeed whatever
    the ledger holds. Returns the namespace's Events once one of reason `last_event` is there
    (the operator posts a pass's Events after its status write)."""
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "bakeline-slo-ledger",
            "labels": {"bakeline.io/component": "slo-ledger"},
        },
        "data": ledger,
    }
    single = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "single"},
        "spec": {"stages": [{"name": "import", "agent": "BakingCoordinator"}]},
    }
    apply(cluster, [configmap, single, LANE, _job(name, workflowRef="single")], namespace, True)
    done = _wait_terminal(cluster, name, namespace)
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"])

    def listed() -> list[dict[str, Any]] | None:
        events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        items = list(json.loads(events)["items"])
        return items if any(e["reason"] == last_event for e in items) else None

    return wait_for(listed, 30, what=f"a {last_event} Event")


def test_a_full_slo_ledger_loses_the_outcome_not_the_job(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    # The API's limit is 1 MiB of data; a value that is no outcome cannot be folded.
    events = _single_stage_job_against_ledger(
        cluster, namespace, "ends", {"filler": "x" * (1024 * 1024 - 200)}, "OutcomeNotRecorded"
    )
    [lost] = [e for e in events if e["reason"] == "OutcomeNotRecorded"]
    assert lost["type"] == "Warning" and "SLO ledger" in lost["message"]
    assert lost["involvedObject"]["name"] == "ends"


def _old_outcomes(size: int, now: float) -> dict[str, str]:
    """Nine-stage jobs' ledger entries, as the operator writes them, aged one hour to 20 days
    and about `size` bytes of values in all (the API server's limit counts values only)."""
    data: dict[str, str] = {}
    total, i = 0, 0
    while True:
        stages = [{"kind": "stage", "ok": True, "seconds": 12.5 + i % 7} for _ in range(9)]
        entry = {
            "lane": "standard",
            "at": now - 3600 - (i * 997) % (20 * 86400),
            "records": [
                {"kind": "job", "ok": i % 10 != 0, "seconds": 140.25},
                {"kind": "queue", "ok": True, "seconds": 0.5},
                {"kind": "gate", "ok": True},
                *stages,
            ],
        }
        key, value = f"standard.old-{i}.{i:08x}", json.dumps(entry, sort_keys=True)
        if total + len(value) > size:
            data["padding"] = "x" * (size - total)  # not an outcome: folding leaves it be
            return data
        data[key] = value
        total += len(value)
        i += 1


def test_a_ledger_full_of_old_outcomes_folds_and_counts_every_job(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    old = _old_outcomes(1024 * 1024 - 50, datetime.now().timestamp())  # nothing more fits
    events = _single_stage_job_against_ledger(cluster, namespace, "fits", old, "Succeeded")
    assert not [e for e in events if e["reason"] == "OutcomeNotRecorded"]
    data = get(cluster, "configmap", "bakeline-slo-ledger", namespace)["data"]
    assert any(key.startswith("standard.fits.") for key in data)
    # Folded into buckets: about 1,700 entries of 1 MiB become about 200 of 40 KB.
    assert sum(len(v) for k, v in data.items() if k != "padding") < 64 * 1024, len(data)

    # An SLOPolicy reads every job from the folded ledger: 1 in 10 old jobs failed.
    apply(cluster, _job_success_policy("month", 0.8, "30d"), namespace)
    objective = wait_for(
        lambda: (
            (get(cluster, "slo", "month", namespace).get("status") or {}).get("objectives")
            or [None]
        )[0],
        60,
        what="the SLOPolicy to evaluate",
    )
    jobs = len(old) - 1  # less the padding
    failed = len(range(0, jobs, 10))
    assert (objective["good"], objective["total"]) == (jobs + 1 - failed, jobs + 1)


def _jobs_counted(data: dict[str, str]) -> int:
    """Jobs' outcomes in a ledger's data: one per raw entry, a bucket's job counts."""
    total = 0
    for key, value in data.items():
        if key == "padding":
            continue
        entry = json.loads(value)
        if "width" not in entry:
            total += 1
            continue
        for kind, by_seconds in entry["counts"].items():
            total += sum(by_seconds.values()) if kind.startswith("job/") else 0
    return total


def test_a_namespace_no_slopolicy_reads_still_folds_its_ledger(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    old = _old_outcomes(96 * 1024, datetime.now().timestamp())  # far from full
    _single_stage_job_against_ledger(cluster, namespace, "now", old, "Succeeded")
    data = get(cluster, "configmap", "bakeline-slo-ledger", namespace)["data"]
    # Outcomes older than ten minutes are in buckets without any SLOPolicy asking; the job that
    # just ended stays raw; no job is lost in the folding.
    assert [key for key in data if key.startswith("standard.") and ".." not in key] == [
        key for key in data if key.startswith("standard.now.")
    ]
    assert _jobs_counted(data) == _jobs_counted(old) + 1
    assert sum(map(len, data.values())) < 48 * 1024


def test_the_eta_of_a_second_job_comes_from_the_first_jobs_durations(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    # The second job's import takes a while, so that its first estimate can be read meanwhile.
    scripted_agent({"jobs": {"second": {"sleep": {"import": 5}}}})
    workflow: dict[str, Any] = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "nine"},
        "spec": default_workflow().spec.to_wire(),
    }
    apply(cluster, [LANE, workflow, _job("first", workflowRef="nine")], namespace)
    assert _wait_terminal(cluster, "first", namespace)["status"]["phase"] == "Succeeded"
    kept = cluster.kubectl(
        "get", "configmap", "bakeline-stage-durations", "-n", namespace, "-o", "json"
    ).stdout
    [entry] = [json.loads(value) for value in json.loads(kept)["data"].values()]
    assert len(entry["stages"]) == 9 and entry["modelBytes"] is not None
    learned = fit_durations(DurationSample(*stage) for stage in entry["stages"])
    # The Workflow's predictions follow, for the model its last job baked.
    stages = {s["name"]: s["agent"] for s in workflow["spec"]["stages"]}
    predicted = {n: round(learned.predict(a, entry["modelBytes"]), 1) for n, a in stages.items()}

    def workflow_learned() -> bool:
        status = (get(cluster, "workflow", "nine", namespace) or {}).get("status") or {}
        return status.get("predictedDurations") == predicted

    wait_for(workflow_learned, 30, what="the workflow's predictions to learn")
    apply(cluster, _job("second", workflowRef="nine"), namespace)

    def first_estimate() -> tuple[float, float] | None:
        status = (get(cluster, "bj", "second", namespace) or {}).get("status") or {}
        running = [s for s in status.get("stages") or [] if s.get("phase") == "Running"]
        if status.get("estimatedCompletion") and running and running[0]["name"] == "import":
            return _epoch(running[0]["startedAt"]), _epoch(status["estimatedCompletion"])
        return None

    started, eta = wait_for(first_estimate, 60, interval=0.1, what="the second job's ETA")
    # Every stage still to run, sized by the model the first job imported (the same model).
    agents = [stage[0] for stage in entry["stages"]]
    size = entry["modelBytes"]

    def expected(model: DurationModel) -> float:
        return estimate_remaining(model, agents[1:], size, running=(agents[0], 0.0))

    # Whole-second timestamps and a pass that may come a moment after the pod started.
    assert abs((eta - started) - expected(learned)) < 3.0, (eta - started, expected(learned))
    assert abs(expected(fit_durations([])) - expected(learned)) > 8.0, "nothing learned"
    assert _wait_terminal(cluster, "second", namespace)["status"]["phase"] == "Succeeded"


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_deleted_pod_gets_a_new_attempt_and_metrics_tell(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"sleep": {"quantize": 30}})
    apply(cluster, [LANE, _job("victim")], namespace)
    pod = "victim-quantize-1"
    wait_for(
        lambda: (
            (get(cluster, "pod", pod, namespace) or {}).get("status", {}).get("phase") == "Running"
        ),
        60,
        what=f"{pod} to run",
    )
    cluster.kubectl("delete", "pod", pod, "-n", namespace, "--wait=true", timeout=60)
    job = _wait_terminal(cluster, "victim", namespace, 180)
    stages = {s["name"]: s for s in job["status"]["stages"]}
    assert job["status"]["phase"] == "Succeeded", json.dumps(job["status"], indent=1)
    assert stages["quantize"]["attempt"] == 2
    assert get(cluster, "pod", "victim-quantize-2", namespace) is not None
    families = _scrape(operator.metrics_port)
    assert families["bakeline_stage_retries"]["ModelOptimizer"] >= 1
    assert families["bakeline_jobs"]["Succeeded"] >= 1
    assert "bakeline_stage_duration_seconds" in families


def test_rerun_from_a_stage_runs_it_and_what_follows_again(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    # Every checkpoint kept: validate's input (accelerate's) must outlive the first run.
    apply(cluster, [LANE, _job("again", checkpoints={"retain": 9})], namespace)
    first = _wait_terminal(cluster, "again", namespace)["status"]
    assert first["phase"] == "Succeeded"
    _rerun(cluster, operator, "again", "validate", namespace)

    def rerun_finished() -> dict[str, Any] | None:
        job = get(cluster, "bj", "again", namespace) or {}
        status = job.get("status") or {}
        return job if status.get("rerunRequest") and status.get("phase") == "Succeeded" else None

    second = wait_for(rerun_finished, 120, what="the rerun to finish")["status"]
    attempts = {s["name"]: s["attempt"] for s in second["stages"]}
    assert attempts["validate"] == attempts["profile"] == attempts["package"] == 2
    assert attempts["import"] == attempts["quantize"] == 1


def test_a_rerun_after_the_deadline_has_a_window_of_its_own(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [LANE, _job("late", deadlineSeconds=60)], namespace)
    first = _wait_terminal(cluster, "late", namespace)["status"]
    assert first["phase"] == "Succeeded"
    # Wait until the job is older than its deadline, then rerun its last stage.
    time.sleep(max(0.0, _epoch(first["admittedAt"]) + 62 - time.time()))
    _rerun(cluster, operator, "late", "package", namespace)
    phases: list[str] = []

    def rerun_finished() -> dict[str, Any] | None:
        status = (get(cluster, "bj", "late", namespace) or {}).get("status") or {}
        if status.get("rerunRequest"):
            phases.append(str(status.get("phase")))
        return status if status.get("rerunRequest") and status.get("phase") == "Succeeded" else None

    second = wait_for(rerun_finished, 60, what="the rerun to finish")
    assert "Failed" not in phases, phases
    # The status describes the rerun: its end, its result, its attempts.
    assert _epoch(second["rerunAt"]) > _epoch(first["finishedAt"])
    assert _epoch(second["finishedAt"]) >= _epoch(second["rerunAt"])
    assert second["currentCheckpoint"] == "package-2" and second["result"]
    assert (condition({"status": second}, "Succeeded") or {})["status"] == "True"
    assert condition({"status": second}, "Failed") is None
    listing = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    started = [
        e["message"]
        for e in listing["items"]
        if e["reason"] == "Started" and e["involvedObject"]["name"] == "late"
    ]
    assert "stage package: attempt 2" in started, started


def test_a_rerun_waits_for_room_in_its_lane_like_any_job(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    """The lane runs one job at a time: a finished job's rerun is queued while another job
    runs, and is admitted when that one ends (never run beside it, over the lane's limit)."""
    scripted_agent({"jobs": {"busy": {"sleep": {"graph": 15}}}})
    single = {**LANE, "spec": {"maxConcurrentJobs": 1}}
    apply(cluster, [single, _job("done")], namespace)
    assert _wait_terminal(cluster, "done", namespace)["status"]["phase"] == "Succeeded"
    apply(cluster, [_job("busy")], namespace)
    wait_for(
        lambda: _phase(cluster, "busy", namespace) == "Running" or None, 60, what="busy to run"
    )
    _rerun(cluster, operator, "done", "package", namespace)
    queued = wait_for(
        lambda: _phase(cluster, "done", namespace) == "Queued" or None,
        30,
        what="the rerun to wait in the lane's queue",
    )
    assert queued and _phase(cluster, "busy", namespace) == "Running"
    assert get(cluster, "pod", "done-package-2", namespace) is None  # not started beside busy
    busy = _wait_terminal(cluster, "busy", namespace)["status"]
    second = wait_for(
        lambda: (
            s
            if (s := get(cluster, "bj", "done", namespace)["status"]).get("rerunRequest")
            and s.get("phase") == "Succeeded"
            else None
        ),
        60,
        what="the rerun to finish",
    )
    assert _epoch(second["admittedAt"]) >= _epoch(busy["finishedAt"])
    assert second["currentCheckpoint"] == "package-2"


def _rerun(cluster: ControlPlane, operator: Any, job: str, stage: str, namespace: str) -> None:
    """`bakeline rerun JOB --from STAGE`, as a user runs it."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    done = subprocess.run(
        ["bakeline", "rerun", job, "--from", stage, "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=operator.log_path.parent,
    )
    assert done.returncode == 0, done.stderr


def _phase(cluster: ControlPlane, name: str, namespace: str) -> str | None:
    return ((get(cluster, "bj", name, namespace) or {}).get("status") or {}).get("phase")


def _scrape(port: int) -> dict[str, dict[str, float]]:
    """Parse /metrics as Prometheus does; a malformed exposition raises here."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    families: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = next(iter(v for k, v in sample.labels.items() if k in ("agent", "phase")), "")
            families.setdefault(family.name, {})[label] = sample.value
    return families


def test_operator_killed_mid_job_finishes_it_without_duplicates(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"sleep": {stage: 1.0 for stage in ("graph", "memory", "profile")}})
    apply(cluster, [LANE, _job("survivor")], namespace)
    for progress in ("2/9", "5/9", "8/9"):
        wait_for(
            functools.partial(_progress_at_least, cluster, "survivor", namespace, progress),
            120,
            what=f"progress {progress}",
        )
        operator.kill()
        operator.start()
    job = _wait_terminal(cluster, "survivor", namespace, 180)
    assert job["status"]["phase"] == "Succeeded", json.dumps(job["status"], indent=1)
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    keys = [
        (
            p["metadata"]["labels"]["bakeline.io/stage"],
            p["metadata"]["labels"]["bakeline.io/attempt"],
        )
        for p in pods["items"]
    ]
    assert len(keys) == len(set(keys)) == 9  # one pod per stage, each attempt once
    records = cluster.kubectl(
        "get", "cm", "-n", namespace, "-l", "bakeline.io/component=checkpoint", "-o", "name"
    ).stdout.split()
    assert len(records) == 3  # the newest 3 of 9: spec.checkpoints.retain's default


def test_wiped_status_is_rebuilt_from_checkpoints_and_pods(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    # Every checkpoint kept: repair rebuilds each stage from its record.
    apply(cluster, [LANE, _job("amnesia", checkpoints={"retain": 9})], namespace)
    before = _wait_terminal(cluster, "amnesia", namespace)["status"]
    operator.kill()  # so nothing rewrites status while it is wiped
    cluster.kubectl(
        "patch",
        "bj",
        "amnesia",
        "-n",
        namespace,
        "--subresource=status",
        "--type=json",
        "-p",
        '[{"op": "replace", "path": "/status", "value": {}}]',
    )
    operator.start()
    after = _wait_terminal(cluster, "amnesia", namespace)["status"]
    assert after["phase"] == "Succeeded"
    checkpoints = [s.get("checkpoint") for s in after["stages"]]
    assert checkpoints == [s.get("checkpoint") for s in before["stages"]]
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    assert len(pods) == 9  # nothing ran again


def test_suspended_job_waits_and_resumes(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [LANE, _job("paused", suspend=True)], namespace)
    job = wait_for_condition(cluster, "bj", "paused", namespace, "Progressing", "False", 30)
    assert job["status"]["phase"] == "Suspended"
    assert cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip() == ""
    apply(cluster, _job("paused", suspend=False), namespace)
    assert _wait_terminal(cluster, "paused", namespace)["status"]["phase"] == "Succeeded"


def _progress_at_least(cluster: ControlPlane, name: str, namespace: str, target: str) -> bool:
    status = (get(cluster, "bj", name, namespace) or {}).get("status") or {}
    done = int((status.get("progress") or "0/9").split("/")[0])
    return done >= int(target.split("/")[0])
