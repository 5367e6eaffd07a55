"""Lane (`ln`): a queue with its own capacity, like a Kueue LocalQueue + ClusterQueue in one."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints

from bakeline.api.common import (
    AGE_COLUMN,
    LABEL_KEY,
    LABEL_VALUE,
    Condition,
    LabelName,
    ObjectName,
    PrinterColumn,
    Quantity,
    Resource,
    ResourceInfo,
    Rule,
    StatusModel,
    WireModel,
    conditions_field,
    observed_generation_field,
    quantity_value,
)
from bakeline.api.names import AgentName

RESOURCE_NAMES = ["cpu", "memory", "ephemeral-storage"]
Queueing = Literal["StrictFIFO", "Priority"]
StopPolicy = Literal["None", "Hold", "HoldAndDrain"]
StoreType = Literal["ConfigMap", "Volume"]


class ResourceRequirements(WireModel):
    """CPU and memory for each stage pod, as in a container's `resources`."""

    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=8,
        description="Minimum resources the scheduler reserves, e.g. {cpu: 500m, memory: 1Gi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=8,
        description="Maximum resources the pod may use, e.g. {memory: 4Gi}; an agent that "
        "exceeds the memory limit is killed and its stage retried.",
    )

    cel_rules = (
        Rule(
            f"(!has(self.requests) || self.requests.all(k, k in {RESOURCE_NAMES})) && "
            f"(!has(self.limits) || self.limits.all(k, k in {RESOURCE_NAMES}))",
            "resources are named cpu, memory or ephemeral-storage",
            lambda r: all(k in RESOURCE_NAMES for k in [*(r.requests or {}), *(r.limits or {})]),
        ),
        Rule(
            "!has(self.limits) || self.limits.all(k, "
            "quantity(string(self.limits[k])).isGreaterThan(quantity('0')))",
            "a limit must be greater than zero (a pod limited to nothing cannot start)",
            lambda r: all(quantity_value(v) > 0 for v in (r.limits or {}).values()),
            field_path=".limits",
        ),
        Rule(
            "!has(self.requests) || !has(self.limits) || self.limits.all(k, "
            "!(k in self.requests) || !quantity(string(self.requests[k]))"
            ".isGreaterThan(quantity(string(self.limits[k]))))",
            "a request cannot exceed the limit of the same resource",
            lambda r: all(
                quantity_value(v) <= quantity_value((r.limits or {})[k])
                for k, v in (r.requests or {}).items()
                if k in (r.limits or {})
            ),
            field_path=".requests",
        ),
    )


class Toleration(WireModel):
    """Lets stage pods schedule onto nodes with a matching taint (corev1.Toleration)."""

    key: str | None = Field(
        default=None,
        max_length=316,
        pattern=LABEL_KEY,
        description="Taint key to match; empty matches every key.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal",
        description="Equal matches key and value; Exists matches the key with any value.",
    )
    value: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE,
        description="Taint value to match when operator is Equal.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )

    cel_rules = (
        Rule(
            "self.operator != 'Exists' || !has(self.value)",
            "a toleration with operator Exists matches any value: remove value",
            lambda t: t.operator != "Exists" or t.value is None,
            field_path=".value",
            shows="self.value",
        ),
    )


class StageDefaults(WireModel):
    """How the lane's stage pods run: resources, placement and the agent image."""

    resources: ResourceRequirements | None = Field(
        default=None, description="Requests and limits for every stage pod of the lane."
    )
    node_selector: (
        dict[str, Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]] | None
    ) = Field(
        default=None,
        max_length=16,
        description="Node labels a stage pod's node must have, e.g. {bakeline.io/avx512: 'true'}.",
    )
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=16, description="Taints stage pods tolerate."
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        max_length=512,
        pattern=r"^[^\s]+$",
        description="Agent image for this lane's pods, overriding the operator's; lets an "
        "experimental lane run a new agent version.",
    )

    cel_rules = (
        Rule(
            "!has(self.nodeSelector) || self.nodeSelector.all(k, size(k) <= 316 && "
            f"k.matches(r'{LABEL_KEY}'))",
            "nodeSelector keys are label keys: an optional DNS prefix and '/', then up to 63 "
            "letters, digits, '-', '_' or '.', starting and ending alphanumeric",
            lambda d: all(
                len(k) <= 316 and re.fullmatch(LABEL_KEY, k) for k in d.node_selector or {}
            ),
            field_path=".nodeSelector",
        ),
    )


class Storage(WireModel):
    """Where the lane's jobs keep their checkpoints."""

    type: StoreType = Field(
        default="ConfigMap",
        description="ConfigMap keeps manifests and small artifacts in ConfigMaps (no volume "
        "needed); Volume gives each job a PersistentVolumeClaim for artifact bytes.",
    )
    storage_class_name: ObjectName | None = Field(
        default=None,
        description="For type Volume: the StorageClass of the job's claim; empty uses the "
        "cluster default.",
    )
    size: Quantity | None = Field(
        default=None,
        description="For type Volume: size of the job's claim, e.g. 2Gi (default 1Gi).",
    )

    cel_rules = (
        Rule(
            "self.type == 'Volume' || (!has(self.storageClassName) && !has(self.size))",
            "storageClassName and size apply only to storage type Volume",
            lambda s: s.type == "Volume" or (s.storage_class_name is None and s.size is None),
        ),
    )


class CircuitBreaker(WireModel):
    """Quarantines an agent on this lane after repeated failures, so one broken agent version
    does not fail every queued job."""

    consecutive_failures: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Failed stage runs of one agent in a row (across jobs) that open its circuit.",
    )
    cooldown_seconds: int = Field(
        default=600,
        ge=1,
        le=86400,
        description="How long an open circuit stays open before one trial run is let through.",
    )


