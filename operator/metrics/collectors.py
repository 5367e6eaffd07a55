"""The operator's Prometheus series, defined once; handlers update them, /metrics serves them.

Counters only ever go up within one process; rates across restarts are Prometheus's job.
Gauges that describe objects (jobs by phase, lane depth, error budgets) are set from what the
last reconcile of that object saw, and dropped when the object goes away.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge(
    "bakeline_jobs",
    "BakingJobs by phase, as of their last reconcile.",
    ["namespace", "phase"],
    registry=REGISTRY,
)
STAGE_DURATION = Histogram(
    "bakeline_stage_duration_seconds",
    "Wall time of stage attempts, by agent and outcome.",
    ["agent", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
STAGE_RETRIES = Counter(
    "bakeline_stage_retries_total",
    "Stage attempts that failed transiently and were retried.",
    ["agent"],
    registry=REGISTRY,
)
ROLLBACKS = Counter(
    "bakeline_rollbacks_total",
    "Rollbacks to an earlier checkpoint after a failed stage or gate.",
    ["namespace"],
    registry=REGISTRY,
)
CACHE_HITS = Counter(
    "bakeline_cache_hits_total",
    "Stages that reused a checkpoint instead of running.",
    ["agent"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "bakeline_lane_queued_jobs",
    "Jobs waiting for admission, per lane.",
    ["namespace", "lane"],
    registry=REGISTRY,
)
LANE_RUNNING = Gauge(
    "bakeline_lane_running_jobs",
    "Jobs admitted and running, per lane.",
    ["namespace", "lane"],
    registry=REGISTRY,
)
LANE_FROZEN = Gauge(
    "bakeline_lane_frozen",
    "1 while an SLOPolicy freezes the lane.",
    ["namespace", "lane"],
    registry=REGISTRY,
)
BUDGET_REMAINING = Gauge(
    "bakeline_slo_error_budget_remaining_ratio",
    "Share of the objective's error budget left over its window (1 = untouched).",
    ["namespace", "policy", "objective"],
    registry=REGISTRY,
)
BURN_RATE = Gauge(
    "bakeline_slo_burn_rate",
    "Error-budget burn rate over a window (1 = exactly on budget).",
    ["namespace", "policy", "objective", "window"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "bakeline_reconcile_errors_total",
    "Reconcile passes that raised, by kind.",
    ["kind"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "bakeline_api_requests_total",
    "Requests the operator's reconcilers sent to the API server (kopf's watches aside), by "
    "HTTP method and resource (plural, and subresource where there is one).",
    ["method", "resource"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "bakeline_leader",
    "1 while this replica reconciles: it holds the leader Lease (or runs without leader "
    "election); 0 while it stands by.",
    registry=REGISTRY,
)
RECONCILES = Histogram(
    "bakeline_reconcile_duration_seconds",
    "Time spent in one reconcile pass, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)

_job_phases: dict[tuple[str, str], str] = {}
_job_phases_lock = threading.Lock()


def track_job_phase(namespace: str, name: str, phase: str | None) -> None:
    """Move one job between the `bakeline_jobs` phase buckets; None: the job is gone."""
    with _job_phases_lock:
        old = _job_phases.pop((namespace, name), None)
        if old is not None:
            JOBS.labels(namespace, old).dec()
        if phase is not None:
            _job_phases[(namespace, name)] = phase
            JOBS.labels(namespace, phase).inc()
