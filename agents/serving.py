"""Run a baked package exactly as it was profiled: `runtime.json` applied in full (graph
optimisation level, disabled optimizers, intra- and inter-op threads, the intra-op threads per
batch size, spinning, execution provider).

Copied into every package as `serve.py`, beside the model, so it imports onnxruntime and numpy
only; the agents build their ONNX Runtime sessions with it too (`agents/runtimes.ort_session`),
so what a package's user runs is what was timed. Use:

    from serve import Model
    model = Model(".")                       # the package's folder
    outputs = model.run({"input_ids": ids, "attention_mask": mask})   # name -> array
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session(
    path: str | Path,
    runtime: dict[str, Any],
    threads: int | None = None,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session of the model at `path` as `runtime` (runtime.json) says; on
    `threads` intra-op threads when given (else its intraOpThreads; 0: the runtime's own)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[runtime.get("graphOptimizationLevel", "all")]
    intra = int(runtime.get("intraOpThreads", 0) if threads is None else threads)
    if intra > 0:
        options.intra_op_num_threads = intra
    options.inter_op_num_threads = max(1, int(runtime.get("interOpThreads", 1)))
    spinning = "1" if runtime.get("allowSpinning") else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    available = ort.get_available_providers()
    wanted = dict.fromkeys(
        (runtime.get("executionProvider", "CPUExecutionProvider"), "CPUExecutionProvider")
    )
    return ort.InferenceSession(
        str(path),
        options,
        providers=[p for p in wanted if p in available],
        disabled_optimizers=list(runtime.get("disabledOptimizers") or []) or None,
    )


def threads_for(runtime: dict[str, Any], rows: int) -> int:
    """The intra-op threads a batch of `rows` runs on: threadsByBatchSize's smallest key that
    holds it, else intraOpThreads."""
    by_size = {int(k): int(v) for k, v in (runtime.get("threadsByBatchSize") or {}).items()}
    fits = [size for size in by_size if rows <= size]
    return by_size[min(fits)] if fits else int(runtime.get("intraOpThreads", 0))


class Model:
    """The package's model, one session per thread count its runtime.json asks for."""

    def __init__(self, package: str | Path = ".") -> None:
        folder = Path(package)
        self.runtime: dict[str, Any] = json.loads((folder / "runtime.json").read_text())
        if self.runtime.get("backend", "onnxruntime") != "onnxruntime":
            raise ValueError(f"this package runs on {self.runtime['backend']}, not ONNX Runtime")
        manifest = json.loads((folder / "manifest.json").read_text())
        self.path = folder / manifest["artifact"]
        self._sessions: dict[int, ort.InferenceSession] = {}

    def session(self, rows: int) -> ort.InferenceSession:
        threads = threads_for(self.runtime, rows)
        if threads not in self._sessions:
            self._sessions[threads] = session(self.path, self.runtime, threads)
        return self._sessions[threads]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output by name, for a batch of named inputs."""
        rows = len(next(iter(feeds.values())))
        runner = self.session(rows)
        names = [output.name for output in runner.get_outputs()]
        return dict(zip(names, runner.run(names, feeds), strict=True))
