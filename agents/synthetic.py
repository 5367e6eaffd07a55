"""Inputs made up for a model the job gives no data for, shaped as real inputs would be.

They measure nothing about quality (the import stage says `syntheticInputs` 1, and the gate's
verdict is "unverified"), but the model runs at realistic shapes, so timings and calibration
ranges are not a fiction:

- a dynamic dimension (a sequence, say) gets `SEQUENCE_DEFAULT` positions, fewer when the
  model says it takes fewer (a position-embedding table, an exported program's range), unless
  `inputShapes` names it;
- each input has a role: `tokens` (integer ids, drawn across the vocabulary: the rows of the
  embedding table the input indexes, read from the model's graph, else `VOCAB_DEFAULT`),
  `mask` (right-padded, every row at least one real position, lengths varied), `segments`
  (token type ids: zeros) or `values` (floats, N(0, 1)). Roles are declared (the import
  stage's `inputRoles` param) or inferred: a name saying mask or token_type/segment; an integer
  input the model looks up in an embedding table is tokens; an integer input shaped like a
  tokens input that the model never looks up is that input's mask.

The same roles say which input is the attention mask of the job's own data too (`mask_input`):
whatever its name, it trims batches and limits quality to real positions.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bakeline.agents.data import MASK, Dataset
from bakeline.checkpoints.manifest import TensorSpec

Role = Literal["tokens", "mask", "segments", "values"]
SEQUENCE_DEFAULT = 128
# Ids are drawn below this when the model's embedding table cannot be found: small enough for
# any real vocabulary (declare the role, or pass a dataset, for anything else).
VOCAB_DEFAULT = 100
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32}
_POSITION_TABLE = re.compile(r"position|wpe|pos_emb", re.IGNORECASE)
_SEGMENT_NAME = re.compile(r"token_type|segment", re.IGNORECASE)


@dataclass
class ModelHints:
    """What a model's graph says about its inputs."""

    vocab: dict[str, int] = field(default_factory=dict)  # input -> rows of the table it indexes
    max_positions: int | None = None  # rows of a position-embedding table
    bounds: dict[str, tuple[int, int | None]] = field(default_factory=dict)  # dim -> (min, max)


def _is_integer(spec: TensorSpec) -> bool:
    return np.issubdtype(_NP_DTYPES.get(spec.dtype, np.float32), np.integer)


def infer_roles(
    inputs: list[TensorSpec], hints: ModelHints, declared: dict[str, Role] | None = None
) -> dict[str, Role]:
    """Each input's role: declared, else inferred (see the module's doc)."""
    roles: dict[str, Role] = {}
    for spec in inputs:
        given = (declared or {}).get(spec.name)
        if given is not None:
            roles[spec.name] = given
        elif not _is_integer(spec):
            roles[spec.name] = "values"
        elif "mask" in spec.name.lower():
            roles[spec.name] = "mask"
        elif _SEGMENT_NAME.search(spec.name):
            roles[spec.name] = "segments"
        elif spec.name in hints.vocab:
            roles[spec.name] = "tokens"
    token_ranks = {len(s.shape) for s in inputs if roles.get(s.name) == "tokens"}
    for spec in inputs:
        if spec.name not in roles:
            # Integer, never looked up, shaped like the tokens: what marks their real positions.
            roles[spec.name] = "mask" if len(spec.shape) in token_ranks else "tokens"
    return roles


def mask_input(inputs: list[TensorSpec], roles: dict[str, Role]) -> str | None:
    """The [batch, sequence] input whose role is the attention mask (Hugging Face's name first
    where several are), or None: what trims batches and limits quality to real positions."""
    found = [s.name for s in inputs if roles.get(s.name) == "mask" and len(s.shape) == 2]
    return MASK if MASK in found else next(iter(found), None)


def dimension_sizes(inputs: list[TensorSpec], hints: ModelHints) -> dict[str, int]:
    """A size for each named (dynamic) dimension but the batch."""
    sizes: dict[str, int] = {}
    for spec in inputs:
        for dim in spec.shape[1:]:
            if isinstance(dim, int) or dim in sizes:
                continue
            size = SEQUENCE_DEFAULT
            if hints.max_positions:
                size = min(size, hints.max_positions)
            lower, upper = hints.bounds.get(str(dim), (1, None))
            if upper is not None:
                size = min(size, upper)
            sizes[str(dim)] = max(size, lower, 1)
    return sizes


