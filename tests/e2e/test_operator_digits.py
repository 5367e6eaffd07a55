"""The operator bakes the digits CNN with the real agents in pods run by the node harness, then
delivers the package to a real S3 server and a real OCI registry, where the test reads it back
with clients of its own and runs the model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, condition, get, wait_for
from support.node_harness import NodeHarness
from support.storage_servers import (
    pull_oci_package,
    read_s3_package,
    registry_secret,
    runs_as_digits,
    s3_client,
    s3_secret,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_digits_job_runs_nine_stages_succeeds_and_is_delivered_to_s3_and_oci(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: Any,
    repo_root: Path,
    tmp_path: Path,
    s3_server: Any,
    oci_registry: Any,
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

    # Delivered where serving reads models, the bake done once: a new spec.output is delivered
    # afresh from the same result.
    client = s3_client(s3_server)
    client.create_bucket(Bucket=f"b-{namespace}")
    s3 = {
        "uri": f"s3://b-{namespace}/digits/v1",
        "endpoint": s3_server.endpoint,
        "credentialsSecret": "s3-writer",
        "insecure": True,
    }
    oci = {
        "uri": f"oci://{oci_registry.host}/{namespace}/digits:v1",
        "credentialsSecret": "registry",
        "insecure": True,
    }
    secrets = [s3_secret(s3_server, "s3-writer"), registry_secret(oci_registry, "registry")]
    apply(cluster, secrets, namespace)
    for attempt, output in enumerate((s3, oci), start=1):
        patch = json.dumps([{"op": "add", "path": "/spec/output", "value": output}])
        cluster.kubectl("patch", "bj", "digits-cnn", "-n", namespace, "--type=json", "-p", patch)

        def delivered(attempt: int = attempt) -> dict[str, Any] | None:
            job = get(cluster, "bj", "digits-cnn", namespace) or {}
            out = (job.get("status") or {}).get("output") or {}
            held = condition(job, "Delivered") or {}
            done = out.get("attempts") == attempt and held.get("status") == "True"
            return job if done else None

        shipped = wait_for(delivered, 180, interval=1, what=f"delivery to {output['uri']}")
        assert shipped["status"]["result"]["sha256"] == result["sha256"]  # not baked again
        package = tmp_path / f"delivered-{attempt}"
        if output is s3:
            read_s3_package(client, f"b-{namespace}", "digits/v1", package)
        else:
            digest = pull_oci_package(oci_registry, f"{namespace}/digits", "v1", package)
            assert shipped["status"]["output"]["digest"] == digest
        artifact = json.loads((package / "manifest.json").read_text())["artifact"]
        assert hashlib.sha256((package / artifact).read_bytes()).hexdigest() == result["sha256"]
        runs_as_digits(package)
