"""The operator bakes the digits CNN with the real agents in pods run by the node harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import get, wait_for
from support.node_harness import NodeHarness

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_digits_job_is_queued_runs_nine_stages_and_succeeds(
    cluster: ControlPlane, namespace: str, node: NodeHarness, operator: Any, repo_root: Path
) -> None:
    examples = repo_root / "examples"
    for name in ("lanes.yaml", "workflow-default.yaml", "bakingjob-digits.yaml"):
        cluster.kubectl("apply", "-n", namespace, "-f", str(examples / name))

    def finished() -> dict[str, Any] | None:
        job = get(cluster, "bj", "digits-cnn", namespace) or {}
        return job if (job.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    job = wait_for(finished, 900, interval=2, what="the digits job to finish")
    status = job["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + operator.log()
    assert status["progress"] == "9/9"
    assert status["lane"] == "express"
    stages = status["stages"]
    assert stages[0]["agent"] == "BakingCoordinator"
    assert all(s["phase"] in ("Succeeded", "Skipped") for s in stages)
    assert all(s["durationSeconds"] > 0 for s in stages if s["phase"] == "Succeeded")
    result = status["result"]
    assert result["sizeBytes"] > 0 and result["format"] and len(result["sha256"]) == 64
    assert set(result["speedups"]) == {"1", "64"}  # the job's batch sizes, from b1.speedup ...
    assert result["speedup"] == result["speedups"]["1"] > 0
    assert result["quality"]["metric"] == "accuracy" and result["quality"]["passed"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Succeeded"] == "True"

    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.kind=BakingJob",
            "-o",
            "json",
        ).stdout
    )["items"]
    # Timestamps have one-second resolution; etcd's resourceVersion orders within a second.
    reasons = [
        e["reason"] for e in sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))
    ]
    assert reasons[0] == "Admitted"  # queued is in the status; no Event of its own
    assert reasons.count("Started") >= 9 and reasons[-2:] == ["Succeeded", "CheckpointsPruned"]

    table = cluster.kubectl("get", "bj", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    for column in ("PHASE", "LANE", "PROGRESS", "SPEEDUP", "AGE"):
        assert column in header
    assert "Succeeded" in row and "express" in row and "9/9" in row
    speedup = row.split()[header.split().index("SPEEDUP")]
    assert float(speedup) == pytest.approx(result["speedup"]), table
    described = cluster.kubectl("describe", "bj", "digits-cnn", "-n", namespace).stdout
    for stage in ("import", "quantize", "validate", "package"):
        assert f"stage {stage}:" in described
