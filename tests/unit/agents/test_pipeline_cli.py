"""The contract end to end: the nine agents as `bakeline-agent` subprocesses on digits-cnn."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bakeline.agents.pipeline import STAGES, run_agent, run_pipeline
from bakeline.checkpoints.manifest import verify_checkpoint

JOB: dict[str, Any] = {
    "name": "cli-digits",
    "model": {"source": {"builtin": "digits-cnn"}},
    "target": {"batchSizes": [1, 16]},
}
PARAMS: dict[str, dict[str, Any]] = {
    "HardwareAdapter": {"threads": 1},
    "InferenceAccelerator": {"candidates": ["onnxruntime", "torch-eager"], "runs": 4},
    "PerformanceProfiler": {"runs": 6},
}


def test_nine_agents_in_sequence_through_the_cli(tmp_path: Path) -> None:
    runs = run_pipeline(JOB, tmp_path, PARAMS)
    assert [r.agent for r in runs] == list(STAGES)
    for run in runs:
        assert run.exit_code == 0, (run.agent, run.result, run.stderr[-2000:])
        assert run.result["status"] == "succeeded"
        assert len(json.dumps(run.result).encode()) <= 4096
        manifest = verify_checkpoint(run.output)
        assert run.result["artifactSha256"] == manifest.artifact_sha256
        assert run.result["sizeBytes"] == manifest.file(manifest.artifact).size_bytes
        # logs are JSON lines on stderr
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert lines and all(json.loads(line)["agent"] == run.agent for line in lines)
    package = verify_checkpoint(runs[-1].output)
    assert [e.agent for e in package.lineage] == list(STAGES)
    assert package.metrics["accuracy"] >= package.metrics["referenceAccuracy"] - 0.01

    # A corrupted input checkpoint: exit 2, never retried, and the message says why.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs[5].output, corrupt)
    reference = corrupt / "reference.safetensors"
    data = bytearray(reference.read_bytes())
    data[-1] ^= 0xFF
    reference.write_bytes(data)
    bad = run_agent("QualityValidator", tmp_path / "q", input_dir=corrupt, job=JOB)
    assert bad.exit_code == 2
    assert bad.result["status"] == "invalid-input"
    assert "sha256" in bad.result["message"] and "reference.safetensors" in bad.result["message"]

    # An unreachable quality gate: exit 3 with the reason.
    gate = run_agent(
        "quality-validator",
        tmp_path / "g",
        input_dir=runs[5].output,
        job=JOB,
        params={"threshold": 0.99999},
    )
    assert gate.exit_code == 3 and gate.result["status"] == "gate-failed"
    assert "accuracy" in gate.result["message"] and "< threshold" in gate.result["message"]

    # Unknown params: exit 2.
    unknown = run_agent(
        "ModelOptimizer",
        tmp_path / "u",
        input_dir=runs[1].output,
        job=JOB,
        params={"scheme": "int8-per-channel", "bananas": 3},
    )
    assert unknown.exit_code == 2 and "bananas" in unknown.result["message"]


def test_environment_variables_drive_a_pod(tmp_path: Path) -> None:
    termination = tmp_path / "termination-log"
    env = {
        **os.environ,
        "BAKELINE_AGENT": "baking-coordinator",
        "BAKELINE_OUTPUT": str(tmp_path / "out"),
        "BAKELINE_JOB": json.dumps(JOB),
        "BAKELINE_STAGE": "import",
        "BAKELINE_TERMINATION_MESSAGE_PATH": str(termination),
    }
    done = subprocess.run(
        [sys.executable, "-m", "bakeline.agents"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(termination.read_text())
    assert result["agent"] == "BakingCoordinator" and result["stage"] == "import"
    assert result["format"] == "exported-program"


def test_a_pickle_offered_as_a_model_exits_2(tmp_path: Path) -> None:
    import pickle

    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps(["not", "a", "model"]))
    run = run_agent(
        "BakingCoordinator",
        tmp_path / "out",
        job={"model": {"source": {"pvc": {"claimName": "x"}}, "localPath": str(evil)}},
    )
    assert run.exit_code == 2 and "pickle" in run.result["message"]


def test_sigterm_stops_an_agent_promptly_with_a_termination_message(tmp_path: Path) -> None:
    """As PID 1 in a pod an agent gets no default SIGTERM action: the handler must stop it."""
    import signal
    import time

    termination = tmp_path / "termination.json"
    job = {"name": "sigterm", "model": {"source": {"builtin": "minilm-l6"}}}
    argv = [sys.executable, "-m", "bakeline.agents", "BakingCoordinator"]
    argv += ["--output", str(tmp_path / "out"), "--job", json.dumps(job)]
    agent = subprocess.Popen(
        [*argv, "--termination-log", str(termination)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert agent.stderr is not None
    for line in agent.stderr:  # wait until the stage runs (past the imports)
        if '"stage started"' in line:
            break
    sent = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    code = agent.wait(timeout=30)
    assert time.monotonic() - sent < 10
    assert code == 1  # transient: the operator may run another attempt
    body = json.loads(termination.read_text())
    assert body["status"] == "error" and "terminated by signal 15" in body["message"]
