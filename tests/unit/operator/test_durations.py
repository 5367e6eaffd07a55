"""Finished jobs' stage durations kept per namespace, bounded, and what the predictor learns."""

from __future__ import annotations

from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from bakeline.engine import pipeline as engine
from bakeline.engine.predict import fit_durations
from bakeline.engine.retry import AttemptOutcome
from bakeline.kube import durations
from bakeline.kube.client import Kube

PLAN = engine.Plan.build(
    [
        engine.StagePlan("import", "BakingCoordinator"),
        engine.StagePlan("graph", "GraphOptimizer", depends_on=("import",)),
    ]
)
SOURCE = {"builtin": "digits-cnn"}


class FakeDurationStore:
    """The two Kube methods the history uses, over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def durations(self, namespace: str) -> dict[str, str]:
        return dict(self.data)

    def save_durations(self, namespace: str, changes: dict[str, str | None]) -> None:
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def _job(name: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"{name}-uid-0000"}
    return {"metadata": meta, "spec": {"model": {"source": SOURCE}, "workflowRef": "wf"}}


def _finished(seconds: float) -> engine.RunState:
    state = engine.RunState.initial(PLAN)
    for stage in PLAN.order:
        state, _ = engine.stage_started(state, stage, 0.0)
        info = engine.CheckpointInfo(f"{stage}-1", "ab" * 32, 2_000_000)
        state, _ = engine.stage_finished(
            PLAN, state, stage, AttemptOutcome.SUCCEEDED, seconds, info
        )
    return state


def test_a_finished_job_is_kept_and_the_predictor_learns_from_it() -> None:
    store = FakeDurationStore()
    kube = cast(Kube, store)
    before = durations.namespace_predictor(kube, "ns").predict("GraphOptimizer", 2_000_000)
    durations.remember_durations(kube, _job("first"), PLAN, _finished(1.0), 100.0)
    [job] = durations.duration_history(kube, "ns")
    assert job.workflow == "wf" and job.model_bytes == 2_000_000 and len(job.samples) == 2
    assert job.model == durations.model_identity(SOURCE)
    after = durations.namespace_predictor(kube, "ns").predict("GraphOptimizer", 2_000_000)
    assert after < before  # 1 s observed against the prior's 6 s


def test_the_history_is_bounded_to_the_newest_jobs(monkeypatch: Any) -> None:
    monkeypatch.setattr(durations, "KEEP_JOBS", 3)
    store = FakeDurationStore()
    for i in range(5):
        durations.remember_durations(cast(Kube, store), _job(f"j{i}"), PLAN, _finished(1.0), i)
    kept = sorted(job.at for job in durations.duration_history(cast(Kube, store), "ns"))
    assert kept == [2.0, 3.0, 4.0] and len(store.data) == 3


def test_a_history_it_may_not_read_leaves_the_prior_to_answer() -> None:
    class Forbidden(FakeDurationStore):
        def durations(self, namespace: str) -> dict[str, str]:
            raise ApiException(status=403, reason="Forbidden")

    model = durations.namespace_predictor(cast(Kube, Forbidden()), "elsewhere")
    assert model.predict("GraphOptimizer", 0) == fit_durations([]).predict("GraphOptimizer", 0)


def test_an_entry_that_does_not_parse_is_skipped() -> None:
    store = FakeDurationStore()
    store.data["broken"] = "{not json"
    assert durations.duration_history(cast(Kube, store), "ns") == []
