"""References to lanes that do not exist are said: a Lane's fallbackLane (FallbackLaneFound) and
an SLOPolicy's lanes (LanesFound), each with one Warning Event per change, and each turning True
when the lane appears; who is looked at again when a lane comes, goes or is relabelled."""

from __future__ import annotations

import copy
from typing import Any, cast

from bakeline.api.slopolicy import LaneSelector
from bakeline.handlers.lanes import (
    lane_events,
    lane_presence_changed,
    lane_status,
    lanes_falling_back_to,
    reconcile_lane,
)
from bakeline.handlers.slo import policies_watching, reconcile_slo, set_lanes_found
from bakeline.kube.client import Kube, merge_patched
from bakeline.kube.conditions import condition_event, find_condition, set_condition

META = {"name": "p", "namespace": "ns", "generation": 3}


def _lane(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "generation": 1, "uid": name}
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "bakeline.io/v1alpha1", "kind": "Lane", "metadata": meta, "spec": spec}


def _policy(selector: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "SLOPolicy",
        "metadata": {"name": "reliability", "namespace": "ns", "generation": 1, "uid": "u"},
        "spec": {
            "laneSelector": selector,
            "objectives": [{"name": "ok", "sli": "JobSuccess", "target": 0.99, "window": "1h"}],
        },
    }


