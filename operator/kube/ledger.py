"""The SLO ledger's contents: finished jobs' outcomes, folded with age into time buckets.

The ledger is one ConfigMap per namespace (1 MiB of data at most). Each finished job adds one
key (written by the job reconcile before its final status, so a restart loses no counts). Kept
one key per job, the ledger filled after about 1,600 nine-stage jobs inside the 30-day window
and then refused every outcome. So entries are folded as they age, per lane: raw for 10
minutes, then into buckets of 1 minute, of 5 minutes after 2 hours, of 1 hour after a day and
of 6 hours after 3 days. Its size is then bounded by time and lanes, not by jobs.

What folding gives up, and why it is safe for the SLO math:
- time: a bucket's events count at the bucket's midpoint, so a window's edge is off by at most
  half a bucket, and bucket widths grow with age so that this stays within about 4% of any
  window that reaches that far back; windows of up to 10 minutes are exact;
- latency: as in a Prometheus histogram, a folded duration keeps only the smallest bound it
  does not exceed, the bounds being every latency threshold of the namespace's SLOPolicies
  when it folds (those stay exact) and a 1-2-5 series (0.001 s, 0.002 s, 0.005 s, ...). A
  threshold added later reads older durations rounded up to a bound: never better than they
  were.
Counts are kept exactly.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from bakeline.api.common import window_seconds
from bakeline.engine import slo
from bakeline.kube.client import MAX_DATA_KEY, Kube
from bakeline.kube.clock import epoch

log = logging.getLogger("bakeline.ledger")

MAX_LEDGER_KEY = MAX_DATA_KEY
FOLD_TRIES = 3  # a fold read-modify-writes; jobs' outcomes landing in between make it retry
FOLD_EVERY_S = 60.0  # how often the writers fold a namespace's ledger, SLOPolicy or not

# (age, width): an entry whose bucket of `width` seconds ended more than `age` seconds ago is
# folded into it. Widest first; each width divides the next so buckets nest when re-folded.
TIERS: tuple[tuple[float, int], ...] = (
    (3 * 86400.0, 21600),
    (86400.0, 3600),
    (7200.0, 300),
    (600.0, 60),
)
# The bounds a folded duration is kept to, besides the policies' thresholds: 1-2-5 per decade.
GRID: tuple[float, ...] = tuple(float(f"{m}e{e}") for e in range(-3, 7) for m in (1, 2, 5))

# One bucket's counts: (kind, ok, seconds or None) -> how many records.
Counts = dict[tuple[str, bool, float | None], int]


def ledger_key(lane: str, job: Mapping[str, Any], rerun_at: float | None = None) -> str:
    """The job's entry in the ledger: readable where the names fit, a digest where they do not
    (the entry itself names the lane; the job's uid keeps keys apart). A rerun (`rerun_at`,
    when it was asked for) is an outcome of its own, beside the first run's."""
    meta = job["metadata"]
    run = f".r{int(rerun_at)}" if rerun_at is not None else ""
    key = f"{lane}.{meta['name']}.{meta['uid'][:8]}{run}"
    if len(key) <= MAX_LEDGER_KEY:
        return key
    digest = hashlib.sha256(f"{lane}/{meta['name']}".encode()).hexdigest()[:32]
    return f"{lane[: 200 - len(run)]}.{digest}.{meta['uid'][:8]}{run}"


def bucket_key(lane: str, start: int, width: int) -> str:
    """A bucket's key. `..` never occurs in a job's key (names have no empty DNS labels)."""
    key = f"{lane}..{width}.{start}"
    if len(key) <= MAX_LEDGER_KEY:
        return key
    return f"{hashlib.sha256(lane.encode()).hexdigest()[:32]}..{width}.{start}"


def outcome_entry(lane: str, status: Mapping[str, Any], now: float) -> dict[str, Any]:
    """A finished job as ledger records: its outcome, queue wait, gate and stage times."""
    ok = status.get("phase") == "Succeeded"
    rerun = epoch(status.get("rerunAt"))
    admitted = epoch(status.get("admittedAt")) or now
    # A rerun is timed from its request, and was never queued: the first run's wait and stages
    # were counted with the first run.
    started = max(admitted, rerun) if rerun is not None else admitted
    queued = epoch(status.get("queuedAt")) or started
    records: list[dict[str, Any]] = [
        {"kind": slo.RecordKind.JOB, "ok": ok, "seconds": round(now - started, 3)}
    ]
    if rerun is None:
        wait = round(max(0.0, started - queued), 3)
        records.append({"kind": slo.RecordKind.QUEUE, "ok": True, "seconds": wait})
    gate_failed = "gate" in (status.get("lastRollbackReason") or "").lower() or any(
        "gate" in (s.get("message") or "").lower()
        for s in status.get("stages") or []
        if s.get("phase") in ("Failed", "RolledBack")
    )
    records.append({"kind": slo.RecordKind.GATE, "ok": not gate_failed})
    for stage in status.get("stages") or []:
        if rerun is not None and (epoch(stage.get("startedAt")) or 0.0) < rerun:
            continue  # not run again
        if stage.get("durationSeconds") is not None:
            records.append(
                {"kind": slo.RecordKind.STAGE, "ok": True, "seconds": stage["durationSeconds"]}
            )
    return {"lane": lane, "at": now, "records": records}


