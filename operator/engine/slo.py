"""SLO math: SLIs from outcome records, error budgets, burn rates and the budget policy.

Burn rate is the SRE workbook's: the observed bad fraction over a window divided by the fraction
the objective allows (1 - target). A burn rate of 1 spends the budget exactly over the SLO window.
An alert fires when both its long and its short window burn faster than its factor: the long
window proves the burn is significant, the short one that it is still going on.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration such as "30d", "1h30m", "5m" or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    spec = text.strip()
    if not spec:
        raise ValueError("empty duration")
    try:
        return float(spec)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(spec):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 6h, 5m, 90s)")
    return total


class Sli(StrEnum):
    JOB_SUCCESS = "JobSuccess"
    STAGE_LATENCY = "StageLatency"
    QUEUE_WAIT = "QueueWait"
    QUALITY_GATE_PASS = "QualityGatePass"  # noqa: S105 (an SLI name)
    JOB_DURATION = "JobDuration"


class RecordKind(StrEnum):
    JOB = "job"  # a job reached Succeeded or Failed
    STAGE = "stage"  # a stage attempt finished
    QUEUE = "queue"  # a job was admitted after waiting
    GATE = "gate"  # a quality gate was evaluated


@dataclass(frozen=True)
class OutcomeRecord:
    """One thing that happened, as the ledger stores it."""

    at: float  # unix seconds
    kind: RecordKind
    ok: bool = True
    seconds: float | None = None
    lane: str = ""


@dataclass(frozen=True)
class Objective:
    sli: Sli
    target: float  # e.g. 0.999
    window_seconds: float  # e.g. 30 days
    threshold_seconds: float | None = None  # latency SLIs: good when at or under it


def judge(objective: Objective, record: OutcomeRecord) -> bool | None:
    """Whether a record is a good event for the objective; None when it does not count."""
    if objective.sli is Sli.JOB_SUCCESS:
        return record.ok if record.kind is RecordKind.JOB else None
    if objective.sli is Sli.QUALITY_GATE_PASS:
        return record.ok if record.kind is RecordKind.GATE else None
    kind = {
        Sli.STAGE_LATENCY: RecordKind.STAGE,
        Sli.QUEUE_WAIT: RecordKind.QUEUE,
        Sli.JOB_DURATION: RecordKind.JOB,
    }[objective.sli]
    if record.kind is not kind or record.seconds is None:
        return None
    if objective.threshold_seconds is None:
        raise ValueError(f"{objective.sli} needs a threshold")
    return record.seconds <= objective.threshold_seconds


@dataclass(frozen=True)
class SliSeries:
    """An objective's good/bad events in time order, ready for windowed counts."""

    times: tuple[float, ...]
    bad_prefix: tuple[int, ...]  # bad_prefix[i] = bad events among the first i

    @classmethod
    def build(cls, objective: Objective, records: Iterable[OutcomeRecord]) -> SliSeries:
        events = sorted(
            (record.at, verdict)
            for record in records
            if (verdict := judge(objective, record)) is not None
        )
        prefix = [0]
        for _, good in events:
            prefix.append(prefix[-1] + (0 if good else 1))
        return cls(tuple(at for at, _ in events), tuple(prefix))

    def counts(self, now: float, window_seconds: float) -> tuple[int, int]:
        """(good, total) among events in the window (now - window, now]."""
        lo = bisect.bisect_right(self.times, now - window_seconds)
        hi = bisect.bisect_right(self.times, now)
        total = max(hi - lo, 0)
        bad = self.bad_prefix[hi] - self.bad_prefix[lo] if total else 0
        return total - bad, total


def budget_remaining(target: float, good: int, total: int) -> float:
    """Fraction of the error budget left: 1 untouched, 0 spent, negative overspent."""
    if total == 0:
        return 1.0
    allowed = (1.0 - target) * total
    bad = total - good
    if allowed <= 0:
        return 1.0 if bad == 0 else -float(bad)
    return 1.0 - bad / allowed


def burn_rate(target: float, good: int, total: int) -> float:
    if total == 0:
        return 0.0
    bad_fraction = (total - good) / total
    allowed = 1.0 - target
    if allowed <= 0:
        return float("inf") if bad_fraction > 0 else 0.0
    return bad_fraction / allowed


class BudgetAction(StrEnum):
    FREEZE = "Freeze"
    HOLD_AND_DRAIN = "HoldAndDrain"
    FALLBACK = "Fallback"
    NOTIFY = "Notify"


@dataclass(frozen=True)
class BurnRateAlert:
    long_window_seconds: float
    short_window_seconds: float
    factor: float
    action: BudgetAction = BudgetAction.NOTIFY


