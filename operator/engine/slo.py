"""SLO math: SLIs from outcome records, error budgets, burn rates and the budget policy.

Burn rate is the SRE workbook's: the bad fraction over a window divided by the fraction the
objective allows (1 - target); a burn rate of 1 spends the budget exactly over the SLO window.
An alert fires when both its long and its short window burn at least `factor` times that fast:
the long window shows the burn is significant, the short one that it is still going on.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bakeline.api.common import window_seconds
from bakeline.api.slopolicy import (
    BudgetAction,
    BudgetPolicy,
    BurnRateAlert,
    Objective,
    ObjectiveStatus,
    SloState,
    default_burn_rate_alerts,
)
from bakeline.engine.lanes import FreezeAction, freeze_in_force


class RecordKind(StrEnum):
    JOB = "job"  # a job reached Succeeded or Failed; seconds = its run time
    STAGE = "stage"  # a stage attempt finished; seconds = its run time
    QUEUE = "queue"  # a job was admitted; seconds = how long it waited
    GATE = "gate"  # a quality gate was evaluated; ok = it passed


@dataclass(frozen=True)
class OutcomeRecord:
    """One thing that happened, as the ledger stores it."""

    at: float  # unix seconds
    kind: RecordKind
    ok: bool = True
    seconds: float | None = None
    count: int = 1  # how many such records: the ledger folds old ones into counts


_LATENCY_KIND = {
    "StageLatency": RecordKind.STAGE,
    "QueueWait": RecordKind.QUEUE,
    "JobDuration": RecordKind.JOB,
}


def judge(objective: Objective, record: OutcomeRecord) -> bool | None:
    """Whether a record is a good event for the objective; None when it does not count."""
    if objective.sli == "JobSuccess":
        return record.ok if record.kind is RecordKind.JOB else None
    if objective.sli == "QualityGatePass":
        return record.ok if record.kind is RecordKind.GATE else None
    if record.kind is not _LATENCY_KIND[objective.sli] or record.seconds is None:
        return None
    threshold = objective.threshold_seconds
    return threshold is not None and record.seconds <= threshold


@dataclass(frozen=True)
class SliSeries:
    """An objective's good/bad events in time order, for windowed counts in O(log n)."""

    times: tuple[float, ...]
    bad_prefix: tuple[int, ...]  # bad_prefix[i]: bad events among the first i records
    total_prefix: tuple[int, ...]  # total_prefix[i]: events among the first i records

    @classmethod
    def build(cls, objective: Objective, records: Iterable[OutcomeRecord]) -> SliSeries:
        events = sorted(
            (record.at, verdict, record.count)
            for record in records
            if (verdict := judge(objective, record)) is not None and record.count > 0
        )
        bad, total = [0], [0]
        for _, good, count in events:
            bad.append(bad[-1] + (0 if good else count))
            total.append(total[-1] + count)
        return cls(tuple(at for at, _, _ in events), tuple(bad), tuple(total))

    def counts(self, now: float, window: float) -> tuple[int, int]:
        """(good, total) among events in the window (now - window, now]."""
        lo = bisect.bisect_right(self.times, now - window)
        hi = bisect.bisect_right(self.times, now)
        if hi <= lo:
            return 0, 0
        bad = self.bad_prefix[hi] - self.bad_prefix[lo]
        total = self.total_prefix[hi] - self.total_prefix[lo]
        return total - bad, total


def budget_remaining(target: float, good: int, total: int) -> float:
    """Share of the error budget left: 1 untouched, 0 spent, negative overspent."""
    if total == 0:
        return 1.0
    return 1.0 - (total - good) / ((1.0 - target) * total)


def burn_rate(target: float, good: int, total: int) -> float:
    """Bad fraction over the allowed bad fraction; 0 with no events."""
    if total == 0:
        return 0.0
    return ((total - good) / total) / (1.0 - target)


