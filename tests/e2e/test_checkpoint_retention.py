"""spec.checkpoints.retain: once a job has finished, its checkpoints beyond the newest `retain`
lose their records and their objects in the ConfigMap store; the result's checkpoint always
stays."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, get, job_finished, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LANE = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "Lane",
    "metadata": {"name": "standard"},
    "spec": {"maxConcurrentJobs": 2, "storage": {"type": "ConfigMap"}},
}


def _job(name: str, retain: int) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": {"builtin": "digits-cnn"}},
            "laneRef": "standard",
            "checkpoints": {"retain": retain},
        },
    }


def _configmaps(cluster: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "configmaps", "-n", namespace, "-l", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def test_retain_prunes_records_and_store_objects_but_never_the_result(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [LANE, _job("keep-two", 2), _job("keep-none", 0)], namespace)
    for name, kept in (("keep-two", {"profile-1", "package-1"}), ("keep-none", {"package-1"})):
        job = job_finished(cluster, name, namespace)
        status = job["status"]
        assert status["phase"] == "Succeeded", json.dumps(status) + operator.log()
        assert status["currentCheckpoint"] == "package-1"

        def pruned(job_name: str = name, left: int = len(kept)) -> list[dict[str, Any]] | None:
            selector = f"bakeline.io/component=checkpoint,bakeline.io/job={job_name}"
            found = _configmaps(cluster, namespace, selector)
            return found if len(found) == left else None

        records = wait_for(pruned, 30, what=f"{name}'s checkpoints to be pruned")
        assert {r["data"]["checkpoint"] for r in records} == kept
        # The store keeps an index per checkpoint: only the kept records' are left.
        indexes = _configmaps(
            cluster,
            namespace,
            f"bakeline.io/component=checkpoint-store-index,bakeline.io/job={name}",
        )
        stored = {index["metadata"]["labels"]["bakeline.io/checkpoint"] for index in indexes}
        assert stored == {r["data"]["storeId"] for r in records}
    events = json.loads(
        cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "reason=CheckpointsPruned",
            "-o",
            "json",
        ).stdout
    )["items"]
    messages = " ".join(e["message"] for e in events)
    assert "pruned 7 checkpoints (retain 2)" in messages
    assert "pruned 8 checkpoints (retain 0)" in messages


def test_a_rerun_after_pruning_runs_again_what_it_needs(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    """validate's input (accelerate's checkpoint) was pruned: the rerun runs the stages again
    from the start rather than restore a checkpoint that is gone, and succeeds."""
    scripted_agent({})
    apply(cluster, [LANE, _job("again", 1)], namespace)
    assert job_finished(cluster, "again", namespace)["status"]["phase"] == "Succeeded"
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    done = subprocess.run(
        ["bakeline", "rerun", "again", "--from", "validate", "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    def rerun_finished() -> dict[str, Any] | None:
        job = get(cluster, "bj", "again", namespace) or {}
        status = job.get("status") or {}
        return job if status.get("rerunRequest") and status.get("phase") == "Succeeded" else None

    status = wait_for(rerun_finished, 120, what="the rerun to finish")["status"]
    attempts = {s["name"]: s["attempt"] for s in status["stages"]}
    assert attempts["import"] == attempts["validate"] == attempts["package"] == 2, attempts
