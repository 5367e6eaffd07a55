"""One job, one meaning: the operator and `bakeline run` report the same result of the same
stage outputs.

`bakeline run` bakes the digits example with the real agents; then the operator runs the same
job in a cluster whose stage pods replay those agents' checkpoints and termination messages
(tests/support/replay_agent.py), so both drivers see exactly what the real DeploymentPreparer
produced. Their results must agree: speedup per batch size, quality value and pass, size,
sha256; and `kubectl get bj` shows the speedup.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, get, wait_for
from support.node_harness import NodeHarness, container_path

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPLAY_AGENT = Path(__file__).resolve().parents[1] / "support" / "replay_agent.py"
AGREED = (
    "speedup",
    "speedups",
    "quality",
    "sizeBytes",
    "sha256",
    "format",
    "originalSizeBytes",
    "qualityVerified",
    "qualityNote",
    "evaluationData",
    "calibrationSamples",
    "evaluationSamples",
)


@pytest.fixture(scope="module")
def baked_locally(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("digits-local")
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    done = subprocess.run(
        [
            command,
            "run",
            str(repo_root / "examples" / "bakingjob-digits.yaml"),
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return workdir


def test_the_operator_and_bakeline_run_agree_on_the_real_agents_result(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: Any,
    repo_root: Path,
    baked_locally: Path,
    tmp_path: Path,
) -> None:
    local = json.loads((baked_locally / "report.json").read_text())["result"]
    assert local["speedups"].keys() == {"1", "64"}, local  # the job's two batch sizes
    assert local["quality"]["metric"] == "accuracy" and local["quality"]["passed"]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "bakeline-agent"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPLAY_AGENT}" "$@"\n')
    wrapper.chmod(0o755)
    node.namespace_env[namespace] = {
        "PATH": container_path(bin_dir),
        "REPLAY_WORKDIR": str(baked_locally),
    }
    try:
        examples = repo_root / "examples"
        for name in ("lanes.yaml", "workflow-default.yaml", "bakingjob-digits.yaml"):
            cluster.kubectl("apply", "-n", namespace, "-f", str(examples / name))

        def finished() -> dict[str, Any] | None:
            job = get(cluster, "bj", "digits-cnn", namespace) or {}
            phase = (job.get("status") or {}).get("phase")
            return job if phase in ("Succeeded", "Failed") else None

        job = wait_for(finished, 300, interval=1, what="the replayed digits job to finish")
    finally:
        node.namespace_env.pop(namespace, None)
    status = job["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + operator.log()
    cluster_result = status["result"]
    for key in AGREED:
        assert cluster_result.get(key) == local.get(key), (key, cluster_result, local)

    table = cluster.kubectl("get", "bj", "digits-cnn", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    speedup = row.split()[header.split().index("SPEEDUP")]
    assert float(speedup) == pytest.approx(local["speedup"]), table


def test_a_failed_gate_is_the_same_verdict_in_the_cluster(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    """Exit 3 (gate failed) ends a job with reason GateFailed, as `bakeline run` exits 3."""
    scripted_agent({"quantize": [3]})
    workflow = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "gated"},
        "spec": {
            "stages": [
                {"name": "import", "agent": "BakingCoordinator"},
                {
                    "name": "quantize",
                    "agent": "ModelOptimizer",
                    "dependsOn": ["import"],
                    "onFailure": "Fail",
                },
            ]
        },
    }
    lane = {"apiVersion": "bakeline.io/v1alpha1", "kind": "Lane", "metadata": {"name": "standard"}}
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "gated"},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "workflowRef": "gated"},
    }
    apply(cluster, [lane, workflow, job], namespace)

    def failed() -> dict[str, Any] | None:
        found = get(cluster, "bj", "gated", namespace) or {}
        return (
            found if (found.get("status") or {}).get("phase") in ("Failed", "Succeeded") else None
        )

    status = wait_for(failed, 60, interval=1, what="the gated job to end")["status"]
    assert status["phase"] == "Failed", status
    verdict = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert verdict["reason"] == "GateFailed", verdict
