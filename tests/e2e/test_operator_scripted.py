"""The operator's orchestration on the real API server, with a scripted agent in the pods."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from controlplane import ControlPlane
from support.kube import apply, get, wait_for

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
