"""The namespace's admission decision, made once per change of its jobs or lanes: a thousand
queued jobs' passes do not each list and sort the thousand."""

from __future__ import annotations

from typing import Any, cast

from bakeline.handlers.job_admission import admission_decision
from bakeline.kube.client import Kube
from bakeline.kube.informer import Informer


class InformerKube:
    """The two Kube reads the decision makes, over an informer, counting the listings."""

    def __init__(self) -> None:
        self.informer = Informer()
        self.listings = 0

    def list_objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        self.listings += 1
        return self.informer.select(kind, namespace)


def _job(name: str, version: int, lane: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(version),
            "creationTimestamp": f"2026-12-01T00:00:{version:02d}Z",
        },
        "spec": {"laneRef": "standard"},
        "status": {"phase": "Running", "lane": lane} if lane else {"phase": "Queued"},
    }


def _lane(version: int, concurrent: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Lane",
        "metadata": {"name": "standard", "namespace": "ns", "resourceVersion": str(version)},
        "spec": {"maxConcurrentJobs": concurrent, "maxQueuedJobs": 10},
    }


def test_the_decision_is_reused_until_a_job_or_lane_changes() -> None:
    kube = InformerKube()
    kube.informer.observe("Lane", "ADDED", _lane(1))
    for index in range(3):
        kube.informer.observe("BakingJob", "ADDED", _job(f"job-{index}", 10 + index))
    first = admission_decision(cast(Kube, kube), "ns", 0.0, None)
    assert dict(first.admit) == {"job-0": "standard"}
    assert first.positions == {"job-1": 1, "job-2": 2}
    listed = kube.listings
    for _ in range(50):  # fifty queued jobs' passes with nothing changed
        assert admission_decision(cast(Kube, kube), "ns", 0.0, None) is first
    assert kube.listings == listed

    kube.informer.store("BakingJob", _job("job-0", 20, lane="standard"))  # admitted: a change
    second = admission_decision(cast(Kube, kube), "ns", 0.0, None)
    assert kube.listings > listed
    assert dict(second.admit) == {} and second.positions == {"job-1": 1, "job-2": 2}

    kube.informer.observe("Lane", "MODIFIED", _lane(21, concurrent=3))  # room in the lane
    third = admission_decision(cast(Kube, kube), "ns", 0.0, None)
    assert dict(third.admit) == {"job-1": "standard", "job-2": "standard"}


def test_without_an_informer_every_call_decides_afresh() -> None:
    kube = InformerKube()
    kube.informer.observe("Lane", "ADDED", _lane(1))
    kube.informer.observe("BakingJob", "ADDED", _job("job-0", 2))
    uncached = cast(Any, kube)
    informer, uncached.informer = kube.informer, None
    uncached.list_objects = lambda kind, namespace: informer.select(kind, namespace)
    one = admission_decision(cast(Kube, kube), "ns", 0.0, None)
    two = admission_decision(cast(Kube, kube), "ns", 0.0, None)
    assert one is not two and dict(one.admit) == dict(two.admit) == {"job-0": "standard"}


def test_the_operators_capacity_serves_the_higher_priority_lane_first() -> None:
    """--max-running-jobs bounds the namespace's running jobs across lanes; Lane.spec.priority
    says which lane's queue gets the room."""
    kube = InformerKube()
    for name, priority, version in (("batch", 0, 1), ("urgent", 500, 2)):
        lane = _lane(version, concurrent=5)
        lane["metadata"]["name"], lane["spec"]["priority"] = name, priority
        kube.informer.observe("Lane", "ADDED", lane)
    for name, lane_ref, version in (("slow", "batch", 3), ("fast", "urgent", 4)):
        job = _job(name, version)
        job["spec"]["laneRef"] = lane_ref
        kube.informer.observe("BakingJob", "ADDED", job)
    unbounded = admission_decision(cast(Kube, kube), "ns", 0.0, None)
    assert unbounded.admit == {"slow": "batch", "fast": "urgent"}
    bounded = admission_decision(cast(Kube, kube), "ns", 0.0, 1)
    assert bounded.admit == {"fast": "urgent"}
    assert bounded.waiting["slow"] == "OperatorAtCapacity"
