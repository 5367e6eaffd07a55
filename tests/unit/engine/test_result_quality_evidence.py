"""What a result says its quality was measured on: synthetic inputs (unverified), the builtin
model's evaluation split or the job's dataset, from the stages' own metrics."""

from __future__ import annotations

from dataclasses import replace

from bakeline.api.bakingjob import Quality, Target
from bakeline.api.defaults import default_workflow
from bakeline.contract import EXIT_OK, QUALITY_VERIFIED, SYNTHETIC_INPUTS
from bakeline.engine import pipeline as engine
from bakeline.engine.result import (
    BUILTIN_DATA,
    DATASET_DATA,
    SYNTHETIC_DATA,
    FinalArtifact,
    QualityEvidence,
    job_verdict,
    quality_evidence,
    result_document,
)

PLAN = engine.Plan.from_workflow(default_workflow().spec)
ARTIFACT = FinalArtifact("model.onnx", "onnx", "ab" * 32, 1000)
SPLIT = {"calibrationSamples": 128.0, "evaluationSamples": 256.0}


def _succeeded(
    metrics_by_stage: dict[str, dict[str, float]], plan: engine.Plan = PLAN
) -> engine.RunState:
    state = engine.RunState.initial(plan)
    stages = {
        name: replace(
            s,
            phase=engine.StagePhase.SUCCEEDED,
            checkpoint=engine.CheckpointInfo(f"{name}-1", "cd" * 32, 4000),
            metrics=metrics_by_stage.get(name, {}),
        )
        for name, s in state.stages.items()
    }
    return replace(state, stages=stages, phase=engine.JobPhase.SUCCEEDED)


def _import_stage(plan: engine.Plan) -> str:
    return next(s.name for s in plan.stages if s.agent == "BakingCoordinator")


def _validate_stage(plan: engine.Plan) -> str:
    return next(s.name for s in plan.stages if s.agent == "QualityValidator")


def test_a_bake_on_synthetic_inputs_succeeds_but_is_marked_unverified() -> None:
    state = _succeeded(
        {
            _import_stage(PLAN): {SYNTHETIC_INPUTS: 1.0, **SPLIT},
            _validate_stage(PLAN): {"cosineMean": 0.9998, QUALITY_VERIFIED: 0.0},
        }
    )
    document = result_document(PLAN, state, Target(), Quality(), ARTIFACT)
    assert document["qualityVerified"] is False
    assert document["qualityNote"] == "evaluated on synthetic inputs: quality unverified"
    assert document["evaluationData"] == SYNTHETIC_DATA
    assert (document["calibrationSamples"], document["evaluationSamples"]) == (128, 256)
    # The quality figure is still reported, and the gate still held: only its worth differs.
    assert document["quality"]["passed"] and document["quality"]["value"] == 0.9998
    evidence = quality_evidence(PLAN, state, Quality())
    verdict = job_verdict(engine.JobPhase.SUCCEEDED, evidence=evidence)
    assert verdict.succeeded and verdict.exit_code == EXIT_OK and verdict.reason == "Baked"
    assert not verdict.verified and "quality unverified" in verdict.note


def test_the_validators_word_alone_marks_it_unverified() -> None:
    state = _succeeded({_validate_stage(PLAN): {QUALITY_VERIFIED: 0.0}})
    evidence = quality_evidence(PLAN, state)
    assert evidence.verified is False and evidence.data == SYNTHETIC_DATA


def test_a_builtin_models_split_is_verified_and_named_with_its_sizes() -> None:
    state = _succeeded(
        {
            _import_stage(PLAN): {SYNTHETIC_INPUTS: 0.0, **SPLIT},
            _validate_stage(PLAN): {QUALITY_VERIFIED: 1.0},
        }
    )
    document = result_document(PLAN, state, Target(), Quality(), ARTIFACT)
    assert document["qualityVerified"] is True
    assert document["evaluationData"] == BUILTIN_DATA
    assert document["qualityNote"] == (
        "evaluated on the builtin model's evaluation split "
        "(256 held-out samples, 128 for calibration)"
    )
    verdict = job_verdict(engine.JobPhase.SUCCEEDED, evidence=quality_evidence(PLAN, state))
    assert verdict.verified and verdict.succeeded


def test_the_jobs_dataset_is_named_when_the_import_stage_was_given_one() -> None:
    spec = default_workflow().spec
    stages = [
        s.model_copy(update={"params": {**s.params, "dataset": "/data/eval.safetensors"}})
        if s.agent == "BakingCoordinator"
        else s
        for s in spec.stages
    ]
    plan = engine.Plan.from_workflow(spec.model_copy(update={"stages": stages}))
    state = _succeeded({_import_stage(plan): {SYNTHETIC_INPUTS: 0.0, "evaluationSamples": 40.0}})
    evidence = quality_evidence(plan, state)
    assert evidence == QualityEvidence(True, DATASET_DATA, None, 40)
    assert evidence.note == "evaluated on the job's dataset (40 held-out samples)"


def test_nothing_is_claimed_when_no_stage_said_what_the_data_was() -> None:
    state = _succeeded({"package": {"cosineMean": 0.99}})
    evidence = quality_evidence(PLAN, state)
    assert evidence.verified is None and evidence.note == "" and evidence.to_wire() == {}
    document = result_document(PLAN, state, Target(), Quality(), ARTIFACT)
    assert "qualityVerified" not in document and "qualityNote" not in document
    verdict = job_verdict(engine.JobPhase.SUCCEEDED, evidence=evidence)
    assert verdict.verified  # no evidence of made-up data: nothing to mark


def test_the_final_checkpoints_metrics_count_too() -> None:
    state = _succeeded({})
    evidence = quality_evidence(PLAN, state, Quality(), {SYNTHETIC_INPUTS: 1.0})
    assert evidence.verified is False
