"""Group commit of the SLO ledger: one write in flight per object, the rest merged into the
next; every caller returns only after the write carrying its entry, or raises its error."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bakeline.kube.batching import GroupCommit, Throttle


class BlockingWriter:
    """Records each write; the first one blocks until released; writes listed in `fail` raise."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.first_started, self.release = threading.Event(), threading.Event()
        self.fail = fail

    def __call__(self, key: str, data: dict[str, Any]) -> None:
        self.writes.append((key, dict(data)))
        if len(self.writes) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if len(self.writes) in self.fail:
            raise ConnectionError(f"write {len(self.writes)} failed")


def _add_in_thread(commit: GroupCommit, key: str, entry: str, outcomes: dict[str, str]) -> Any:
    def run() -> None:
        try:
            commit.add(key, {entry: "v"})
            outcomes[entry] = "written"
        except ConnectionError as exc:
            outcomes[entry] = str(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_until(probe: Any) -> None:
    deadline = time.monotonic() + 10
    while not probe():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_entries_arriving_during_a_write_go_out_together_in_the_next() -> None:
    writer = BlockingWriter()
    commit = GroupCommit(writer)
    outcomes: dict[str, str] = {}
    first = _add_in_thread(commit, "ns", "job-a", outcomes)
    assert writer.first_started.wait(10)
    later = [_add_in_thread(commit, "ns", f"job-{n}", outcomes) for n in "bcd"]
    other = _add_in_thread(commit, "elsewhere", "job-e", outcomes)  # another object: not held
    other.join(10)
    assert outcomes == {"job-e": "written"}  # b, c, d wait for a's write to land
    writer.release.set()
    for thread in [first, *later]:
        thread.join(10)
    assert outcomes == dict.fromkeys(["job-a", "job-b", "job-c", "job-d", "job-e"], "written")
    by_key = [(key, sorted(data)) for key, data in writer.writes]
    assert by_key[0] == ("ns", ["job-a"])
    assert sorted(by_key[1:]) == [("elsewhere", ["job-e"]), ("ns", ["job-b", "job-c", "job-d"])]


def test_a_failed_write_fails_every_caller_it_carried_and_no_other() -> None:
    writer = BlockingWriter(fail=frozenset({2}))
    commit = GroupCommit(writer)
    outcomes: dict[str, str] = {}
    first = _add_in_thread(commit, "ns", "job-a", outcomes)
    assert writer.first_started.wait(10)
    carried = [_add_in_thread(commit, "ns", n, outcomes) for n in ("job-b", "job-c")]
    _wait_until(lambda: len(commit._pending.get("ns", {})) == 2)
    writer.release.set()
    for thread in [first, *carried]:
        thread.join(10)
    assert outcomes == {
        "job-a": "written",
        "job-b": "write 2 failed",
        "job-c": "write 2 failed",
    }
    commit.add("ns", {"job-b": "v"})  # the retry of a failed caller goes out on its own
    assert writer.writes[-1] == ("ns", {"job-b": "v"})
    assert not commit._errors and not commit._waiting  # nothing kept once every caller knew


def test_a_lone_caller_writes_at_once_and_sees_its_own_error() -> None:
    def refuse(key: str, data: dict[str, Any]) -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        GroupCommit(refuse).add("ns", {"k": "v"})


def test_a_throttle_says_yes_once_per_key_per_interval_to_one_caller() -> None:
    throttle = Throttle()
    assert throttle.due("a", 100.0, 60.0) and throttle.due("b", 100.0, 60.0)
    assert not throttle.due("a", 159.9, 60.0)
    assert throttle.due("a", 160.0, 60.0) and not throttle.due("a", 160.0, 60.0)
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda: answers.append(throttle.due("c", 5.0, 60.0)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [False] * 7 + [True]
