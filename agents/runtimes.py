"""Turning a model file into something that runs: ONNX Runtime sessions and torch modules.

Every torch archive is vetted from its bytes (`bakeline.agents.vetting`) before torch opens it:
an ExportedProgram or TorchScript file that would make torch unpickle an object, load native
code or evaluate a string is refused first. `torch.load` is also forced to `weights_only=True`
while an ExportedProgram loads, as a second wall behind the vetting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import torch
from pydantic import BaseModel, ConfigDict, Field

from bakeline.agents import serving
from bakeline.agents.data import Dataset, Feeds
from bakeline.agents.vetting import vet_or_raise

Backend = Literal["onnxruntime", "openvino", "torch-eager", "torch-compile"]
OptLevel = Literal["disabled", "basic", "extended", "all"]


class RuntimeConfig(BaseModel):
    """How to run the artifact; chosen by the HardwareAdapter, tuned by the InferenceAccelerator."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    backend: Backend = "onnxruntime"
    execution_provider: str = Field(default="CPUExecutionProvider", alias="executionProvider")
    intra_op_threads: int = Field(default=0, alias="intraOpThreads", description="0: runtime's")
    inter_op_threads: int = Field(default=1, alias="interOpThreads")
    graph_optimization_level: OptLevel = Field(default="all", alias="graphOptimizationLevel")
    # Workers spin between operators within a run (they stop at its end); off unless timed
    # faster: spinning burns CPU that a pod's CPU quota throttles.
    allow_spinning: bool = Field(default=False, alias="allowSpinning")
    disabled_optimizers: list[str] = Field(default_factory=list, alias="disabledOptimizers")
    dtype: str = "fp32"
    # OpenVINO only: the precision its float parts computed in where the bake measured them
    # (bf16 on a CPU with AMX or AVX-512 BF16), so that serving computes in it too.
    inference_precision: str | None = Field(default=None, alias="inferencePrecision")
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


def session_defaults(threads: int) -> RuntimeConfig:
    """ONNX Runtime's own defaults on `threads` intra-op threads (a plain InferenceSession: all
    graph optimizations, workers spinning): how a recipe that sets nothing else loads a model.
    Its workers stop spinning at the end of each run (`serving.session`), which changes nothing
    within a run and keeps them off the cores of whatever is timed next."""
    return RuntimeConfig(intra_op_threads=threads, allow_spinning=True)


# A model's outputs by name, in the model's order: the first is its primary output (the one
# `Runner`s return, and the one the unsuffixed quality metrics describe).
Outputs = dict[str, np.ndarray]
Runner = Callable[[Feeds], np.ndarray]  # the primary output only (timing, benchmarks)
OutputsRunner = Callable[[Feeds], Outputs]  # every output (quality)


def ort_session(
    path: Path, config: RuntimeConfig, profile_prefix: str | None = None
) -> ort.InferenceSession:
    """The session a package's user gets (`serving.session`, the package's serve.py)."""
    return serving.session(path, config.dump(), profile_prefix=profile_prefix)


def ort_runner(session: ort.InferenceSession) -> Runner:
    names = {i.name for i in session.get_inputs()}
    output = session.get_outputs()[0].name

    def run(feeds: Feeds) -> np.ndarray:
        result = session.run([output], {k: v for k, v in feeds.items() if k in names})
        return np.asarray(result[0])

    return run


def ort_outputs(session: ort.InferenceSession, names: Sequence[str] | None = None) -> OutputsRunner:
    """Every output of the session, by the graph's output names (or by `names`, in order, where
    they name as many outputs)."""
    inputs = {i.name for i in session.get_inputs()}
    graph = [o.name for o in session.get_outputs()]
    keys = list(names) if names and len(names) == len(graph) else graph

    def run(feeds: Feeds) -> Outputs:
        result = session.run(graph, {k: v for k, v in feeds.items() if k in inputs})
        return {key: np.asarray(value) for key, value in zip(keys, result, strict=True)}

    return run


