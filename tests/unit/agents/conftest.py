"""Fixtures for the agents' unit tests: the nine stages run once, in process, on digits-cnn.

Stages are called through their classes (fast: one torch import for the session); the contract
end to end, through the real `bakeline-agent` CLI, is test_pipeline_cli.py's job.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bakeline.agents.pipeline import Chain, StageRunner, run_chain_in_process, run_in_process
from bakeline.agents.stages import StageResult

DIGITS_JOB: dict[str, Any] = {
    "name": "unit-digits",
    "model": {"source": {"builtin": "digits-cnn"}},
    "target": {"device": "cpu", "batchSizes": [1, 8]},
}
# Quick settings: the unit tests check behaviour, not timings.
QUICK: dict[str, dict[str, Any]] = {
    "HardwareAdapter": {"threads": 1},
    "InferenceAccelerator": {"candidates": ["onnxruntime", "openvino", "torch-eager"], "runs": 4},
    "PerformanceProfiler": {"runs": 6},
}


@pytest.fixture(scope="session")
def digits_job() -> dict[str, Any]:
    return DIGITS_JOB


@pytest.fixture(scope="session")
def run_stage() -> StageRunner:
    """run_stage(agent, output, input_dir=None, params=None, job=DIGITS_JOB)."""

    def run(
        agent: str,
        output: Path,
        input_dir: Path | None = None,
        params: dict[str, Any] | None = None,
        job: dict[str, Any] | None = None,
    ) -> StageResult:
        return run_in_process(agent, output, input_dir, params, DIGITS_JOB if job is None else job)

    return run


@pytest.fixture(scope="session")
def digits_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield run_chain_in_process(DIGITS_JOB, tmp_path_factory.mktemp("digits-chain"), QUICK)
    torch.set_num_threads(threads)
