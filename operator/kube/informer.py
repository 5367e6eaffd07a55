"""What the operator last saw of the objects it watches, kept from kopf's watch streams.

A reconcile used to list a job's pods and checkpoint records and get its lane on every pass:
most of the API requests per stage. The watches kopf already runs carry the same objects, so
the handlers feed them here and the reconcilers read from here (client-go's informer idea).

Correctness rules:
- A kind is served from memory only after a LIST per namespace has primed it, and is listed
  again every RESYNC_S (watches miss deletions while they reconnect). Watch events that arrive
  meanwhile are kept.
- Newer wins: an object is replaced only by one with a higher resourceVersion, so a slow LIST
  cannot roll back what a watch event or our own write already showed. Deletions leave a
  tombstone for the same reason.
- Our own writes (create, status patch) are stored from the API's response at once, so the next
  pass sees them even before their watch event arrives.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Key = tuple[str, str, str]  # kind, namespace, name
RESYNC_S = 60.0  # how old a kind's LIST may get before the next read lists again


def _version(obj: Mapping[str, Any]) -> int:
    """resourceVersion as a number (etcd's revision); unparsable versions count as oldest."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class Informer:
    """Latest bodies by (kind, namespace, name); thread-safe; bodies are plain dicts."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._tombstones: dict[Key, int] = {}
        self._primed: dict[tuple[str, str], float] = {}  # monotonic time of the last LIST
        self._listing: dict[tuple[str, str], threading.Event] = {}  # LISTs in flight
        self._changes: dict[tuple[str, str], int] = {}  # bumped by every change of a kind
        self._lock = threading.Lock()

    # ---- feeding
    def observe(self, kind: str, event_type: str, body: Mapping[str, Any]) -> None:
        """A watch event (ADDED, MODIFIED, DELETED, or None for kopf's initial listing)."""
        meta = body.get("metadata") or {}
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        version = _version(body)
        with self._lock:
            if event_type == "DELETED":
                self._objects.get(key[:2], {}).pop(key[2], None)
                self._tombstones[key] = max(version, self._tombstones.get(key, 0))
                self._changed(key[:2])
                return
            self._store(key, copy.deepcopy(dict(body)), version)

    def store(self, kind: str, body: dict[str, Any]) -> None:
        """An object our own request returned (created or patched), kept as it is: a fresh
        body the caller hands over (copying every status patch's answer cost the operator
        more CPU than any other part of it under load)."""
        meta = body.get("metadata") or {}
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            self._store(key, body, _version(body))

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Our own delete succeeded; the watch event will confirm it."""
        with self._lock:
            self._objects.get((kind, namespace), {}).pop(name, None)

    def _store(self, key: Key, body: dict[str, Any], version: int) -> None:
        if version and version <= self._tombstones.get(key, 0):
            return  # a listing taken before the deletion
        bucket = self._objects.setdefault(key[:2], {})
        current = bucket.get(key[2])
        if current is None or version >= _version(current):
            bucket[key[2]] = body
            self._tombstones.pop(key, None)
            self._changed(key[:2])

    def _changed(self, kind_namespace: tuple[str, str]) -> None:
        self._changes[kind_namespace] = self._changes.get(kind_namespace, 0) + 1

    def prime(
        self,
        kind: str,
        namespace: str,
        lister: Callable[[], tuple[Iterable[Mapping[str, Any]], int]],
        max_age: float = RESYNC_S,
    ) -> None:
        """Load the kind's objects of a namespace with one LIST, again when `max_age` passed.

        The re-list is the safety net for what a watch can miss: kopf re-lists after a broken
        watch but reports no deletions for objects that vanished meanwhile. `lister` returns
        the items and the listing's resourceVersion; cached objects absent from the listing
        and not newer than it are dropped.
        """
        key = (kind, namespace)
        while True:
            now = time.monotonic()
            with self._lock:
                last = self._primed.get(key, -math.inf)
                if now - last < max_age:
                    return
                flight = self._listing.get(key)
                if flight is None:
                    flight = self._listing[key] = threading.Event()
                    break
            # One LIST at a time per kind and namespace: under load, every reconcile thread
            # found the resync due and listed at once, each LIST slower than the last.
            if last > -math.inf:
                return  # primed before: the cache and the watch serve until the LIST lands
            flight.wait()  # never primed: wait for the first LIST (or take over if it failed)
        try:
            items, listed_at = lister()  # outside the lock: a LIST may take a while
            self.resync(kind, namespace, items, listed_at)
            with self._lock:
                self._primed[key] = now
        finally:
            with self._lock:
                del self._listing[key]
            flight.set()

    def resync(
        self,
        kind: str,
        namespace: str,
        items: Iterable[Mapping[str, Any]],
        listed_at: int,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Take a LIST's result (of the objects carrying `labels`, or all) as the truth."""
        listed = [dict(body) for body in items]
        with self._lock:
            names = set()
            for body in listed:
                name = str((body.get("metadata") or {}).get("name") or "")
                names.add(name)
                self._store((kind, namespace, name), body, _version(body))
            bucket = self._objects.get((kind, namespace), {})
            for name, body in list(bucket.items()):
                if name not in names and _matches(body, labels) and _version(body) <= listed_at:
                    del bucket[name]
                    self._changed((kind, namespace))
            if labels is None:
                # A full listing newer than a deletion supersedes its tombstone: this bounds them.
                for key in [k for k in self._tombstones if k[:2] == (kind, namespace)]:
                    if self._tombstones[key] <= listed_at:
                        del self._tombstones[key]

    # ---- reading
    def primed(self, kind: str, namespace: str) -> bool:
        with self._lock:
            return (kind, namespace) in self._primed

    def changes(self, kind: str, namespace: str) -> int:
        """A counter that moves whenever an object of the kind in the namespace changed:
        a result computed from them holds while it stands still."""
        with self._lock:
            return self._changes.get((kind, namespace), 0)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace), {}).get(name)

    def select(
        self, kind: str, namespace: str, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The kind's objects in a namespace whose labels include `labels`."""
        wanted = dict(labels or {})
        with self._lock:
            found = list(self._objects.get((kind, namespace), {}).values())
        return [body for body in found if _matches(body, wanted)]


def _matches(body: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    """Whether the object carries all of `labels` (None: any object)."""
    have = (body.get("metadata") or {}).get("labels") or {}
    return all(have.get(label) == value for label, value in (labels or {}).items())
