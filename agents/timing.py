"""Latency measurement: THE one method, shared by every agent and every benchmark.

`compare` is what the InferenceAccelerator, the PerformanceProfiler and benchmarks/ call, with
the same `METHOD`, so that a speedup in a report and one in BENCHMARKS.md mean the same thing:
candidates in one process, fixed thread counts, each run as it would serve (ONNX Runtime's
workers spinning or not as its config says), interleaved in blocks whose first calls are not
timed (each candidate timed in its steady state, its weights in the caches, as when serving;
spinning workers stop at the end of each run, `serving.session`, so none spins into the next
candidate's time), inputs rotating over real samples (the same sample for every candidate in a
round), medians, in several windows of which the least disturbed one is kept (the one where the
baseline ran fastest: a shared machine's other work slows torch's fork-join threads far more
than ONNX Runtime's pool, so a busy window would flatter the speedup).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Method:
    """How candidates are timed (see the module docstring)."""

    block: int = 8  # calls per candidate per round
    settle: int = 3  # of which the first `settle` are not timed
    windows: int = 3  # separate measurements; the least disturbed is kept
    warmup: int = 2


METHOD = Method()
# Choosing among candidates: fewer windows (each candidate is judged by its own least disturbed
# one); reporting a speedup against a baseline needs the full METHOD. Same blocks and rotation.
SELECTION = Method(windows=2)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class LatencyStats:
    """Latencies of one candidate, in milliseconds."""

    samples_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples_ms, 95)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    def throughput(self, batch_size: int) -> float:
        """Samples per second at the median latency."""
        return batch_size * 1000.0 / self.p50 if self.p50 > 0 else math.nan

    def summary(self, batch_size: int) -> dict[str, float]:
        return {
            "p50Ms": round(self.p50, 4),
            "p95Ms": round(self.p95, 4),
            "p99Ms": round(self.p99, 4),
            "throughput": round(self.throughput(batch_size), 2),
            "runs": float(len(self.samples_ms)),
        }


def fixed(run: Callable[[T], object], argument: T) -> Callable[[int], object]:
    """A candidate that runs `run(argument)` in every round."""

    def call(_: int) -> object:
        return run(argument)

    return call


def rotating(run: Callable[[T], object], arguments: Sequence[T]) -> Callable[[int], object]:
    """A candidate that runs `run` on argument `round % len(arguments)`: real inputs of varied
    lengths, the same one for every candidate in a round."""
    if not arguments:
        raise ValueError("rotating needs at least one argument")

    def call(index: int) -> object:
        return run(arguments[index % len(arguments)])

    return call


@dataclass
class Comparison:
    """The kept window's latencies per candidate, and every window's medians."""

    stats: dict[str, LatencyStats]
    window_medians: list[dict[str, float]]
    baseline: str

    def p50(self, name: str) -> float:
        return self.stats[name].p50

    def speedup(self, name: str, baseline: str | None = None) -> float:
        """Median latency of the baseline over the candidate's, in the kept window."""
        return self.stats[baseline or self.baseline].p50 / self.stats[name].p50

    def window_speedups(self, name: str) -> list[float]:
        return [m[self.baseline] / m[name] for m in self.window_medians]


def compare(
    candidates: Mapping[str, Callable[[int], object]],
    runs: int,
    baseline: str,
    method: Method = METHOD,
) -> Comparison:
    """Time every candidate `runs` times by `method`; see the module docstring."""
    stats, medians = least_contended(
        candidates,
        runs,
        method.windows,
        baseline,
        block=method.block,
        settle=method.settle,
        warmup=method.warmup,
    )
    return Comparison(stats, medians, baseline)


def interleaved(
    candidates: Mapping[str, Callable[[int], object]],
    runs: int,
    block: int = 3,
    warmup: int = 2,
    settle: int = 1,
) -> dict[str, LatencyStats]:
    """Time each candidate `runs` times, in interleaved blocks of `block` calls.

    A candidate is called with the round number (so that every candidate sees the same input in
    a round). The first `settle` calls of each block are not timed: they let the cores settle
    after the previous candidate and bring its weights back into the caches (a served model
    keeps them warm; a 90 MB fp32 model run in between evicts a 20 MB one from a 32 MB L3).
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn(0)
    stats = {name: LatencyStats() for name in candidates}
    timed_per_block = max(1, block - settle)
    rounds = math.ceil(runs / timed_per_block)
    for index in range(rounds):
        for name, fn in candidates.items():
            for _ in range(settle):
                fn(index)
            for _ in range(timed_per_block):
                start = time.perf_counter()
                fn(index)
                stats[name].samples_ms.append((time.perf_counter() - start) * 1000.0)
    return stats


def least_contended(
    candidates: Mapping[str, Callable[[int], object]],
    runs: int,
    windows: int,
    baseline: str,
    block: int = 3,
    settle: int = 1,
    warmup: int = 2,
) -> tuple[dict[str, LatencyStats], list[dict[str, float]]]:
    """Measure all candidates interleaved in `windows` separate windows of `runs` each; return
    the window where `baseline` ran fastest (the least disturbed by other work on the machine:
    every candidate in it shared the same conditions) and every window's medians.
    """
    measured = [
        interleaved(candidates, runs, block=block, warmup=warmup, settle=settle)
        for _ in range(max(1, windows))
    ]
    medians = [{name: stats.p50 for name, stats in window.items()} for window in measured]
    best = min(range(len(measured)), key=lambda i: medians[i][baseline])
    return measured[best], medians


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 10.0) -> float:
    """Wait (at most `timeout_s`) until the 1-minute load average drops below `max_load`."""
    deadline = time.monotonic() + timeout_s
    load = os.getloadavg()[0]
    while load >= max_load and time.monotonic() < deadline:
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    return load


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds`."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
