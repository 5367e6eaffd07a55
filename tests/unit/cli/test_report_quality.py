"""`bakeline run`'s report.json, summary line and report.html say when the quality figures were
measured on synthetic inputs, and on what data when they were not."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bakeline.api import BakingJob
from bakeline.api.defaults import default_workflow
from bakeline.checkpoints.manifest import FileEntry, Manifest
from bakeline.cli.report import build_report, summary_table, write_report
from bakeline.contract import QUALITY_VERIFIED, SYNTHETIC_INPUTS
from bakeline.engine import pipeline as engine

PLAN = engine.Plan.from_workflow(default_workflow().spec)
JOB = BakingJob.model_validate(
    {
        "metadata": {"name": "user-model"},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "workflowRef": "default"},
    }
)
MANIFEST = Manifest(
    model_name="user",
    artifact="model.onnx",
    format="onnx",
    files=[FileEntry(path="model.onnx", sha256="ab" * 32, size_bytes=1000, role="model")],
    metrics={"sizeBytes": 1000.0, "cosineMean": 0.9998},
)


def _report(tmp_path: Path, synthetic: float) -> dict[str, Any]:
    metrics = {
        "import": {
            SYNTHETIC_INPUTS: synthetic,
            "calibrationSamples": 128.0,
            "evaluationSamples": 256.0,
        },
        "validate": {"cosineMean": 0.9998, QUALITY_VERIFIED: 1.0 - synthetic},
    }
    state = engine.RunState.initial(PLAN)
    stages = {
        name: replace(
            s,
            phase=engine.StagePhase.SUCCEEDED,
            checkpoint=engine.CheckpointInfo(f"{name}-1", "ab" * 32, 4000),
            metrics=metrics.get(name, {}),
            message="done",
        )
        for name, s in state.stages.items()
    }
    state = replace(state, stages=stages, phase=engine.JobPhase.SUCCEEDED)
    return build_report(
        job=JOB,
        workflow="default",
        plan=PLAN,
        state=state,
        attempts=[],
        events=[],
        started_at=1000.0,
        finished_at=1060.0,
        reason="all stages succeeded",
        result_dir=tmp_path / "result",
        final_manifest=MANIFEST,
        stage_checkpoints={},
    )


def test_a_bake_on_synthetic_inputs_says_unverified_everywhere(tmp_path: Path) -> None:
    report = _report(tmp_path, 1.0)
    result = report["result"]
    assert result["qualityVerified"] is False
    assert result["qualityNote"] == "evaluated on synthetic inputs: quality unverified"
    summary = summary_table(report)
    last = summary.splitlines()[-1]
    assert "cosine 0.9998" in last and last.endswith("quality unverified (synthetic inputs)")
    json_path, html_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["result"]["qualityVerified"] is False
    page = html_path.read_text()
    assert "Quality unverified (synthetic inputs)" in page
    assert "evaluated on synthetic inputs: quality unverified" in page


def test_a_bake_on_real_data_names_it_and_its_split(tmp_path: Path) -> None:
    report = _report(tmp_path, 0.0)
    result = report["result"]
    assert result["qualityVerified"] is True and result["evaluationData"] == "builtin"
    assert (result["calibrationSamples"], result["evaluationSamples"]) == (128, 256)
    summary = summary_table(report)
    assert "unverified" not in summary
    assert summary.splitlines()[-1].endswith(
        "evaluated on the builtin model's evaluation split (256 held-out samples, 128 for "
        "calibration)"
    )
    _, html_path = write_report(report, tmp_path)
    page = html_path.read_text()
    assert "unverified" not in page.lower() and "256 held-out samples" in page


@pytest.mark.parametrize("verified", [None, True, False])
def test_the_summary_of_a_result_follows_its_label(verified: bool | None) -> None:
    result: dict[str, Any] = {"artifact": "a", "format": "onnx", "sizeBytes": 10}
    if verified is not None:
        result |= {"qualityVerified": verified, "qualityNote": "evaluated on x"}
    report = {
        "job": "j",
        "phase": "Succeeded",
        "durationSeconds": 1.0,
        "progress": "9/9",
        "rollbacks": 0,
        "fallbacks": 0,
        "reason": "ok",
        "stages": [],
        "result": result,
    }
    last = summary_table(report).splitlines()[-1]
    expected = {None: "(onnx, 0.0 KiB)", True: "evaluated on x", False: "(synthetic inputs)"}
    assert last.endswith(expected[verified]), last
    assert ("unverified" in last) is (verified is False)
