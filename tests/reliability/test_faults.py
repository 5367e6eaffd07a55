# ruff: noqa: E501  (the fault table reads best one case a line)
"""Injected faults on the real control plane with the node harness and the scripted agent.

Agent faults (crash, segfault, hang past the stage timeout, OOMKilled, an output whose sha256
does not match, eviction) are each handled per the stage's policy: a fault that happens once is
recovered by a retry; one that happens every time fails the job with a condition that names it;
a stage with onFailure Skip is skipped. The SLO ledger survives an operator restart, and a
kube-apiserver restart mid-run is survived by the operator without restarting it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import OperatorProcess
from reliability.probes import (
    condition_of,
    items,
    unverified_checkpoints,
    wait_terminal,
)

from controlplane import ControlPlane
from support.kube import apply, get, wait_for
from support.node_harness import NodeHarness

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

API = "bakeline.io/v1alpha1"
STAGE_TIMEOUT_S = 8  # well above a stage pod's start under the load of 11 concurrent jobs
APISERVER_DOWN_S = 5.0
# Three stages are enough to fault the middle one; retries are quick so the test is too.
RETRY = {"limit": 2, "backoff": {"durationSeconds": 1, "factor": 1.0, "maxSeconds": 1}}


def _workflow(name: str, on_failure: str = "Retry") -> dict[str, Any]:
    stages = [
        {"name": "import", "agent": "BakingCoordinator", "retry": RETRY},
        {
            "name": "quantize",
            "agent": "ModelOptimizer",
            "dependsOn": ["import"],
            "timeoutSeconds": STAGE_TIMEOUT_S,
            "retry": RETRY,
            "onFailure": on_failure,
        },
        {
            "name": "package",
            "agent": "DeploymentPreparer",
            "dependsOn": ["quantize"],
            "retry": RETRY,
        },
    ]
    return {
        "apiVersion": API,
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"stages": stages},
    }


def _lane(name: str) -> dict[str, Any]:
    spec = {
        "maxConcurrentJobs": 20,
        "storage": {"type": "Volume"},
        # Many failures of one agent in a row are the point here, not a broken agent version.
        "circuitBreaker": {"consecutiveFailures": 100},
    }
    return {"apiVersion": API, "kind": "Lane", "metadata": {"name": name}, "spec": spec}


def _job(name: str, workflow: str = "short", lane: str = "faults") -> dict[str, Any]:
    spec = {
        "model": {"source": {"builtin": "digits-cnn"}},
        "workflowRef": workflow,
        "laneRef": lane,
    }
    return {"apiVersion": API, "kind": "BakingJob", "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class Fault:
    job: str
    script: dict[str, Any]  # the scripted agent's script for this job
    recoverable: bool
    words: str = ""  # what the Failed condition must name, for the unrecoverable ones
    workflow: str = "short"
    expect_phase: str = "Succeeded"
    quantize_phase: str = "Succeeded"


FAULTS = [
    Fault("crash-once", {"quantize": [1, 0]}, True),
    Fault("segfault-once", {"quantize": ["segv", 0]}, True),
    Fault("hang-once", {"sleeps": {"quantize": [60, 0]}}, True),
    Fault("oom-once", {"quantize": ["oom", 0]}, True),
    Fault("corrupt-once", {"corrupt": {"quantize": [True, False]}}, True),
    Fault("evicted-once", {"sleeps": {"quantize": [60, 0]}}, True),  # the test evicts it
    Fault("crash-always", {"quantize": [1]}, False, "exit 1", expect_phase="Failed"),
    Fault("oom-always", {"quantize": ["oom"]}, False, "OOMKilled", expect_phase="Failed"),
    Fault("hang-always", {"sleeps": {"quantize": [60]}}, False, "DeadlineExceeded", expect_phase="Failed"),
    Fault("invalid-input", {"quantize": [2]}, False, "invalid-input", expect_phase="Failed"),
    Fault(
        "skip-on-crash",
        {"quantize": [1]},
        True,
        workflow="skippy",
        quantize_phase="Skipped",
    ),
]  # fmt: skip


def _judge(fault: Fault, job: dict[str, Any]) -> str | None:
    """None when the job ended as the stage's policy says, else what is wrong."""
    status = job.get("status") or {}
    stages = {s["name"]: s for s in status.get("stages") or []}
    quantize = stages.get("quantize", {})
    failed = condition_of(job, "Failed")
    if status.get("phase") != fault.expect_phase:
        return f"phase {status.get('phase')} ({failed.get('message', '')[:200]})"
    if fault.expect_phase == "Failed":
        if fault.words not in failed.get("message", ""):
            return f"the Failed condition does not name {fault.words!r}: {failed}"
        if fault.words == "invalid-input" and quantize.get("attempt") != 1:
            return f"invalid input was retried ({quantize.get('attempt')} attempts)"
        return None
    if quantize.get("phase") != fault.quantize_phase:
        return f"quantize {quantize.get('phase')}, expected {fault.quantize_phase}"
    if fault.quantize_phase == "Succeeded" and (quantize.get("attempt") or 0) < 2:
        return f"quantize took {quantize.get('attempt')} attempt(s): the fault went unnoticed"
    return None