def _by_rows(config: RuntimeConfig, make: Callable[[RuntimeConfig], Callable[[Feeds], Any]]) -> Any:
    """One session per thread count `config` names, each batch run by the one its size calls for
    (the weights are loaded once per session)."""
    counts = {config.intra_op_threads, *config.batch_threads.values()}
    if len(counts) == 1:
        return make(config)
    runners = {
        threads: make(config.model_copy(update={"intra_op_threads": threads})) for threads in counts
    }

    def run(feeds: Feeds) -> Any:
        rows = next(iter(feeds.values())).shape[0]
        return runners[config.threads_for(rows)](feeds)

    return run


def onnx_runner(path: Path, config: RuntimeConfig) -> Runner:
    """ONNX Runtime (or OpenVINO, where the config's backend says so) on `path` under `config`,
    its primary output: one session per thread count it names, each batch run by the session
    its size calls for."""
    if config.backend == "openvino":
        return first(onnx_outputs(path, config))
    runner: Runner = _by_rows(config, lambda c: ort_runner(ort_session(path, c)))
    return runner


def onnx_outputs(
    path: Path, config: RuntimeConfig, names: Sequence[str] | None = None
) -> OutputsRunner:
    """As `onnx_runner`, every output (on OpenVINO where the config's backend says so)."""
    runner: OutputsRunner
    if config.backend == "openvino":
        runner = _by_rows(config, lambda c: openvino_outputs(path, c, names))
    else:
        runner = _by_rows(config, lambda c: ort_outputs(ort_session(path, c), names))
    return runner