Ledger = tuple[dict[str, dict[str, Any]], str | None]  # entries by key, resourceVersion


def read_ledger(kube: Kube, namespace: str) -> Ledger:
    """The namespace's ledger entries by key, and the version read. Values that are not
    entries (someone else's key) are left out here and left alone in the ConfigMap."""
    data, version = kube.read_ledger(namespace)
    entries = {}
    for key, value in data.items():
        try:
            entry = json.loads(value)
            _span(entry)
            for kind, _, _ in _counts(entry):
                slo.RecordKind(kind)
        except (ValueError, TypeError, KeyError, AttributeError):
            log.debug("SLO ledger of %s: key %s is not an outcome entry", namespace, key)
            continue
        entries[key] = entry
    return entries, version


def records(entries: Mapping[str, Mapping[str, Any]], lanes: set[str]) -> list[slo.OutcomeRecord]:
    """The outcome records of the given lanes, from job entries and buckets alike."""
    out = []
    for entry in entries.values():
        if entry.get("lane") not in lanes:
            continue
        at = float(entry["at"])
        for (kind, ok, seconds), count in _counts(entry).items():
            out.append(slo.OutcomeRecord(at, slo.RecordKind(kind), ok, seconds, count))
    return out


def latency_bounds(thresholds: Iterable[float]) -> tuple[float, ...]:
    """The bounds durations fold to: the thresholds the policies use, and the grid."""
    return tuple(sorted(set(GRID) | {float(t) for t in thresholds}))


def round_up(seconds: float, bounds: Sequence[float]) -> float:
    """The smallest bound not below `seconds` (past the last bound, `seconds` itself)."""
    i = bisect.bisect_left(bounds, seconds)
    return bounds[i] if i < len(bounds) else seconds


def fold(
    entries: Mapping[str, Mapping[str, Any]],
    now: float,
    horizon: float | None = None,
    pressed: bool = False,
    bounds: Sequence[float] = GRID,
) -> dict[str, str | None]:
    """The patch that folds aged entries into buckets and drops those older than `horizon`:
    new bucket values as JSON, None for keys that go (a JSON merge patch deletes with null).
    `pressed` (the ledger is full) also folds jobs' entries of every minute that has ended."""
    patch: dict[str, str | None] = {}
    merged: dict[str, dict[str, Any]] = {}  # bucket key -> bucket, as it will be written
    for key, entry in entries.items():
        start, width = _span(entry)
        if horizon is not None and now - (start + width) > horizon:
            patch[key] = None
            continue
        target = _target(start, width, now, pressed)
        if target is None:
            continue
        lane = str(entry.get("lane"))
        new_start, new_width = target
        new_key = bucket_key(lane, new_start, new_width)
        if new_key == key:
            continue
        bucket = merged.get(new_key)
        if bucket is None:
            existing = entries.get(new_key)
            bucket = {
                "lane": lane,
                "from": new_start,
                "width": new_width,
                "counts": _counts(existing) if existing is not None else {},
            }
            merged[new_key] = bucket
        _add(bucket["counts"], _counts(entry), bounds)
        patch[key] = None
    for key, bucket in merged.items():
        patch[key] = json.dumps(_bucket_wire(bucket), sort_keys=True, separators=(",", ":"))
    return patch


def _span(entry: Mapping[str, Any]) -> tuple[float, int]:
    """(start, width) of an entry: a job's outcome is an instant, a bucket spans its width."""
    if "width" in entry:
        return float(entry["from"]), int(entry["width"])
    return float(entry["at"]), 0


