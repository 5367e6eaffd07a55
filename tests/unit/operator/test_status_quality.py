"""status.result and the Succeeded condition of a job whose quality was measured on synthetic
inputs: the engine's one decision, in the cluster's words."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bakeline.api.defaults import default_workflow
from bakeline.contract import QUALITY_VERIFIED, SYNTHETIC_INPUTS
from bakeline.engine import pipeline as engine
from bakeline.kube.job_status import status_from_run_state

PLAN = engine.Plan.from_workflow(default_workflow().spec)
JOB = {"metadata": {"name": "j", "namespace": "ns", "uid": "u", "generation": 1}, "spec": {}}


def _done(synthetic: float) -> engine.RunState:
    metrics = {
        "import": {
            SYNTHETIC_INPUTS: synthetic,
            "calibrationSamples": 64.0,
            "evaluationSamples": 8.0,
        },
        "validate": {"cosineMean": 0.999, QUALITY_VERIFIED: 1.0 - synthetic},
    }
    state = engine.RunState.initial(PLAN)
    stages = {
        name: replace(
            s,
            phase=engine.StagePhase.SUCCEEDED,
            checkpoint=engine.CheckpointInfo(f"{name}-1", "ab" * 32, 10),
            metrics=metrics.get(name, {}),
        )
        for name, s in state.stages.items()
    }
    return replace(state, stages=stages, phase=engine.JobPhase.SUCCEEDED)


def _record(checkpoint: str) -> Any:
    data = {
        "checkpoint": checkpoint,
        "artifactSha256": "ab" * 32,
        "result.json": '{"sizeBytes": 5}',
    }
    return {"data": data}


def _succeeded_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Succeeded")


def test_a_bake_on_synthetic_inputs_says_unverified_in_status() -> None:
    assert {"import", "validate"} <= set(PLAN.order)
    status = status_from_run_state(JOB, PLAN, _done(1.0), {}, _record)
    assert status["phase"] == "Succeeded"
    result = status["result"]
    assert result["qualityVerified"] is False
    assert result["qualityNote"] == "evaluated on synthetic inputs: quality unverified"
    assert result["evaluationSamples"] == 8
    condition = _succeeded_condition(status)
    assert condition["status"] == "True" and condition["reason"] == "Baked"
    assert condition["message"].endswith("; evaluated on synthetic inputs: quality unverified")


def test_a_bake_on_real_data_says_which() -> None:
    status = status_from_run_state(JOB, PLAN, _done(0.0), {}, _record)
    result = status["result"]
    assert result["qualityVerified"] is True and result["evaluationData"] == "builtin"
    assert "8 held-out samples, 64 for calibration" in result["qualityNote"]
    assert "unverified" not in _succeeded_condition(status)["message"]