def openvino_precision() -> str | None:
    """The precision OpenVINO's CPU plugin computes float parts in on this CPU (bf16 where it
    has AMX or AVX-512 BF16, else f32); None where OpenVINO is not installed."""
    try:
        import openvino
    except ImportError:
        return None
    return serving.precision_name(openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def openvino_outputs(
    path: Path, config: RuntimeConfig, names: Sequence[str] | None = None
) -> OutputsRunner:
    """Every output of the ONNX file compiled by OpenVINO as the package's serve.py compiles and
    runs it (`serving.openvino_model`, `serving.openvino_runs`), by the graph's output names (or
    by `names`, as `ort_outputs`)."""
    compiled = serving.openvino_model(path, config.dump())
    runs = serving.openvino_runs(compiled)
    inputs = {port.get_any_name() for port in compiled.inputs}
    graph = [port.get_any_name() for port in compiled.outputs]
    keys = list(names) if names and len(names) == len(graph) else graph

    def run(feeds: Feeds) -> Outputs:
        outputs = runs({k: v for k, v in feeds.items() if k in inputs})
        return dict(zip(keys, outputs.values(), strict=True))

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


def flatten_outputs(value: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """A model's output structure as named tensors, in the order torch.export and the ONNX
    exporter flatten it: a tensor is `output`; a tuple or list's items `output_<index>` (a named
    tuple's by field); a dict's by key; nested structures `<outer>.<inner>`. Anything but a
    tensor (None, a number) is left out, as the exporters leave it out."""
    if isinstance(value, torch.Tensor):
        return [(prefix or "output", value)]

    def child(key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    found: list[tuple[str, torch.Tensor]] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            found += flatten_outputs(item, child(str(key)))
    elif isinstance(value, (tuple, list)):
        fields = getattr(value, "_fields", None)
        for index, item in enumerate(value):
            label = str(fields[index]) if fields else str(index) if prefix else f"output_{index}"
            found += flatten_outputs(item, child(label))
    return found


def torch_outputs(
    module: Callable[..., Any], input_names: list[str], names: Sequence[str] | None = None
) -> OutputsRunner:
    """Every output of a torch module, named as `flatten_outputs` names them (or by `names`, in
    order, where they name as many outputs)."""

    def run(feeds: Feeds) -> Outputs:
        args = [torch.from_numpy(feeds[name]) for name in input_names]
        with torch.inference_mode():
            out = module(*args)
        leaves = flatten_outputs(out)
        if not leaves:
            raise ValueError(f"the model returns no tensor (a {type(out).__name__})")
        keys = list(names) if names and len(names) == len(leaves) else [n for n, _ in leaves]
        return {
            key: np.asarray(tensor.detach().float().numpy())
            for key, (_, tensor) in zip(keys, leaves, strict=True)
        }

    return run


def first(runner: OutputsRunner) -> Runner:
    """The primary output of an outputs runner."""

    def run(feeds: Feeds) -> np.ndarray:
        return next(iter(runner(feeds).values()))

    return run


def torch_runner(module: Callable[..., Any], input_names: list[str]) -> Runner:
    """A torch module's primary output (the first of a tuple, list or dict)."""
    return first(torch_outputs(module, input_names))


def open_outputs(
    path: Path,
    format: str,
    input_names: list[str],
    config: RuntimeConfig | None = None,
    output_names: Sequence[str] | None = None,
) -> OutputsRunner:
    """A callable for the artifact under the given runtime config, returning every output (named
    by `output_names`, the checkpoint's, where they name as many)."""
    config = config or RuntimeConfig()
    if config.intra_op_threads > 0:
        torch.set_num_threads(config.intra_op_threads)
    if format == "onnx":
        return onnx_outputs(path, config, output_names)
    module = load_torch_module(path, format)
    if config.backend == "torch-compile":
        module = torch.compile(module, dynamic=True)  # type: ignore[assignment]
    return torch_outputs(module, input_names, output_names)


def open_runner(
    path: Path, format: str, input_names: list[str], config: RuntimeConfig | None = None
) -> Runner:
    """A callable for the artifact under the given runtime config: its primary output."""
    config = config or RuntimeConfig()
    if format == "onnx":
        if config.intra_op_threads > 0:
            torch.set_num_threads(config.intra_op_threads)
        return onnx_runner(path, config)
    return first(open_outputs(path, format, input_names, config))


def run_outputs(
    runner: OutputsRunner,
    dataset: Dataset,
    batch_size: int = 32,
    token_level: Collection[str] = (),
) -> Outputs:
    """Every output over the dataset, batch by batch, joined along the batch axis.

    Batches are trimmed to their own longest sample (`Dataset.batch`), so a token-level output
    ([batch, sequence, ...]) is as wide as its batch: it is padded with zeros to the dataset's
    width before joining (its padding is never compared: `quality.compare` masks it). Outputs
    named in `token_level` are always padded so; any other output whose second axis follows its
    batch's width is too."""
    parts: dict[str, list[np.ndarray]] = {}
    widths: list[int] = []
    mask = dataset.mask_array
    for feeds in dataset.batches(batch_size):
        widths.append(int(feeds[str(dataset.mask)].shape[1]) if mask is not None else 0)
        for name, value in runner(feeds).items():
            parts.setdefault(name, []).append(value)
    full = int(mask.shape[1]) if mask is not None else 0
    return {
        name: _join(name, arrays, widths, full, name in token_level)
        for name, arrays in parts.items()
    }


def _join(
    name: str, arrays: list[np.ndarray], widths: list[int], full: int, token: bool
) -> np.ndarray:
    follows = bool(full) and all(
        a.ndim >= 2 and a.shape[1] == w for a, w in zip(arrays, widths, strict=True)
    )
    if follows and (token or len({a.shape[1:] for a in arrays}) > 1):
        arrays = [
            np.pad(a, [(0, 0), (0, full - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays
        ]
    if len({a.shape[1:] for a in arrays}) > 1:
        shapes = sorted({a.shape[1:] for a in arrays})
        raise ValueError(
            f"output {name!r} changes shape between batches ({shapes}) in a way that does not "
            "follow the batches' sequence widths"
        )
    return np.concatenate(arrays, axis=0)


def run_dataset(runner: Runner, dataset: Dataset, batch_size: int = 32) -> np.ndarray:
    """The primary output over the dataset (a token-level one padded to the dataset's width)."""
    joined = run_outputs(lambda feeds: {"output": runner(feeds)}, dataset, batch_size)
    return joined["output"]
