"""SLOPolicy actions on the real API server, each driven by a burning error budget and each
undone when the budget recovers: Freeze admits nothing (and routes nowhere), HoldAndDrain also
stops the lane's running jobs at their next stage boundary, Fallback routes new jobs to the
lane's fallbackLane (a lane without one says so and admits nothing)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane import ControlPlane
from support.kube import apply, condition, get, wait_for, wait_for_condition

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# Failures leave this window and the budget recovers: long enough for the test to look at the
# frozen lane, short enough to wait out.
WINDOW = "40s"


def _lane(name: str, **spec: Any) -> dict[str, Any]:
    # The failures that burn the budget must not also quarantine BakingCoordinator here.
    breaker = {"consecutiveFailures": 100}
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Lane",
        "metadata": {"name": name},
        "spec": {"maxConcurrentJobs": 4, "circuitBreaker": breaker, **spec},
    }


def _job(name: str, lane: str = "standard") -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": lane},
    }


def _policy(action: str, lanes: list[str]) -> dict[str, Any]:
    """Job success at 0.99 over the lanes; `action` on exhaustion and on the fast burn alert
    (the SRE workbook's 1h/5m pair scaled down to seconds); unfrozen as soon as it recovers."""
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "SLOPolicy",
        "metadata": {"name": "reliability"},
        "spec": {
            "laneSelector": {"names": lanes},
            "objectives": [
                {"name": "job-success", "sli": "JobSuccess", "target": 0.99, "window": WINDOW}
            ],
            "burnRateAlerts": [
                {"longWindow": WINDOW, "shortWindow": "10s", "factor": 14.4, "action": action}
            ],
            "budgetPolicy": {
                "onExhausted": action,
                "unfreeze": {"budgetAbove": 0.5, "afterSeconds": 0},
            },
        },
    }


def _status(cluster: ControlPlane, kind: str, name: str, namespace: str) -> dict[str, Any]:
    return dict((get(cluster, kind, name, namespace) or {}).get("status") or {})


def _ended(cluster: ControlPlane, name: str, namespace: str, timeout: float = 120) -> Any:
    seen: list[dict[str, Any]] = []

    def probe() -> dict[str, Any] | None:
        seen[:] = [_status(cluster, "bj", name, namespace)]
        return seen[0] if seen[0].get("phase") in ("Succeeded", "Failed") else None

    try:
        return wait_for(probe, timeout, what=f"{name} to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {json.dumps(seen[-1:], indent=1)}") from None


def _burn(cluster: ControlPlane, namespace: str, lane: str = "standard") -> None:
    """Three jobs fail at once (invalid input at import): the budget is gone."""
    apply(cluster, [_job(f"bad-{i}", lane) for i in range(3)], namespace)
    for i in range(3):
        assert _ended(cluster, f"bad-{i}", namespace)["phase"] == "Failed"


def _admitted_reason(cluster: ControlPlane, name: str, namespace: str) -> str | None:
    job = get(cluster, "bj", name, namespace)
    return (condition(job, "Admitted") or {}).get("reason")


def _waits_for(cluster: ControlPlane, name: str, namespace: str, reason: str) -> dict[str, Any]:
    """The job waits in the queue for `reason`, and still does a few seconds later."""
    wait_for(
        lambda: _admitted_reason(cluster, name, namespace) == reason,
        30,
        what=f"{name} to wait ({reason})",
    )
    time.sleep(3)
    status = _status(cluster, "bj", name, namespace)
    assert status["phase"] == "Queued" and not status.get("lane"), status
    assert _admitted_reason(cluster, name, namespace) == reason
    return status


def _reasons(cluster: ControlPlane, namespace: str, kind: str) -> list[str]:
    listing = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [e["reason"] for e in listing["items"] if e["involvedObject"]["kind"] == kind]


def _pods(cluster: ControlPlane, namespace: str) -> set[str]:
    listing = cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    return {p["metadata"]["name"] for p in json.loads(listing)["items"]}


