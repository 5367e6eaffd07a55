"""Workflow (`bwf`): a reusable DAG of stages, one agent each."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator

from bakeline.api.common import (
    AGE_COLUMN,
    DNS_LABEL,
    Condition,
    PrinterColumn,
    Resource,
    ResourceInfo,
    Rule,
    StatusModel,
    WireModel,
    conditions_field,
    named_schema,
    observed_generation_field,
)
from bakeline.api.names import AgentName

MAX_STAGES = 32
MAX_DEPENDENCIES = 16
MAX_FALLBACKS = 8
# Params reach the agent as one environment variable (Linux caps one at 128 KiB) and are
# parsed by the operator on every pass: keep them small and shallow. An agent's settings are
# scalars, lists of scalars, or maps of those (e.g. inputShapes: {input: [1, 64]}). The API
# server checks only the number of keys (maxProperties): CEL cannot see inside free-form
# (x-kubernetes-preserve-unknown-fields) values, so the rest is checked here, by pydantic, and
# a workflow that breaks it is reported Invalid by the operator and refused by `bakeline run`.
MAX_PARAMS = 32
MAX_PARAM_STRING = 256
MAX_PARAM_LIST = 32
MAX_PARAM_MAP = 16
PARAMS_MESSAGE = (
    f"params hold at most {MAX_PARAMS} keys; each value is a string of at most "
    f"{MAX_PARAM_STRING} characters, a number, a boolean, a list of at most {MAX_PARAM_LIST} "
    f"such values, or a map of at most {MAX_PARAM_MAP} keys to either; nothing nested deeper"
)


def _scalar_ok(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= MAX_PARAM_STRING
    return not isinstance(value, list | dict)


def _flat_ok(value: Any) -> bool:
    if isinstance(value, list):
        return len(value) <= MAX_PARAM_LIST and all(_scalar_ok(v) for v in value)
    return _scalar_ok(value)


def params_ok(params: dict[str, Any]) -> bool:
    """Whether params are small and shallow enough (see PARAMS_MESSAGE)."""

    def value_ok(value: Any) -> bool:
        if isinstance(value, dict):
            return len(value) <= MAX_PARAM_MAP and all(
                len(k) <= 63 and _flat_ok(v) for k, v in value.items()
            )
        return _flat_ok(value)

    return len(params) <= MAX_PARAMS and all(
        len(k) <= 63 and value_ok(v) for k, v in params.items()
    )


# Short enough that `<job>-<stage>-<attempt>` stays a valid pod name for reasonable job names.
StageName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32, pattern=DNS_LABEL),
    named_schema(
        DNS_LABEL,
        32,
        "must be a stage name of at most 32 lowercase letters, digits and '-', starting and "
        "ending with a letter or digit",
    ),
]
OnFailure = Literal["Retry", "Rollback", "Fallback", "Skip", "Fail"]
GateOperator = Literal[">=", ">", "<=", "<"]

# The gate metric that stands for the job's own quality gate (spec.quality of the BakingJob).
QUALITY_METRIC = "quality"


class Backoff(WireModel):
    """Delay before retry n: durationSeconds * factor^(n-1), capped at maxSeconds."""

    duration_seconds: int = Field(
        default=10, ge=1, le=3600, description="Delay before the first retry, in seconds."
    )
    factor: float = Field(
        default=2.0, ge=1.0, le=10.0, description="Multiplier applied to the delay per retry."
    )
    max_seconds: int = Field(
        default=300, ge=1, le=86400, description="Upper bound of the delay, in seconds."
    )

    cel_rules = (
        Rule(
            "self.maxSeconds >= self.durationSeconds",
            "maxSeconds must be at least durationSeconds",
            lambda b: b.max_seconds >= b.duration_seconds,
            field_path=".maxSeconds",
        ),
    )


class RetryPolicy(WireModel):
    """Retries of a failed stage attempt. Transient failures (agent exit codes other than 2 and
    3, evicted or lost pods) are retried; invalid input (exit 2) and failed gates (exit 3) are
    not, because running again would fail the same way."""

    limit: int = Field(
        default=2, ge=0, le=10, description="Retries after the first attempt (0 = no retries)."
    )
    backoff: Backoff = Field(default_factory=Backoff, description="Delay between attempts.")


class Gate(WireModel):
    """A check on the stage's result metrics; a failed gate counts as a stage failure that is
    not retried (see onFailure)."""

    metric: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$",
        description="Metric the agent reports, e.g. speedup or sizeBytes. `quality` stands for "
        "the job's own gate: spec.quality.metric compared with spec.quality.threshold (>= for "
        "cosine and accuracy, <= for max-abs-error); operator and bound are then omitted.",
    )
    operator: GateOperator | None = Field(
        default=None, description="How the metric compares with bound: >=, >, <= or <."
    )
    bound: float | None = Field(default=None, description="The value the metric is compared with.")

    cel_rules = (
        Rule(
            "has(self.operator) == has(self.bound)",
            "a gate sets operator and bound together",
            lambda g: (g.operator is None) == (g.bound is None),
        ),
        Rule(
            f"has(self.bound) || self.metric == '{QUALITY_METRIC}'",
            f"a gate needs operator and bound, unless metric is '{QUALITY_METRIC}' (the job's "
            "own quality gate)",
            lambda g: g.bound is not None or g.metric == QUALITY_METRIC,
        ),
    )


class Stage(WireModel):
    """One step of the workflow: one agent run as one pod per attempt."""

    name: StageName = Field(
        description="Unique in the workflow; a lowercase DNS label of at most 32 characters. "
        "Pods are named <job>-<stage>-<attempt>."
    )
    agent: AgentName = Field(description="The agent that does the work.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        max_length=MAX_PARAMS,
        description="Agent settings, passed to the agent as JSON; free-form, see the agent's "
        "documentation. Part of the stage's cache key.",
    )
    depends_on: list[StageName] = Field(
        default_factory=list,
        max_length=MAX_DEPENDENCIES,
        description="Stages that must succeed (or be skipped) first; the stage reads the "
        "checkpoint of the last of them in topological order. Empty: a root stage that reads "
        "the imported model.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    timeout_seconds: int = Field(
        default=1800,
        ge=1,
        le=86400,
        description="Wall-clock limit of one attempt; an attempt that runs longer fails "
        "(transient, so it is retried).",
    )
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="Retries of transient failures, with backoff."
    )
    on_failure: OnFailure = Field(
        default="Retry",
        description="What happens once the stage has failed for good. Retry: retry transient "
        "failures up to retry.limit, then fail the job. Fallback: run the stage again from its "
        "input checkpoint with the next entry of fallbacks. Rollback: roll the job back to the "
        "checkpoint before the nearest upstream stage (or this one) that has a fallback left and "
        "go on from there with it. Skip: mark the stage Skipped and go on from its input "
        "checkpoint. Fail: fail the job at once, without retries. With no fallback left, "
        "Fallback and Rollback fail the job.",
    )
    fallbacks: list[Annotated[dict[str, Any], Field(max_length=MAX_PARAMS)]] = Field(
        default_factory=list,
        max_length=MAX_FALLBACKS,
        description="Alternative params tried in order after a failure (onFailure Fallback) or "
        "a rollback to this stage; each entry is merged over params, key by key.",
    )
    gate: Gate | None = Field(
        default=None, description="Check on the stage's result; failing it fails the stage."
    )
    cache: bool = Field(
        default=True,
        description="Reuse an earlier checkpoint with the same input, agent, agent version "
        "and params instead of running again (the stage then shows as Cached).",
    )

    @field_validator("params")
    @classmethod
    def _small_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        if not params_ok(params):
            raise ValueError(PARAMS_MESSAGE)
        return params

    @field_validator("fallbacks")
    @classmethod
    def _small_fallbacks(cls, fallbacks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not all(params_ok(entry) for entry in fallbacks):
            raise ValueError("each entry of fallbacks: " + PARAMS_MESSAGE)
        return fallbacks

    cel_rules = (
        Rule(
            "!has(self.dependsOn) || !(self.name in self.dependsOn)",
            "a stage cannot depend on itself",
            lambda s: s.name not in s.depends_on,
            field_path=".dependsOn",
        ),
        Rule(
            "self.onFailure != 'Fallback' || (has(self.fallbacks) && size(self.fallbacks) > 0)",
            "onFailure Fallback needs at least one entry in fallbacks",
            lambda s: s.on_failure != "Fallback" or len(s.fallbacks) > 0,
            field_path=".fallbacks",
            reason="FieldValueRequired",
        ),
    )


class WorkflowSpec(WireModel):
    """The stages and how many may run at once."""

    stages: list[Stage] = Field(
        min_length=1,
        max_length=MAX_STAGES,
        description="The stages, a directed acyclic graph through dependsOn.",
    )
    max_parallel_stages: int = Field(
        default=2, ge=1, le=16, description="Stages of one job that may run at the same time."
    )
    fail_fast: bool = Field(
        default=True,
        description="When a stage fails for good, stop starting stages on other branches; "
        "running ones finish.",
    )

    cel_rules = (
        Rule(
            "self.stages.all(s, self.stages.exists_one(t, t.name == s.name))",
            "stage names must be unique within a workflow",
            lambda w: len({s.name for s in w.stages}) == len(w.stages),
            field_path=".stages",
        ),
        Rule(
            "self.stages.all(s, !has(s.dependsOn) || "
            "s.dependsOn.all(d, self.stages.exists(t, t.name == d)))",
            "dependsOn may only name stages of this workflow",
            lambda w: all(d in {t.name for t in w.stages} for s in w.stages for d in s.depends_on),
            field_path=".stages",
        ),
    )


class Problem(StatusModel):
    """Something wrong with a workflow, with the path of the field at fault."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(
        max_length=256, description="Field at fault, e.g. spec.stages[2].dependsOn[0]."
    )
    reason: str = Field(
        max_length=64,
        description="Cycle, UnknownDependency, UnknownAgent, DuplicateName, SelfDependency, "
        "Unreachable or Invalid.",
    )
    message: str = Field(max_length=1024, description="What is wrong and how to fix it.")


