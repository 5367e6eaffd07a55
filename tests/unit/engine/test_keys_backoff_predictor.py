"""Cache keys, exit codes and backoff, and the stage-duration predictor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bakeline.engine.cache import cache_key, canonical_json
from bakeline.engine.predict import (
    DurationSample,
    critical_path_seconds,
    estimate_remaining,
    fit_durations,
)
from bakeline.engine.retry import AttemptOutcome, backoff_seconds, classify_exit

SHA = "a" * 64


def test_cache_keys_change_with_every_input_and_ignore_key_order() -> None:
    base = cache_key(SHA, "ModelOptimizer", "1.0", {"scheme": "int8", "k": [1, 2]})
    assert base == cache_key(SHA, "ModelOptimizer", "1.0", {"k": [1, 2], "scheme": "int8"})
    assert len(base) == 64
    others = {
        cache_key("b" * 64, "ModelOptimizer", "1.0", {"scheme": "int8", "k": [1, 2]}),
        cache_key(SHA, "MemoryOptimizer", "1.0", {"scheme": "int8", "k": [1, 2]}),
        cache_key(SHA, "ModelOptimizer", "1.1", {"scheme": "int8", "k": [1, 2]}),
        cache_key(SHA, "ModelOptimizer", "1.0", {"scheme": "int8", "k": [2, 1]}),
        cache_key(SHA, "ModelOptimizer", "1.0", {"scheme": "int8", "k": [1, 2]}, {"t": 1}),
    }
    assert base not in others and len(others) == 5


def test_canonical_json_is_compact_and_sorted() -> None:
    assert canonical_json({"b": 1, "a": {"d": 2, "c": "é"}}) == '{"a":{"c":"é","d":2},"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


@pytest.mark.parametrize(
    ("code", "timed_out", "outcome"),
    [
        (0, False, AttemptOutcome.SUCCEEDED),
        (2, False, AttemptOutcome.INVALID_INPUT),
        (3, False, AttemptOutcome.GATE_FAILED),
        (1, False, AttemptOutcome.TRANSIENT),
        (137, False, AttemptOutcome.TRANSIENT),
        (None, False, AttemptOutcome.TRANSIENT),
        (0, True, AttemptOutcome.TRANSIENT),
    ],
)
def test_exit_codes_follow_the_agent_contract(
    code: int | None, timed_out: bool, outcome: AttemptOutcome
) -> None:
    assert classify_exit(code, timed_out) is outcome


@given(
    attempt=st.integers(1, 10_000),
    duration=st.floats(0.1, 100),
    factor=st.floats(1, 10),
    maximum=st.floats(1, 1000),
)
def test_backoff_grows_by_the_factor_and_never_passes_the_maximum(
    attempt: int, duration: float, factor: float, maximum: float
) -> None:
    delay = backoff_seconds(attempt, duration, factor, maximum)
    assert 0 < delay <= max(maximum, 0)
    expected = min(duration * factor ** min(attempt - 1, 50), maximum) if attempt < 50 else None
    if expected is not None:
        assert delay == pytest.approx(expected)
    assert backoff_seconds(attempt + 1, duration, factor, maximum) >= delay


def test_the_predictor_uses_its_prior_without_history_and_learns_a_line() -> None:
    empty = fit_durations([])
    assert 0 < empty.predict("ModelOptimizer", 10_000_000) < 60
    rng = np.random.default_rng(0)
    mb = 1024 * 1024
    samples = [
        DurationSample("ModelOptimizer", size * mb, 2.0 + 0.5 * size + float(rng.normal(0, 0.05)))
        for size in (1, 5, 10, 20, 40, 80) * 3
    ]
    model = fit_durations(samples)
    assert model.predict("ModelOptimizer", 60 * mb) == pytest.approx(32.0, rel=0.05)
    # One odd observation cannot produce a wild line: the prior holds it.
    single = fit_durations([DurationSample("GraphOptimizer", 90 * mb, 1.0)])
    assert 0.1 <= single.predict("GraphOptimizer", 10 * mb) < 30
    remaining = estimate_remaining(
        model, ["ModelOptimizer"], 60 * mb, running=("ModelOptimizer", 40.0)
    )
    assert remaining == pytest.approx(32.0 + 0.1, rel=0.05)


def test_the_critical_path_is_the_longest_chain() -> None:
    graph = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert critical_path_seconds(graph, {"a": 1, "b": 5, "c": 2, "d": 1}) == 7
    assert critical_path_seconds({}, {}) == 0
