"""bakeline.contract: the one termination message, its parser, metric names and agent traits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

from bakeline import contract
from bakeline.agents.stages import REGISTRY, resolve
from bakeline.api import BakingJob
from bakeline.api.defaults import default_workflow
from bakeline.api.names import AGENTS
from bakeline.engine.cache import HARDWARE_DEPENDENT_AGENTS, job_key
from bakeline.engine.pipeline import Plan, rerun_set
from bakeline.handlers import job_pods
from bakeline.runtime import local


def test_a_termination_message_round_trips_through_the_one_parser() -> None:
    sent = contract.TerminationMessage(
        agent="DeploymentPreparer",
        stage="package",
        status="succeeded",
        message="packaged",
        metrics={"b1.speedup": 2.5, "accuracy": 0.99},
        artifact_sha256="a" * 64,
        format="onnx",
        size_bytes=1234,
        duration_seconds=1.5,
        store={"prefix": "job-store", "id": "package-1"},
    )
    assert contract.parse_termination(sent.to_text()) == sent
    assert contract.parse_termination(sent.to_text().encode()) == sent


def test_the_parser_refuses_what_is_not_the_contract() -> None:
    for text in (None, "", "Traceback (most recent call last):", "[1]", "3", b"\xff\xfe"):
        assert contract.parse_termination(text) is None
    parsed = contract.parse_termination(
        '{"metrics": {"a": 1, "b": "x", "c": true}, "sizeBytes": "5", "store": 3}'
    )
    assert parsed is not None
    assert parsed.metrics == {"a": 1.0} and parsed.size_bytes is None and parsed.store is None


def test_the_message_fits_the_limit_keeping_the_first_metrics() -> None:
    metrics = {f"b{i}.speedup": float(i) for i in range(1, 2000)}
    text = contract.TerminationMessage("A", "s", "succeeded", "m" * 10_000, metrics).to_text()
    assert len(text.encode()) <= contract.TERMINATION_LIMIT
    body = json.loads(text)
    assert "b1.speedup" in body["metrics"] and "b1999.speedup" not in body["metrics"]
    tiny = contract.TerminationMessage("A", "s", "error", "é" * 5000).to_text(limit=200)
    assert len(tiny.encode()) <= 200


def test_per_batch_metric_names() -> None:
    key = contract.per_batch_key(64, "speedup")
    assert key == "b64.speedup"
    metrics = {key: 2.0, "b1.speedup": 3.0, "b1.p50Ms": 0.1, "onnx.b1.p50Ms": 0.2, "speedup": 9}
    assert contract.per_batch(metrics, "speedup") == {"64": 2.0, "1": 3.0}
    assert contract.per_batch(metrics, "p50Ms") == {"1": 0.1}


def test_exit_codes_have_their_statuses() -> None:
    assert contract.status_of_exit(contract.EXIT_OK) == "succeeded"
    assert contract.status_of_exit(contract.EXIT_INVALID_INPUT) == "invalid-input"
    assert contract.status_of_exit(contract.EXIT_GATE_FAILED) == "gate-failed"
    assert contract.status_of_exit(contract.EXIT_FAILED) == "error"
    assert contract.status_of_exit(137) == "error"


def test_every_agent_has_one_row_of_traits_that_matches_the_agent() -> None:
    assert tuple(contract.AGENT_TRAITS) == AGENTS
    for name in contract.AGENT_TRAITS:
        assert resolve(name).name == name
    assert set(REGISTRY) == set(contract.AGENT_TRAITS)  # and no agent without its row
    assert HARDWARE_DEPENDENT_AGENTS == contract.HOST_DEPENDENT_AGENTS
    assert {
        "HardwareAdapter",
        "InferenceAccelerator",
        "PerformanceProfiler",
    } == contract.HOST_DEPENDENT_AGENTS


def test_both_drivers_hand_agents_the_same_job_document(tmp_path: Path) -> None:
    """The operator's `--job` and bakeline run's come from contract.job_document: for a
    builtin model (nothing to resolve) they are equal, key for key."""
    manifest = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "digits", "namespace": "demo"},
        "spec": {
            "model": {"source": {"builtin": "digits-cnn"}},
            "target": {"batchSizes": [1, 8]},
            "quality": {"metric": "accuracy", "threshold": 0.95},
        },
    }
    job = BakingJob.model_validate(manifest)
    wire = job.spec.to_wire()
    in_cluster = job_pods.job_document(job)
    on_one_machine = local.job_document(
        "digits", wire["model"], wire["target"], wire["quality"], tmp_path
    )
    assert in_cluster == on_one_machine
    assert set(in_cluster) == {"name", *get_args(contract.JobPart)}


def test_each_agent_is_handed_only_the_job_parts_its_row_names_and_keys_on_those() -> None:
    document = contract.job_document(
        "digits",
        {
            "model": {"source": {"builtin": "digits-cnn"}},
            "target": {"batchSizes": [1, 8]},
            "quality": {"metric": "accuracy", "threshold": 0.95},
        },
    )
    for agent, traits in contract.AGENT_TRAITS.items():
        view = contract.job_view(document, agent)
        assert set(view) == {"name", *traits.job_parts}, agent
        assert job_key(document, agent) == {p: document[p] for p in traits.job_parts}
    # A change to a part the agent is not handed leaves its key; one it reads changes it.
    other = {**document, "name": "elsewhere", "target": {"batchSizes": [1, 32]}}
    assert job_key(other, "MemoryOptimizer") == job_key(document, "MemoryOptimizer")
    assert job_key(other, "GraphOptimizer") != job_key(document, "GraphOptimizer")
    # Where a driver put the model file is not what the import computes: its bytes are.
    placed = {**document, "model": {**document["model"], "localPath": "/tmp/x/model.pt2"}}
    assert job_key(placed, "BakingCoordinator") == job_key(document, "BakingCoordinator")
    # Nor where it keeps the dataset: the bytes' sha256 keys it.
    here, there = (
        {**document, "quality": {"dataset": f"file://{folder}/data.npz#sha256={'a' * 64}"}}
        for folder in ("/home/me", "/srv/ci")
    )
    assert job_key(here, "ModelOptimizer") == job_key(there, "ModelOptimizer")
    other = {**document, "quality": {"dataset": f"file:///srv/ci/data.npz#sha256={'b' * 64}"}}
    assert job_key(other, "ModelOptimizer") != job_key(there, "ModelOptimizer")


def test_a_rerun_runs_the_stage_and_everything_after_it_in_both_drivers() -> None:
    plan = Plan.from_workflow(default_workflow().spec)
    assert rerun_set(plan, "profile") == {"profile", "package"}
    assert rerun_set(plan, "import") == set(plan.order)