class WorkflowStatus(StatusModel):
    """Whether the workflow can run, and in what order."""

    observed_generation: int | None = observed_generation_field()
    stage_count: int | None = Field(default=None, ge=0, description="Number of stages.")
    order: list[str] = Field(
        default_factory=list,
        max_length=MAX_STAGES,
        description="Stage names in the order they run (topological, ties by declaration).",
    )
    problems: list[Problem] = Field(
        default_factory=list,
        max_length=64,
        description="Everything that keeps the workflow from running, each with its field path.",
    )
    predicted_durations: dict[str, float] = Field(
        default_factory=dict,
        max_length=MAX_STAGES,
        description="Predicted seconds per stage, from past runs of the same agent.",
    )
    predicted_total_seconds: float | None = Field(
        default=None, ge=0, description="Predicted seconds for the whole workflow (critical path)."
    )
    conditions: list[Condition] = conditions_field("Ready, Invalid")


class Workflow(Resource):
    """A reusable DAG of baking stages; a BakingJob names one in workflowRef."""

    info = ResourceInfo(
        plural="workflows",
        singular="workflow",
        short_names=("bwf",),
        printer_columns=(
            PrinterColumn("Stages", "integer", ".status.stageCount", "Number of stages."),
            PrinterColumn(
                "Ready",
                "string",
                '.status.conditions[?(@.type=="Ready")].status',
                "Whether jobs can run this workflow.",
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["Workflow"] = Field(default="Workflow", description="Always Workflow.")
    spec: WorkflowSpec = Field(description="The stages.")
    status: WorkflowStatus | None = Field(
        default=None, description="Validity and order; operator-owned."
    )