def _target(start: float, width: int, now: float, pressed: bool) -> tuple[int, int] | None:
    """The bucket an entry belongs in now, or None where it stays as it is."""
    for age, tier in TIERS:
        if tier <= width:
            return None  # already at least this wide, and any wider tier was too young
        bucket = int(start // tier) * tier
        if bucket + tier <= now - age:
            return bucket, tier
    narrowest = TIERS[-1][1]
    bucket = int(start // narrowest) * narrowest
    if pressed and width < narrowest and bucket + narrowest <= now:
        return bucket, narrowest  # full: a job's entry goes into its minute once it ended
    return None


def _counts(entry: Mapping[str, Any]) -> Counts:
    counts: Counts = {}
    if "width" in entry:
        # {"stage/1": {"5": 12, "10": 3}, "gate/0": {"-": 1}}: kind/ok, then duration -> count
        for kind_ok, by_seconds in (entry.get("counts") or {}).items():
            kind, ok = kind_ok.rsplit("/", 1)
            for seconds, n in by_seconds.items():
                key = (kind, ok == "1", None if seconds == "-" else float(seconds))
                counts[key] = counts.get(key, 0) + int(n)
        return counts
    for record in entry.get("records") or []:
        seconds = record.get("seconds")
        key = (
            str(record["kind"]),
            bool(record.get("ok", True)),
            None if seconds is None else float(seconds),
        )
        counts[key] = counts.get(key, 0) + 1
    return counts


def _add(into: Counts, counts: Counts, bounds: Sequence[float]) -> None:
    for (kind, ok, seconds), n in counts.items():
        if seconds is not None:
            seconds = round_up(seconds, bounds)
        key = (kind, ok, seconds)
        into[key] = into.get(key, 0) + n


def _bucket_wire(bucket: Mapping[str, Any]) -> dict[str, Any]:
    wire: dict[str, dict[str, int]] = {}
    for (kind, ok, seconds), n in bucket["counts"].items():
        wire.setdefault(f"{kind}/{int(ok)}", {})["-" if seconds is None else _number(seconds)] = n
    return {
        "lane": bucket["lane"],
        "from": bucket["from"],
        "width": bucket["width"],
        "at": bucket["from"] + bucket["width"] / 2,  # where its events count, in any window
        "counts": wire,
    }


def _number(seconds: float) -> str:
    """A duration as a short key that reads back exactly ("5", "0.002", "7.25")."""
    text = repr(float(seconds))
    return text[:-2] if text.endswith(".0") else text


MIN_HORIZON = 30 * 86400.0  # kept at least this long: the longest window most policies use


def policy_thresholds(kube: Kube, namespace: str) -> set[float]:
    """The latency thresholds the namespace's SLOPolicies judge by."""
    return {
        float(objective["thresholdSeconds"])
        for policy in kube.list_objects("SLOPolicy", namespace)
        for objective in (policy.get("spec") or {}).get("objectives") or []
        if isinstance(objective.get("thresholdSeconds"), int | float)
    }


def horizon(kube: Kube, namespace: str) -> float:
    """How far back any SLOPolicy of the namespace reads (30 days at least, so a policy
    created later finds a month of history): entries older than that go."""
    windows = [MIN_HORIZON]
    for policy in kube.list_objects("SLOPolicy", namespace):
        spec = policy.get("spec") or {}
        named = [o.get("window") for o in spec.get("objectives") or []]
        named += [a.get("longWindow") for a in spec.get("burnRateAlerts") or []]
        for window in named:
            try:
                windows.append(float(window_seconds(str(window))))
            except ValueError:  # the schema refuses these; a policy mid-upgrade reads none
                continue
    return max(windows)


def record_outcome(kube: Kube, namespace: str, key: str, entry: dict[str, Any], now: float) -> None:
    """Write a finished job's entry. A full ledger (413, 422) is folded as far as it goes and
    the entry written again; what that still refuses raises to the caller. Once a minute a
    writer also folds the ledger's aged entries, so a namespace that no SLOPolicy evaluates
    keeps about ten minutes of raw entries, not a full ConfigMap."""
    try:
        kube.record_outcome(namespace, key, entry)
    except ApiException as exc:
        if exc.status not in (413, 422):
            raise
        log.info("SLO ledger of %s is full; folding it now", namespace)
        fold_ledger(kube, namespace, now, pressed=True)
        kube.record_outcome(namespace, key, entry)
    if kube.ledger_folds.due(namespace, now, FOLD_EVERY_S):
        try:
            fold_ledger(kube, namespace, now)
        except ApiException as exc:  # the outcome is written; the next minute folds again
            log.warning("SLO ledger of %s: fold failed: %s", namespace, exc.reason)


def fold_ledger(
    kube: Kube, namespace: str, now: float, read: Ledger | None = None, pressed: bool = False
) -> bool:
    """Fold the namespace's ledger and prune it past its `horizon`; `read` is a fresh
    `read_ledger` result to start from. The patch applies only to the version it was
    computed from, so an outcome written meanwhile is never folded away unseen; returns
    whether a fold landed (False after FOLD_TRIES conflicts: the next evaluation tries again).
    """
    bounds = latency_bounds(policy_thresholds(kube, namespace))
    keep = horizon(kube, namespace)
    for _ in range(FOLD_TRIES):
        entries, version = read if read is not None else read_ledger(kube, namespace)
        read = None
        patch = fold(entries, now, keep, pressed, bounds)
        if not patch:
            return True
        try:
            kube.patch_ledger(namespace, patch, version)
            return True
        except ApiException as exc:
            if exc.status != 409:
                raise
    log.info(
        "SLO ledger of %s changed under %d folds in a row; folding later", namespace, FOLD_TRIES
    )
    return False
