"""References to lanes that do not exist, on the real API server: a Lane's fallbackLane and an
SLOPolicy's lanes are each said missing (a False condition naming them, one Warning Event), and
the condition turns True once the lane is created, without touching the referring object."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from controlplane import ControlPlane
from support.kube import apply, condition, get, wait_for, wait_for_condition

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _lane(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "bakeline.io/v1alpha1", "kind": "Lane", "metadata": meta, "spec": spec}


def _policy(selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "SLOPolicy",
        "metadata": {"name": "reliability"},
        "spec": {
            "laneSelector": selector,
            "objectives": [
                {"name": "job-success", "sli": "JobSuccess", "target": 0.99, "window": "1h"}
            ],
        },
    }


def _events(cluster: ControlPlane, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    listing = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [
        e
        for e in listing["items"]
        if e["involvedObject"]["kind"] == kind and e["involvedObject"]["name"] == name
    ]


def _warnings(
    cluster: ControlPlane, namespace: str, kind: str, name: str, reason: str
) -> list[str]:
    return [
        e["message"]
        for e in _events(cluster, namespace, kind, name)
        if e["type"] == "Warning" and e["reason"] == reason
    ]


def test_a_missing_fallback_lane_is_said_once_and_found_when_created(
    cluster: ControlPlane, namespace: str, operator: Any
) -> None:
    apply(cluster, _lane("standard", fallbackLane="batch"), namespace)
    lane = wait_for_condition(
        cluster, "lane", "standard", namespace, "FallbackLaneFound", "False", timeout=30
    )
    missing = condition(lane, "FallbackLaneFound") or {}
    assert missing["reason"] == "FallbackLaneNotFound", missing
    assert "fallbackLane batch does not exist" in missing["message"], missing
    # The lane still admits: the missing reference is its own condition, not Ready's.
    assert (condition(lane, "Ready") or {}).get("status") == "True", lane["status"]
    warned = wait_for(
        lambda: _warnings(cluster, namespace, "Lane", "standard", "FallbackLaneNotFound"),
        20,
        what="a FallbackLaneNotFound Event",
    )
    assert "batch" in warned[0]
    # Touching the lane re-runs its pass; the condition stands unchanged, so no second Event.
    cluster.kubectl("label", "lane", "standard", "touched=yes", "-n", namespace)
    time.sleep(4)
    assert len(_warnings(cluster, namespace, "Lane", "standard", "FallbackLaneNotFound")) == 1

    # Only the missing lane is created: the referring lane is looked at again by itself.
    apply(cluster, _lane("batch"), namespace)
    lane = wait_for_condition(
        cluster, "lane", "standard", namespace, "FallbackLaneFound", "True", timeout=30
    )
    found = condition(lane, "FallbackLaneFound") or {}
    assert found["reason"] == "FallbackLaneFound" and "batch" in found["message"], found
    assert "FallbackLaneFound" in {
        e["reason"]
        for e in _events(cluster, namespace, "Lane", "standard")
        if e["type"] == "Normal"
    }


def test_an_slo_policy_names_its_missing_lanes_until_they_exist(
    cluster: ControlPlane, namespace: str, operator: Any
) -> None:
    apply(cluster, [_lane("standard"), _policy({"names": ["standard", "gpu"]})], namespace)
    policy = wait_for_condition(
        cluster, "slo", "reliability", namespace, "LanesFound", "False", timeout=30
    )
    missing = condition(policy, "LanesFound") or {}
    assert missing["reason"] == "LaneNotFound", missing
    assert missing["message"] == f"lane gpu does not exist in namespace {namespace}", missing
    # It still evaluates the lane it found.
    assert (condition(policy, "Ready") or {}).get("message") == "1 lanes watched", policy["status"]
    wait_for(
        lambda: _warnings(cluster, namespace, "SLOPolicy", "reliability", "LaneNotFound"),
        20,
        what="a LaneNotFound Event",
    )
    # The operator evaluates the policy every second here: still one Event.
    time.sleep(4)
    [warned] = _warnings(cluster, namespace, "SLOPolicy", "reliability", "LaneNotFound")
    assert "gpu" in warned and "standard" not in warned

    apply(cluster, _lane("gpu"), namespace)
    policy = wait_for_condition(cluster, "slo", "reliability", namespace, "LanesFound", timeout=30)
    found = condition(policy, "LanesFound") or {}
    assert found["message"] == "watching lanes gpu, standard", found
    assert (condition(policy, "Ready") or {}).get("message") == "2 lanes watched"


def test_an_slo_label_selector_that_selects_no_lane_says_so(
    cluster: ControlPlane, namespace: str, operator: Any
) -> None:
    apply(cluster, [_lane("standard"), _policy({"matchLabels": {"tier": "gpu"}})], namespace)
    policy = wait_for_condition(
        cluster, "slo", "reliability", namespace, "LanesFound", "False", timeout=30
    )
    assert (condition(policy, "LanesFound") or {})["reason"] == "NoLaneSelected"
    wait_for(
        lambda: _warnings(cluster, namespace, "SLOPolicy", "reliability", "NoLaneSelected"),
        20,
        what="a NoLaneSelected Event",
    )
    cluster.kubectl("label", "lane", "standard", "tier=gpu", "-n", namespace)
    policy = wait_for_condition(cluster, "slo", "reliability", namespace, "LanesFound", timeout=30)
    assert (condition(policy, "LanesFound") or {})["message"] == "watching lanes standard"
    assert get(cluster, "lane", "standard", namespace)["metadata"]["labels"]["tier"] == "gpu"
