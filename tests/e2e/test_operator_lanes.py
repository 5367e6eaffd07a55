"""Lane controls on the real API server: the per-agent circuit breaker, HoldAndDrain, the job
deadline that stops a running pod, and the Events a Lane posts when admission changes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bakeline.checkpoints.configmap import ConfigMapStore
from controlplane import ControlPlane
from support.kube import apply, condition, get, stage_configmaps, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _lane(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Lane",
        "metadata": {"name": "standard"},
        "spec": {"maxConcurrentJobs": 2, **spec},
    }


def _workflow(name: str, *stages: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": name},
        "spec": {"stages": list(stages)},
    }


def _job(name: str, workflow: str | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": "standard"}
    if workflow:
        body["workflowRef"] = workflow
    body.update(spec)
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": body,
    }


def _phase(cluster: ControlPlane, name: str, namespace: str) -> str | None:
    return ((get(cluster, "bj", name, namespace) or {}).get("status") or {}).get("phase")


def _terminal(cluster: ControlPlane, name: str, namespace: str, timeout: float = 120) -> Any:
    def ended() -> dict[str, Any] | None:
        job = get(cluster, "bj", name, namespace)
        phase = ((job or {}).get("status") or {}).get("phase")
        return job if phase in ("Succeeded", "Failed") else None

    return wait_for(ended, timeout, what=f"{name} to end")


def _events(cluster: ControlPlane, namespace: str, kind: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    return [e for e in json.loads(listing)["items"] if e["involvedObject"]["kind"] == kind]


def _pods(cluster: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    listing = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    return {p["metadata"]["name"]: p for p in json.loads(listing)["items"]}


def test_a_failing_agent_opens_its_circuit_and_a_trial_run_closes_it(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    # Two failures in a row open GraphOptimizer's circuit; the job's retries then wait for the
    # cooldown; the trial run (attempt 3) succeeds and closes it.
    scripted_agent({"graph": [1, 1, 0]})
    retry = {"limit": 4, "backoff": {"durationSeconds": 1, "factor": 1, "maxSeconds": 1}}
    workflow = _workflow(
        "one", {"name": "graph", "agent": "GraphOptimizer", "onFailure": "Retry", "retry": retry}
    )
    lane = _lane(circuitBreaker={"consecutiveFailures": 2, "cooldownSeconds": 15})
    apply(cluster, [lane, workflow, _job("flaky", "one")], namespace)

    def circuit_open() -> dict[str, Any] | None:
        status = (get(cluster, "lane", "standard", namespace) or {}).get("status") or {}
        return status if status.get("openCircuits") else None

    status = wait_for(circuit_open, 60, what="the circuit to open")
    [opened] = status["openCircuits"]
    assert opened["agent"] == "GraphOptimizer" and opened["consecutiveFailures"] == 2
    assert opened["retryAfter"] > opened["openedAt"]
    # While it is open, no third attempt runs.
    assert "flaky-graph-3" not in _pods(cluster, namespace)
    ledger = cluster.kubectl(
        "get", "configmap", "bakeline-circuits", "-n", namespace, "-o", "json"
    ).stdout
    assert "standard.GraphOptimizer" in json.loads(ledger)["data"]

    job = _terminal(cluster, "flaky", namespace, 90)
    assert job["status"]["phase"] == "Succeeded", json.dumps(job["status"]) + operator.log()
    pods = _pods(cluster, namespace)
    third = pods["flaky-graph-3"]["metadata"]["creationTimestamp"]
    assert third >= opened["retryAfter"], "the trial ran before the cooldown ended"
    wait_for(lambda: not circuit_open(), 30, what="the circuit to close after the trial succeeded")
    reasons = [e["reason"] for e in _events(cluster, namespace, "Lane")]
    assert "CircuitOpened" in reasons and "CircuitClosed" in reasons


def test_hold_and_drain_stops_a_running_job_at_a_stage_boundary_and_it_resumes(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"sleep": {"graph": 4}})
    apply(cluster, [_lane(), _job("drained")], namespace)
    wait_for(lambda: "drained-graph-1" in _pods(cluster, namespace), 60, what="graph to start")
    apply(cluster, _lane(stopPolicy="HoldAndDrain"), namespace)

    def requeued() -> dict[str, Any] | None:
        job = get(cluster, "bj", "drained", namespace) or {}
        admitted = condition(job, "Admitted") or {}
        return job if admitted.get("reason") in ("Drained", "LaneHeld") else None

    job = wait_for(requeued, 60, what="the job to go back to the queue")
    assert job["status"]["phase"] == "Queued"
    stages = {s["name"]: s for s in job["status"]["stages"]}
    assert stages["graph"]["phase"] == "Succeeded", "the running stage finished first"
    assert stages["quantize"]["phase"] == "Pending"
    assert "drained-quantize-1" not in _pods(cluster, namespace)
    reasons = [e["reason"] for e in _events(cluster, namespace, "BakingJob")]
    assert "Drained" in reasons
    lane_reasons = [e["reason"] for e in _events(cluster, namespace, "Lane")]
    assert "HoldAndDrain" in lane_reasons

    apply(cluster, _lane(), namespace)  # reopen
    done = _terminal(cluster, "drained", namespace)
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"])
    pods = _pods(cluster, namespace)
    assert "drained-import-2" not in pods and "drained-graph-2" not in pods, "stages redone"
    assert "Admitting" in [e["reason"] for e in _events(cluster, namespace, "Lane")]


def test_job_deadline_stops_the_running_pod(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({"sleep": {"graph": 300}})
    apply(cluster, [_lane(), _job("late", deadlineSeconds=60)], namespace)  # the least allowed
    job = _terminal(cluster, "late", namespace, 120)
    assert job["status"]["phase"] == "Failed"
    failed = condition(job, "Failed") or {}
    assert "deadline" in failed.get("message", ""), failed

    def pod_gone() -> bool:
        pod = _pods(cluster, namespace).get("late-graph-1")
        return pod is None or bool(pod["metadata"].get("deletionTimestamp"))

    wait_for(pod_gone, 30, what="the running pod to be deleted")
    reasons = [e["reason"] for e in _events(cluster, namespace, "BakingJob")]
    assert "PodStopped" in reasons


def _config_maps(cluster: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    listing = cluster.kubectl(
        "get", "configmaps", "-n", namespace, "-l", selector, "-o", "json"
    ).stdout
    return list(json.loads(listing)["items"])


def test_configmap_lane_keeps_checkpoint_bytes_in_configmaps_and_rolls_back_from_them(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    # validate fails its gate once: the job rolls back to memory's input checkpoint, which the
    # fallback attempt reads from its ConfigMaps (there is no volume to read it from).
    scripted_agent({"validate": [3, 0]})
    apply(cluster, [_lane(storage={"type": "ConfigMap"}), _job("small")], namespace)
    job = _terminal(cluster, "small", namespace)
    assert job["status"]["phase"] == "Succeeded", json.dumps(job["status"]) + operator.log()
    assert job["status"]["rollbackCount"] == 1
    claims = cluster.kubectl("get", "pvc", "-n", namespace, "-o", "name").stdout.split()
    assert claims == [], "a ConfigMap lane needs no volume"
    records = _config_maps(cluster, namespace, "bakeline.io/component=checkpoint")
    assert len(records) == 3  # the newest (spec.checkpoints.retain's default); the rest pruned
    store = ConfigMapStore(
        stage_configmaps(cluster, namespace),
        prefix=records[0]["data"]["storePrefix"],
    )
    for record in records:
        data = record["data"]
        assert data["storage"] == "ConfigMap"
        manifest = store.verify(data["storeId"])  # reads every chunk, checks every sha256
        artifact = manifest.file(manifest.artifact)
        assert artifact.sha256 == data["artifactSha256"]
    for stored in _config_maps(cluster, namespace, "bakeline.io/checkpoint-store"):
        assert stored["immutable"] is True
        assert stored["metadata"]["ownerReferences"][0]["name"] == "small"
    # The fallback attempt of memory restored quantize's checkpoint from the store.
    pods = _pods(cluster, namespace)
    memory = sorted(n for n in pods if n.startswith("small-memory-"))
    assert len(memory) == 2, memory
    spec = pods[memory[-1]]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["checkpoints"]
    # Its init container restored it, with the token the agent's container does not hold.
    [restore] = spec["initContainers"]
    env = {e["name"]: e.get("value") for e in restore["env"]}
    # Store ids are <stage>-<manifest sha256 prefix> (quantize's record itself may be pruned
    # once the job finished: spec.checkpoints.retain).
    assert env["BAKELINE_STORE_INPUT_ID"].startswith("quantize-"), env
    assert restore["command"] == ["bakeline", "stage", "restore"]
    agent = next(c for c in spec["containers"] if c["name"] == "agent")
    assert not [e for e in agent["env"] if e["name"].startswith("BAKELINE_STORE")]


def test_volume_lane_keeps_checkpoints_on_the_job_claim(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    scripted_agent({})
    apply(cluster, [_lane(storage={"type": "Volume"}), _job("large")], namespace)
    job = _terminal(cluster, "large", namespace)
    assert job["status"]["phase"] == "Succeeded", json.dumps(job["status"])
    claims = cluster.kubectl("get", "pvc", "-n", namespace, "-o", "name").stdout.split()
    assert claims == ["persistentvolumeclaim/large-checkpoints"]
    assert _config_maps(cluster, namespace, "bakeline.io/checkpoint-store") == []
    records = _config_maps(cluster, namespace, "bakeline.io/component=checkpoint")
    assert {r["data"]["storage"] for r in records} == {"Volume"}
