"""`bakeline run`: the whole pipeline on one machine, driven by the same engine as the operator.

The loop asks the engine what to do (`next_actions`), does it with the local runner and the
local checkpoint store, and reports back. Everything needed to resume lives in the work
directory: run.json (the engine's state, attempts and events, rewritten atomically after every
step), the checkpoints and the cache. An interrupted run (Ctrl-C, kill, a crash) is resumed by
running the same command again; a finished one is run afresh, its stages served from the cache.

Work directory layout:
    run.json     state of the current run            report.json, report.html   the outcome
    checkpoints/ verified stage outputs               cache/    cache key -> checkpoint
    result/      a copy of the final checkpoint       logs/     one log per attempt
    history.json past stage durations (for estimates) work/     scratch of the running attempt
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from bakeline.api.bakingjob import Output
from bakeline.api.output import parse_target
from bakeline.checkpoints.manifest import ChecksumMismatchError, ManifestError, read_manifest
from bakeline.checkpoints.store import CheckpointNotFoundError, CheckpointRef, LocalStore
from bakeline.cli.manifests import InputError, JobFile
from bakeline.cli.progress import Progress, format_seconds
from bakeline.cli.report import build_report, summary_table, write_report
from bakeline.contract import EXIT_FAILED, EXIT_INTERRUPTED, job_view
from bakeline.delivery import DeliveryError, DeliveryRefused, deliver
from bakeline.engine.cache import canonical_json
from bakeline.engine.pipeline import (
    DEADLINE_EXCEEDED,
    DONE_PHASES,
    CacheContext,
    CheckpointInfo,
    Event,
    FinishJob,
    JobPhase,
    Plan,
    RunState,
    StagePhase,
    StageState,
    StartStage,
    WaitUntil,
    finish,
    next_actions,
    rerun_set,
    reset_from,
    stage_cached,
    stage_finished,
    stage_started,
)
from bakeline.engine.predict import DurationSample, estimate_remaining, fit_durations
from bakeline.engine.result import first_failed_stage, job_verdict, quality_evidence
from bakeline.engine.retry import AttemptOutcome, classify_exit
from bakeline.runtime.local import (
    LocalRunner,
    ModelSourceError,
    StageInvocation,
    host_fingerprint,
    job_document,
)

_RUN_FILE = "run.json"
_HISTORY_FILE = "history.json"
_HISTORY_LIMIT = 500
_RUN_SCHEMA = 1


@dataclass(frozen=True)
class RunOptions:
    workdir: Path
    from_stage: str | None = None
    use_cache: bool = True
    agent_command: tuple[str, ...] = ("bakeline-agent",)


def run_job(job_file: JobFile, options: RunOptions, stderr: TextIO, stdout: TextIO) -> int:
    """Bake the job; the exit code says how it ended (0 ok, 1 failed, 2 invalid input,
    3 quality gate failed for good, 130 interrupted)."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    with _exclusive(options.workdir), _sigterm_interrupts():
        run = _LocalRun(job_file, options, Progress(stderr, len(job_file.workflow.spec.stages)))
        for note in job_file.notes:
            stderr.write(f"note: {note}\n")
        try:
            code = run.execute()
        except KeyboardInterrupt:
            run.interrupted()
            stderr.write(
                f"\ninterrupted; run the same command again to resume from {run.resume_point()}\n"
            )
            return EXIT_INTERRUPTED
        except BaseException:
            run.interrupted()  # whatever broke, the next run resumes from the last checkpoint
            raise
        stdout.write(summary_table(run.report) + "\n")
        return code


@dataclass
class _Attempt:
    stage: str
    agent: str
    attempt: int
    fallback: int
    params: dict[str, Any]
    started_at: float
    finished_at: float | None = None
    seconds: float | None = None
    exit_code: int | None = None
    timed_out: bool = False
    outcome: str | None = None
    message: str = ""
    log: str = ""
    checkpoint: str | None = None
    cache_key: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False