def _scrape(port: int) -> set[str]:
    """The metric families /metrics serves, parsed as Prometheus does."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {family.name for family in text_string_to_metric_families(text)}


def test_freeze_admits_nothing_and_routes_nowhere_until_the_budget_recovers(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    script = scripted_agent({"import": [2]})
    lanes = [_lane("standard", fallbackLane="batch"), _lane("batch")]
    apply(cluster, [*lanes, _policy("Freeze", ["standard"])], namespace)
    _burn(cluster, namespace)
    lane = wait_for_condition(cluster, "lane", "standard", namespace, "Frozen", timeout=30)
    [entry] = lane["status"]["frozenBy"]
    assert entry["policy"] == "reliability" and entry["action"] == "Freeze"
    assert (condition(lane, "Frozen") or {})["message"].startswith("new jobs wait")
    assert "Frozen" in _reasons(cluster, namespace, "Lane")
    assert "bakeline_lane_frozen" in _scrape(operator.metrics_port)
    # A frozen lane keeps its new jobs: not admitted, not sent to the fallback lane.
    script.write_text("{}")
    apply(cluster, _job("after"), namespace)
    _waits_for(cluster, "after", namespace, "LaneFrozen")
    # The failures leave the window: the lane opens and the job runs in it.
    wait_for_condition(cluster, "lane", "standard", namespace, "Frozen", "False", timeout=120)
    after = _ended(cluster, "after", namespace)
    assert after["phase"] == "Succeeded" and after["lane"] == "standard", after
    assert "Unfrozen" in _reasons(cluster, namespace, "Lane")


def test_hold_and_drain_stops_running_jobs_at_a_stage_boundary_and_they_resume(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    # Every job fails at import but "long", which spends a while in graph.
    scripted_agent({"import": [2], "jobs": {"long": {"import": [0], "sleep": {"graph": 15}}}})
    apply(cluster, [_lane("standard"), _policy("HoldAndDrain", ["standard"])], namespace)
    apply(cluster, _job("long"), namespace)
    wait_for(lambda: "long-graph-1" in _pods(cluster, namespace), 60, what="graph to start")
    _burn(cluster, namespace)
    lane = wait_for_condition(cluster, "lane", "standard", namespace, "Frozen", timeout=30)
    assert lane["status"]["frozenBy"][0]["action"] == "HoldAndDrain"
    # The running stage finishes; the next one does not start: the job is back in the queue.
    wait_for(
        lambda: _admitted_reason(cluster, "long", namespace) in ("Drained", "LaneFrozen"),
        60,
        what="long to be drained",
    )
    status = _status(cluster, "bj", "long", namespace)
    assert status["phase"] == "Queued" and not status.get("lane"), status
    stages = {s["name"]: s for s in status["stages"]}
    assert stages["graph"]["phase"] == "Succeeded", "the running stage finished first"
    assert stages["quantize"]["phase"] == "Pending"
    assert "long-quantize-1" not in _pods(cluster, namespace)
    assert "Drained" in _reasons(cluster, namespace, "BakingJob")
    # Recovery: the lane opens, the job is admitted again and resumes from its checkpoints.
    wait_for_condition(cluster, "lane", "standard", namespace, "Frozen", "False", timeout=120)
    done = _ended(cluster, "long", namespace)
    assert done["phase"] == "Succeeded", done
    pods = _pods(cluster, namespace)
    assert "long-import-2" not in pods and "long-graph-2" not in pods, "stages redone"


def test_fallback_routes_new_jobs_to_the_fallback_lane_until_the_budget_recovers(
    cluster: ControlPlane,
    namespace: str,
    operator: Any,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    script = scripted_agent({"import": [2]})
    lanes = [_lane("standard", fallbackLane="batch"), _lane("batch"), _lane("lonely")]
    apply(cluster, [*lanes, _policy("Fallback", ["standard", "lonely"])], namespace)
    _burn(cluster, namespace)
    lane = wait_for_condition(cluster, "lane", "standard", namespace, "Frozen", timeout=30)
    assert lane["status"]["frozenBy"][0]["action"] == "Fallback"
    assert (condition(lane, "Frozen") or {})["message"].startswith("new jobs go to lane batch")
    # The policy's status is written before its lanes change (handlers/slo.py). The long
    # window's rate: the 10s one may already have seen the failures leave by this read.
    slo = _status(cluster, "slo", "reliability", namespace)
    assert slo["state"] == "Exhausted" and slo["objectives"][0]["burnRates"][WINDOW] >= 14.4
    # A lane with no fallbackLane says so, and its new jobs wait as under Freeze.
    lonely = wait_for_condition(cluster, "lane", "lonely", namespace, "Frozen", timeout=30)
    assert (condition(lonely, "Frozen") or {})["reason"] == "NoFallbackLane"
    script.write_text("{}")
    apply(cluster, [_job("after"), _job("alone", "lonely")], namespace)
    after = _ended(cluster, "after", namespace)
    assert after["phase"] == "Succeeded" and after["lane"] == "batch", after
    assert "routed from standard" in (condition({"status": after}, "Admitted") or {})["message"]
    _waits_for(cluster, "alone", namespace, "NoFallbackLane")
    # Recovery: both lanes open; new jobs stay in their own lane.
    wait_for_condition(cluster, "lane", "standard", namespace, "Frozen", "False", timeout=120)
    wait_for_condition(cluster, "lane", "lonely", namespace, "Frozen", "False", timeout=30)
    alone = _ended(cluster, "alone", namespace)
    assert alone["phase"] == "Succeeded" and alone["lane"] == "lonely", alone
    apply(cluster, _job("home"), namespace)
    home = _ended(cluster, "home", namespace)
    assert home["phase"] == "Succeeded" and home["lane"] == "standard", home
