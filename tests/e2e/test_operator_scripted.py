"""The operator's orchestration on the real API server, with a scripted agent in the pods."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
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


def _terminal(cluster: ControlPlane, name: str, namespace: str) -> dict[str, Any] | None:
    job = get(cluster, "bakingjob", name, namespace)
    phase = ((job or {}).get("status") or {}).get("phase")
    return job if phase in ("Succeeded", "Failed") else None


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
    assert status["result"]["speedup"] == 2.0
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    names = sorted(p["metadata"]["name"] for p in pods["items"])
    assert names == sorted(f"bake-{s['name']}-1" for s in status["stages"])
    records = cluster.kubectl(
        "get", "configmaps", "-n", namespace, "-l", "bakeline.io/component=checkpoint", "-o", "name"
    ).stdout.split()
    assert len(records) == 9
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
    for name in ("first", "low", "high"):
        wait_for(lambda n=name: _terminal(cluster, n, namespace), 240, what=f"{name} to finish")
    spans = {}
    for name in ("first", "low", "high"):
        status = get(cluster, "bj", name, namespace)["status"]
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
        spans[name] = (_epoch(status["stages"][0]["startedAt"]), _epoch(status["finishedAt"]))
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    assert [name for name, _ in ordered] == ["first", "high", "low"]
    for (_, (_, end)), (_, (start, _)) in zip(ordered, ordered[1:], strict=False):
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
    job = wait_for_condition(cluster, "bj", "waits", namespace, "Admitted", "False", timeout=30)
    assert job["status"]["phase"] == "Queued"
    assert (
        "stopPolicy" in condition(job, "Admitted")["message"]
        or "hold" in condition(job, "Admitted")["message"]
    )
    assert cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip() == ""
    apply(cluster, LANE, namespace)  # stopPolicy back to None
    done = wait_for(lambda: _terminal(cluster, "waits", namespace), 120, what="waits to finish")
    assert done["status"]["phase"] == "Succeeded"


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
