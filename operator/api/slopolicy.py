"""SLOPolicy (`slo`): objectives for lanes and what to do when their error budget burns.

Burn-rate alerting follows the Google SRE workbook ("Alerting on SLOs"): an alert fires when
both the long and the short window burn faster than `factor` times the sustainable rate.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AwareDatetime, Field

from bakeline.api.common import (
    AGE_COLUMN,
    LABEL_KEY_MESSAGE,
    LABEL_KEY_PATTERN,
    WINDOW_PATTERN,
    Condition,
    LabelKey,
    LabelName,
    LabelValue,
    PrinterColumn,
    Resource,
    ResourceInfo,
    Rule,
    StatusModel,
    Window,
    WireModel,
    conditions_field,
    observed_generation_field,
    window_cel,
    window_seconds,
)

Sli = Literal["JobSuccess", "StageLatency", "QueueWait", "QualityGatePass", "JobDuration"]
LATENCY_SLIS: tuple[Sli, ...] = ("StageLatency", "QueueWait", "JobDuration")
BudgetAction = Literal["Freeze", "HoldAndDrain", "Fallback", "Notify"]
SloState = Literal["Healthy", "Burning", "Exhausted"]

MAX_OBJECTIVES = 8
MAX_ALERTS = 8


def _label_key_ok(key: str) -> bool:
    prefix, _, _ = key.rpartition("/")
    return len(prefix) <= 253 and re.fullmatch(LABEL_KEY_PATTERN, key) is not None


class LabelSelectorRequirement(WireModel):
    """One label requirement (metav1.LabelSelectorRequirement)."""

    key: LabelKey = Field(description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list,
        max_length=32,
        description="Values for In and NotIn; empty for Exists and DoesNotExist.",
    )

    cel_rules = (
        Rule(
            "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            "operators In and NotIn need values; Exists and DoesNotExist take none",
            lambda r: (r.operator in ("In", "NotIn")) == (len(r.values) > 0),
            field_path=".values",
        ),
    )


class LaneSelector(WireModel):
    """Which lanes of the namespace the policy watches: by name, or by label."""

    names: list[LabelName] | None = Field(
        default=None,
        max_length=32,
        description="Lane names.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    match_labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=16,
        description="Lanes whose labels include all of these; {} selects every lane.",
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=16, description="Lanes whose labels meet all of these."
    )

    cel_rules = (
        Rule(
            "has(self.names) || has(self.matchLabels) || has(self.matchExpressions)",
            "laneSelector selects nothing: give names, matchLabels or matchExpressions "
            "(matchLabels: {} selects every lane)",
            lambda s: (
                s.names is not None or s.match_labels is not None or s.match_expressions is not None
            ),
        ),
        Rule(
            "!has(self.names) || (!has(self.matchLabels) && !has(self.matchExpressions))",
            "laneSelector takes lane names or a label selector, not both",
            lambda s: s.names is None or (s.match_labels is None and s.match_expressions is None),
        ),
        Rule(
            f"!has(self.matchLabels) || self.matchLabels.all(k, k.matches(r'{LABEL_KEY_PATTERN}'))",
            "matchLabels has a key that " + LABEL_KEY_MESSAGE,
            lambda s: all(_label_key_ok(k) for k in s.match_labels or {}),
            field_path=".matchLabels",
            # No messageExpression showing the key: map keys have no length bound, so the API
            # server estimates filtering them beyond its cost budget.
        ),
    )


class Objective(WireModel):
    """One service level objective: the share of good events over a window."""

    name: LabelName = Field(description="Unique in the policy, e.g. job-success.")
    sli: Sli = Field(
        description="What counts as good. JobSuccess: a job succeeded. QualityGatePass: a "
        "quality gate passed. StageLatency, QueueWait, JobDuration: a stage ran, a job waited "
        "for admission, or a job ran within thresholdSeconds."
    )
    target: float = Field(
        gt=0,
        lt=1,
        description="Share of good events to meet, a fraction in (0, 1) such as 0.999; the "
        "error budget is 1 - target.",
    )
    threshold_seconds: float | None = Field(
        default=None,
        gt=0,
        le=604800,
        description="For StageLatency, QueueWait and JobDuration: at most this many seconds "
        "counts as good.",
    )
    window: Window = Field(
        default="30d", description="Span the objective is measured over, e.g. 30d, 7d, 24h."
    )

    cel_rules = (
        Rule(
            "self.target > 0.0 && self.target < 1.0",
            "target is a fraction in (0, 1), e.g. 0.999; 1 would leave no error budget",
            lambda o: 0.0 < o.target < 1.0,
            field_path=".target",
        ),
        Rule(
            "(self.sli in ['StageLatency', 'QueueWait', 'JobDuration']) == "
            "has(self.thresholdSeconds)",
            "thresholdSeconds is required for StageLatency, QueueWait and JobDuration, and "
            "meaningless for JobSuccess and QualityGatePass",
            lambda o: (o.sli in LATENCY_SLIS) == (o.threshold_seconds is not None),
            field_path=".thresholdSeconds",
        ),
    )


class BurnRateAlert(WireModel):
    """Fires when the budget burns faster than factor x the sustainable rate in both windows."""

    long_window: Window = Field(
        description="The window that shows the burn is significant, e.g. 1h."
    )
    short_window: Window = Field(
        description="The window that shows the burn is still going on, e.g. 5m; shorter than "
        "longWindow (the workbook uses 1/12 of it)."
    )
    factor: float = Field(
        gt=0,
        le=1000,
        description="Burn rate that fires: 1 spends the budget exactly over the objective's "
        "window; 14.4 spends 2% of a 30-day budget in one hour.",
    )
    action: BudgetAction = Field(
        default="Notify",
        description="Freeze: stop admitting jobs to the lanes. HoldAndDrain: also stop their "
        "running jobs at the next stage boundary. Fallback: route new jobs to each lane's "
        "fallbackLane. Notify: only an Event, a condition and a metric.",
    )

    cel_rules = (
        Rule(
            # Malformed windows are reported by their own rule; do not also fail evaluating here.
            f"!self.shortWindow.matches('{WINDOW_PATTERN}') || "
            f"!self.longWindow.matches('{WINDOW_PATTERN}') || "
            f"{window_cel('self.shortWindow')} < {window_cel('self.longWindow')}",
            "shortWindow must be shorter than longWindow",
            lambda a: window_seconds(a.short_window) < window_seconds(a.long_window),
            field_path=".shortWindow",
            shows="self.shortWindow + ' (longWindow ' + self.longWindow + ')'",
        ),
    )


def default_burn_rate_alerts() -> list[BurnRateAlert]:
    """The SRE workbook's multiwindow pairs: page-worthy fast burns freeze, slow burns notify."""
    return [
        BurnRateAlert(long_window="1h", short_window="5m", factor=14.4, action="Freeze"),
        BurnRateAlert(long_window="6h", short_window="30m", factor=6.0, action="Notify"),
        BurnRateAlert(long_window="3d", short_window="6h", factor=1.0, action="Notify"),
    ]