# The SRE workbook's pairs for a 30-day 99.9% objective (page, page, ticket).
DEFAULT_BURN_RATE_ALERTS: tuple[BurnRateAlert, ...] = (
    BurnRateAlert(3600.0, 300.0, 14.4),
    BurnRateAlert(6 * 3600.0, 1800.0, 6.0),
    BurnRateAlert(3 * 86400.0, 6 * 3600.0, 1.0),
)


class BudgetState(StrEnum):
    HEALTHY = "Healthy"
    BURNING = "Burning"
    EXHAUSTED = "Exhausted"


@dataclass(frozen=True)
class ObjectiveReport:
    objective: Objective
    good: int
    total: int
    sli: float  # good / total over the SLO window; 1 with no events
    budget_remaining: float
    burn_rates: dict[float, float]  # window seconds -> burn rate
    firing: tuple[BurnRateAlert, ...] = field(default_factory=tuple)

    @property
    def state(self) -> BudgetState:
        if self.budget_remaining <= 0.0:
            return BudgetState.EXHAUSTED
        return BudgetState.BURNING if self.firing else BudgetState.HEALTHY


def evaluate_objective(
    objective: Objective,
    records: Iterable[OutcomeRecord],
    now: float,
    alerts: Sequence[BurnRateAlert] = DEFAULT_BURN_RATE_ALERTS,
) -> ObjectiveReport:
    """SLI, budget and the multi-window multi-burn-rate decision for one objective at `now`."""
    series = SliSeries.build(objective, records)
    good, total = series.counts(now, objective.window_seconds)
    windows = sorted({w for a in alerts for w in (a.long_window_seconds, a.short_window_seconds)})
    rates = {w: burn_rate(objective.target, *series.counts(now, w)) for w in windows}
    firing = tuple(
        a
        for a in alerts
        if rates[a.long_window_seconds] >= a.factor
        and rates[a.short_window_seconds] >= a.factor
        and rates[a.long_window_seconds] > 0
    )
    return ObjectiveReport(
        objective=objective,
        good=good,
        total=total,
        sli=good / total if total else 1.0,
        budget_remaining=budget_remaining(objective.target, good, total),
        burn_rates=rates,
        firing=firing,
    )


@dataclass(frozen=True)
class BudgetDecision:
    state: BudgetState
    actions: tuple[BudgetAction, ...]  # what to apply to the selected lanes now
    unfreeze: bool  # lift a freeze this policy had set
    reason: str


def decide_budget_policy(
    reports: Sequence[ObjectiveReport],
    on_exhausted: BudgetAction,
    frozen: bool,
    unfreeze_above: float = 0.0,
) -> BudgetDecision:
    """What the policy does to its lanes given its objectives' reports.

    An exhausted budget applies `on_exhausted`; a firing burn-rate alert applies its own action.
    A lane this policy froze is released once every budget is back above `unfreeze_above` and no
    alert fires (hysteresis, so a lane does not flap on the boundary).
    """
    exhausted = [r for r in reports if r.state is BudgetState.EXHAUSTED]
    burning = [r for r in reports if r.firing]
    actions: list[BudgetAction] = []
    reasons: list[str] = []
    for report in exhausted:
        _add(actions, on_exhausted)
        reasons.append(
            f"{report.objective.sli} error budget exhausted ({report.budget_remaining:.0%} left,"
            f" SLI {report.sli:.4f} < {report.objective.target})"
        )
    for report in burning:
        for alert in report.firing:
            _add(actions, alert.action)
            long_rate = report.burn_rates[alert.long_window_seconds]
            short_rate = report.burn_rates[alert.short_window_seconds]
            reasons.append(
                f"{report.objective.sli} burning {long_rate:.1f}x over"
                f" {_fmt(alert.long_window_seconds)} and {short_rate:.1f}x over"
                f" {_fmt(alert.short_window_seconds)} (threshold {alert.factor}x)"
            )
    if exhausted:
        state = BudgetState.EXHAUSTED
    elif burning:
        state = BudgetState.BURNING
    else:
        state = BudgetState.HEALTHY
    recovered = not burning and all(r.budget_remaining > unfreeze_above for r in reports)
    unfreeze = frozen and recovered
    if unfreeze:
        reasons.append(f"every error budget is above {unfreeze_above:.0%} and nothing burns")
    return BudgetDecision(state, tuple(actions), unfreeze, "; ".join(reasons) or "healthy")


def _add(actions: list[BudgetAction], action: BudgetAction) -> None:
    if action not in actions:
        actions.append(action)


def _fmt(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
