"""The SLO ledger: keys are valid ConfigMap data keys and never collide; folding aged outcomes
into buckets keeps every count, bounds the ledger by time rather than by jobs, and never makes
an SLI look better than it was."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bakeline.api.slopolicy import Objective
from bakeline.engine.slo import SliSeries
from bakeline.kube.batching import Throttle
from bakeline.kube.ledger import (
    MAX_LEDGER_KEY,
    TIERS,
    bucket_key,
    fold,
    fold_ledger,
    horizon,
    latency_bounds,
    ledger_key,
    outcome_entry,
    read_ledger,
    record_outcome,
    records,
    round_up,
)

Entry = dict[str, Any]

NAME = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True)
DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _job(name: str, uid: str = "0123456789abcdef") -> dict[str, object]:
    return {"metadata": {"name": name, "uid": uid}}


def test_short_names_stay_readable() -> None:
    assert ledger_key("standard", _job("digits")) == "standard.digits.01234567"


@given(lane=NAME, name=NAME, rerun=st.one_of(st.none(), st.floats(0, 2**34)))
def test_every_key_is_a_valid_configmap_data_key(lane: str, name: str, rerun: float | None) -> None:
    key = ledger_key(lane, _job(name), rerun)
    assert len(key) <= MAX_LEDGER_KEY and DATA_KEY.fullmatch(key)
    if rerun is not None:
        assert key != ledger_key(lane, _job(name))  # a rerun is an outcome of its own


def test_a_rerun_is_timed_from_its_request_and_counts_only_what_ran_again() -> None:
    status = {
        "phase": "Succeeded",
        "queuedAt": "2026-01-01T00:00:00Z",
        "admittedAt": "2026-01-01T00:00:10Z",
        "rerunAt": "2026-01-02T00:00:00Z",
        "stages": [
            {"name": "import", "startedAt": "2026-01-01T00:00:11Z", "durationSeconds": 5.0},
            {"name": "package", "startedAt": "2026-01-02T00:00:01Z", "durationSeconds": 3.0},
        ],
    }
    entry = outcome_entry("std", status, 1767312000.0 + 30)
    kinds = [(r["kind"], r.get("seconds")) for r in entry["records"]]
    assert ("job", 30.0) in kinds and ("stage", 3.0) in kinds
    assert ("stage", 5.0) not in kinds and "queue" not in [k for k, _ in kinds]


@given(lane=NAME, name=NAME, start=st.integers(0, 2**40), width=st.sampled_from([60, 300, 3600]))
def test_bucket_keys_are_valid_and_never_a_job_key(
    lane: str, name: str, start: int, width: int
) -> None:
    key = bucket_key(lane, start, width)
    assert len(key) <= MAX_LEDGER_KEY and DATA_KEY.fullmatch(key)
    assert key != ledger_key(lane, _job(name))


def test_long_names_are_told_apart() -> None:
    long = "n" * 253
    keys = {ledger_key("standard", _job(long)), ledger_key("standard", _job(long[:-1] + "m"))}
    keys.add(ledger_key("standard", _job(long, uid="fedcba9876543210")))
    assert len(keys) == 3


# ---------------------------------------------------------------------------- folding

DAY = 86400.0
NOW = 40 * DAY
JOB_SUCCESS = Objective(name="jobs", sli="JobSuccess", target=0.99, window="30d")


def _outcome(at: float, ok: bool = True, stage_seconds: tuple[float, ...] = (1.5,)) -> Entry:
    records: list[dict[str, object]] = [
        {"kind": "job", "ok": ok, "seconds": 10.0},
        {"kind": "queue", "ok": True, "seconds": 0.25},
        {"kind": "gate", "ok": ok},
    ]
    records += [{"kind": "stage", "ok": True, "seconds": s} for s in stage_seconds]
    return {"lane": "standard", "at": at, "records": records}


def _apply(entries: dict[str, Entry], patch: dict[str, str | None]) -> dict[str, Entry]:
    """The ledger after a JSON merge patch of its data."""
    out = dict(entries)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json.loads(value)
    return out


def _counts(
    entries: dict[str, Entry], objective: Objective, now: float, window: float
) -> tuple[int, int]:
    series = SliSeries.build(objective, records(entries, {"standard"}))
    return series.counts(now, window)


_ages = st.lists(
    st.tuples(st.floats(0, 35 * DAY), st.booleans(), st.floats(0.001, 5000)),
    max_size=60,
)


def _ledger(ages: list[tuple[float, bool, float]]) -> dict[str, Entry]:
    return {
        f"standard.job{i}.0000000{i % 10}": _outcome(NOW - age, ok, (s,))
        for i, (age, ok, s) in enumerate(ages)
    }


@settings(max_examples=200, deadline=None)
@given(ages=_ages, window=st.sampled_from([300, 1800, 3600, 6 * 3600, DAY, 3 * DAY, 30 * DAY]))
def test_folding_keeps_every_count_and_moves_events_by_at_most_half_a_bucket(
    ages: list[tuple[float, bool, float]], window: float
) -> None:
    raw = _ledger(ages)
    folded = _apply(raw, fold(raw, NOW))
    everything = 100 * DAY
    assert _counts(folded, JOB_SUCCESS, NOW, everything) == _counts(
        raw, JOB_SUCCESS, NOW, everything
    )
    half = max(width for _, width in TIERS) / 2
    low = _counts(raw, JOB_SUCCESS, NOW, max(0.0, window - half))[1]
    high = _counts(raw, JOB_SUCCESS, NOW, window + half)[1]
    assert low <= _counts(folded, JOB_SUCCESS, NOW, window)[1] <= high
    # Windows of up to 10 minutes see only unfolded entries: exact.
    if window <= TIERS[-1][0]:
        assert _counts(folded, JOB_SUCCESS, NOW, window) == _counts(raw, JOB_SUCCESS, NOW, window)


@settings(max_examples=200, deadline=None)
@given(ages=_ages, threshold=st.floats(0.01, 5000), known=st.booleans())
def test_a_folded_latency_is_exact_for_known_thresholds_and_never_better_for_others(
    ages: list[tuple[float, bool, float]], threshold: float, known: bool
) -> None:
    latency = Objective(
        name="stages", sli="StageLatency", target=0.99, window="30d", threshold_seconds=threshold
    )
    raw = _ledger(ages)
    bounds = latency_bounds([threshold] if known else [])
    folded = _apply(raw, fold(raw, NOW, bounds=bounds))
    good, total = _counts(folded, latency, NOW, 100 * DAY)
    raw_good, raw_total = _counts(raw, latency, NOW, 100 * DAY)
    assert total == raw_total
    if known:
        assert good == raw_good
    else:
        assert good <= raw_good


@settings(max_examples=100, deadline=None)
@given(ages=_ages, later=st.floats(0, 3 * DAY))
def test_folding_in_steps_ends_where_folding_once_does(
    ages: list[tuple[float, bool, float]], later: float
) -> None:
    raw = _ledger(ages)
    stepped = _apply(raw, fold(raw, NOW - later))
    stepped = _apply(stepped, fold(stepped, NOW))
    once = _apply(raw, fold(raw, NOW))
    assert stepped == once
    assert fold(once, NOW) == {}  # nothing left to do


def test_entries_past_the_horizon_go_and_the_rest_stay() -> None:
    raw = _ledger([(31 * DAY, True, 1.0), (29 * DAY, False, 1.0), (60.0, True, 1.0)])
    folded = _apply(raw, fold(raw, NOW, horizon=30 * DAY))
    assert _counts(folded, JOB_SUCCESS, NOW, 100 * DAY) == (1, 2)
    assert "standard.job2.00000002" in folded  # one minute old: still as written


def test_a_pressed_fold_folds_recent_minutes_too() -> None:
    raw = _ledger([(100.0, True, 1.0), (110.0, True, 1.0), (1.0, True, 1.0)])
    assert fold(raw, NOW) == {}
    folded = _apply(raw, fold(raw, NOW, pressed=True))
    assert len(folded) == 2  # the two of a minute that ended folded; the current minute not
    assert _counts(folded, JOB_SUCCESS, NOW, DAY) == (3, 3)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.0, 0.001), (0.001, 0.001), (1.2, 2.0), (7.25, 7.25), (7.3, 10.0), (3e7, 3e7)],
)
def test_durations_round_up_to_the_next_bound(seconds: float, expected: float) -> None:
    assert round_up(seconds, latency_bounds([7.25])) == expected


def test_thirty_days_of_busy_lanes_fit_in_one_configmap() -> None:
    """Two lanes, a nine-stage job a minute in each, for 30 days: 86,400 outcomes, about
    56 MB as one key per job, fold into less than half the 1 MiB the API server allows."""
    rng = random.Random(7)
    entries: dict[str, Entry] = {}
    for lane in ("standard", "batch"):
        for i in range(int(30 * DAY / 60)):
            at = NOW - 30 * DAY + i * 60 + rng.random()
            stages = tuple(rng.lognormvariate(2.0, 1.0) for _ in range(9))
            entry = _outcome(at, rng.random() > 0.02, stages)
            entry["lane"] = lane
            entries[f"{lane}.job{i}.00000000"] = entry
    patch = fold(entries, NOW, horizon=30 * DAY, bounds=latency_bounds([30.0, 600.0]))
    folded = _apply(entries, patch)
    size = sum(len(k) + len(v) for k, v in patch.items() if v is not None)
    size += sum(len(k) + len(json.dumps(entries[k])) for k in folded if k not in patch)
    assert size < 512 * 1024, size
    everything = _counts(folded, JOB_SUCCESS, NOW, 31 * DAY)
    assert everything[1] == len([e for e in entries.values() if e["lane"] == "standard"])


def test_values_that_are_not_outcomes_are_left_alone() -> None:
    class _Kube:
        def read_ledger(self, namespace: str) -> tuple[dict[str, str], str]:
            outcome = json.dumps(_outcome(NOW))
            return {
                "filler": "x" * 10,
                "odd": "[1, 2]",
                "nokind": '{"at": 1, "records": [{"kind": "?"}]}',
                "a.b.c": outcome,
            }, "7"

    entries, version = read_ledger(_Kube(), "ns")  # type: ignore[arg-type]
    assert list(entries) == ["a.b.c"] and version == "7"


class _LedgerKube:
    """The ledger's API calls over a dict: a ConfigMap's data and its resourceVersion."""

    def __init__(self, entries: dict[str, Entry], policies: list[dict[str, Any]]) -> None:
        self.data = {key: json.dumps(entry) for key, entry in entries.items()}
        self.version = 1
        self.policies = policies
        self.ledger_folds = Throttle()
        self.folds = 0

    def record_outcome(self, namespace: str, key: str, entry: dict[str, Any]) -> None:
        self.data[key] = json.dumps(entry)
        self.version += 1

    def list_objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        assert kind == "SLOPolicy"
        return self.policies

    def read_ledger(self, namespace: str) -> tuple[dict[str, str], str]:
        return dict(self.data), str(self.version)

    def patch_ledger(self, namespace: str, data: dict[str, str | None], version: str) -> None:
        assert version == str(self.version)
        for key, value in data.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.version += 1
        self.folds += 1


def _policy(window: str, long_window: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"objectives": [{"name": "o", "sli": "JobSuccess", "window": window}]}
    if long_window:
        spec["burnRateAlerts"] = [{"longWindow": long_window, "shortWindow": "1h"}]
    return {"spec": spec}


def test_the_horizon_is_the_longest_window_any_policy_reads_and_a_month_at_least() -> None:
    assert horizon(_LedgerKube({}, []), "ns") == 30 * DAY  # type: ignore[arg-type]
    policies = [_policy("7d"), _policy("90d"), _policy("1d", long_window="120d")]
    assert horizon(_LedgerKube({}, policies), "ns") == 120 * DAY  # type: ignore[arg-type]


def test_a_fold_keeps_what_the_longest_policy_reads_whichever_policy_folds() -> None:
    raw = _ledger([(40 * DAY, True, 1.0), (60 * DAY, True, 1.0), (DAY, False, 1.0)])
    kube = _LedgerKube(raw, [_policy("7d"), _policy("90d")])
    assert fold_ledger(kube, "ns", NOW + 40 * DAY)  # type: ignore[arg-type]
    entries, _ = read_ledger(kube, "ns")  # type: ignore[arg-type]
    # Folded 40 days later: 60 + 40 days old is past 90 days; 40 + 40 is not, though a 7-day
    # policy shares the namespace.
    assert _counts(entries, JOB_SUCCESS, NOW + 40 * DAY, 1000 * DAY) == (1, 2)


def test_writers_fold_a_ledger_no_policy_reads_once_a_minute() -> None:
    hour_old = _ledger([(3600.0, True, 1.0), (3700.0, False, 2.0), (3650.0, True, 3.0)])
    kube: Any = _LedgerKube(hour_old, [])  # as a Kube
    record_outcome(kube, "ns", "standard.new.00000000", _outcome(NOW), NOW)
    entries, _ = read_ledger(kube, "ns")
    # The hour-old outcomes went into buckets; the new one stays raw (windows <= 10 min exact).
    assert kube.folds == 1 and "standard.new.00000000" in entries
    assert not any(key.startswith("standard.job") for key in entries)
    assert _counts(entries, JOB_SUCCESS, NOW + 1, 30 * DAY) == (3, 4)  # (good, all)
    for late in (1.0, 59.0):  # within the minute: written, not folded again
        record_outcome(kube, "ns", f"standard.x{late:.0f}.00000000", _outcome(NOW), NOW + late)
    assert kube.folds == 1
    record_outcome(kube, "ns", "standard.y.00000000", _outcome(NOW), NOW + 60)
    assert kube.folds == 1  # nothing aged past ten minutes meanwhile: nothing to patch
    record_outcome(kube, "ns", "standard.z.00000000", _outcome(NOW), NOW + 700)
    assert kube.folds == 2 and len(read_ledger(kube, "ns")[0]) < 5