class Unfreeze(WireModel):
    """When lanes frozen by this policy open again."""

    budget_above: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Open again once every objective has more than this share of its budget "
        "left (as old failures leave the window).",
    )
    after_seconds: int = Field(
        default=3600,
        ge=0,
        le=2592000,
        description="Stay frozen at least this long, so a lane does not flap.",
    )


class BudgetPolicy(WireModel):
    """What to do when an objective's error budget is spent."""

    on_exhausted: BudgetAction = Field(
        default="Freeze",
        description="Freeze: stop admitting jobs to the lanes. HoldAndDrain: also stop their "
        "running jobs at the next stage boundary. Fallback: route new jobs to each lane's "
        "fallbackLane. Notify: only an Event, a condition and a metric.",
    )
    unfreeze: Unfreeze = Field(default_factory=Unfreeze, description="When frozen lanes reopen.")


class SLOPolicySpec(WireModel):
    """The lanes, their objectives and what happens when budgets burn."""

    lane_selector: LaneSelector = Field(description="Which lanes the policy watches.")
    objectives: list[Objective] = Field(
        min_length=1, max_length=MAX_OBJECTIVES, description="The objectives; names unique."
    )
    burn_rate_alerts: list[BurnRateAlert] = Field(
        default_factory=default_burn_rate_alerts,
        max_length=MAX_ALERTS,
        description="Multiwindow burn-rate alerts; default the SRE workbook's 1h/5m x14.4 "
        "(Freeze), 6h/30m x6 and 3d/6h x1 (Notify).",
    )
    budget_policy: BudgetPolicy = Field(
        default_factory=BudgetPolicy, description="What to do when a budget is spent."
    )

    cel_rules = (
        Rule(
            "self.objectives.all(o, self.objectives.exists_one(p, p.name == o.name))",
            "objective names must be unique within a policy",
            lambda s: len({o.name for o in s.objectives}) == len(s.objectives),
            field_path=".objectives",
        ),
    )


