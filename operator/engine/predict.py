"""Stage-duration prediction for `estimatedCompletion`.

Per agent, duration ~ a + b * model size (MB), fitted by least squares on past runs and pulled
towards a prior (a few seconds plus a little per MB) so one or two observations cannot produce a
wild line. With no history at all the prior alone answers. The operator keeps each namespace's
history (the newest finished jobs' `JobDurations`) in a ConfigMap; `bakeline run` in its work
directory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from bakeline.engine.pipeline import Plan, RunState, StagePhase

_MB = 1024.0 * 1024.0
# Seconds at 0 MB and seconds per MB of input when nothing has been observed: what the nine
# agents took on a 2-core CPU for the digits CNN (0.2 MB) and all-MiniLM-L6-v2 (24-86 MB).
# The fit replaces them as soon as runs are recorded.
_PRIOR: Mapping[str, tuple[float, float]] = {
    "BakingCoordinator": (10.0, 0.3),
    "GraphOptimizer": (6.0, 0.1),
    "ModelOptimizer": (3.0, 0.7),
    "MemoryOptimizer": (3.0, 0.05),
    "HardwareAdapter": (5.0, 0.1),
    "InferenceAccelerator": (11.0, 4.7),
    "QualityValidator": (3.5, 0.1),
    "PerformanceProfiler": (8.0, 2.1),
    "DeploymentPreparer": (3.0, 0.01),
}
_DEFAULT_PRIOR = (5.0, 0.1)
# How many pseudo-observations the prior is worth.
_PRIOR_WEIGHT = 1.0
_MIN_SECONDS = 0.1


@dataclass(frozen=True)
class DurationSample:
    agent: str
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class DurationModel:
    """Fitted (intercept seconds, seconds per MB) per agent."""

    coefficients: Mapping[str, tuple[float, float]]

    def predict(self, agent: str, size_bytes: int) -> float:
        intercept, slope = self.coefficients.get(agent) or _PRIOR.get(agent, _DEFAULT_PRIOR)
        return max(intercept + slope * size_bytes / _MB, _MIN_SECONDS)


def fit_durations(samples: Iterable[DurationSample]) -> DurationModel:
    """Regularised least squares per agent: minimise |Xw - y|^2 + k|w - prior|^2."""
    by_agent: dict[str, list[DurationSample]] = {}
    for sample in samples:
        if sample.seconds >= 0 and sample.size_bytes >= 0:
            by_agent.setdefault(sample.agent, []).append(sample)
    coefficients: dict[str, tuple[float, float]] = {}
    for agent, rows in by_agent.items():
        prior = np.array(_PRIOR.get(agent, _DEFAULT_PRIOR))
        design = np.array([[1.0, r.size_bytes / _MB] for r in rows])
        target = np.array([r.seconds for r in rows])
        # The prior enters as extra rows sqrt(k) * I w = sqrt(k) * prior.
        ridge = np.sqrt(_PRIOR_WEIGHT) * np.eye(2)
        solution, *_ = np.linalg.lstsq(
            np.vstack([design, ridge]), np.concatenate([target, ridge @ prior]), rcond=None
        )
        coefficients[agent] = (float(solution[0]), float(solution[1]))
    return DurationModel(coefficients)


@dataclass(frozen=True)
class JobDurations:
    """What one finished job teaches the predictor, as a namespace keeps it."""

    at: float  # when the job ended; the newest entries are kept
    workflow: str  # the Workflow it ran ("" for the built-in default)
    model: str  # its model source's identity (a digest)
    model_bytes: int | None  # the model's size as imported; None if no stage imported it
    samples: tuple[DurationSample, ...]


def stage_samples(plan: Plan, state: RunState) -> tuple[DurationSample, ...]:
    """Each stage that ran to success (a cache hit did not run): its agent, the size of the
    model it read (its input checkpoint; for a stage with no input, its own output: the model
    as imported) and its seconds."""
    samples = []
    for stage in plan.stages:
        done = state.stages[stage.name]
        if done.phase is not StagePhase.SUCCEEDED or done.started_at is None:
            continue
        if done.finished_at is None:
            continue
        source = plan.primary_input(stage.name)
        read = state.stages[source].checkpoint if source else done.checkpoint
        size = read.size_bytes if read else 0
        samples.append(DurationSample(stage.agent, size, done.finished_at - done.started_at))
    return tuple(samples)


def imported_size(plan: Plan, state: RunState) -> int | None:
    """The model's size as the job's first stage imported it; None before it has."""
    first = state.stages[plan.stages[0].name].checkpoint if plan.stages else None
    return first.size_bytes if first else None


def entries_to_drop(ended: Mapping[str, float], keep: int) -> list[str]:
    """The keys of a bounded history to drop: all but the `keep` newest by end time."""
    newest = sorted(ended, key=lambda key: (-ended[key], key))
    return sorted(newest[keep:])


def latest_model_bytes(
    history: Iterable[JobDurations], model: str | None = None, workflow: str | None = None
) -> int | None:
    """The size of the model the newest job of `model` (or of `workflow`) imported; None if no
    job in the history did."""
    sized = [
        job
        for job in history
        if job.model_bytes is not None
        and (model is None or job.model == model)
        and (workflow is None or job.workflow == workflow)
    ]
    newest = max(sized, key=lambda job: job.at, default=None)
    return newest.model_bytes if newest else None


def estimate_remaining(
    model: DurationModel,
    pending: Iterable[str],
    size_bytes: int,
    running: tuple[str, float] | None = None,
) -> float:
    """Seconds until the job ends: the running stage's rest plus every pending stage.

    `pending` are agents still to run (sequentially, the conservative case); `running` is the
    agent in progress and the seconds it has already spent.
    """
    total = sum(model.predict(agent, size_bytes) for agent in pending)
    if running is not None:
        agent, elapsed = running
        # A stage past its prediction is assumed nearly done rather than at zero.
        total += max(model.predict(agent, size_bytes) - elapsed, _MIN_SECONDS)
    return total


def critical_path_seconds(
    depends_on: Mapping[str, Iterable[str]], seconds: Mapping[str, float]
) -> float:
    """Predicted wall time of a workflow with unlimited parallelism: its longest path.

    `depends_on` must be acyclic (the API's validation guarantees it for a Ready workflow).
    """
    finish: dict[str, float] = {}

    def end(stage: str) -> float:
        if stage not in finish:
            start = max((end(dep) for dep in depends_on[stage]), default=0.0)
            finish[stage] = start + seconds.get(stage, 0.0)
        return finish[stage]

    return max((end(stage) for stage in depends_on), default=0.0)
