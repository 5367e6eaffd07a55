"""The models' wire format, defaults and the behaviour other layers rely on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from bakeline.api import (
    AGENTS,
    API_VERSION,
    BakingJob,
    BakingJobSpec,
    BakingJobStatus,
    Condition,
    Lane,
    LaneSpec,
    ModelSource,
    SLOPolicySpec,
    StageStatus,
    Target,
    window_seconds,
)


def test_wire_format_is_camel_case_and_python_is_snake_case() -> None:
    lane = LaneSpec.model_validate({"maxConcurrentJobs": 3, "maxQueuedJobs": 9})
    assert lane.max_concurrent_jobs == 3
    assert LaneSpec(max_concurrent_jobs=3, max_queued_jobs=9) == lane
    wire = lane.to_wire()
    assert wire["maxConcurrentJobs"] == 3 and "max_concurrent_jobs" not in wire
    assert Target(size_budget_mb=30).to_wire()["sizeBudgetMB"] == 30


def test_spec_typos_are_rejected_and_status_extras_are_tolerated() -> None:
    with pytest.raises(ValidationError, match="maxConcurentJobs"):
        LaneSpec.model_validate({"maxConcurentJobs": 2})
    # A newer operator may write status fields this version does not know.
    status = BakingJobStatus.model_validate({"phase": "Running", "newField": 1})
    assert status.phase == "Running"


def test_defaults() -> None:
    spec = BakingJobSpec.model_validate({"model": {"source": {"builtin": "minilm-l6"}}})
    assert spec.lane_ref == "standard"
    assert spec.workflow_ref is None  # the built-in default workflow
    assert spec.target.device == "cpu" and spec.target.batch_sizes == [1, 32]
    assert (spec.quality.metric, spec.quality.threshold) == ("cosine", None)  # per metric
    assert spec.suspend is False
    lane = LaneSpec()
    assert lane.storage.type == "ConfigMap" and lane.circuit_breaker.consecutive_failures == 3
    assert lane.queueing == "Priority" and lane.stop_policy == "None"


def test_default_burn_rate_alerts_are_the_sre_workbook_pairs() -> None:
    spec = SLOPolicySpec.model_validate(
        {
            "laneSelector": {"names": ["standard"]},
            "objectives": [{"name": "ok", "sli": "JobSuccess", "target": 0.999}],
        }
    )
    pairs = [(a.long_window, a.short_window, a.factor) for a in spec.burn_rate_alerts]
    assert pairs == [("1h", "5m", 14.4), ("6h", "30m", 6.0), ("3d", "6h", 1.0)]
    assert spec.objectives[0].window == "30d"
    assert spec.budget_policy.on_exhausted == "Freeze"


def test_manifest_starts_with_api_version_and_kind() -> None:
    job = BakingJob.model_validate(
        {"metadata": {"name": "j"}, "spec": {"model": {"source": {"builtin": "digits-cnn"}}}}
    )
    manifest = job.to_manifest()
    assert list(manifest)[:3] == ["apiVersion", "kind", "metadata"]
    assert manifest["apiVersion"] == API_VERSION and manifest["kind"] == "BakingJob"
    assert "status" not in manifest
    assert job.to_manifest(exclude_unset=True)["kind"] == "BakingJob"


def test_metadata_keeps_what_it_does_not_model() -> None:
    lane = Lane.model_validate(
        {"metadata": {"name": "x", "finalizers": ["a"], "resourceVersion": "7"}, "spec": {}}
    )
    assert lane.metadata.resource_version == "7"
    assert lane.to_manifest()["metadata"] == {
        "name": "x",
        "resourceVersion": "7",
        "finalizers": ["a"],
    }


def test_status_round_trip_with_conditions_and_stages() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = BakingJobStatus(
        phase="Running",
        progress="4/9",
        stages=[
            StageStatus(name="quantize", phase="RolledBack", attempt=2, metrics={"cosine": 0.97})
        ],
        conditions=[
            Condition(
                type="Progressing", status="True", reason="StageRunning", last_transition_time=when
            )
        ],
    )
    wire = status.to_wire()
    assert wire["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert wire["stages"][0] == {
        "name": "quantize",
        "phase": "RolledBack",
        "attempt": 2,
        "attemptsWithParams": 0,
        "fallback": 0,
        "metrics": {"cosine": 0.97},
    }
    assert BakingJobStatus.model_validate(wire) == status


def test_conditions_are_keyed_by_type() -> None:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    ready = Condition(type="Ready", status="True", reason="Valid", last_transition_time=when)
    with pytest.raises(ValidationError, match="conditions repeats"):
        BakingJobStatus(conditions=[ready, ready])
    with pytest.raises(ValidationError):
        Condition(type="Ready", status="Yes", reason="Valid", last_transition_time=when)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):  # metav1.Condition wants a timezone
        Condition(
            type="Ready", status="True", reason="Valid", last_transition_time=datetime(2025, 1, 1)
        )


def test_model_source_is_exactly_one() -> None:
    assert ModelSource(builtin="minilm-l6").builtin == "minilm-l6"
    with pytest.raises(ValidationError, match="exactly one"):
        ModelSource()


@pytest.mark.parametrize(
    ("window", "seconds"), [("30d", 2592000), ("6h", 21600), ("5m", 300), ("45s", 45)]
)
def test_window_seconds(window: str, seconds: int) -> None:
    assert window_seconds(window) == seconds


@pytest.mark.parametrize("window", ["", "d", "5", "1w", "1.5h", "-1h"])
def test_window_seconds_rejects(window: str) -> None:
    with pytest.raises(ValueError, match="not a window"):
        window_seconds(window)


def test_agents() -> None:
    assert AGENTS == (
        "BakingCoordinator",
        "GraphOptimizer",
        "ModelOptimizer",
        "MemoryOptimizer",
        "HardwareAdapter",
        "InferenceAccelerator",
        "QualityValidator",
        "PerformanceProfiler",
        "DeploymentPreparer",
    )
