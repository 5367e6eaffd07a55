"""A job's stages as a state machine: what to run next and what a stage's end means.

The planner is a set of pure functions over immutable values. A driver (the kopf handlers, or
`bakeline run`) observes the world, asks `next_actions` what to do, does it, and reports back
through `stage_started`, `stage_cached` and `stage_finished`, which return the new state plus the
events worth telling the user.

Failure handling (DESIGN §3.5). A transient failure is retried with exponential backoff up to the
stage's retry limit; invalid input (exit 2) is never retried. Once a stage has failed for good its
`onFailure` applies:

- Retry, Fail: the stage fails, and with it the job.
- Skip: the stage is Skipped; its dependents read its input instead.
- Fallback: the same stage runs again on the same input with its next `fallbacks[]` params.
- Rollback: the nearest stage at or upstream of the failure that still has a fallback is re-run
  with it from its own input, the last good checkpoint before it; the stages after it are marked
  RolledBack and run again. With no fallback left the job fails, its current checkpoint the last
  good one.

Every rollback consumes a fallback and every retry an attempt, so any sequence of failures ends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from bakeline.api.bakingjob import Quality
from bakeline.api.validation import topological_order
from bakeline.api.workflow import QUALITY_METRIC, GateOperator, WorkflowSpec
from bakeline.api.workflow import Gate as GateSpec
from bakeline.contract import QUALITY_METRIC_KEYS, judged_threshold
from bakeline.engine.cache import HARDWARE_DEPENDENT_AGENTS, cache_key, canonical_json, job_key
from bakeline.engine.dag import ancestors, descendants
from bakeline.engine.retry import AttemptOutcome, backoff_seconds


class StagePhase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CACHED = "Cached"
    SKIPPED = "Skipped"
    ROLLED_BACK = "RolledBack"  # its output was discarded by a rollback; it runs again


class JobPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    ROLLING_BACK = "RollingBack"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class FailureStrategy(StrEnum):
    RETRY = "Retry"
    ROLLBACK = "Rollback"
    FALLBACK = "Fallback"
    SKIP = "Skip"
    FAIL = "Fail"


# The result metric that carries each quality metric of a job (the agents' camelCase names).
QUALITY_RESULT_METRIC: Mapping[str, str] = QUALITY_METRIC_KEYS
_QUALITY_OF = {key: metric for metric, key in QUALITY_METRIC_KEYS.items()}

DONE_PHASES = frozenset({StagePhase.SUCCEEDED, StagePhase.CACHED, StagePhase.SKIPPED})
_GOOD_PHASES = frozenset({StagePhase.SUCCEEDED, StagePhase.CACHED})
_RUNNABLE_PHASES = frozenset({StagePhase.PENDING, StagePhase.ROLLED_BACK})
TERMINAL_JOB_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})


@dataclass(frozen=True)
class RetryPolicy:
    limit: int = 0  # retries after the first attempt
    duration: float = 10.0  # seconds before the first retry
    factor: float = 2.0
    maximum: float | None = 300.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        return backoff_seconds(attempt, self.duration, self.factor, self.maximum)


_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    ">=": lambda value, bound: value >= bound,
    ">": lambda value, bound: value > bound,
    "<=": lambda value, bound: value <= bound,
    "<": lambda value, bound: value < bound,
}


@dataclass(frozen=True)
class Gate:
    """A bound on one metric of the stage's result, e.g. cosine >= 0.98."""

    metric: str
    operator: GateOperator
    # None: the job's own gate of a job that names no threshold, whose bound is the one the
    # quality validator judged by, else the metric's default (contract.judged_threshold).
    bound: float | None

    def violation(self, metrics: Mapping[str, float]) -> str | None:
        """Why the gate fails on `metrics` (the stage's, over the job's earlier stages'), or
        None when it passes."""
        value = metrics.get(self.metric)
        if value is None:
            return f"gate metric {self.metric!r} is missing from the stage's result"
        bound = self.bound
        if bound is None:
            bound = judged_threshold(_QUALITY_OF[self.metric], metrics)
        if not _COMPARE[self.operator](value, bound):
            return f"gate failed: {self.metric} = {value:.6g}, needs {self.operator} {bound:g}"
        return None