@dataclass(frozen=True)
class ObjectiveReport:
    objective: Objective
    good: int
    total: int
    budget_remaining: float
    burn_rates: dict[str, float]  # window ("1h") -> burn rate
    firing: tuple[BurnRateAlert, ...]

    @property
    def sli(self) -> float:
        return self.good / self.total if self.total else 1.0

    @property
    def state(self) -> SloState:
        if self.budget_remaining <= 0.0:
            return "Exhausted"
        return "Burning" if self.firing else "Healthy"

    def to_status(self) -> ObjectiveStatus:
        return ObjectiveStatus(
            name=self.objective.name,
            sli=self.sli,
            budget_remaining=min(self.budget_remaining, 1.0),
            burn_rates=self.burn_rates,
            good=self.good,
            total=self.total,
            state=self.state,
        )


def evaluate_objective(
    objective: Objective,
    records: Iterable[OutcomeRecord],
    now: float,
    alerts: Sequence[BurnRateAlert] | None = None,
) -> ObjectiveReport:
    """SLI, budget and the multiwindow multi-burn-rate decision for one objective at `now`."""
    alerts = default_burn_rate_alerts() if alerts is None else alerts
    series = SliSeries.build(objective, records)
    good, total = series.counts(now, window_seconds(objective.window))
    windows = {w for alert in alerts for w in (alert.long_window, alert.short_window)}
    rates = {
        w: burn_rate(objective.target, *series.counts(now, window_seconds(w)))
        for w in sorted(windows, key=window_seconds)
    }
    firing = tuple(
        alert
        for alert in alerts
        if rates[alert.long_window] >= alert.factor and rates[alert.short_window] >= alert.factor
    )
    return ObjectiveReport(
        objective=objective,
        good=good,
        total=total,
        budget_remaining=budget_remaining(objective.target, good, total),
        burn_rates=rates,
        firing=firing,
    )


@dataclass(frozen=True)
class BudgetDecision:
    state: SloState
    actions: tuple[BudgetAction, ...]  # what the selected lanes get now, strongest first
    unfreeze: bool  # lift the freeze this policy had set
    reason: str

    @property
    def freeze(self) -> FreezeAction | None:
        """The freeze the selected lanes are under now: the strongest action but Notify (None:
        no freeze). It is recorded on each lane, where admission reads it."""
        return freeze_in_force(a for a in self.actions if a != "Notify")


# Strongest first: a lane that must drain need not also be told to freeze.
_ACTION_ORDER: tuple[BudgetAction, ...] = ("HoldAndDrain", "Freeze", "Fallback", "Notify")


def decide_budget_policy(
    reports: Sequence[ObjectiveReport],
    policy: BudgetPolicy,
    frozen_since: float | None,
    now: float,
) -> BudgetDecision:
    """What the policy does to its lanes, given its objectives' reports.

    An exhausted budget applies `onExhausted`; a firing alert applies its own action. Lanes this
    policy froze (`frozen_since` set) open again once every budget is above
    `unfreeze.budgetAbove`, no alert fires and the freeze is at least `unfreeze.afterSeconds`
    old, so a lane does not flap on the boundary.
    """
    actions: set[BudgetAction] = set()
    reasons: list[str] = []
    for report in reports:
        name = report.objective.name
        if report.state == "Exhausted":
            actions.add(policy.on_exhausted)
            reasons.append(
                f"{name}: error budget exhausted ({report.budget_remaining:.0%} left, "
                f"SLI {report.sli:.4f} against target {report.objective.target})"
            )
        for alert in report.firing:
            actions.add(alert.action)
            reasons.append(
                f"{name}: burn rate {report.burn_rates[alert.long_window]:.1f} over "
                f"{alert.long_window} and {report.burn_rates[alert.short_window]:.1f} over "
                f"{alert.short_window} (alert at {alert.factor:g})"
            )
    states = {r.state for r in reports}
    state: SloState = (
        "Exhausted" if "Exhausted" in states else "Burning" if "Burning" in states else "Healthy"
    )
    unfreeze = (
        frozen_since is not None
        and not actions
        and all(r.budget_remaining > policy.unfreeze.budget_above for r in reports)
        and now - frozen_since >= policy.unfreeze.after_seconds
    )
    if unfreeze:
        reasons.append(
            f"every budget above {policy.unfreeze.budget_above:.0%} and nothing burns: unfreeze"
        )
    ordered = tuple(a for a in _ACTION_ORDER if a in actions)
    return BudgetDecision(state, ordered, unfreeze, "; ".join(reasons) or "healthy")
