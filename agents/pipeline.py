"""Run the nine agents in order through the real `bakeline-agent` CLI, one process per stage.

What `bakeline run` does through the operator's runtime, reduced to what benchmarks and tests
need: fresh checkpoint directories, the termination message read back, exit codes kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakeline.api.names import AGENTS
from bakeline.contract import parse_termination

if TYPE_CHECKING:
    from bakeline.agents.stages import StageResult

# The nine agents in the order the default workflow runs them: the API's list, not a copy.
STAGES: tuple[str, ...] = AGENTS


StageRunner = Callable[..., "StageResult"]  # run_in_process's signature, for fixtures


@dataclass
class StageRun:
    agent: str
    exit_code: int
    result: dict[str, Any]
    output: Path
    stderr: str


def run_agent(
    agent: str,
    output: Path,
    *,
    input_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
    timeout: float = 1800,
    env: dict[str, str] | None = None,
) -> StageRun:
    """One stage as a subprocess of the `bakeline-agent` entry point."""
    termination = output.parent / f"{output.name}.termination.json"
    argv = [
        sys.executable,
        "-m",
        "bakeline.agents",
        agent,
        "--output",
        str(output),
        "--termination-log",
        str(termination),
    ]
    if input_dir is not None:
        argv += ["--input", str(input_dir)]
    if params:
        argv += ["--params", json.dumps(params)]
    if job:
        argv += ["--job", json.dumps(job)]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    parsed = parse_termination(termination.read_bytes()) if termination.exists() else None
    return StageRun(agent, done.returncode, parsed.to_wire() if parsed else {}, output, done.stderr)


def run_pipeline(
    job: dict[str, Any],
    workdir: Path,
    params: dict[str, dict[str, Any]] | None = None,
    stages: tuple[str, ...] = STAGES,
) -> list[StageRun]:
    """Run `stages` in order; stop at the first failure (its StageRun is the last one)."""
    runs: list[StageRun] = []
    previous: Path | None = None
    for index, agent in enumerate(stages):
        output = workdir / f"{index}-{agent}"
        run = run_agent(
            agent, output, input_dir=previous, params=(params or {}).get(agent), job=job
        )
        runs.append(run)
        if run.exit_code != 0:
            break
        previous = output
    return runs


@dataclass
class Chain:
    """Checkpoint directories and results of stages run in process, by agent name."""

    dirs: dict[str, Path]
    results: dict[str, StageResult]

    def input_of(self, agent: str) -> Path:
        """The checkpoint the stage before `agent` wrote."""
        return self.dirs[STAGES[STAGES.index(agent) - 1]]


def run_in_process(
    agent: str,
    output: Path,
    input_dir: Path | None = None,
    params: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
) -> StageResult:
    """One stage without a subprocess (tests, notebooks); raises AgentFailure as the CLI maps."""
    from bakeline.agents.contract import JobSpec, kebab, parse_params
    from bakeline.agents.stages import StageContext, resolve

    cls = resolve(agent)
    ctx = StageContext(
        agent=cls.name,
        stage=kebab(cls.name),
        job=JobSpec.model_validate(job or {}),
        input_dir=input_dir,
        output_dir=output,
    )
    return cls().run(ctx, parse_params(cls.params_model, json.dumps(params or {})))


def run_chain_in_process(
    job: dict[str, Any], workdir: Path, params: dict[str, dict[str, Any]] | None = None
) -> Chain:
    chain = Chain({}, {})
    previous: Path | None = None
    for index, agent in enumerate(STAGES):
        output = workdir / f"{index}-{agent}"
        chain.results[agent] = run_in_process(
            agent, output, previous, (params or {}).get(agent), job
        )
        chain.dirs[agent] = output
        previous = output
    return chain