class ObjectiveStatus(StatusModel):
    """How one objective is doing over its window."""

    name: str = Field(max_length=63, description="The objective's name.")
    sli: float | None = Field(
        default=None, ge=0, le=1, description="Good events over all events in the window."
    )
    budget_remaining: float | None = Field(
        default=None,
        le=1,
        description="Share of the error budget left: 1 untouched, 0 spent, below 0 overspent.",
    )
    burn_rates: dict[str, float] = Field(
        default_factory=dict,
        max_length=2 * MAX_ALERTS,
        description="Burn rate per window, e.g. {'1h': 0.4, '5m': 0.0}; 1 spends the budget "
        "exactly over the objective's window.",
    )
    good: int = Field(default=0, ge=0, description="Good events in the window.")
    total: int = Field(default=0, ge=0, description="All events in the window.")
    state: SloState = Field(default="Healthy", description="Healthy, Burning or Exhausted.")


class SLOPolicyStatus(StatusModel):
    """The objectives' budgets and the lanes frozen because of them."""

    observed_generation: int | None = observed_generation_field()
    state: SloState = Field(
        default="Healthy",
        description="Worst of the objectives: Healthy, Burning (an alert fires) or Exhausted "
        "(a budget is spent).",
    )
    budget_remaining: float | None = Field(
        default=None, le=1, description="Smallest budget left among the objectives."
    )
    objectives: list[ObjectiveStatus] = Field(
        default_factory=list,
        max_length=MAX_OBJECTIVES,
        description="Per objective: SLI, budget left, burn rates, good and total.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    frozen_lanes: list[str] = Field(
        default_factory=list, max_length=32, description="Lanes this policy keeps frozen."
    )
    last_evaluated: AwareDatetime | None = Field(
        default=None, description="When the budgets were last computed."
    )
    conditions: list[Condition] = conditions_field("Ready, Burning, BudgetExhausted, LanesFound")


class SLOPolicy(Resource):
    """Service level objectives for lanes, and what to do when their error budget burns."""

    info = ResourceInfo(
        plural="slopolicies",
        singular="slopolicy",
        short_names=("slo",),
        printer_columns=(
            PrinterColumn("State", "string", ".status.state", "Healthy, Burning or Exhausted."),
            PrinterColumn(
                "Budget", "number", ".status.budgetRemaining", "Smallest error budget left."
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["SLOPolicy"] = Field(default="SLOPolicy", description="Always SLOPolicy.")
    spec: SLOPolicySpec = Field(description="Lanes, objectives, alerts and budget policy.")
    status: SLOPolicyStatus | None = Field(
        default=None, description="Budgets and frozen lanes; operator-owned."
    )