class _LocalRun:
    def __init__(self, job_file: JobFile, options: RunOptions, progress: Progress) -> None:
        self.job_file = job_file
        self.options = options
        self.progress = progress
        self.workdir = options.workdir
        job = job_file.job
        self.name = job.metadata.name or "job"
        try:
            plan = Plan.from_workflow(job_file.workflow.spec, job.spec.quality)
        except ValueError as exc:
            raise InputError(f"workflow {job_file.workflow_name}: {exc}") from exc
        # One stage at a time here: two cores are better spent on one agent than split.
        self.plan = replace(plan, max_parallel=1)
        try:
            self.job_doc = job_document(
                self.name,
                job.spec.model.to_wire(),
                job.spec.target.to_wire(),
                job.spec.quality.to_wire(),
                job_file.path.resolve().parent,
            )
        except ModelSourceError as exc:
            raise InputError(str(exc)) from exc
        output = job.spec.output
        if output is not None and parse_target(output.uri).scheme == "pvc":
            raise InputError(
                f"output {output.uri}: a PersistentVolumeClaim is a cluster's; `bakeline run` "
                "delivers to a folder (file:///DIR or a path), s3:// or oci://"
            )
        if options.from_stage is not None and options.from_stage not in self.plan.order:
            raise InputError(
                f"--from {options.from_stage}: no such stage; the workflow's stages are "
                + ", ".join(self.plan.order)
            )
        self.store = LocalStore(self.workdir)
        self.runner = LocalRunner(options.agent_command)
        self.digest = hashlib.sha256(
            canonical_json(
                {"job": job.spec.to_wire(), "workflow": job_file.workflow.spec.to_wire()}
            ).encode()
        ).hexdigest()
        self.attempts: list[_Attempt] = []
        self.events: list[Event] = []
        self.outcomes: dict[str, str] = {}  # stage -> outcome of its latest attempt
        # stage -> when it was last set to run again (--from, a lost checkpoint): its attempts
        # and events from before then no longer describe it in the report (run.json keeps them)
        self.rerun_at: dict[str, float] = {}
        self.started_at = self._invoked_at = time.time()
        self.finished_at: float | None = None
        self.state = self._initial_state()
        self.durations = fit_durations(_load_history(self.workdir / _HISTORY_FILE))
        self.report: dict[str, Any] = {}

    # ---- the loop ---------------------------------------------------------------------------

    def execute(self) -> int:
        shutil.rmtree(self.workdir / "work", ignore_errors=True)
        self.progress.event(
            f"baking {self.name} with workflow {self.job_file.workflow_name} "
            f"({len(self.plan.order)} stages) in {self.workdir}"
        )
        cache = self._cache_context()
        while True:
            now = time.time()
            actions = next_actions(self.plan, self.state, now, cache)
            if not actions:  # only while stages run in parallel, which this loop never does
                raise RuntimeError("the engine has nothing to do but no stage is running")
            action = actions[0]
            if isinstance(action, FinishJob):
                self.state = finish(self.state, action)
                self.finished_at = time.time()
                self._persist()
                return self._conclude(action)
            if isinstance(action, WaitUntil):
                self.progress.waiting(action.reason, action.at - now)
                time.sleep(max(action.at - time.time(), 0.0))
                continue
            self._run_stage(action)

    def _run_stage(self, action: StartStage) -> None:
        spec = self.plan.stage(action.stage)
        if action.cache_key is not None:
            hit = self.store.lookup(action.cache_key)
            if hit is not None:
                self.state, events = stage_cached(self.state, action.stage, _info(hit), time.time())
                self._record_cached(action, hit)
                self._tell(events)
                self._persist()
                return
        now = time.time()
        self.state, events = stage_started(self.state, action.stage, now)
        number = self.state.stages[action.stage].attempts_total
        attempt = _Attempt(
            stage=action.stage,
            agent=spec.agent,
            attempt=action.attempt,
            fallback=action.fallback,
            params=dict(action.params),
            started_at=now,
            cache_key=action.cache_key,
            log=str(self.workdir / "logs" / f"{action.stage}-{number}.log"),
        )
        self.attempts.append(attempt)
        self._persist()
        self.progress.stage_started()
        self._tell(events, f"(fallback {action.fallback})" if action.fallback else "", action.stage)
        scratch = self.workdir / "work" / f"{action.stage}-{number}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        outcome, checkpoint, metrics, message = self._attempt(action, attempt, scratch)
        attempt.finished_at = time.time()
        attempt.seconds = attempt.finished_at - attempt.started_at
        attempt.outcome = str(outcome)
        attempt.message = message
        attempt.metrics = dict(metrics)
        attempt.checkpoint = checkpoint.id if checkpoint is not None else None
        self.outcomes[action.stage] = str(outcome)
        self.state, events = stage_finished(
            self.plan,
            self.state,
            action.stage,
            outcome,
            attempt.finished_at,
            checkpoint,
            metrics,
            message,
        )
        accepted = self.state.stages[action.stage].phase is StagePhase.SUCCEEDED
        if accepted and checkpoint is not None:
            if action.cache_key is not None:
                # Indexed only now: an output that failed its gate must never be a cache hit.
                self.store.remember(action.cache_key, checkpoint.id)
            self._remember_duration(spec.agent, action.input, attempt.seconds)
        elif outcome is AttemptOutcome.SUCCEEDED and not accepted:
            self.outcomes[action.stage] = str(AttemptOutcome.GATE_FAILED)
        shutil.rmtree(scratch, ignore_errors=True)
        self._tell(events, format_seconds(attempt.seconds), action.stage)
        self._persist()

    def _attempt(
        self, action: StartStage, attempt: _Attempt, scratch: Path
    ) -> tuple[AttemptOutcome, CheckpointInfo | None, dict[str, float], str]:
        input_dir = None
        if action.input is not None:
            input_dir = scratch / "input"
            try:
                self.store.restore(action.input.id, input_dir)
            except (ChecksumMismatchError, ManifestError, CheckpointNotFoundError) as exc:
                # Never hand an agent bytes that do not match their manifest.
                return AttemptOutcome.INVALID_INPUT, None, {}, f"input checkpoint unusable: {exc}"
        invocation = StageInvocation(
            agent=attempt.agent,
            stage=action.stage,
            params=action.params,
            job=job_view(self.job_doc, attempt.agent),
            input_dir=input_dir,
            output_dir=scratch / "output",
            termination_log=scratch / "termination-log",
            log_path=Path(attempt.log),
            timeout_seconds=action.timeout_seconds,
        )
        size = self._input_size(action.input)

        def tick(elapsed: float) -> None:
            self._show_running(action.stage, attempt.agent, elapsed, size)

        result = self.runner.run(invocation, on_tick=tick)
        attempt.exit_code = result.exit_code
        attempt.timed_out = result.timed_out
        outcome = classify_exit(result.exit_code, result.timed_out)
        metrics = dict(result.result.metrics) if result.result is not None else {}
        message = result.message
        checkpoint = None
        if outcome is AttemptOutcome.SUCCEEDED:
            try:
                ref = self.store.put(invocation.output_dir, stage=action.stage)
            except (ChecksumMismatchError, ManifestError, OSError) as exc:
                return AttemptOutcome.TRANSIENT, None, metrics, f"output rejected: {exc}"
            checkpoint = _info(ref)
        return outcome, checkpoint, metrics, message

    # ---- state --------------------------------------------------------------------------------

    def _initial_state(self) -> RunState:
        fresh = RunState.initial(self.plan, deadline=self._deadline())
        previous = self._load_previous()
        if self.options.from_stage is not None:
            base = self._repair(previous) if previous is not None else fresh
            self.started_at = time.time()
            return self._rerun(base, self.options.from_stage)
        if previous is not None and previous.phase not in (JobPhase.SUCCEEDED, JobPhase.FAILED):
            return self._repair(previous)
        # A finished run is run afresh; its stages come back from the cache.
        self.attempts, self.events, self.outcomes = [], [], {}
        self.started_at = time.time()
        return fresh

    def _load_previous(self) -> RunState | None:
        path = self.workdir / _RUN_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if data.get("schema") != _RUN_SCHEMA or data.get("digest") != self.digest:
            return None  # another job or an edited spec: start over (the cache still helps)
        try:
            state = _state_from_json(data["state"], self.plan)
            self.attempts = [_Attempt(**a) for a in data.get("attempts", [])]
            self.events = [Event(**e) for e in data.get("events", [])]
        except (KeyError, TypeError, ValueError):
            return None
        self.outcomes = dict(data.get("outcomes", {}))
        self.rerun_at = {str(k): float(v) for k, v in data.get("rerunAt", {}).items()}
        self.started_at = float(data.get("startedAt", self.started_at))
        return replace(state, deadline=self._deadline())

    def _repair(self, state: RunState) -> RunState:
        """Make a loaded state true to the work directory: an attempt that was running when
        the run stopped did not happen, and a stage whose checkpoint is gone runs again."""
        for name in self.plan.order:
            stage = state.stages[name]
            if stage.phase is StagePhase.RUNNING:
                reverted = replace(
                    stage,
                    phase=StagePhase.PENDING,
                    attempt=max(stage.attempt - 1, 0),
                    attempts_total=max(stage.attempts_total - 1, 0),
                    started_at=None,
                    message="interrupted",
                )
                state = replace(state, stages={**state.stages, name: reverted})
                self.attempts = [
                    a for a in self.attempts if not (a.stage == name and a.outcome is None)
                ]
        for name in self.plan.order:
            checkpoint = state.stages[name].checkpoint
            if checkpoint is None or state.stages[name].phase not in DONE_PHASES:
                continue
            try:
                self.store.verify(checkpoint.id)
            except (CheckpointNotFoundError, ChecksumMismatchError, ManifestError, ValueError):
                state = self._rerun(state, name)
                break
        return replace(state, phase=JobPhase.RUNNING)

    def _persist(self) -> None:
        data = {
            "schema": _RUN_SCHEMA,
            "job": self.name,
            "digest": self.digest,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "state": _state_to_json(self.state),
            "attempts": [asdict(a) for a in self.attempts],
            "events": [asdict(e) for e in self.events],
            "outcomes": self.outcomes,
            "rerunAt": self.rerun_at,
        }
        _write_json(self.workdir / _RUN_FILE, data)

    def _rerun(self, state: RunState, stage: str) -> RunState:
        """`stage` and what follows it run again."""
        now = time.time()
        for name in rerun_set(self.plan, stage):
            self.rerun_at[name] = now
        return reset_from(self.plan, state, stage)

    def interrupted(self) -> None:
        self.state = self._repair(self.state)
        self._persist()
        shutil.rmtree(self.workdir / "work", ignore_errors=True)
        self.progress.close()

    def resume_point(self) -> str:
        checkpoint = self.state.current_checkpoint(self.plan)
        return f"checkpoint {checkpoint.id}" if checkpoint is not None else "the start"

    # ---- the end ------------------------------------------------------------------------------

    def _conclude(self, action: FinishJob) -> int:
        self.progress.close()
        result_dir = self.workdir / "result"
        shutil.rmtree(result_dir, ignore_errors=True)
        final = None
        if action.checkpoint is not None:
            final = self.store.restore(action.checkpoint.id, result_dir)
        self.report = build_report(
            job=self.job_file.job,
            workflow=self.job_file.workflow_name,
            plan=self.plan,
            state=self.state,
            attempts=[
                asdict(a) for a in self.attempts if a.started_at >= self.rerun_at.get(a.stage, 0)
            ],
            events=[asdict(e) for e in self.events if e.at >= self.rerun_at.get(e.stage, 0)],
            started_at=self.started_at,
            finished_at=self.finished_at or time.time(),
            reason=action.reason,
            result_dir=result_dir if final is not None else None,
            final_manifest=final,
            stage_checkpoints={
                name: self._checkpoint_facts(state.checkpoint)
                for name, state in self.state.stages.items()
                if state.checkpoint is not None
            },
        )
        shutil.rmtree(self.workdir / "work", ignore_errors=True)
        undelivered = None
        output = self.job_file.job.spec.output
        if output is not None and final is not None and action.phase is JobPhase.SUCCEEDED:
            self.report["output"], undelivered = self._deliver(result_dir, output)
        paths = write_report(self.report, self.workdir)
        self.progress.event(f"report: {paths[0]}  chart: {paths[1]}")
        failed = first_failed_stage(self.plan, self.state)
        last = self.outcomes.get(failed) if failed else None
        verdict = job_verdict(
            action.phase,
            AttemptOutcome(last) if last else None,
            deadline_exceeded=action.reason == DEADLINE_EXCEEDED,
            evidence=quality_evidence(self.plan, self.state, self.job_file.job.spec.quality),
        )
        if undelivered is not None:
            self.progress.event(f"{self.name} baked but NOT DELIVERED: {undelivered}")
            return EXIT_FAILED
        if verdict.succeeded:
            unverified = "" if verdict.verified else f" ({verdict.note})"
            self.progress.event(f"{self.name} succeeded: {action.reason}{unverified}")
        else:
            self.progress.event(f"{self.name} FAILED: {action.reason}")
        return verdict.exit_code

    def _deliver(self, package: Path, output: Output) -> tuple[dict[str, Any], str | None]:
        """Send the package where spec.output says: transient errors tried again with backoff
        (1, 2, 4 s), a refusal (credentials, no such bucket) said at once. Returns the report's
        `output` entry and, when it was not delivered, why."""
        target = parse_target(output.uri, self.job_file.path.resolve().parent)
        entry: dict[str, Any] = {"uri": target.uri}
        for delay in (1.0, 2.0, 4.0, None):
            try:
                delivered = deliver(
                    package,
                    target,
                    endpoint=output.endpoint,
                    region=output.region,
                    insecure=output.insecure,
                )
            except DeliveryRefused as exc:
                return {**entry, "error": str(exc)}, str(exc)
            except DeliveryError as exc:
                if delay is None:
                    return {**entry, "error": str(exc)}, str(exc)
                self.progress.event(
                    f"delivery to {target.uri} failed ({exc}); again in {delay:.0f}s"
                )
                time.sleep(delay)
                continue
            self.progress.event(
                f"delivered to {delivered.uri} ({delivered.digest}): {len(delivered.written)} "
                f"files written, {len(delivered.present)} already there"
            )
            return {
                "uri": delivered.uri,
                "digest": delivered.digest,
                "deliveredAt": _utc(time.time()),
                "written": list(delivered.written),
                "present": list(delivered.present),
            }, None
        raise AssertionError("unreachable")

    def _checkpoint_facts(self, checkpoint: CheckpointInfo) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "id": checkpoint.id,
            "path": str(self.store.path(checkpoint.id)),
            "sizeBytes": checkpoint.size_bytes,
            "sha256": checkpoint.artifact_sha256,
        }
        with contextlib.suppress(ManifestError, OSError):
            manifest = read_manifest(self.store.path(checkpoint.id))
            facts["format"] = manifest.format
            facts["metrics"] = manifest.metrics
            facts["attributes"] = manifest.attributes
        return facts

    # ---- helpers ------------------------------------------------------------------------------

    def _cache_context(self) -> CacheContext | None:
        if not self.options.use_cache:
            return None
        bypass: frozenset[str] = frozenset()
        if self.options.from_stage is not None:
            bypass = rerun_set(self.plan, self.options.from_stage)
        return CacheContext(
            model_sha256=self.job_doc["model"].get("sha256"),
            agent_version=self.runner.agent_version(),
            job=self.job_doc,
            bypass=bypass,
            host=host_fingerprint(),
        )

    def _deadline(self) -> float | None:
        """deadlineSeconds counts from this command's start: a run resumed tomorrow gets its
        full time again (the operator counts from the job's creation)."""
        seconds = self.job_file.job.spec.deadline_seconds
        return self._invoked_at + seconds if seconds is not None else None

    def _record_cached(self, action: StartStage, hit: CheckpointRef) -> None:
        metrics: dict[str, float] = {}
        with contextlib.suppress(ManifestError, OSError):
            metrics = dict(read_manifest(self.store.path(hit.id)).metrics)
        now = time.time()
        self.attempts.append(
            _Attempt(
                stage=action.stage,
                agent=action.agent,
                attempt=0,
                fallback=action.fallback,
                params=dict(action.params),
                started_at=now,
                finished_at=now,
                seconds=0.0,
                outcome="Cached",
                message=f"cache hit {hit.id}",
                checkpoint=hit.id,
                cache_key=action.cache_key,
                metrics=metrics,
                cached=True,
            )
        )
        stage = self.state.stages[action.stage]
        self.state = replace(
            self.state, stages={**self.state.stages, action.stage: replace(stage, metrics=metrics)}
        )

    def _tell(self, events: list[Event], detail: str = "", stage: str | None = None) -> None:
        """Record events and print them; `detail` (a duration, a fallback) belongs to `stage`."""
        done = sum(1 for s in self.state.stages.values() if s.phase in DONE_PHASES)
        for event in events:
            self.events.append(event)
            mark = {"Succeeded": "ok", "Cached": "cached", "Started": "..."}.get(event.kind, "!!")
            extra = f" {detail}" if detail and event.stage == stage else ""
            agent = self.plan.stage(event.stage).agent
            self.progress.event(
                f"[{done}/{len(self.plan.order)}] {mark:>6} {event.stage} ({agent}) "
                f"{event.kind}{extra}: {event.message}"
            )

    def _show_running(self, stage: str, agent: str, elapsed: float, size: int) -> None:
        stage_total = self.durations.predict(agent, size)
        pending = [
            s.agent
            for s in self.plan.stages
            if s.name != stage and self.state.stages[s.name].phase not in DONE_PHASES
        ]
        job_left = estimate_remaining(self.durations, pending, size, running=(agent, elapsed))
        done = sum(1 for s in self.state.stages.values() if s.phase in DONE_PHASES)
        self.progress.running(
            done, stage, agent, elapsed, max(stage_total - elapsed, 0.0), job_left
        )

    def _input_size(self, source: CheckpointInfo | None) -> int:
        if source is not None:
            return source.size_bytes
        path = self.job_doc["model"].get("localPath")
        return Path(path).stat().st_size if path and Path(path).is_file() else 0

    def _remember_duration(
        self, agent: str, source: CheckpointInfo | None, seconds: float | None
    ) -> None:
        if seconds is None:
            return
        path = self.workdir / _HISTORY_FILE
        history = [asdict(s) for s in _load_history(path)]
        history.append(asdict(DurationSample(agent, self._input_size(source), seconds)))
        _write_json(path, history[-_HISTORY_LIMIT:])
        self.durations = fit_durations(_load_history(path))


