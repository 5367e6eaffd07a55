"""Turning a model file into something that runs: ONNX Runtime sessions and torch modules.

Every torch archive is vetted from its bytes (`bakeline.agents.vetting`) before torch opens it:
an ExportedProgram or TorchScript file that would make torch unpickle an object, load native
code or evaluate a string is refused first. `torch.load` is also forced to `weights_only=True`
while an ExportedProgram loads, as a second wall behind the vetting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict, Field

from bakeline.agents.data import Dataset, Feeds
from bakeline.agents.vetting import vet_or_raise

Backend = Literal["onnxruntime", "torch-eager", "torch-compile"]
OptLevel = Literal["disabled", "basic", "extended", "all"]

_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class RuntimeConfig(BaseModel):
    """How to run the artifact; chosen by the HardwareAdapter, tuned by the InferenceAccelerator."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    backend: Backend = "onnxruntime"
    execution_provider: str = Field(default="CPUExecutionProvider", alias="executionProvider")
    intra_op_threads: int = Field(default=0, alias="intraOpThreads", description="0: runtime's")
    inter_op_threads: int = Field(default=1, alias="interOpThreads")
    graph_optimization_level: OptLevel = Field(default="all", alias="graphOptimizationLevel")
    # Off by default: spinning workers burn CPU that a pod's CPU quota throttles, and they steal
    # cores from anything else in the process.
    allow_spinning: bool = Field(default=False, alias="allowSpinning")
    disabled_optimizers: list[str] = Field(default_factory=list, alias="disabledOptimizers")
    dtype: str = "fp32"
    # Small batches can run faster on fewer threads (waking a worker costs more than it saves),
    # large ones slower: a runner keeps one session per thread count and picks by batch size.
    batch_threads: dict[int, int] = Field(
        default_factory=dict,
        alias="threadsByBatchSize",
        description="intra-op threads for batches of at most this many rows (the smallest such "
        "key); larger batches use intraOpThreads",
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)

    def threads_for(self, rows: int) -> int:
        """The intra-op threads a batch of `rows` runs on."""
        fits = [size for size in self.batch_threads if rows <= size]
        return self.batch_threads[min(fits)] if fits else self.intra_op_threads


Runner = Callable[[Feeds], np.ndarray]


def ort_session(
    path: Path, config: RuntimeConfig, profile_prefix: str | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[config.graph_optimization_level]
    if config.intra_op_threads > 0:
        options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = max(1, config.inter_op_threads)
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if config.allow_spinning else "0"
    )
    options.log_severity_level = 3
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    available = ort.get_available_providers()
    wanted = dict.fromkeys((config.execution_provider, "CPUExecutionProvider"))  # ordered, unique
    providers = [p for p in wanted if p in available]
    return ort.InferenceSession(
        str(path),
        options,
        providers=providers,
        disabled_optimizers=config.disabled_optimizers or None,
    )


def ort_runner(session: ort.InferenceSession) -> Runner:
    names = {i.name for i in session.get_inputs()}
    output = session.get_outputs()[0].name

    def run(feeds: Feeds) -> np.ndarray:
        result = session.run([output], {k: v for k, v in feeds.items() if k in names})
        return np.asarray(result[0])

    return run


def onnx_runner(path: Path, config: RuntimeConfig) -> Runner:
    """ONNX Runtime on `path` under `config`: one session per thread count it names, each batch
    run by the session its size calls for (the weights are loaded once per session)."""
    counts = {config.intra_op_threads, *config.batch_threads.values()}
    if len(counts) == 1:
        return ort_runner(ort_session(path, config))
    runners = {
        threads: ort_runner(
            ort_session(path, config.model_copy(update={"intra_op_threads": threads}))
        )
        for threads in counts
    }

    def run(feeds: Feeds) -> np.ndarray:
        rows = next(iter(feeds.values())).shape[0]
        return runners[config.threads_for(rows)](feeds)

    return run


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Force every torch.load inside to weights_only=True: no code from a pickle ever runs."""
    original = torch.load

    @functools.wraps(original)
    def safe_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = safe_load  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = original


def load_torch_module(path: Path, format: str) -> torch.nn.Module:
    if format == "exported-program":
        return load_exported_program(path).module()
    if format == "torchscript":
        vet_or_raise(path, "torchscript")
        scripted: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        return scripted
    raise ValueError(f"{format} is not a torch format")


def load_exported_program(path: Path) -> torch.export.ExportedProgram:
    vet_or_raise(path, "exported-program")
    with weights_only_loading():
        return torch.export.load(str(path))


def torch_runner(module: Callable[..., Any], input_names: list[str]) -> Runner:
    def run(feeds: Feeds) -> np.ndarray:
        args = [torch.from_numpy(feeds[name]) for name in input_names]
        with torch.inference_mode():
            out = module(*args)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return np.asarray(out.detach().float().numpy())

    return run


def open_runner(
    path: Path, format: str, input_names: list[str], config: RuntimeConfig | None = None
) -> Runner:
    """A callable for the artifact under the given runtime config."""
    config = config or RuntimeConfig()
    if config.intra_op_threads > 0:
        torch.set_num_threads(config.intra_op_threads)
    if format == "onnx":
        return onnx_runner(path, config)
    module = load_torch_module(path, format)
    if config.backend == "torch-compile":
        module = torch.compile(module, dynamic=True)  # type: ignore[assignment]
    return torch_runner(module, input_names)


def run_dataset(runner: Runner, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([runner(feeds) for feeds in dataset.batches(batch_size)], axis=0)