def _first_attempt(cluster: ControlPlane, namespace: str, job: str) -> str:
    """How the faulted stage's first pod ended: its reason, or its exit code."""
    pod = get(cluster, "pod", f"{job}-quantize-1", namespace) or {}
    status = pod.get("status") or {}
    terminated: dict[str, Any] = next(
        (
            c["state"]["terminated"]
            for c in status.get("containerStatuses") or []
            if (c.get("state") or {}).get("terminated")
        ),
        {},
    )
    return str(status.get("reason") or terminated.get("reason") or "") + (
        f" exit {terminated.get('exitCode')}" if terminated else ""
    )


def _slo_policy() -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "SLOPolicy",
        "metadata": {"name": "faults"},
        "spec": {
            "laneSelector": {"names": ["faults"]},
            "objectives": [
                {"name": "job-success", "sli": "JobSuccess", "target": 0.9, "window": "1h"}
            ],
            "burnRateAlerts": [
                {"longWindow": "1h", "shortWindow": "5m", "factor": 1000, "action": "Notify"}
            ],
            "budgetPolicy": {"onExhausted": "Notify"},
        },
    }


def _budgets(cluster: ControlPlane, namespace: str) -> dict[str, Any]:
    status = (get(cluster, "slo", "faults", namespace) or {}).get("status") or {}
    return {
        o["name"]: (o.get("good"), o.get("total"), o.get("budgetRemaining"))
        for o in status.get("objectives") or []
    }


