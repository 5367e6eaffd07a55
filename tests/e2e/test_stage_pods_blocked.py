"""A stage pod that cannot start for want of what the installation provides (here the stage
ServiceAccount) is a condition on the job naming the cause, retried with backoff, and never an
agent's failure: no retry is spent, no circuit opens, and the job goes on once it is fixed."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bakeline.kube.clock import epoch
from controlplane import ControlPlane
from support.kube import apply, condition, get, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STAGE_ACCOUNT = "bakeline-stage"
LANE = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "Lane",
    "metadata": {"name": "standard"},
    # ConfigMap storage: stage pods use the stage ServiceAccount's token to store checkpoints.
    "spec": {"storage": {"type": "ConfigMap"}, "circuitBreaker": {"consecutiveFailures": 2}},
}
JOB = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "BakingJob",
    "metadata": {"name": "blocked"},
    "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": "standard"},
}


def test_a_missing_stage_service_account_blocks_the_job_until_it_exists(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    cluster.kubectl("delete", "serviceaccount", STAGE_ACCOUNT, "-n", namespace)
    apply(cluster, [LANE, JOB], namespace)

    def blocked_twice() -> dict[str, Any] | None:
        job = get(cluster, "bj", "blocked", namespace) or {}
        held = condition(job, "StagePodsBlocked") or {}
        pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
        return job if held.get("status") == "True" and len(pods) >= 2 else None

    job = wait_for(blocked_twice, 60, what="the job to say its stage pods are blocked, twice")
    held = condition(job, "StagePodsBlocked") or {}
    assert f'serviceaccount "{STAGE_ACCOUNT}" not found' in held["message"], held
    assert "trying again in" in held["message"]
    status = job["status"]
    assert status["phase"] == "Running" and status.get("stagePodsRetryAt")
    [first] = [s for s in status["stages"] if s["name"] == "import"]
    # Not the agent's failure: no retry spent, nothing failed, no circuit opened.
    assert first["phase"] == "Pending" and first["attemptsWithParams"] == 0, first
    lane = get(cluster, "lane", "standard", namespace) or {}
    assert not (lane.get("status") or {}).get("openCircuits"), lane.get("status")
    # Backoff: a handful of tries in these seconds, not a hot loop.
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    assert len(pods) <= 4, pods
    # The pass that sees a pod not start creates no other at once: the next waits its backoff.
    listed = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    created = sorted(epoch(p["metadata"]["creationTimestamp"]) or 0.0 for p in listed["items"])
    gaps = [later - earlier for earlier, later in itertools.pairwise(created)]
    assert gaps and min(gaps) >= 4, gaps

    cluster.kubectl("create", "serviceaccount", STAGE_ACCOUNT, "-n", namespace)

    def finished() -> dict[str, Any] | None:
        done = get(cluster, "bj", "blocked", namespace) or {}
        phase = (done.get("status") or {}).get("phase")
        return done if phase in ("Succeeded", "Failed") else None

    done = wait_for(finished, 180, interval=1, what="the job to finish once the account exists")
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"]) + operator.log()
    assert (condition(done, "StagePodsBlocked") or {}).get("status") == "False"
    assert "stagePodsRetryAt" not in done["status"]
    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "reason=PodNotStarted",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert events and all(e["type"] == "Warning" for e in events)