def synthesize(
    inputs: list[TensorSpec],
    count: int,
    rng: np.random.Generator,
    roles: dict[str, Role],
    hints: ModelHints,
    sizes: dict[str, int],
) -> Dataset:
    """`count` samples of every input, by role."""
    shapes = {
        s.name: (count, *(d if isinstance(d, int) else sizes[str(d)] for d in s.shape[1:]))
        for s in inputs
    }
    arrays: dict[str, np.ndarray] = {}
    masks: dict[tuple[int, ...], np.ndarray] = {}
    for spec in inputs:
        shape, role = shapes[spec.name], roles[spec.name]
        if role != "mask" or len(shape) < 2:
            continue
        width = shape[-1]
        lengths = rng.integers(max(1, width // 4), width + 1, size=count)
        lengths[::8] = width  # every batch of 8 (and 32) spans the full width: shapes stay put
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        mask = np.broadcast_to(mask.reshape(count, *([1] * (len(shape) - 2)), width), shape)
        masks.setdefault(shape, mask)
        arrays[spec.name] = mask
    for spec in inputs:
        shape, role = shapes[spec.name], roles[spec.name]
        dtype = _NP_DTYPES.get(spec.dtype, np.float32)
        if role == "mask":
            array = arrays.get(spec.name, np.ones(shape, dtype=np.int64))
        elif role == "segments":
            array = np.zeros(shape, dtype=dtype)
        elif role == "tokens":
            ids = rng.integers(0, hints.vocab.get(spec.name, VOCAB_DEFAULT), size=shape)
            array = ids * masks[shape] if shape in masks else ids  # padding is id 0
        else:
            array = rng.standard_normal(shape)
        arrays[spec.name] = np.ascontiguousarray(array.astype(dtype))
    return Dataset({s.name: arrays[s.name] for s in inputs}, mask=mask_input(inputs, roles))


# -- reading the hints from a model's graph --------------------------------------------------------

_PASS_THROUGH_ONNX = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
_PASS_THROUGH_TORCH = ("_to_copy", "to.", "view", "reshape", "unsqueeze", "clone", "contiguous")


def onnx_hints(model: Any) -> ModelHints:
    """Embedding tables: a Gather whose data is an initializer and whose indices are a graph
    input (through casts and reshapes)."""
    graph = model.graph
    tables = {i.name: list(i.dims) for i in graph.initializer if len(i.dims) == 2}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    hints = ModelHints()
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" else ""
        if table in tables and _POSITION_TABLE.search(table):
            hints.max_positions = int(tables[table][0])
    for graph_input in graph.input:
        frontier, seen = [graph_input.name], set()
        for _ in range(4):
            following = []
            for tensor in frontier:
                for node in consumers.get(tensor, []):
                    if id(node) in seen:
                        continue
                    seen.add(id(node))
                    if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor:
                        if node.input[0] in tables:
                            rows = int(tables[node.input[0]][0])
                            hints.vocab[graph_input.name] = max(
                                rows, hints.vocab.get(graph_input.name, 0)
                            )
                    elif node.op_type in _PASS_THROUGH_ONNX:
                        following.extend(node.output)
            frontier = following
    return hints


def program_hints(program: Any) -> ModelHints:
    """Embedding tables of an ExportedProgram (`aten.embedding` of a user input) and the
    ranges its dynamic dimensions were exported with."""
    specs = program.graph_signature.input_specs
    user = {s.arg.name for s in specs if s.kind.name == "USER_INPUT"}
    targets = {s.arg.name: str(s.target or s.arg.name) for s in specs}
    hints = ModelHints()
    for node in program.graph.nodes:
        if node.op != "call_function" or "embedding" not in str(node.target):
            continue
        weight, indices = node.args[0], node.args[1]
        shape = getattr(weight.meta.get("val"), "shape", None)
        if shape is None or len(shape) != 2:
            continue
        rows = int(shape[0])
        if _POSITION_TABLE.search(targets.get(weight.name, weight.name)):
            hints.max_positions = rows
        source = indices
        while (
            getattr(source, "op", None) == "call_function"
            and any(p in str(source.target) for p in _PASS_THROUGH_TORCH)
            and source.args
        ):
            source = source.args[0]
        if getattr(source, "name", None) in user:
            hints.vocab[source.name] = max(rows, hints.vocab.get(source.name, 0))
    for symbol, bounds in getattr(program, "range_constraints", {}).items():
        try:
            lower = int(bounds.lower)
            upper = int(bounds.upper) if bounds.upper.is_finite else None
        except (TypeError, ValueError, AttributeError):
            continue
        hints.bounds[str(symbol)] = (lower, upper)
    return hints