@dataclass(frozen=True)
class StagePlan:
    name: str
    agent: str
    params: Mapping[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    timeout_seconds: float | None = None
    retry: RetryPolicy = RetryPolicy()
    on_failure: FailureStrategy = FailureStrategy.RETRY
    fallbacks: tuple[Mapping[str, Any], ...] = ()
    gate: Gate | None = None
    cache: bool = True

    def params_for(self, fallback: int) -> dict[str, Any]:
        """Params of the attempt: the stage's own, with fallback k's overlaid (k >= 1)."""
        merged = dict(self.params)
        if fallback:
            merged.update(self.fallbacks[fallback - 1])
        return merged


@dataclass(frozen=True)
class Plan:
    """A validated workflow with its stages in topological order."""

    stages: tuple[StagePlan, ...]
    max_parallel: int = 1
    fail_fast: bool = True

    @classmethod
    def build(
        cls, stages: Sequence[StagePlan], max_parallel: int = 1, fail_fast: bool = True
    ) -> Plan:
        """Order `stages` topologically, with the API's validation: WorkflowInvalidError names
        every cycle, unknown dependency or duplicate."""
        graph = {
            "stages": [
                {"name": s.name, "agent": s.agent, "dependsOn": list(s.depends_on)} for s in stages
            ]
        }
        order = topological_order(graph)
        by_name = {s.name: s for s in stages}
        return cls(tuple(by_name[n] for n in order), max(max_parallel, 1), fail_fast)

    @classmethod
    def from_workflow(cls, spec: WorkflowSpec, quality: Quality | None = None) -> Plan:
        """The plan of a Workflow spec; `quality` resolves gates on the `quality` metric."""
        stages = [
            StagePlan(
                name=stage.name,
                agent=stage.agent,
                params=dict(stage.params),
                depends_on=tuple(stage.depends_on),
                timeout_seconds=float(stage.timeout_seconds),
                retry=RetryPolicy(
                    limit=stage.retry.limit,
                    duration=float(stage.retry.backoff.duration_seconds),
                    factor=stage.retry.backoff.factor,
                    maximum=float(stage.retry.backoff.max_seconds),
                ),
                on_failure=FailureStrategy(stage.on_failure),
                fallbacks=tuple(dict(f) for f in stage.fallbacks),
                gate=_gate(stage.gate, quality or Quality()) if stage.gate else None,
                cache=stage.cache,
            )
            for stage in spec.stages
        ]
        return cls.build(stages, spec.max_parallel_stages, spec.fail_fast)

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        return {s.name: s.depends_on for s in self.stages}

    @property
    def order(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> StagePlan:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def primary_input(self, name: str) -> str | None:
        """The dependency whose output a stage reads: the one latest in topological order.

        The agent contract takes one input checkpoint; in a chain that is the previous stage.
        """
        deps = self.stage(name).depends_on
        if not deps:
            return None
        rank = {n: i for i, n in enumerate(self.order)}
        return max(deps, key=rank.__getitem__)


@dataclass(frozen=True)
class CheckpointInfo:
    id: str
    artifact_sha256: str
    size_bytes: int = 0


@dataclass(frozen=True)
class StageState:
    phase: StagePhase = StagePhase.PENDING
    attempt: int = 0  # attempts with the current params
    attempts_total: int = 0
    fallback: int = 0  # 0: the stage's params; k: fallbacks[k-1]
    checkpoint: CheckpointInfo | None = None
    not_before: float = 0.0  # backoff: do not start before this time
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunState:
    stages: Mapping[str, StageState]
    phase: JobPhase = JobPhase.PENDING
    rollbacks: int = 0
    last_rollback_reason: str = ""
    message: str = ""
    deadline: float | None = None  # unix time after which the job fails

    @classmethod
    def initial(cls, plan: Plan, deadline: float | None = None) -> RunState:
        return cls({s.name: StageState() for s in plan.stages}, deadline=deadline)

    def current_checkpoint(self, plan: Plan) -> CheckpointInfo | None:
        """The last good checkpoint: the latest in topological order of a good stage."""
        for stage in reversed(plan.stages):
            state = self.stages[stage.name]
            if state.phase in _GOOD_PHASES and state.checkpoint is not None:
                return state.checkpoint
        return None

    @property
    def progress(self) -> str:
        done = sum(1 for s in self.stages.values() if s.phase in DONE_PHASES)
        return f"{done}/{len(self.stages)}"


@dataclass(frozen=True)
class CacheContext:
    """What a cache key needs besides the stage: see engine.cache.cache_key."""

    model_sha256: str | None
    agent_version: str
    job: Mapping[str, Any] = field(default_factory=dict)  # the job document (contract)
    bypass: frozenset[str] = frozenset()  # stages that must run even on a hit (rerun_set)
    host: str | None = None  # the machine's fingerprint, for hardware-dependent agents


# ---- actions: what the driver is asked to do ------------------------------------------------


@dataclass(frozen=True)
class StartStage:
    stage: str
    agent: str
    attempt: int  # 1-based, with these params
    fallback: int
    params: Mapping[str, Any]
    input: CheckpointInfo | None  # restore this (verified) as the agent's input; None: no input
    cache_key: str | None  # look it up first; on a hit call stage_cached instead of running
    timeout_seconds: float | None


@dataclass(frozen=True)
class WaitUntil:
    at: float
    reason: str


# FinishJob's reason when the job's deadline passed (the driver's DeadlineExceeded).
DEADLINE_EXCEEDED = "deadline exceeded"


@dataclass(frozen=True)
class FinishJob:
    phase: JobPhase
    reason: str
    checkpoint: CheckpointInfo | None  # the job's result, or its last good checkpoint


Action = StartStage | WaitUntil | FinishJob


@dataclass(frozen=True)
class Event:
    """Something worth a line in the report or a Kubernetes Event."""

    at: float
    stage: str
    kind: str  # Started, Cached, Succeeded, Retrying, Fallback, RolledBack, Skipped, Failed
    message: str
    checkpoint: str | None = None
    # For a RolledBack event, the failure that caused it (the job's lastRollbackReason then).
    cause: str | None = None


def next_actions(
    plan: Plan,
    state: RunState,
    now: float,
    cache: CacheContext | None = None,
    blocked_agents: Mapping[str, float] | None = None,
) -> list[Action]:
    """What to do now: stages to start, or when to look again, or how the job ends.

    `blocked_agents` maps an agent whose circuit is open to when it may be tried again.
    """
    if state.phase in TERMINAL_JOB_PHASES:
        return []
    stages = state.stages
    failed = [n for n in plan.order if stages[n].phase is StagePhase.FAILED]
    running = [n for n in plan.order if stages[n].phase is StagePhase.RUNNING]
    if failed and plan.fail_fast:
        # Start nothing more; running stages finish (their results still count) first.
        return [] if running else [_job_failed(plan, state, failed)]
    if all(s.phase in DONE_PHASES for s in stages.values()):
        return [FinishJob(JobPhase.SUCCEEDED, "all stages done", state.current_checkpoint(plan))]
    if state.deadline is not None and now >= state.deadline:
        return [FinishJob(JobPhase.FAILED, DEADLINE_EXCEEDED, state.current_checkpoint(plan))]
    blocked = blocked_agents or {}
    actions: list[Action] = []
    waits: list[WaitUntil] = []
    slots = plan.max_parallel - len(running)
    for name in _startable(plan, state):
        stage, stage_state = plan.stage(name), stages[name]
        if stage.agent in blocked:
            waits.append(WaitUntil(blocked[stage.agent], f"circuit open for {stage.agent}"))
            continue
        if stage_state.not_before > now:
            waits.append(WaitUntil(stage_state.not_before, f"{name} backing off"))
            continue
        if slots <= 0:
            break
        slots -= 1
        actions.append(_start(plan, state, stage, cache))
    if not actions and not running and waits:
        return [min(waits, key=lambda w: w.at)]
    if not actions and not running and not waits:
        # Without failFast the other branches ran to their end; now nothing can move.
        return [_job_failed(plan, state, failed)]
    return actions


def stage_started(state: RunState, stage: str, now: float) -> tuple[RunState, list[Event]]:
    """The driver started (or is about to start) the stage's next attempt."""
    current = state.stages[stage]
    updated = replace(
        current,
        phase=StagePhase.RUNNING,
        attempt=current.attempt + 1,
        attempts_total=current.attempts_total + 1,
        started_at=now,
        finished_at=None,
        message="",
    )
    # The attempt as the pod and status count it (a rerun's or fallback's too), not per params.
    event = Event(now, stage, "Started", f"attempt {updated.attempts_total}")
    return _with(state, stage, updated, phase=JobPhase.RUNNING), [event]


def stage_cached(
    state: RunState, stage: str, checkpoint: CheckpointInfo, now: float
) -> tuple[RunState, list[Event]]:
    """The stage's cache key matched a stored checkpoint: it does not run."""
    updated = replace(
        state.stages[stage],
        phase=StagePhase.CACHED,
        checkpoint=checkpoint,
        started_at=now,
        finished_at=now,
        message=f"cache hit: {checkpoint.id}",
    )
    event = Event(now, stage, "Cached", f"reused checkpoint {checkpoint.id}", checkpoint.id)
    return _with(state, stage, updated, phase=JobPhase.RUNNING), [event]


def stage_not_started(
    state: RunState, stage: str, now: float, message: str
) -> tuple[RunState, list[Event]]:
    """The attempt's pod never ran the agent (refused by the API server, or a node could not
    start it: a missing ServiceAccount, a quota, a policy): not the agent's failure, so the
    stage waits to start again without spending a retry. The driver decides when."""
    current = state.stages[stage]
    if current.phase is not StagePhase.RUNNING:
        return state, []
    waiting = replace(
        current,
        phase=StagePhase.PENDING,
        attempt=max(current.attempt - 1, 0),
        started_at=None,
        finished_at=None,
        message=message,
    )
    return _with(state, stage, waiting), [Event(now, stage, "PodNotStarted", message)]


def stage_finished(
    plan: Plan,
    state: RunState,
    stage: str,
    outcome: AttemptOutcome,
    now: float,
    checkpoint: CheckpointInfo | None = None,
    metrics: Mapping[str, float] | None = None,
    message: str = "",
) -> tuple[RunState, list[Event]]:
    """Apply the end of a running attempt. A result for a stage that is not Running (a
    rollback discarded it meanwhile) changes nothing."""
    current = state.stages[stage]
    if current.phase is not StagePhase.RUNNING:
        return state, []
    spec = plan.stage(stage)
    metrics = dict(metrics or {})
    if outcome is AttemptOutcome.SUCCEEDED and checkpoint is None:
        outcome, message = AttemptOutcome.TRANSIENT, message or "the stage left no checkpoint"
    if outcome is AttemptOutcome.SUCCEEDED and spec.gate is not None:
        judged = metrics
        if spec.gate.bound is None:  # the default may need the import stage's reference
            earlier = [s.metrics for s in state.stages.values() if s.phase in _GOOD_PHASES]
            judged = _merged(*earlier, metrics)
        violation = spec.gate.violation(judged)
        if violation is not None:
            outcome, message = AttemptOutcome.GATE_FAILED, violation
    finished = replace(current, finished_at=now, metrics=metrics, message=message)
    if outcome is AttemptOutcome.SUCCEEDED:
        done = replace(finished, phase=StagePhase.SUCCEEDED, checkpoint=checkpoint)
        event = Event(
            now, stage, "Succeeded", message or "ok", checkpoint.id if checkpoint else None
        )
        return _with(state, stage, done), [event]
    # Only transient failures are retried: invalid input and a failed gate would fail the same
    # way again, and onFailure Fail means at once.
    retryable = outcome is AttemptOutcome.TRANSIENT and spec.on_failure is not FailureStrategy.FAIL
    if retryable and current.attempt <= spec.retry.limit:
        delay = spec.retry.delay(current.attempt)
        waiting = replace(finished, phase=StagePhase.PENDING, not_before=now + delay)
        event = Event(
            now,
            stage,
            "Retrying",
            f"attempt {current.attempts_total} failed ({message or outcome}); "
            f"retry in {delay:.0f}s",
        )
        return _with(state, stage, waiting), [event]
    return _fail(plan, state, stage, finished, outcome, now)


def rerun_set(plan: Plan, stage: str) -> frozenset[str]:
    """What a rerun from `stage` runs again: it and every stage after it. They bypass the
    cache, which would otherwise answer them at once."""
    return frozenset({stage} | descendants(plan.graph, [stage]))


def reset_from(plan: Plan, state: RunState, stage: str) -> RunState:
    """Run `stage` and everything after it again (`--from`, `rerun`).

    Attempt numbers keep counting: an attempt's pod and checkpoint are named after it, and a
    rerun must not find the first run's under the same name.
    """
    names = rerun_set(plan, stage)
    stages = {
        n: (StageState(attempts_total=s.attempts_total) if n in names else s)
        for n, s in state.stages.items()
    }
    return replace(state, stages=stages, phase=JobPhase.RUNNING, message="")


def run_deadline(deadline_seconds: int | None, *began: float | None) -> float | None:
    """When the job's current run fails for time: `deadline_seconds` after it began, the latest
    of `began` (its admission, its latest rerun: a rerun gets a window of its own); None with no
    deadline or no start yet."""
    starts = [t for t in began if t is not None]
    return max(starts) + deadline_seconds if starts and deadline_seconds else None


def finish(state: RunState, action: FinishJob) -> RunState:
    """The state once the driver has carried out a FinishJob."""
    return replace(state, phase=action.phase, message=action.reason)


# ---- internals ------------------------------------------------------------------------------


def _job_failed(plan: Plan, state: RunState, failed: Sequence[str]) -> FinishJob:
    if failed:
        first = failed[0]
        reason = f"stage {first} failed: {state.stages[first].message}".rstrip(": ")
    else:
        reason = "no stage can run"
    return FinishJob(JobPhase.FAILED, reason, state.current_checkpoint(plan))


def _startable(plan: Plan, state: RunState) -> list[str]:
    return [
        stage.name
        for stage in plan.stages
        if state.stages[stage.name].phase in _RUNNABLE_PHASES
        and all(state.stages[d].phase in DONE_PHASES for d in stage.depends_on)
    ]


def _input_of(plan: Plan, state: RunState, name: str) -> CheckpointInfo | None:
    """The checkpoint a stage reads: its primary input's, looking through skipped stages."""
    source = plan.primary_input(name)
    while source is not None:
        upstream = state.stages[source]
        if upstream.phase in _GOOD_PHASES:
            return upstream.checkpoint
        source = plan.primary_input(source)  # skipped: read what it would have read
    return None


def _start(plan: Plan, state: RunState, stage: StagePlan, cache: CacheContext | None) -> StartStage:
    stage_state = state.stages[stage.name]
    params = stage.params_for(stage_state.fallback)
    source = _input_of(plan, state, stage.name)
    key = None
    if cache is not None and stage.cache and stage.name not in cache.bypass:
        input_sha = source.artifact_sha256 if source is not None else cache.model_sha256
        job = job_key(cache.job, stage.agent)
        if stage.agent in HARDWARE_DEPENDENT_AGENTS:
            job["host"] = cache.host
        key = cache_key(input_sha, stage.agent, cache.agent_version, params, job)
    return StartStage(
        stage=stage.name,
        agent=stage.agent,
        attempt=stage_state.attempt + 1,
        fallback=stage_state.fallback,
        params=params,
        input=source,
        cache_key=key,
        timeout_seconds=stage.timeout_seconds,
    )


def _fail(
    plan: Plan,
    state: RunState,
    stage: str,
    finished: StageState,
    outcome: AttemptOutcome,
    now: float,
) -> tuple[RunState, list[Event]]:
    spec = plan.stage(stage)
    reason = finished.message or str(outcome)
    strategy = spec.on_failure
    if outcome is AttemptOutcome.INVALID_INPUT and strategy is not FailureStrategy.SKIP:
        strategy = FailureStrategy.FAIL  # other params or inputs will not fix a wrong job
    if strategy is FailureStrategy.SKIP:
        skipped = replace(finished, phase=StagePhase.SKIPPED, checkpoint=None)
        return _with(state, stage, skipped), [Event(now, stage, "Skipped", reason)]
    if strategy is FailureStrategy.FALLBACK and finished.fallback < len(spec.fallbacks):
        nxt = finished.fallback + 1
        retried = replace(
            finished, phase=StagePhase.PENDING, fallback=nxt, attempt=0, not_before=0.0
        )
        event = Event(
            now, stage, "Fallback", f"{reason}; trying fallback {nxt}: {_params(spec, nxt)}"
        )
        return _with(state, stage, retried), [event]
    if strategy is FailureStrategy.ROLLBACK:
        rolled = _roll_back(plan, state, stage, finished, reason, now)
        if rolled is not None:
            return rolled
        reason = f"{reason}; no fallback left to roll back to"
    failed = replace(finished, phase=StagePhase.FAILED, message=reason)
    good = state.current_checkpoint(plan)
    where = f" (last good checkpoint {good.id})" if good is not None else ""
    return _with(state, stage, failed), [Event(now, stage, "Failed", reason + where)]


def _roll_back(
    plan: Plan, state: RunState, stage: str, finished: StageState, reason: str, now: float
) -> tuple[RunState, list[Event]] | None:
    graph = plan.graph
    upstream = ancestors(graph, stage)
    candidates = [stage] + [n for n in reversed(plan.order) if n in upstream]
    for name in candidates:
        spec = plan.stage(name)
        current = finished if name == stage else state.stages[name]
        if current.fallback >= len(spec.fallbacks):
            continue
        if name != stage and current.phase not in _GOOD_PHASES:
            continue  # only a stage that produced a checkpoint can be redone differently
        target = _input_of(plan, state, name)
        nxt = current.fallback + 1
        stages = dict(state.stages)
        stages[name] = replace(
            current,
            phase=StagePhase.ROLLED_BACK,
            fallback=nxt,
            attempt=0,
            not_before=0.0,
            checkpoint=None,
            message=f"rolled back: {reason}",
        )
        for later in descendants(graph, [name]):
            if stages[later].phase is not StagePhase.PENDING:
                stages[later] = replace(
                    finished if later == stage else stages[later],
                    phase=StagePhase.ROLLED_BACK,
                    attempt=0,
                    not_before=0.0,
                    checkpoint=None,
                    message=f"rolled back: {reason}",
                )
        where = target.id if target is not None else "the input model"
        why = f"{stage}: {reason}"
        event = Event(
            now,
            name,
            "RolledBack",
            f"{why}; restored {where}, running {name} with fallback {nxt}: {_params(spec, nxt)}",
            target.id if target is not None else None,
            cause=why,
        )
        new_state = replace(
            state,
            stages=stages,
            phase=JobPhase.ROLLING_BACK,
            rollbacks=state.rollbacks + 1,
            last_rollback_reason=why,
        )
        return new_state, [event]
    return None


def _params(spec: StagePlan, fallback: int) -> str:
    return canonical_json(dict(spec.fallbacks[fallback - 1]))


def _with(
    state: RunState, stage: str, stage_state: StageState, phase: JobPhase | None = None
) -> RunState:
    stages = dict(state.stages)
    stages[stage] = stage_state
    return replace(state, stages=stages, phase=phase or state.phase)


def _merged(*metrics: Mapping[str, float]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for each in metrics:
        merged.update(each)
    return merged


def _gate(spec: GateSpec, quality: Quality) -> Gate:
    """The engine's gate; `quality` stands for the job's own gate (higher is better for cosine
    and accuracy, lower for max-abs-error), read from the metric the validator reports."""
    if spec.metric == QUALITY_METRIC:
        op: GateOperator = "<=" if quality.metric == "max-abs-error" else ">="
        return Gate(QUALITY_RESULT_METRIC[quality.metric], op, quality.threshold)
    assert spec.operator is not None and spec.bound is not None  # the API's rule
    return Gate(spec.metric, spec.operator, spec.bound)
