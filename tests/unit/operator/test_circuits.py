"""The circuit breaker's durable state: counted once per pod, opened, closed, shown on the lane."""

from __future__ import annotations

from typing import Any, cast

from bakeline.api.lane import CircuitBreaker
from bakeline.engine.retry import AttemptOutcome
from bakeline.handlers.lanes import lane_events
from bakeline.kube.circuits import StageOutcome, count_outcomes, open_circuits, trial_started
from bakeline.kube.client import Kube

POLICY = CircuitBreaker(consecutive_failures=2, cooldown_seconds=60)


class FakeCircuitStore:
    """The two Kube methods the circuit breaker uses, over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def circuits(self, namespace: str) -> dict[str, dict[str, Any]]:
        return dict(self.data)

    def save_circuits(self, namespace: str, changes: dict[str, dict[str, Any] | None]) -> None:
        if changes:
            self.writes += 1
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def _count(store: FakeCircuitStore, pod: str, outcome: AttemptOutcome, now: float) -> Any:
    seen = [StageOutcome("GraphOptimizer", outcome, pod, "boom")]
    return count_outcomes(cast(Kube, store), "ns", "fast", POLICY, seen, now)


def test_failures_open_the_circuit_once_each_and_a_success_closes_it() -> None:
    store = FakeCircuitStore()
    _count(store, "j-graph-1", AttemptOutcome.TRANSIENT, 100.0)
    _count(store, "j-graph-1", AttemptOutcome.TRANSIENT, 101.0)  # the same pod, seen again
    assert store.data["fast.GraphOptimizer"]["consecutiveFailures"] == 1
    circuits = _count(store, "k-graph-1", AttemptOutcome.INVALID_INPUT, 102.0)
    assert circuits["GraphOptimizer"].opened_at == 102.0
    [shown] = open_circuits(store.data, "fast", POLICY, 103.0)
    assert shown["agent"] == "GraphOptimizer" and shown["retryAfter"].endswith("Z")
    assert open_circuits(store.data, "other-lane", POLICY, 103.0) == []
    _count(store, "k-graph-2", AttemptOutcome.SUCCEEDED, 170.0)
    assert store.data == {}


def test_a_lane_name_too_long_for_a_data_key_keeps_its_circuits() -> None:
    store = FakeCircuitStore()
    lane = "l" * 253  # a Lane's name may be 253 characters; a data key may not be longer
    seen = [
        StageOutcome("GraphOptimizer", AttemptOutcome.TRANSIENT, f"p{i}", "boom") for i in (1, 2)
    ]
    circuits = count_outcomes(cast(Kube, store), "ns", lane, POLICY, seen, 100.0)
    assert circuits["GraphOptimizer"].opened_at == 100.0
    [key] = store.data
    assert len(key) <= 253 and key.endswith(".GraphOptimizer")
    assert [c["agent"] for c in open_circuits(store.data, lane, POLICY, 101.0)] == [
        "GraphOptimizer"
    ]
    assert open_circuits(store.data, lane[:-1], POLICY, 101.0) == []


def test_gate_failures_and_clean_successes_write_nothing() -> None:
    store = FakeCircuitStore()
    _count(store, "j-graph-1", AttemptOutcome.GATE_FAILED, 100.0)
    _count(store, "j-graph-2", AttemptOutcome.SUCCEEDED, 100.0)
    assert store.writes == 0


def test_a_trial_rearms_the_cooldown() -> None:
    store = FakeCircuitStore()
    for pod in ("a", "b"):
        _count(store, pod, AttemptOutcome.TRANSIENT, 100.0)
    trial_started(cast(Kube, store), "ns", "fast", "GraphOptimizer", 200.0)
    assert store.data["fast.GraphOptimizer"]["openedAt"] == "1970-01-01T00:03:20Z"


def _status(reason: str, circuits: list[str]) -> dict[str, Any]:
    return {
        "conditions": [{"type": "Ready", "reason": reason, "message": reason}],
        "openCircuits": [
            {"agent": a, "consecutiveFailures": 2, "retryAfter": "t", "lastFailure": "x"}
            for a in circuits
        ],
    }


def test_lane_events_name_each_admission_change() -> None:
    assert lane_events(_status("Admitting", []), _status("Admitting", [])) == []
    held = lane_events(_status("Admitting", []), _status("HoldAndDrain", []))
    assert [(t, r) for t, r, _ in held] == [("Warning", "HoldAndDrain")]
    opened = lane_events(_status("Admitting", []), _status("Admitting", ["GraphOptimizer"]))
    assert [r for _, r, _ in opened] == ["CircuitOpened"]
    closed = lane_events(_status("Admitting", ["GraphOptimizer"]), _status("Admitting", []))
    assert [r for _, r, _ in closed] == ["CircuitClosed"]