class LaneSpec(WireModel):
    """The lane's capacity, order and what its stage pods look like."""

    priority: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Relative importance of the lane (0-1000); when lanes compete for the "
        "operator's capacity, the higher one is served first.",
    )
    max_concurrent_jobs: int = Field(
        default=1, ge=1, le=1000, description="Jobs of this lane that may run at the same time."
    )
    max_queued_jobs: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="Jobs that may wait in the lane; a job beyond it stays Pending with "
        "Admitted=False (reason LaneFull) until room frees.",
    )
    queueing: Queueing = Field(
        default="Priority",
        description="Priority: higher job priority first, then oldest. StrictFIFO: oldest "
        "first; a job that cannot start blocks those behind it.",
    )
    stop_policy: StopPolicy = Field(
        default="None",
        description="None: the lane works. Hold: admit nothing new; running jobs finish. "
        "HoldAndDrain: also stop running jobs at their next stage boundary; they return to "
        "the queue and resume from their checkpoints when the lane reopens.",
    )
    fallback_lane: LabelName | None = Field(
        default=None,
        description="Lane (same namespace) that takes this lane's new jobs while it is held "
        "(stopPolicy) or frozen by an SLOPolicy whose action is Fallback; a Freeze or "
        "HoldAndDrain freeze keeps them waiting in this lane.",
    )
    stage_defaults: StageDefaults = Field(
        default_factory=StageDefaults,
        description="Resources, placement and image for the lane's stage pods.",
    )
    storage: Storage = Field(
        default_factory=Storage,
        description="Checkpoint store for the lane's jobs (default ConfigMap).",
    )
    circuit_breaker: CircuitBreaker = Field(
        default_factory=CircuitBreaker,
        description="Per-agent quarantine after repeated failures (default 3 failures, 600 s).",
    )

    cel_rules = (
        Rule(
            "self.maxQueuedJobs >= self.maxConcurrentJobs",
            "maxQueuedJobs must be at least maxConcurrentJobs, so the queue can refill "
            "every running slot",
            lambda s: s.max_queued_jobs >= s.max_concurrent_jobs,
            field_path=".maxQueuedJobs",
        ),
    )


class FrozenBy(StatusModel):
    """One SLOPolicy that froze the lane, and why."""

    policy: str = Field(max_length=253, description="Name of the SLOPolicy.")
    objective: str | None = Field(
        default=None, max_length=63, description="The objective whose error budget burned."
    )
    reason: str = Field(
        default="", max_length=1024, description="Why, e.g. 'budget exhausted: 0.0% left'."
    )
    since: AwareDatetime | None = Field(default=None, description="When the freeze began.")
    action: Literal["Freeze", "HoldAndDrain", "Fallback"] | None = Field(
        default=None,
        description="What the freeze does: Freeze admits no new job; HoldAndDrain also stops "
        "running jobs at their next stage boundary; Fallback routes new jobs to the "
        "fallbackLane (with none, it admits nothing, as Freeze). Empty: Freeze.",
    )


class OpenCircuit(StatusModel):
    """An agent quarantined on this lane."""

    agent: AgentName = Field(description="The quarantined agent.")
    consecutive_failures: int = Field(ge=0, description="Failures in a row that opened it.")
    opened_at: AwareDatetime | None = Field(default=None, description="When the circuit opened.")
    retry_after: AwareDatetime | None = Field(
        default=None, description="When one trial run will be let through."
    )
    last_failure: str | None = Field(
        default=None, max_length=1024, description="The last failure's message."
    )


class LaneStatus(StatusModel):
    """What the lane is doing."""

    observed_generation: int | None = observed_generation_field()
    running: int = Field(default=0, ge=0, description="Jobs of this lane running now.")
    queued: int = Field(default=0, ge=0, description="Jobs waiting in this lane.")
    frozen: bool = Field(
        default=False, description="True while an SLOPolicy keeps the lane from admitting jobs."
    )
    frozen_by: list[FrozenBy] = Field(
        default_factory=list,
        max_length=32,
        description="The SLOPolicies that froze the lane and why.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["policy"],
        },
    )
    open_circuits: list[OpenCircuit] = Field(
        default_factory=list,
        max_length=9,
        description="Agents quarantined on this lane by the circuit breaker.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["agent"],
        },
    )
    conditions: list[Condition] = conditions_field("Ready, Frozen, FallbackLaneFound")


class Lane(Resource):
    """A queue of BakingJobs with its own capacity, order and stage pod settings."""

    info = ResourceInfo(
        plural="lanes",
        singular="lane",
        short_names=("ln",),
        printer_columns=(
            PrinterColumn("Running", "integer", ".status.running", "Jobs running now."),
            PrinterColumn("Queued", "integer", ".status.queued", "Jobs waiting."),
            PrinterColumn(
                "Frozen", "boolean", ".status.frozen", "Frozen by an SLOPolicy's burn rate."
            ),
            AGE_COLUMN,
        ),
    )
    cel_rules = (
        Rule(
            "!has(self.spec.fallbackLane) || self.spec.fallbackLane != self.metadata.name",
            "fallbackLane must name another lane, not this one",
            lambda lane: (
                lane.spec.fallback_lane is None or lane.spec.fallback_lane != lane.metadata.name
            ),
            field_path=".spec.fallbackLane",
            shows="self.spec.fallbackLane",
        ),
    )

    kind: Literal["Lane"] = Field(default="Lane", description="Always Lane.")
    spec: LaneSpec = Field(default_factory=LaneSpec, description="What the lane should be.")
    status: LaneStatus | None = Field(default=None, description="What the lane is; operator-owned.")
