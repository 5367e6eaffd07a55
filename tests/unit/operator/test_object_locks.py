"""Per-object reconcile locks: one object's reconciles never overlap, and the table of locks
forgets an object once nobody holds its lock (it grew by one entry per job ever seen)."""

from __future__ import annotations

import gc
import threading

from bakeline.handlers.app import Runtime


def test_a_held_lock_is_shared_and_excludes_a_second_holder() -> None:
    runtime = Runtime()
    entered = threading.Event()
    with runtime.lock_for("ns", "BakingJob/a") as held:
        assert runtime.lock_for("ns", "BakingJob/a") is held
        assert runtime.lock_for("ns", "BakingJob/b") is not held

        def second() -> None:
            with runtime.lock_for("ns", "BakingJob/a"):
                entered.set()

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        assert not entered.wait(0.2)  # waits while the first holder is inside
    thread.join(10)
    assert entered.is_set()


def test_the_table_forgets_locks_nobody_holds() -> None:
    runtime = Runtime()
    for index in range(1000):
        with runtime.lock_for("ns", f"BakingJob/job-{index}"):
            pass
    gc.collect()
    assert len(runtime.locks) == 0
