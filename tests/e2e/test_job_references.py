"""A job that names a Lane or Workflow that does not exist waits Pending, in no lane's queue,
with a condition and a Warning Event naming what is missing, and goes on by itself once it
exists."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, condition, get, job_finished, wait_for, warnings_about

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _job(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, **spec},
    }


LATER = {"apiVersion": "bakeline.io/v1alpha1", "kind": "Lane", "metadata": {"name": "later"}}
OTHER = {"apiVersion": "bakeline.io/v1alpha1", "kind": "Lane", "metadata": {"name": "other"}}
STEPS = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "Workflow",
    "metadata": {"name": "steps"},
    "spec": {"stages": [{"name": "import", "agent": "BakingCoordinator"}]},
}


def test_missing_lane_and_workflow_are_pending_with_a_warning_until_they_exist(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [OTHER, _job("lane-later", laneRef="later")], namespace)
    apply(cluster, [_job("steps-later", laneRef="other", workflowRef="steps")], namespace)

    def pending(name: str, reason: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            job = get(cluster, "bj", name, namespace) or {}
            held = condition(job, "Admitted") or {}
            phase = (job.get("status") or {}).get("phase")
            ok = phase == "Pending" and held.get("reason") == reason
            return job if ok and warnings_about(cluster, namespace, name) else None

        return check

    job = wait_for(pending("lane-later", "LaneNotFound"), 60, what="the job to wait for its lane")
    held = condition(job, "Admitted") or {}
    assert held["status"] == "False" and "'later' does not exist" in held["message"], held
    # In no lane's queue: never queued, and the lane that exists counts it nowhere.
    assert not job["status"].get("queuedAt") and not job["status"].get("lane"), job["status"]
    other = get(cluster, "lane", "other", namespace) or {}
    assert (other.get("status") or {}).get("queued", 0) == 0, other.get("status")
    warnings = warnings_about(cluster, namespace, "lane-later")
    assert len(warnings) == 1, [(e["reason"], e["message"]) for e in warnings]
    [warning] = warnings
    assert warning["reason"] == "LaneNotFound" and "later" in warning["message"], warning

    job = wait_for(pending("steps-later", "WorkflowNotFound"), 60, what="a wait for the workflow")
    assert "'steps' does not exist" in (condition(job, "Admitted") or {})["message"]
    assert [e["reason"] for e in warnings_about(cluster, namespace, "steps-later")] == [
        "WorkflowNotFound"
    ]

    apply(cluster, [LATER, STEPS], namespace)
    for name in ("lane-later", "steps-later"):
        done = job_finished(cluster, name, namespace)
        assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"]) + operator.log()
    assert (get(cluster, "bj", "lane-later", namespace) or {})["status"]["lane"] == "later"