class FakeKube:
    """The Kube calls of the Lane and SLOPolicy passes, over dicts; Events are recorded."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in objects}
        self.events: list[tuple[str, str, str, str]] = []

    def add(self, obj: dict[str, Any]) -> None:
        self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.objects[(kind, name)])

    def list_objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind]

    def list_lanes(self, namespace: str, label_selector: str | None) -> list[dict[str, Any]]:
        wanted = dict(p.split("=") for p in (label_selector or "").split(",") if p)
        return [
            lane
            for lane in self.list_objects("Lane", namespace)
            if wanted.items() <= (lane["metadata"].get("labels") or {}).items()
        ]

    def circuits(self, namespace: str) -> dict[str, Any]:
        return {}

    def read_ledger(self, namespace: str) -> tuple[dict[str, str], str | None]:
        return {}, None

    def patch_ledger(self, *_: Any) -> None:
        pass

    def patch_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any], *_: Any
    ) -> None:
        obj = self.objects[(kind, name)]
        obj["status"] = merge_patched(obj.get("status") or {}, status)

    def post_event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self.events.append((obj["metadata"]["name"], kind, reason, message))


# ---------------------------------------------------------------------------- conditions


def test_a_condition_event_comes_once_per_change() -> None:
    ok: dict[str, Any] = {}
    set_condition(ok, "LanesFound", "True", "LanesFound", "watching lanes a", META)
    missing: dict[str, Any] = {}
    set_condition(missing, "LanesFound", "False", "LaneNotFound", "lane b does not exist", META)
    other: dict[str, Any] = {}
    set_condition(other, "LanesFound", "False", "LaneNotFound", "lane c does not exist", META)
    assert condition_event({}, missing, "LanesFound") == (
        "Warning",
        "LaneNotFound",
        "lane b does not exist",
    )
    assert condition_event(ok, missing, "LanesFound") is not None
    assert condition_event(missing, missing, "LanesFound") is None  # the same, again: nothing
    assert condition_event(missing, other, "LanesFound") == (
        "Warning",
        "LaneNotFound",
        "lane c does not exist",
    )
    assert condition_event(missing, ok, "LanesFound") == (
        "Normal",
        "LanesFound",
        "watching lanes a",
    )
    assert condition_event({}, ok, "LanesFound") is None
    assert condition_event(ok, ok, "LanesFound") is None
    assert condition_event(missing, {}, "LanesFound") is None


# ---------------------------------------------------------------------------- Lane


def test_a_missing_fallback_lane_is_said_until_it_exists() -> None:
    lane = _lane("standard", fallbackLane="batch")
    missing = lane_status(lane, [], lanes={"standard"})
    found = find_condition(missing, "FallbackLaneFound")
    assert found is not None
    assert (found["status"], found["reason"]) == ("False", "FallbackLaneNotFound")
    assert "fallbackLane batch does not exist in namespace ns" in found["message"]
    # Ready says what admission does, not the reference: the lane still admits.
    assert find_condition(missing, "Ready") == find_condition(lane_status(lane, []), "Ready")
    [event] = lane_events({}, missing)
    assert event[:2] == ("Warning", "FallbackLaneNotFound") and "batch" in event[2]
    assert (
        lane_events(missing, lane_status({**lane, "status": missing}, [], lanes=["standard"])) == []
    )
    back = lane_status({**lane, "status": missing}, [], lanes={"standard", "batch"})
    assert (find_condition(back, "FallbackLaneFound") or {})["status"] == "True"
    assert lane_events(missing, back) == [
        ("Normal", "FallbackLaneFound", "fallbackLane batch exists")
    ]


def test_a_lane_without_a_fallback_has_no_fallback_condition() -> None:
    lane = _lane("standard", fallbackLane="batch")
    missing = lane_status(lane, [], lanes={"standard"})
    dropped = lane_status({**_lane("standard"), "status": missing}, [], lanes={"standard"})
    assert find_condition(dropped, "FallbackLaneFound") is None
    assert find_condition(dropped, "Ready") is not None
    assert lane_events(missing, dropped) == []
    # Lane names unknown (None): the condition is left as it was.
    kept = lane_status({**lane, "status": missing}, [])
    assert find_condition(kept, "FallbackLaneFound") == find_condition(missing, "FallbackLaneFound")


def test_reconcile_lane_warns_once_and_recovers_when_the_fallback_appears() -> None:
    kube = FakeKube(_lane("standard", fallbackLane="batch"))
    for now in (1.0, 2.0, 3.0):
        reconcile_lane(cast(Kube, kube), kube.get("Lane", "ns", "standard"), now)
    assert [e[2] for e in kube.events] == ["FallbackLaneNotFound"]
    status = kube.get("Lane", "ns", "standard")["status"]
    assert (find_condition(status, "FallbackLaneFound") or {})["status"] == "False"
    kube.add(_lane("batch"))
    reconcile_lane(cast(Kube, kube), kube.get("Lane", "ns", "standard"), 4.0)
    status = kube.get("Lane", "ns", "standard")["status"]
    assert (find_condition(status, "FallbackLaneFound") or {})["status"] == "True"
    assert [e[1:3] for e in kube.events] == [
        ("Warning", "FallbackLaneNotFound"),
        ("Normal", "FallbackLaneFound"),
    ]


# ---------------------------------------------------------------------------- SLOPolicy


def _lanes_found(selector: dict[str, Any], found: list[str]) -> dict[str, Any]:
    status: dict[str, Any] = {}
    set_lanes_found(status, LaneSelector.model_validate(selector), found, META)
    return find_condition(status, "LanesFound") or {}


def test_lanes_found_names_every_missing_lane() -> None:
    one = _lanes_found({"names": ["a", "b"]}, ["a"])
    assert (one["status"], one["reason"]) == ("False", "LaneNotFound")
    assert one["message"] == "lane b does not exist in namespace ns"
    two = _lanes_found({"names": ["a", "b", "c"]}, ["b"])
    assert two["message"] == "lanes a, c do not exist in namespace ns"
    ok = _lanes_found({"names": ["a", "b"]}, ["b", "a"])
    assert (ok["status"], ok["reason"], ok["message"]) == (
        "True",
        "LanesFound",
        "watching lanes a, b",
    )


def test_a_selector_that_selects_no_lane_says_so() -> None:
    none = _lanes_found({"matchLabels": {"tier": "gpu"}}, [])
    assert (none["status"], none["reason"]) == ("False", "NoLaneSelected")
    assert none["message"] == "laneSelector selects no lane in namespace ns"
    assert _lanes_found({"names": []}, [])["reason"] == "NoLaneSelected"
    some = _lanes_found({"matchLabels": {}}, ["x"])
    assert (some["status"], some["message"]) == ("True", "watching lanes x")


def test_reconcile_slo_warns_once_per_change_and_recovers() -> None:
    kube = FakeKube(_lane("a"), _policy({"names": ["a", "b", "c"]}))

    def evaluate(now: float) -> dict[str, Any]:
        reconcile_slo(cast(Kube, kube), kube.get("SLOPolicy", "ns", "reliability"), now, 60.0)
        return (
            find_condition(kube.get("SLOPolicy", "ns", "reliability")["status"], "LanesFound") or {}
        )

    for now in (1.0, 2.0, 3.0):  # each pass writes lastEvaluated; the Event comes once
        assert evaluate(now)["message"] == "lanes b, c do not exist in namespace ns"
    kube.add(_lane("b"))
    assert evaluate(4.0)["message"] == "lane c does not exist in namespace ns"
    assert evaluate(5.0)["status"] == "False"
    kube.add(_lane("c"))
    assert evaluate(6.0)["status"] == "True"
    assert evaluate(7.0)["status"] == "True"
    assert [e[1:] for e in kube.events] == [
        ("Warning", "LaneNotFound", "lanes b, c do not exist in namespace ns"),
        ("Warning", "LaneNotFound", "lane c does not exist in namespace ns"),
        ("Normal", "LanesFound", "watching lanes a, b, c"),
    ]
    ready = find_condition(kube.get("SLOPolicy", "ns", "reliability")["status"], "Ready")
    assert (ready or {})["status"] == "True"


def test_reconcile_slo_says_when_its_label_selector_selects_nothing() -> None:
    kube = FakeKube(_lane("a"), _policy({"matchLabels": {"tier": "gpu"}}))
    policy = kube.get("SLOPolicy", "ns", "reliability")
    reconcile_slo(cast(Kube, kube), policy, 1.0, 60.0)
    status = kube.get("SLOPolicy", "ns", "reliability")["status"]
    assert (find_condition(status, "LanesFound") or {})["reason"] == "NoLaneSelected"
    kube.add(_lane("a", labels={"tier": "gpu"}))
    reconcile_slo(cast(Kube, kube), kube.get("SLOPolicy", "ns", "reliability"), 2.0, 60.0)
    status = kube.get("SLOPolicy", "ns", "reliability")["status"]
    assert (find_condition(status, "LanesFound") or {})["message"] == "watching lanes a"
    assert [e[2] for e in kube.events] == ["NoLaneSelected", "LanesFound"]


# ---------------------------------------------------------------------------- who looks again


def test_only_a_lane_coming_going_or_relabelled_wakes_its_referrers() -> None:
    lane = _lane("batch", labels={"tier": "cpu"})
    written = {**lane, "status": {"running": 1}}
    assert lane_presence_changed("ADDED", None, lane)
    assert lane_presence_changed("ADDED", lane, lane)  # a LIST may have brought it first
    assert lane_presence_changed(None, None, lane)  # kopf's initial listing
    assert lane_presence_changed("DELETED", lane, lane)
    assert lane_presence_changed("MODIFIED", lane, _lane("batch", labels={"tier": "gpu"}))
    assert not lane_presence_changed("MODIFIED", lane, written)  # its own status write


def test_the_referrers_of_a_lane() -> None:
    lanes = [_lane("a", fallbackLane="batch"), _lane("b"), _lane("c", fallbackLane="batch")]
    assert lanes_falling_back_to(lanes, "batch") == ["a", "c"]
    assert lanes_falling_back_to(lanes, "a") == []
    named = {**_policy({"names": ["a"]}), "metadata": {"name": "named"}}
    labelled = {**_policy({"matchLabels": {"t": "x"}}), "metadata": {"name": "labelled"}}
    assert policies_watching([named, labelled], "a") == ["labelled", "named"]
    assert policies_watching([named, labelled], "b") == ["labelled"]
