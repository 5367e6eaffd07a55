"""Chaos: the operator SIGKILLed at random moments while 20 jobs run, at least 10 times.

Afterwards every job is terminal (and Succeeded: no agent fault is injected); exactly one pod
exists per (job, stage, attempt) with attempts numbered 1..n; every succeeded stage has a
checkpoint record whose artifact's sha256 verifies; every job's final artifact has the sha256
of a fault-free run of the same workflow. The scripted agent derives each artifact from its
input's bytes, so a stage re-run after a kill would still give the same artifact, while a
lost, doubled or corrupted checkpoint would not.
"""

from __future__ import annotations

import collections
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess
from reliability.probes import (
    CHAIN_STAGES,
    TERMINAL,
    chain_workflow,
    checkpoint_records,
    items,
    unverified_checkpoints,
    wait_terminal,
)

from controlplane import ControlPlane
from support.kube import apply
from support.node_harness import NodeHarness

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

API = "bakeline.io/v1alpha1"
JOBS = 20
KILLS = 10
STAGES = CHAIN_STAGES
SEED = int(os.environ.get("BAKELINE_CHAOS_SEED", "9"))


def _job(name: str) -> dict[str, Any]:
    spec = {
        "model": {"source": {"builtin": "digits-cnn"}},
        "workflowRef": "chaos",
        "laneRef": "chaos",
        "checkpoints": {"retain": len(STAGES)},  # every checkpoint stays, to be verified
    }
    return {"apiVersion": API, "kind": "BakingJob", "metadata": {"name": name}, "spec": spec}


def _final_sha(cluster: ControlPlane, namespace: str) -> dict[str, str]:
    """Each job's last stage's checkpoint sha256, from its records."""
    last: dict[str, tuple[int, str]] = {}
    for record in checkpoint_records(cluster, namespace):
        labels, data = record["metadata"]["labels"], record.get("data") or {}
        if data.get("stage") == STAGES[-1]:
            attempt = int(data["attempt"])
            job = labels["bakeline.io/job"]
            if attempt >= last.get(job, (0, ""))[0]:
                last[job] = (attempt, data["artifactSha256"])
    return {job: sha for job, (_, sha) in last.items()}


def test_operator_sigkilled_ten_times_during_twenty_jobs_loses_nothing(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"contentAddressed": True, "sleep": {stage: 0.3 for stage in STAGES}})
    lane = {
        "apiVersion": API,
        "kind": "Lane",
        "metadata": {"name": "chaos"},
        "spec": {"maxConcurrentJobs": JOBS, "storage": {"type": "Volume"}},
    }
    apply(cluster, [lane, chain_workflow("chaos"), _job("reference")], namespace)
    reference = wait_terminal(cluster, "reference", namespace, 120)
    assert reference["status"]["phase"] == "Succeeded", json.dumps(reference["status"])[-1500:]
    expected = _final_sha(cluster, namespace)["reference"]

    names = [f"chaos-{i:02d}" for i in range(JOBS)]
    apply(cluster, [_job(name) for name in names], namespace)
    rng = random.Random(SEED)
    kills: list[float] = []
    started = time.monotonic()
    while len(kills) < KILLS or not _all_terminal(cluster, namespace, names):
        if time.monotonic() - started > 240:
            break
        time.sleep(rng.uniform(0.5, 3.0))
        if len(kills) < KILLS:
            operator.kill()
            kills.append(round(time.monotonic() - started, 1))
            operator.start()
    print(f"seed {SEED}: SIGKILL at {kills} s")
    jobs = {name: wait_terminal(cluster, name, namespace, 240) for name in names}
    took = time.monotonic() - started

    phases = collections.Counter(job["status"]["phase"] for job in jobs.values())
    # Stage pods only: a Succeeded Volume-lane job also has its fetch pod (the export).
    pods = items(cluster, "pods", namespace, "-l", "bakeline.io/job,bakeline.io/stage")
    keys = collections.Counter(
        (
            p["metadata"]["labels"]["bakeline.io/job"],
            p["metadata"]["labels"]["bakeline.io/stage"],
            int(p["metadata"]["labels"]["bakeline.io/attempt"]),
        )
        for p in pods
    )
    doubled = {key: n for key, n in keys.items() if n > 1}
    gaps = []
    for name in names:
        for stage in jobs[name]["status"]["stages"]:
            attempts = sorted(a for (j, s, a) in keys if j == name and s == stage["name"])
            if attempts != list(range(1, (stage.get("attempt") or 0) + 1)):
                gaps.append(
                    f"{name}/{stage['name']}: pods {attempts}, status {stage.get('attempt')}"
                )
    checked, problems = unverified_checkpoints(cluster, namespace, node.pvc_dir)
    finals = _final_sha(cluster, namespace)
    different = {name: finals.get(name) for name in names if finals.get(name) != expected}
    retried = sum(n for (_, _, a), n in keys.items() if a > 1)
    print(
        f"{JOBS} jobs, {len(kills)} kills in {took:.0f}s: phases {dict(phases)}, {len(pods)} pods "
        f"({retried} retried attempts), {checked} checkpoints verified, "
        f"{JOBS - len(different)}/{JOBS} final artifacts equal the fault-free run's"
    )
    assert len(kills) >= KILLS
    assert set(phases) <= set(TERMINAL), phases
    assert phases["Succeeded"] == JOBS, {n: j["status"].get("conditions") for n, j in jobs.items()}
    assert doubled == {}, doubled
    assert gaps == [], gaps
    assert problems == [] and checked >= JOBS * len(STAGES), problems
    assert different == {}, different
    assert operator.process is not None and operator.process.poll() is None


def _all_terminal(cluster: ControlPlane, namespace: str, names: list[str]) -> bool:
    jobs = {j["metadata"]["name"]: j for j in items(cluster, "bakingjobs", namespace)}
    return all(((jobs.get(n) or {}).get("status") or {}).get("phase") in TERMINAL for n in names)
