"""The operator's watch cache: newer wins, deletions stick, a LIST resyncs what watches missed."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from bakeline.kube.informer import Informer

Listing = tuple[Iterable[Mapping[str, Any]], int]


def _pod(name: str, version: int, job: str = "a", phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "resourceVersion": str(version),
            "labels": {"bakeline.io/job": job},
        },
        "status": {"phase": phase},
    }


def test_an_older_version_never_replaces_a_newer_one() -> None:
    informer = Informer()
    informer.observe("Pod", "MODIFIED", _pod("p", 5, phase="Succeeded"))
    informer.observe("Pod", "MODIFIED", _pod("p", 4, phase="Running"))
    assert informer.get("Pod", "ns", "p")["status"]["phase"] == "Succeeded"  # type: ignore[index]


def test_a_listing_taken_before_a_deletion_does_not_bring_the_object_back() -> None:
    informer = Informer()
    informer.observe("Pod", "DELETED", _pod("p", 7))
    informer.prime("Pod", "ns", lambda: ([_pod("p", 6)], 6))
    assert informer.get("Pod", "ns", "p") is None
    informer.observe("Pod", "ADDED", _pod("p", 9))  # re-created under the same name
    assert informer.get("Pod", "ns", "p") is not None


def test_a_listing_drops_what_vanished_while_the_watch_was_away_but_keeps_newer_writes() -> None:
    informer = Informer()
    informer.observe("Pod", "ADDED", _pod("gone", 3))
    informer.store("Pod", _pod("just-created", 12))  # our own create, newer than the LIST
    informer.prime("Pod", "ns", lambda: ([_pod("kept", 4)], 10))
    names = {p["metadata"]["name"] for p in informer.select("Pod", "ns")}
    assert names == {"kept", "just-created"}


def test_a_labelled_resync_touches_only_objects_with_those_labels() -> None:
    informer = Informer()
    informer.observe("Pod", "ADDED", _pod("a-1", 3, job="a"))
    informer.observe("Pod", "ADDED", _pod("b-1", 3, job="b"))
    informer.resync("Pod", "ns", [], 10, {"bakeline.io/job": "a"})
    assert [p["metadata"]["name"] for p in informer.select("Pod", "ns")] == ["b-1"]


def test_prime_lists_once_until_its_age_runs_out() -> None:
    informer = Informer()
    calls: list[int] = []

    def lister() -> tuple[list[dict[str, Any]], int]:
        calls.append(1)
        return [], 1

    informer.prime("Pod", "ns", lister)
    informer.prime("Pod", "ns", lister)
    assert len(calls) == 1 and informer.primed("Pod", "ns")
    informer.prime("Pod", "ns", lister, max_age=0)
    assert len(calls) == 2


def test_select_filters_by_namespace_kind_and_labels() -> None:
    informer = Informer()
    informer.observe("Pod", "ADDED", _pod("a-1", 1, job="a"))
    informer.observe("Pod", "ADDED", _pod("b-1", 2, job="b"))
    other = _pod("a-2", 3, job="a")
    other["metadata"]["namespace"] = "elsewhere"
    informer.observe("Pod", "ADDED", other)
    informer.observe("Record", "ADDED", _pod("a-r", 4, job="a"))
    found = informer.select("Pod", "ns", {"bakeline.io/job": "a"})
    assert [p["metadata"]["name"] for p in found] == ["a-1"]


def test_stored_bodies_are_copies_callers_cannot_corrupt() -> None:
    informer = Informer()
    body = _pod("p", 1)
    informer.observe("Pod", "ADDED", body)
    body["status"]["phase"] = "Failed"
    assert informer.get("Pod", "ns", "p")["status"]["phase"] == "Running"  # type: ignore[index]


class SlowLister:
    """A LIST that blocks until released, counting how many were started."""

    def __init__(self, items: list[dict[str, Any]], version: int, fail_first: bool = False):
        self.items, self.version, self.fail_first = items, version, fail_first
        self.calls = 0
        self.started, self.release = threading.Event(), threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> Listing:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        self.started.set()
        assert self.release.wait(10)
        if first and self.fail_first:
            raise ConnectionError("the API server went away")
        return self.items, self.version


def _in_thread(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_resync_due_to_many_threads_lists_once_and_the_others_read_the_cache() -> None:
    informer = Informer()
    informer.prime("Pod", "ns", lambda: ([_pod("old", 1)], 1))
    lister = SlowLister([_pod("old", 1), _pod("new", 2)], 2)
    first = _in_thread(lambda: informer.prime("Pod", "ns", lister, max_age=0))
    assert lister.started.wait(10)
    # While that LIST is in flight the others return at once with what the cache holds.
    for _ in range(5):
        informer.prime("Pod", "ns", lister, max_age=0)
    assert [p["metadata"]["name"] for p in informer.select("Pod", "ns")] == ["old"]
    lister.release.set()
    first.join(10)
    assert lister.calls == 1
    assert {p["metadata"]["name"] for p in informer.select("Pod", "ns")} == {"old", "new"}


def test_the_first_prime_waits_for_the_list_in_flight_and_takes_over_if_it_fails() -> None:
    informer = Informer()
    lister = SlowLister([_pod("p", 3)], 3, fail_first=True)
    errors: list[BaseException] = []

    def prime_expecting_failure() -> None:
        with pytest.raises(ConnectionError) as caught:
            informer.prime("Pod", "ns", lister)
        errors.append(caught.value)

    first = _in_thread(prime_expecting_failure)
    assert lister.started.wait(10)
    waiter_done = threading.Event()

    def prime_then_signal() -> None:
        informer.prime("Pod", "ns", lister)
        waiter_done.set()

    waiter = _in_thread(prime_then_signal)
    assert not waiter_done.wait(0.2)  # never primed: it does not read an empty cache
    lister.release.set()
    first.join(10)
    waiter.join(10)
    assert errors and lister.calls == 2  # the waiter listed again after the failure
    assert informer.primed("Pod", "ns")
    assert informer.get("Pod", "ns", "p") is not None
