"""What a job and its stages mean, in one place: the agent contract both drivers speak.

The operator (stage pods), `bakeline run` (child processes), the in-pod wrapper, the agents and
the tests' scripted agent all read this module and nothing else for: exit codes, the
termination message (its fields, its 4 KiB limit, its one parser), the names of the metrics a
job's result is built from, and each agent's traits. Standard library only: it is imported by
every stage pod and by the agents, and sits below every other layer.

A new agent is one module in `bakeline.agents.stages` plus one row in `AGENT_TRAITS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# ---- exit codes (DESIGN §3.3) -------------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILED = 1  # a stage: transient, retried with backoff; `bakeline run`: the job failed
EXIT_INVALID_INPUT = 2  # never retried: the job, params or input are wrong
EXIT_GATE_FAILED = 3  # the work was done but misses a bound: roll back / fall back
EXIT_INTERRUPTED = 130  # `bakeline run` stopped by Ctrl-C or SIGTERM; resumable

# ---- the termination message --------------------------------------------------------------------

TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a container's termination message
MESSAGE_LIMIT = 1536  # characters of the message before metrics are dropped to make room
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

Status = Literal["succeeded", "invalid-input", "gate-failed", "error", "failed"]


def status_of_exit(code: int) -> Status:
    """The termination message's status for an agent's exit code."""
    known: dict[int, Status] = {
        EXIT_OK: "succeeded",
        EXIT_INVALID_INPUT: "invalid-input",
        EXIT_GATE_FAILED: "gate-failed",
    }
    return known.get(code, "error")


@dataclass
class TerminationMessage:
    """The JSON an agent (or the wrapper around it) leaves as its container's termination
    message: what happened, the checkpoint it wrote and its metrics, in at most 4 KiB."""

    agent: str = ""
    stage: str = ""
    status: str = ""
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    artifact_sha256: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    duration_seconds: float | None = None
    # Set by the in-pod wrapper on lanes with ConfigMap storage: {"prefix": ..., "id": ...}.
    store: dict[str, str] | None = None

    def to_wire(self) -> dict[str, Any]:
        """The camelCase object; absent optional fields are left out."""
        body: dict[str, Any] = {
            "agent": self.agent,
            "stage": self.stage,
            "status": self.status,
            "message": self.message,
            "metrics": {k: finite(v) for k, v in self.metrics.items()},
        }
        optional = {
            "artifactSha256": self.artifact_sha256,
            "format": self.format,
            "sizeBytes": self.size_bytes,
            "durationSeconds": (
                round(self.duration_seconds, 3) if self.duration_seconds is not None else None
            ),
            "store": dict(self.store) if self.store else None,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        return body

    def to_text(self, limit: int = TERMINATION_LIMIT) -> str:
        """The message as JSON in at most `limit` bytes: a long message is cut first, then
        metrics are dropped from the end (the first are the headline ones), then the message
        shrinks further."""
        body = self.to_wire()
        if len(body["message"]) > MESSAGE_LIMIT:
            body["message"] = body["message"][: MESSAGE_LIMIT - 1] + "…"
        text = _dumps(body)
        metrics = dict(body["metrics"])
        while len(text.encode()) > limit and metrics:
            metrics.popitem()
            body["metrics"] = metrics
            text = _dumps(body)
        while len(text.encode()) > limit and body["message"]:
            body["message"] = body["message"][: max(0, len(body["message"]) // 2 - 1)] + "…"
            text = _dumps(body)
        return text


def parse_termination(text: str | bytes | None) -> TerminationMessage | None:
    """The one parser of a termination message: None when `text` is not the contract's JSON
    object (a crash's log tail, empty); fields of the wrong type are dropped, not trusted."""
    if not text:
        return None
    if isinstance(text, bytes):
        text = text[:TERMINATION_LIMIT].decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    metrics = data.get("metrics")
    store = data.get("store")
    return TerminationMessage(
        agent=_text(data.get("agent")) or "",
        stage=_text(data.get("stage")) or "",
        status=_text(data.get("status")) or "",
        message=_text(data.get("message")) or "",
        metrics={
            str(k): float(v)
            for k, v in (metrics.items() if isinstance(metrics, dict) else ())
            if _is_number(v)
        },
        artifact_sha256=_text(data.get("artifactSha256")),
        format=_text(data.get("format")),
        size_bytes=int(data["sizeBytes"]) if _is_number(data.get("sizeBytes")) else None,
        duration_seconds=(
            float(data["durationSeconds"]) if _is_number(data.get("durationSeconds")) else None
        ),
        store=(
            {str(k): str(v) for k, v in store.items() if isinstance(v, str | int)}
            if isinstance(store, dict)
            else None
        ),
    )


# ---- metric names ------------------------------------------------------------------------------

SIZE_BYTES = "sizeBytes"
ORIGINAL_SIZE_BYTES = "originalSizeBytes"
SPEEDUP = "speedup"  # one overall speedup, when an agent reports one; else the first batch's
PER_BATCH_KINDS = ("speedup", "p50Ms", "p95Ms", "p99Ms", "originalP50Ms", "throughput")
_PER_BATCH = re.compile(r"^b(\d+)\.([A-Za-z0-9]+)$")

# The metric that carries each quality metric a job may gate on.
QUALITY_METRIC_KEYS: Mapping[str, str] = {
    "cosine": "cosineMean",
    "accuracy": "accuracy",
    "max-abs-error": "maxAbsError",
}
LOWER_IS_BETTER = frozenset({"max-abs-error"})
# 1.0 when the import stage made up the evaluation inputs (the job gave no data of its own);
# the quality validator's verdict is then `QUALITY_VERIFIED` 0.0: it measured noise.
SYNTHETIC_INPUTS = "syntheticInputs"
QUALITY_VERIFIED = "qualityVerified"
# The bound the quality validator judged by (the job's threshold, else the metric's default).
QUALITY_THRESHOLD = "threshold"
# The original model's accuracy on the evaluation labels, measured by the import stage.
REFERENCE_ACCURACY = "referenceAccuracy"
# The bound of a job that names no threshold. Accuracy's is relative: the original's own
# accuracy less ACCURACY_DEFAULT_DROP (an absolute default fails every model less accurate).
DEFAULT_THRESHOLDS: Mapping[str, float] = {"cosine": 0.98, "max-abs-error": 0.05}
ACCURACY_DEFAULT_DROP = 0.01


def per_batch_key(batch_size: int, kind: str) -> str:
    """The metric of one batch size, e.g. per_batch_key(1, "speedup") == "b1.speedup"."""
    return f"b{batch_size}.{kind}"


def per_batch(metrics: Mapping[str, float], kind: str) -> dict[str, float]:
    """{batch size: value} of one per-batch metric, e.g. every "b<N>.speedup"."""
    found = {}
    for key, value in metrics.items():
        match = _PER_BATCH.match(key)
        if match and match.group(2) == kind:
            found[match.group(1)] = value
    return found


def default_threshold(metric: str, reference_accuracy: float | None) -> float:
    """The bound of `metric` when nobody named one. Accuracy without a reference (the data had
    no labels) has nothing to fall below: 0."""
    if metric == "accuracy":
        return 0.0 if reference_accuracy is None else reference_accuracy - ACCURACY_DEFAULT_DROP
    return DEFAULT_THRESHOLDS[metric]


def judged_threshold(metric: str, metrics: Mapping[str, float]) -> float:
    """The bound of a job that named none, from its stages' metrics: the one the quality
    validator reported judging by, else the metric's default (with the import stage's
    reference accuracy)."""
    judged = metrics.get(QUALITY_THRESHOLD)
    if judged is not None:
        return judged
    return default_threshold(metric, metrics.get(REFERENCE_ACCURACY))


def quality_passes(metric: str, value: float, threshold: float) -> bool:
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


# ---- the agents -----------------------------------------------------------------------------


JobPart = Literal["model", "target", "quality"]


def job_document(
    name: str, spec: Mapping[str, Any], model: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The agent contract's `--job`: the job-level parts of a BakingJob's spec in wire form,
    the same from both drivers. `model` stands in for the spec's where a driver resolved the
    source (`bakeline run`: a file:// url to its `localPath` and checked sha256)."""
    return {
        "name": name,
        "model": dict(spec.get("model") or {} if model is None else model),
        "target": dict(spec.get("target") or {}),
        "quality": dict(spec.get("quality") or {}),
    }


@dataclass(frozen=True)
class AgentTraits:
    """What the drivers need to know of an agent without importing it (torch and all)."""

    name: str
    needs_input: bool  # reads the previous stage's checkpoint (False: the job's model source)
    job_parts: frozenset[JobPart]  # the parts of the job document it reads
    # Its output is a function of its input, params, version and the job: a cached checkpoint
    # may stand in for a run.
    cacheable: bool
    # Its output also depends on the machine it ran on: cached per host, and never in a
    # cluster, where the next pod may land on another node.
    host_dependent: bool
    headline_metrics: tuple[str, ...]  # what it reports first (kept when the message is cut)


def _traits(
    name: str,
    job_parts: tuple[JobPart, ...],
    headline: tuple[str, ...],
    *,
    needs_input: bool = True,
    host_dependent: bool = False,
) -> AgentTraits:
    return AgentTraits(name, needs_input, frozenset(job_parts), True, host_dependent, headline)


# One row per agent, in the default workflow's order.
AGENT_TRAITS: Mapping[str, AgentTraits] = {
    t.name: t
    for t in (
        _traits(
            "BakingCoordinator",
            ("model", "quality"),  # quality: a gate on accuracy needs labels, refused at import
            ("parameters", SIZE_BYTES, "calibrationSamples", "evaluationSamples", SYNTHETIC_INPUTS),
            needs_input=False,
        ),
        _traits(
            "GraphOptimizer",
            ("target",),
            ("nodesBefore", "nodesAfter", "trainingOpsAfter", "maxAbsError"),
        ),
        _traits(
            "ModelOptimizer",
            ("quality", "target"),
            (SIZE_BYTES, "sizeRatio", "quantizedLayers", "floatLayers", "cosineMean"),
        ),
        _traits(
            "MemoryOptimizer",
            ("quality",),
            (SIZE_BYTES, "peakMemoryMB", "peakMemoryMBBefore", "cosineMean"),
        ),
        _traits(
            "HardwareAdapter",
            ("target",),
            ("threads", "int8Native", "bf16Native", "fp16Native", "gflopsFp32"),
            host_dependent=True,
        ),
        _traits(
            "InferenceAccelerator",
            ("quality", "target"),
            ("chosenP50Ms", "speedupVsEager"),
            host_dependent=True,
        ),
        _traits(
            "QualityValidator",
            ("quality",),
            (
                "cosineMean",
                "cosineMin",
                "accuracy",
                "maxAbsError",
                QUALITY_THRESHOLD,
                QUALITY_VERIFIED,
            ),
        ),
        _traits(
            "PerformanceProfiler",
            ("target",),
            ("p50Ms", "p95Ms", "p99Ms", "throughput", SPEEDUP),  # per batch size: b1.speedup
            host_dependent=True,
        ),
        _traits("DeploymentPreparer", (), (SIZE_BYTES, "files")),
    )
}
HOST_DEPENDENT_AGENTS = frozenset(t.name for t in AGENT_TRAITS.values() if t.host_dependent)


def job_view(document: Mapping[str, Any], agent: str) -> dict[str, Any]:
    """The job document as `agent` is handed it: its name and the parts AGENT_TRAITS says the
    agent reads, no others. What an agent is not handed cannot change its output, so these
    parts are also all its cache key holds of the job (engine.cache.job_key)."""
    traits = AGENT_TRAITS.get(agent)
    parts = traits.job_parts if traits is not None else frozenset(document) - {"name"}
    return {"name": document.get("name", ""), **{p: document[p] for p in parts if p in document}}


# ---- helpers ------------------------------------------------------------------------------------


def _dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def finite(value: float) -> float | None:
    """A metric as JSON carries it: 6 decimals, None for NaN and infinities."""
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        return None  # JSON has no NaN or Infinity
    return round(number, 6)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