def test_injected_agent_faults_are_handled_per_policy_and_the_slo_ledger_survives_a_restart(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"jobs": {f.job: f.script for f in FAULTS}})
    apply(
        cluster,
        [
            _lane("faults"),
            _workflow("short"),
            _workflow("skippy", on_failure="Skip"),
            _slo_policy(),
        ],
        namespace,
    )
    apply(cluster, [_job(f.job, f.workflow) for f in FAULTS], namespace)
    # Eviction comes from outside the agent: the harness plays a kubelet under memory pressure.
    victim = "evicted-once-quantize-1"
    wait_for(lambda: node.pid_of(namespace, victim), 90, what=f"{victim} to run")
    assert node.evict(namespace, victim)

    jobs = {f.job: wait_terminal(cluster, f.job, namespace, 180) for f in FAULTS}
    verdicts = {f.job: _judge(f, jobs[f.job]) for f in FAULTS}
    rows = []
    for fault in FAULTS:
        status = jobs[fault.job]["status"]
        quantize = next(s for s in status["stages"] if s["name"] == "quantize")
        reason = condition_of(jobs[fault.job], "Failed").get("message", "")
        rows.append(
            f"{fault.job:16} {'recoverable' if fault.recoverable else 'unrecoverable':13} "
            f"first pod: {_first_attempt(cluster, namespace, fault.job):22} -> "
            f"{status['phase']:9} quantize {quantize['phase']:9} attempts {quantize['attempt']} "
            f"{'OK' if verdicts[fault.job] is None else 'WRONG ' + str(verdicts[fault.job])} "
            f"{reason[:90]}"
        )
    recovered = sum(
        1
        for f in FAULTS
        if f.recoverable and verdicts[f.job] is None and f.expect_phase == "Succeeded"
    )
    failed_clearly = sum(1 for f in FAULTS if not f.recoverable and verdicts[f.job] is None)
    print("\n".join(rows))
    print(
        f"faults injected {len(FAULTS)}, recovered {recovered} of "
        f"{sum(f.recoverable for f in FAULTS)}, failed with a clear reason {failed_clearly} of "
        f"{sum(not f.recoverable for f in FAULTS)}"
    )
    checked, problems = unverified_checkpoints(cluster, namespace, node.pvc_dir)

    # The SLO ledger: budgets as the policy saw them, the operator SIGKILLed, then again.
    def settled() -> dict[str, Any] | None:
        budgets = _budgets(cluster, namespace)
        return budgets if budgets.get("job-success", (0, 0))[1] == len(FAULTS) else None

    before = wait_for(settled, 30, what="the SLO policy to count every job")
    stamp = get(cluster, "slo", "faults", namespace)["status"].get("lastEvaluated")
    operator.kill()
    operator.start()
    wait_for(
        lambda: (
            (get(cluster, "slo", "faults", namespace)["status"].get("lastEvaluated") or "")
            > (stamp or "")
        ),
        60,
        what="the restarted operator to evaluate the policy again",
    )
    after = _budgets(cluster, namespace)
    print(f"SLO before restart {before}, after {after}")

    assert {job: v for job, v in verdicts.items() if v} == {}, "\n".join(rows)
    assert problems == [] and checked > 0, problems
    assert after == before


def _alive(pid: int | None) -> bool:
    try:
        os.kill(pid or 0, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; its parent (this process) has not reaped it yet.
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().split()[2] != "Z"


def test_apiserver_restart_mid_run_is_survived_without_restarting_the_operator(
    cluster: ControlPlane,
    namespace: str,
    operator: OperatorProcess,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"sleep": {"quantize": 3.0}})
    names = [f"through-{i}" for i in range(4)]
    apply(cluster, [_lane("faults"), _workflow("short")], namespace)
    apply(cluster, [_job(name) for name in names], namespace)
    wait_for(
        lambda: len(items(cluster, "pods", namespace)) >= 4,
        60,
        what="the jobs to be running",
    )
    assert operator.process is not None
    pid = operator.process.pid
    unfinished = [
        n
        for n in names
        if (get(cluster, "bj", n, namespace) or {}).get("status", {}).get("phase") != "Succeeded"
    ]
    assert unfinished, "the jobs finished before the API server went away"
    started = time.monotonic()
    # Killed, not stopped gracefully (a graceful stop drains the watches for a minute), and
    # left down a while; restart_apiserver() then starts it on the same port, etcd untouched.
    assert cluster.apiserver_pid is not None
    os.killpg(cluster.apiserver_pid, signal.SIGKILL)
    wait_for(lambda: not _alive(cluster.apiserver_pid), 10, what="kube-apiserver to be gone")
    time.sleep(APISERVER_DOWN_S)
    cluster.restart_apiserver()
    print(f"kube-apiserver down and back in {time.monotonic() - started:.1f}s")
    for name in names:
        done = wait_terminal(cluster, name, namespace, 180)
        assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"])[-1500:]
    assert operator.process.poll() is None and operator.process.pid == pid, operator.log()
