"""The contract every agent keeps: job spec, params, outcome, exit codes, termination message.

Exit codes and the termination message are `bakeline.contract`'s, which the operator and
`bakeline run` read too: 0 success, 2 invalid input (never retried), 3 gate failed (the
operator rolls back / falls back), anything else transient (retried with backoff).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bakeline.contract import (
    EXIT_FAILED,
    EXIT_GATE_FAILED,
    EXIT_INVALID_INPUT,
    EXIT_OK,
    Status,
)
from bakeline.contract import TerminationMessage as Result

EXIT_ERROR = EXIT_FAILED  # transient: the operator (or `bakeline run`) retries with backoff

__all__ = ["EXIT_GATE_FAILED", "EXIT_INVALID_INPUT", "EXIT_OK", "Result"]


class AgentFailure(Exception):
    """A stage outcome other than success; carries its status, exit code and metrics."""

    status: ClassVar[Status] = "error"
    exit_code: ClassVar[int] = EXIT_ERROR

    def __init__(self, message: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metrics = metrics or {}


class InvalidInput(AgentFailure):
    """Bad model, params, job or checkpoint: retrying cannot help."""

    status = "invalid-input"
    exit_code = EXIT_INVALID_INPUT


class GateFailed(AgentFailure):
    """The work was done but its result misses a bound (quality, latency, size, hardware)."""

    status = "gate-failed"
    exit_code = EXIT_GATE_FAILED


# --- the job-level parts of the BakingJob spec (camelCase, lenient: the API may grow) -----------


class _JobPart(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class ModelSpec(_JobPart):
    source: dict[str, Any] = Field(default_factory=dict)
    format: str | None = None
    local_path: str | None = Field(default=None, alias="localPath")
    sha256: str | None = None
    input_shapes: dict[str, list[int]] | None = Field(default=None, alias="inputShapes")

    @property
    def builtin(self) -> str | None:
        value = self.source.get("builtin")
        return str(value) if value else None


class TargetSpec(_JobPart):
    device: Literal["cpu", "cuda"] = "cpu"
    batch_sizes: list[int] = Field(default_factory=lambda: [1], alias="batchSizes")
    latency_budget_ms: float | None = Field(default=None, alias="latencyBudgetMs")
    size_budget_mb: float | None = Field(default=None, alias="sizeBudgetMB")


QualityMetric = Literal["cosine", "accuracy", "max-abs-error"]


class QualitySpec(_JobPart):
    metric: QualityMetric | None = None
    threshold: float | None = None
    dataset: str | None = None


class JobSpec(_JobPart):
    name: str = "local"
    model: ModelSpec | None = None
    target: TargetSpec = Field(default_factory=TargetSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)


def parse_job(text: str | None) -> JobSpec:
    if not text:
        return JobSpec()
    try:
        return JobSpec.model_validate(json.loads(text))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise InvalidInput(f"--job is not a valid job spec: {exc}") from exc


# --- params ------------------------------------------------------------------------------------


class StageParams(BaseModel):
    """Base of each agent's declared params: unknown names are rejected (exit 2)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)


def parse_params(model: type[StageParams], text: str | None) -> StageParams:
    try:
        raw = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--params is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput("--params must be a JSON object")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid params: {errors}") from exc


# --- outcome and termination message ----------------------------------------------------------


@dataclass
class Outcome:
    """What a successful stage reports besides its checkpoint."""

    message: str
    metrics: dict[str, float] = field(default_factory=dict)


def write_termination(path: Path, result: Result) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.to_text())
    except OSError:
        pass  # outside a pod /dev/termination-log may not be writable; stdout still has it


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
