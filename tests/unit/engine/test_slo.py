"""SLO math: burn rates against a brute-force reference, budgets and the budget policy."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bakeline.api.common import window_seconds
from bakeline.api.slopolicy import BudgetAction, BudgetPolicy, BurnRateAlert, Objective, Unfreeze
from bakeline.engine.slo import (
    BudgetDecision,
    OutcomeRecord,
    RecordKind,
    budget_remaining,
    burn_rate,
    decide_budget_policy,
    evaluate_objective,
    judge,
)

HOUR = 3600.0
JOB_SUCCESS = Objective(name="jobs", sli="JobSuccess", target=0.99, window="30d")


def _jobs(*outcomes: tuple[float, bool]) -> list[OutcomeRecord]:
    return [OutcomeRecord(at, RecordKind.JOB, ok) for at, ok in outcomes]


def _reference_burn_rate(
    objective: Objective, records: list[OutcomeRecord], now: float, window: float
) -> float:
    good = bad = 0
    for record in records:
        if now - window < record.at <= now:
            verdict = judge(objective, record)
            if verdict is True:
                good += record.count
            elif verdict is False:
                bad += record.count
    if good + bad == 0:
        return 0.0
    return (bad / (good + bad)) / (1 - objective.target)


_records = st.lists(
    st.builds(
        OutcomeRecord,
        at=st.floats(0, 4 * 86400, allow_nan=False),
        kind=st.sampled_from(list(RecordKind)),
        ok=st.booleans(),
        seconds=st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
        count=st.integers(0, 50),  # the ledger folds old records into counts
    ),
    max_size=80,
)
_objectives = st.one_of(
    st.builds(
        Objective,
        name=st.just("o"),
        sli=st.sampled_from(["JobSuccess", "QualityGatePass"]),
        target=st.sampled_from([0.9, 0.99, 0.999]),
    ),
    st.builds(
        Objective,
        name=st.just("o"),
        sli=st.sampled_from(["StageLatency", "QueueWait", "JobDuration"]),
        target=st.sampled_from([0.9, 0.99, 0.999]),
        threshold_seconds=st.floats(1, 900),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    objective=_objectives,
    records=_records,
    now=st.floats(0, 4 * 86400, allow_nan=False),
)
def test_burn_rates_equal_a_brute_force_computation(
    objective: Objective, records: list[OutcomeRecord], now: float
) -> None:
    report = evaluate_objective(objective, records, now)
    assert set(report.burn_rates) == {"5m", "30m", "1h", "6h", "3d"}
    for window, rate in report.burn_rates.items():
        expected = _reference_burn_rate(objective, records, now, window_seconds(window))
        assert math.isclose(rate, expected, rel_tol=1e-9, abs_tol=1e-12), window
    for alert in report.firing:
        assert report.burn_rates[alert.long_window] >= alert.factor
        assert report.burn_rates[alert.short_window] >= alert.factor


def test_budget_and_burn_rate_by_hand() -> None:
    assert budget_remaining(0.99, 1000, 1000) == 1.0
    assert math.isclose(budget_remaining(0.99, 995, 1000), 0.5)
    assert math.isclose(budget_remaining(0.99, 980, 1000), -1.0)
    assert budget_remaining(0.99, 0, 0) == 1.0
    assert math.isclose(burn_rate(0.999, 99, 100), 10.0)
    assert burn_rate(0.999, 0, 0) == 0.0


def test_a_fast_burn_fires_only_when_both_windows_burn() -> None:
    now = 10 * HOUR
    steady = _jobs(*((now - i * 60.0, True) for i in range(1, 600)))
    # 20% failures over the last hour, but none in the last 5 minutes: the burn has stopped.
    stopped = steady + _jobs(*((now - 10 * 60 - i * 60.0, False) for i in range(0, 50, 4)))
    report = evaluate_objective(JOB_SUCCESS, stopped, now)
    assert report.burn_rates["1h"] >= 14.4 and report.burn_rates["5m"] == 0.0
    assert all(alert.long_window != "1h" for alert in report.firing)
    # Failures now too: the 1h/5m pair fires.
    ongoing = stopped + _jobs(*((now - i * 10.0, False) for i in range(5)))
    report = evaluate_objective(JOB_SUCCESS, ongoing, now)
    assert any(alert.long_window == "1h" for alert in report.firing)
    assert report.state in ("Burning", "Exhausted")


def test_latency_slis_count_records_over_the_threshold_as_bad() -> None:
    objective = Objective(
        name="stage-latency", sli="StageLatency", target=0.9, threshold_seconds=60, window="1d"
    )
    records = [
        OutcomeRecord(1.0, RecordKind.STAGE, seconds=30),
        OutcomeRecord(2.0, RecordKind.STAGE, seconds=90),
        OutcomeRecord(3.0, RecordKind.JOB, seconds=999),  # not a stage: ignored
    ]
    report = evaluate_objective(objective, records, now=10.0)
    assert (report.good, report.total) == (1, 2)
    assert report.state == "Exhausted"
    status = report.to_status()
    assert status.name == "stage-latency" and status.sli == 0.5 and status.state == "Exhausted"


def test_an_exhausted_budget_applies_the_policy_and_unfreezes_with_hysteresis() -> None:
    policy = BudgetPolicy(
        on_exhausted="Freeze", unfreeze=Unfreeze(budget_above=0.5, after_seconds=3600)
    )
    bad = evaluate_objective(JOB_SUCCESS, _jobs((1.0, False), (2.0, True)), now=10.0, alerts=[])
    decision = decide_budget_policy([bad], policy, frozen_since=None, now=10.0)
    assert decision.state == "Exhausted" and decision.actions == ("Freeze",)
    assert "error budget exhausted" in decision.reason and not decision.unfreeze
    # The bad job left the window: the budget is back, but the freeze is too young.
    later = 31 * 86400.0
    good = evaluate_objective(JOB_SUCCESS, _jobs((later - 5, True)), now=later, alerts=[])
    assert not decide_budget_policy([good], policy, frozen_since=later - 60, now=later).unfreeze
    decision = decide_budget_policy([good], policy, frozen_since=later - 7200, now=later)
    assert decision.unfreeze and decision.state == "Healthy" and decision.actions == ()


def test_firing_alerts_apply_their_own_actions_strongest_first() -> None:
    records = _jobs(*((100.0 - i, False) for i in range(10)))
    alerts = [
        BurnRateAlert(long_window="1h", short_window="5m", factor=14.4, action="Notify"),
        BurnRateAlert(long_window="6h", short_window="30m", factor=6, action="HoldAndDrain"),
    ]
    report = evaluate_objective(JOB_SUCCESS, records, now=100.0, alerts=alerts)
    decision = decide_budget_policy([report], BudgetPolicy(on_exhausted="Fallback"), None, 100.0)
    assert decision.actions == ("HoldAndDrain", "Fallback", "Notify")
    assert decision.freeze == "HoldAndDrain"  # the freeze recorded on each lane


@pytest.mark.parametrize(
    ("actions", "freeze"),
    [
        ((), None),
        (("Notify",), None),
        (("Fallback", "Notify"), "Fallback"),
        (("Freeze", "Fallback"), "Freeze"),
        (("HoldAndDrain", "Freeze"), "HoldAndDrain"),
    ],
)
def test_the_freeze_a_decision_records_is_its_strongest_action_but_notify(
    actions: tuple[BudgetAction, ...], freeze: str | None
) -> None:
    assert BudgetDecision("Burning", actions, False, "").freeze == freeze
