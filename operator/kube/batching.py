"""Group commit: writes that many reconcile threads make to one object, merged into one request.

Every finished job adds its outcome to the namespace's SLO ledger, one ConfigMap. Written one
patch per job, concurrent patches of the same object queued up in the API server (each one
re-encodes the whole ledger) and held the reconcile threads: at 200 jobs the ledger patch was
the largest share of the operator's time. Here one request per object is in flight at a time
and carries every entry that arrived meanwhile. A caller still returns only once the request
carrying its entry succeeded (or raises what it raised), so "the ledger before the status"
holds as it did.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any


class GroupCommit:
    """Merged writes of dict entries per key (an object's name); `write(key, entries)` is the
    one request. Thread-safe."""

    def __init__(self, write: Callable[[str, dict[str, Any]], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, Any]] = {}
        self._writing: set[str] = set()
        self._open: dict[str, int] = {}  # per key: the batch now collecting entries
        self._done: dict[str, int] = {}  # per key: the last batch written or failed
        self._errors: dict[tuple[str, int], BaseException] = {}
        self._waiting: dict[tuple[str, int], int] = {}  # callers yet to read a batch's outcome

    def add(self, key: str, entries: Mapping[str, Any]) -> None:
        """Write `entries` into `key`'s object, with whatever else is pending for it."""
        with self._cond:
            self._pending.setdefault(key, {}).update(entries)
            batch = self._open.setdefault(key, 1)
            while key in self._writing and self._done.get(key, 0) < batch:
                self._wait_for(key, batch)
            if self._done.get(key, 0) >= batch:
                self._raise_outcome(key, batch)
                return
            # Nothing in flight and this batch unwritten: this caller writes it.
            self._writing.add(key)
            data = self._pending.pop(key)
            self._open[key] = batch + 1
        error: BaseException | None = None
        try:
            self._write(key, data)
        except BaseException as exc:  # handed to every caller whose entry it carried
            error = exc
        with self._cond:
            self._writing.discard(key)
            self._done[key] = batch
            if error is not None and self._waiting.get((key, batch)):
                self._errors[(key, batch)] = error
            self._cond.notify_all()
        if error is not None:
            raise error

    def _wait_for(self, key: str, batch: int) -> None:
        self._waiting[(key, batch)] = self._waiting.get((key, batch), 0) + 1
        self._cond.wait()
        self._waiting[(key, batch)] -= 1

    def _raise_outcome(self, key: str, batch: int) -> None:
        """Called under the lock by a caller whose batch another one wrote."""
        error = self._errors.get((key, batch))
        if not self._waiting.get((key, batch)):
            self._waiting.pop((key, batch), None)
            self._errors.pop((key, batch), None)  # the last reader drops it
        if error is not None:
            raise error


class Throttle:
    """Yes to one caller per key per interval: work that is cheap to do a little late (folding
    a namespace's ledger) is done by whichever caller comes first once it is due, and by one
    caller only. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def due(self, key: str, now: float, every: float) -> bool:
        """Whether `key`'s work is due at `now` (its last `every` seconds ago or more, or never);
        a yes counts as done at `now`."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < every:
                return False
            self._last[key] = now
            return True
