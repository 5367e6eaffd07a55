"""The contract every agent keeps: job spec, params, outcome, exit codes, termination message.

Exit codes (DESIGN.md §3): 0 success, 2 invalid input (never retried), 3 gate failed (the
operator rolls back / falls back), anything else transient (retried with backoff).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID_INPUT = 2
EXIT_GATE_FAILED = 3

Status = Literal["succeeded", "invalid-input", "gate-failed", "error"]
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
MESSAGE_LIMIT = 1536  # characters of the message, before metrics are dropped


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


@dataclass
class Result:
    agent: str
    stage: str
    status: Status
    message: str
    metrics: dict[str, float] = field(default_factory=dict)
    artifact_sha256: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    duration_seconds: float = 0.0

    def to_message(self, limit: int = TERMINATION_LIMIT) -> str:
        """The JSON termination message, at most `limit` bytes: a long message is cut first,
        then metrics are dropped from the end, then the message shrinks further."""
        message = self.message
        if len(message) > MESSAGE_LIMIT:  # room for metrics: the message says why, briefly
            message = message[: MESSAGE_LIMIT - 1] + "…"
        body: dict[str, Any] = {
            "agent": self.agent,
            "stage": self.stage,
            "status": self.status,
            "message": message,
            "metrics": {k: _finite(v) for k, v in self.metrics.items()},
            "artifactSha256": self.artifact_sha256,
            "format": self.format,
            "sizeBytes": self.size_bytes,
            "durationSeconds": round(self.duration_seconds, 3),
        }
        text = json.dumps(body, separators=(",", ":"))
        metrics = dict(body["metrics"])
        while len(text.encode()) > limit and metrics:
            metrics.popitem()  # the first metrics are the headline ones: drop from the end
            body["metrics"] = metrics
            text = json.dumps(body, separators=(",", ":"))
        while len(text.encode()) > limit:
            body["message"] = body["message"][: max(0, len(body["message"]) // 2 - 1)] + "…"
            text = json.dumps(body, separators=(",", ":"))
        return text


def _finite(value: float) -> float | None:
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None  # JSON has no NaN/Infinity
    return round(number, 6)


def write_termination(path: Path, result: Result) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(result.to_message())
    except OSError:
        pass  # outside a pod /dev/termination-log may not be writable; stdout still has it


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