def _info(ref: CheckpointRef) -> CheckpointInfo:
    return CheckpointInfo(ref.id, ref.artifact_sha256, ref.size_bytes)


def _state_to_json(state: RunState) -> dict[str, Any]:
    return {
        "phase": str(state.phase),
        "rollbacks": state.rollbacks,
        "lastRollbackReason": state.last_rollback_reason,
        "message": state.message,
        "stages": {
            name: {
                **{k: v for k, v in asdict(stage).items() if k not in ("phase", "metrics")},
                "phase": str(stage.phase),
                "metrics": dict(stage.metrics),
            }
            for name, stage in state.stages.items()
        },
    }


def _state_from_json(data: Mapping[str, Any], plan: Plan) -> RunState:
    stages: dict[str, StageState] = {}
    for name in plan.order:
        raw = dict(data["stages"][name])
        checkpoint = raw.pop("checkpoint", None)
        stages[name] = StageState(
            **{
                **raw,
                "phase": StagePhase(raw["phase"]),
                "checkpoint": CheckpointInfo(**checkpoint) if checkpoint else None,
            }
        )
    return RunState(
        stages=stages,
        phase=JobPhase(data["phase"]),
        rollbacks=int(data.get("rollbacks", 0)),
        last_rollback_reason=str(data.get("lastRollbackReason", "")),
        message=str(data.get("message", "")),
    )


def _load_history(path: Path) -> list[DurationSample]:
    try:
        rows = json.loads(path.read_text())
        return [DurationSample(**row) for row in rows]
    except (OSError, json.JSONDecodeError, TypeError):
        return []


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


@contextlib.contextmanager
def _exclusive(workdir: Path) -> Iterator[None]:
    """One run per work directory: two would interleave their state."""
    with (workdir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise InputError(f"another `bakeline run` is using {workdir}") from exc
        yield


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """`kill` stops a run as Ctrl-C does: the agent is stopped and the state saved."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
