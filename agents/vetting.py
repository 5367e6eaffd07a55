"""Vetting a model file from outside, from its bytes alone, before any loader sees it.

torch's loaders run code from a file in more places than `torch.load`: an ExportedProgram
archive (`.pt2`) may carry pickled weights or constants (`torch.load(weights_only=False)`),
opaque objects (`pickle.loads`), TorchScript-bound objects, AOTInductor shared objects, guard
code that `ExportedProgram.module()` turns into Python, and shape expressions that the
deserializer hands to `sympy.sympify` (which evaluates them). So a `.pt2` is read here as what it
is, a zip of JSON and raw tensor bytes, and refused unless every entry is one that
`torch.export.save` writes for a plain program and every string that torch would evaluate is
made of a small, closed vocabulary. TorchScript archives are refused unless their pickles name
only the tensor/storage rebuilders and TorchScript's own classes; ONNX files are protobuf, and
are refused when external data points outside the model's folder or a tensor declares more bytes
than it holds.

Every refusal is `InvalidInput` (exit 2, never retried) naming the file, the entry and why.
This module imports neither torch nor onnxruntime: vetting must not depend on what it guards.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import pickletools
import re
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from bakeline.agents.contract import InvalidInput
from bakeline.checkpoints.manifest import tree_files

VettedFormat = Literal["exported-program", "torchscript", "onnx"]

# The ExportedProgram JSON schema this vetting was written against (torch.export's
# `schema_version.major`); another major may add fields that carry code, so it is refused until
# this module has been checked against it (tests/unit/agents/test_vetting.py fails first).
PT2_SCHEMA_MAJORS = frozenset({8})

# Bounds on what an archive may declare, whatever its entries say.
MAX_ARCHIVE_BYTES = 16 << 30  # all members inflated
MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 256 << 20  # one program's graph
# Deflated members may shrink by this much at most: model weights are near-random bytes, and
# torch writes its archives uncompressed; a member that inflates by more is a zip bomb.
MAX_DEFLATE_RATIO = 50
_SMALL_MEMBER = 1 << 20  # members this small may compress as they like (JSON, code)


class VettingError(InvalidInput):
    """A model file refused by vetting; the message names the file, the entry and why."""

    def __init__(self, file: str, entry: str | None, why: str) -> None:
        where = f"{file}: {entry}" if entry else file
        super().__init__(f"{where}: {why} (refused before loading: nothing in it was run)")
        self.file, self.entry, self.why = file, entry, why


@dataclass(frozen=True)
class Vetted:
    """What vetting learnt: the format, and for ONNX the external data files it reads."""

    format: VettedFormat
    external_data: tuple[str, ...] = field(default=())


def vet_model_file(path: Path, data_folder: Path | None = None) -> Vetted:
    """Tell the format from the bytes (never from the name) and vet the file as that format.
    `data_folder` is where an ONNX model's external data may live (default: the file's own)."""
    name = path.name
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise VettingError(name, None, f"cannot be read: {exc}") from exc
    if size == 0:
        raise VettingError(name, None, "is empty")
    if head[:1] == b"\x80":
        raise VettingError(
            name,
            None,
            "is a Python pickle: refused (pickles can run code); export the model "
            "with torch.export.save, or to ONNX",
        )
    if head == b"PK\x03\x04" or _looks_like_zip(path):
        identity = _identity(path)
        archive = _open_zip(path)
        with archive:
            kind = _archive_kind(name, archive)
            if kind == "exported-program":
                _vet_exported_program(name, archive)
            else:
                _vet_torchscript(name, archive)
        if identity is not None:
            _VETTED[identity] = kind
        return Vetted(kind)
    return _vet_onnx(path, (data_folder or path.parent).resolve())


def vet_or_raise(path: Path, expected: VettedFormat) -> None:
    """Vet `path` as `expected` before a loader opens it (the loaders call this). A file this
    process has vetted and that has not changed since is not read again: a stage loads its
    model several times, and reading a large archive through costs a pass over every byte."""
    identity = _identity(path)
    kind = _VETTED.get(identity) if identity is not None else None
    if kind is None:
        kind = vet_model_file(path).format
    if kind != expected:
        raise VettingError(path.name, None, f"is {kind}, not {expected}")


# (device, inode, size, mtime, ctime) of torch archives vetted in this process, and their kind.
# ctime moves with every change to the file and cannot be set back, so a changed file is vetted
# afresh.
_VETTED: dict[tuple[int, int, int, int, int], VettedFormat] = {}


def _identity(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


# --- zip archives --------------------------------------------------------------------------------


def _looks_like_zip(path: Path) -> bool:
    """A zip whose first bytes were changed still opens from its end: never let it pass as
    something else."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _open_zip(path: Path) -> zipfile.ZipFile:
    name = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise VettingError(name, None, f"is a truncated or damaged zip archive: {exc}") from exc
    try:
        _vet_zip_structure(name, path, archive)
    except BaseException:
        archive.close()
        raise
    return archive


def _vet_zip_structure(name: str, path: Path, archive: zipfile.ZipFile) -> None:
    """Sizes that add up: no member inflates past the bounds, members never overlap (the
    overlapping-entries zip bomb), names are plain relative paths seen once."""
    members = archive.infolist()
    if not members:
        raise VettingError(name, None, "is an empty zip archive")
    if len(members) > MAX_MEMBERS:
        raise VettingError(name, None, f"has {len(members)} entries (at most {MAX_MEMBERS})")
    file_size = path.stat().st_size
    seen: set[str] = set()
    total = 0
    spans: list[tuple[int, int, str]] = []
    with path.open("rb") as handle:
        for member in members:
            entry = member.filename
            _vet_entry_name(name, entry)
            if entry in seen:
                # Readers disagree on which of two same-named entries wins: one vetted, the
                # other loaded.
                raise VettingError(name, entry, "appears twice in the archive")
            seen.add(entry)
            if member.flag_bits & 0x1:
                raise VettingError(name, entry, "is encrypted")
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise VettingError(
                    name, entry, f"uses zip compression method {member.compress_type}"
                )
            if member.compress_type == zipfile.ZIP_STORED and (
                member.file_size != member.compress_size
            ):
                raise VettingError(name, entry, "is stored uncompressed but sizes disagree")
            if (
                member.compress_type == zipfile.ZIP_DEFLATED
                and member.file_size > _SMALL_MEMBER
                and member.file_size > MAX_DEFLATE_RATIO * max(1, member.compress_size)
            ):
                raise VettingError(
                    name,
                    entry,
                    f"inflates {member.compress_size} bytes to {member.file_size} "
                    f"(more than {MAX_DEFLATE_RATIO}x): a zip bomb",
                )
            total += member.file_size
            if total > MAX_ARCHIVE_BYTES:
                raise VettingError(
                    name, entry, f"the archive inflates past {MAX_ARCHIVE_BYTES >> 30} GiB"
                )
            handle.seek(member.header_offset)
            header = handle.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise VettingError(name, entry, "has no local header where the directory says")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            end = member.header_offset + 30 + name_length + extra_length + member.compress_size
            if end > file_size:
                raise VettingError(name, entry, "runs past the end of the file (truncated)")
            spans.append((member.header_offset, end, entry))
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise VettingError(name, second, f"overlaps {first} (an overlapping-entry zip bomb)")
    # Every byte as the directory describes it: a CRC mismatch is damage or tampering.
    for member in members:
        _checked_read(name, archive, member, limit=None, sink=True)


def _vet_entry_name(name: str, entry: str) -> None:
    parts = PurePosixPath(entry).parts
    if (
        not entry
        or entry.startswith("/")
        or "\\" in entry
        or "\x00" in entry
        or any(part in ("..", "") for part in parts)
        or re.match(r"^[A-Za-z]:", entry)
    ):
        raise VettingError(name, entry, "is not a plain relative path inside the archive")


def _checked_read(
    name: str,
    archive: zipfile.ZipFile,
    member: zipfile.ZipInfo,
    limit: int | None,
    sink: bool = False,
) -> bytes:
    """A member's bytes, never more than its directory entry declares (nor `limit`)."""
    if limit is not None and member.file_size > limit:
        raise VettingError(name, member.filename, f"is {member.file_size} bytes (at most {limit})")
    chunks: list[bytes] = []
    read = 0
    crc = 0
    try:
        with archive.open(member) as stream:
            while chunk := stream.read(1 << 20):
                read += len(chunk)
                if read > member.file_size:
                    raise VettingError(name, member.filename, "inflates past its declared size")
                crc = zlib.crc32(chunk, crc)
                if not sink:
                    chunks.append(chunk)
    except VettingError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise VettingError(name, member.filename, f"is damaged: {exc}") from exc
    if read != member.file_size or crc != member.CRC:
        raise VettingError(name, member.filename, "does not match its checksum or size")
    return b"".join(chunks)


def _root(name: str, archive: zipfile.ZipFile) -> str:
    roots = {entry.split("/", 1)[0] for entry in archive.namelist()}
    if len(roots) != 1 or any("/" not in entry for entry in archive.namelist()):
        raise VettingError(
            name, None, f"has entries outside one top-level folder ({sorted(roots)[:5]})"
        )
    return roots.pop()


def _archive_kind(
    name: str, archive: zipfile.ZipFile
) -> Literal["exported-program", "torchscript"]:
    root = _root(name, archive)
    entries = {entry[len(root) + 1 :] for entry in archive.namelist()}
    if "archive_format" in entries:
        return "exported-program"
    if "data.pkl" in entries and any(e.startswith("code/") for e in entries):
        return "torchscript"
    if "data.pkl" in entries:
        raise VettingError(
            name,
            f"{root}/data.pkl",
            "is a torch.save archive (a pickle of Python objects): "
            "refused; export the model with torch.export.save, or to ONNX",
        )
    raise VettingError(
        name,
        None,
        "is a zip archive that is neither an ExportedProgram nor TorchScript: "
        "refused; export the model with torch.export.save",
    )


# --- ExportedProgram (.pt2) ----------------------------------------------------------------------

# Entries torch.export.save writes for one plain program, relative to the archive's folder.
# Anything else (AOTInductor or ExecuTorch payloads, pickled legacy weights, custom or opaque
# objects, extra files) is refused by name. `{model}` is the one program's name.
PT2_FIXED_ENTRIES = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
PT2_MODEL_ENTRIES = (
    ("models/{model}.json", "the program's graph"),
    ("data/weights/{model}_weights_config.json", "the weights' layout"),
    ("data/constants/{model}_constants_config.json", "the constants' layout"),
    ("data/sample_inputs/{model}.pt", "example inputs, a tensor-only torch.save archive"),
)
_PT2_PAYLOAD = re.compile(r"^data/(weights/weight_|constants/tensor_)\d+$")
_PT2_REFUSED = (
    ("data/aotinductor/", "an AOTInductor payload (native code)"),
    ("data/executorch/", "an ExecuTorch payload"),
    ("data/mtia", "an MTIA payload"),
    ("xl_model_weights/", "an external-weights payload"),
    ("extra/", "an extra file"),
    ("data/constants/custom_obj_", "a TorchScript-bound custom object (unpickled on load)"),
    ("data/constants/opaque_obj_", "an opaque Python object (unpickled on load)"),
)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"

# Graph node targets: the operator namespaces an inference program calls through. The
# deserializer resolves `torch.<anything>` by attribute lookup, so a target outside these would
# reach any function torch imports (torch.os.system, for one).
_TARGET_PATTERNS = tuple(
    re.compile(pattern)
    for pattern in (
        rf"^torch\.ops\.(aten|prims)\.{_NAME}(\.{_NAME})?$",
        r"^torch\.ops\.higher_order\.(cond|while_loop|map_impl|scan|"
        r"wrap_with_set_grad_enabled|wrap_with_autocast|auto_functionalized)$",
        r"^torch\.sym_(int|float|max|min|not|ite|sqrt|sum)$",
        r"^torch\._sym_sqrt$",
        r"^_operator\.(getitem|add|sub|mul|floordiv|truediv|mod|neg|pos|pow|eq|ne|lt|le|gt|ge|"
        r"and_|or_|not_|abs)$",
        r"^math\.(ceil|floor|trunc|sqrt)$",
    )
)

# Names a sympy expression of torch's may use (srepr of shape expressions): sympy's core
# classes, torch.utils._sympy.functions, and the assumptions Symbols carry.
SYMPY_NAMES = frozenset(
    {
        "Symbol",
        "Integer",
        "Rational",
        "Float",
        "Add",
        "Mul",
        "Pow",
        "Mod",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "BooleanTrue",
        "BooleanFalse",
        "true",
        "false",
        "oo",
        "zoo",
        "nan",
        "Infinity",
        "NegativeInfinity",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "OpaqueUnaryFn_sqrt",
        "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or",
        "Identity",
        "Piecewise",
        "positive",
        "negative",
        "integer",
        "real",
        "nonnegative",
        "nonpositive",
        "finite",
        "infinite",
        "zero",
        "nonzero",
        "True",
        "False",
        "None",
    }
)
_SYMPY_OPS = frozenset({"(", ")", ",", "=", "+", "-", "*", "/", "**", "//", "%"})
_SYMBOL_LITERAL = re.compile(r"^'[a-z]+[0-9]+'$|^\"[a-z]+[0-9]+\"$")

# Guard code is turned into Python source and run by ExportedProgram.module(); only size and
# stride comparisons of the inputs (`L['x'].size()[1] == L['y'].size()[1]`) are let through.
GUARD_NAMES = frozenset({"L", "size", "stride", "storage_offset", "dim", "and", "or", "not"})
_GUARD_OPS = frozenset(
    {"[", "]", "(", ")", ".", ",", "==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "//", "%"}
)
_KEY_LITERAL = re.compile(r"^'[A-Za-z_][A-Za-z0-9_]*'$")

# ScalarType codes (torch/_export/serde/schema.py) and their element sizes in bytes.
_SCALAR_BYTES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 2,
    7: 4,
    8: 8,
    9: 4,
    10: 8,
    11: 16,
    12: 1,
    13: 2,
    14: 1,
    15: 1,
    16: 1,
    17: 1,
    18: 1,
    19: 1,
    20: 1,
    21: 2,
    22: 4,
    23: 8,
    24: 8,
    25: 8,
    26: 4,
}


def _vet_exported_program(name: str, archive: zipfile.ZipFile) -> None:
    root = _root(name, archive)
    members = {info.filename[len(root) + 1 :]: info for info in archive.infolist()}
    for relative in members:
        for prefix, what in _PT2_REFUSED:
            if relative.startswith(prefix):
                raise VettingError(name, f"{root}/{relative}", f"is {what}: refused")
    models = [m for m in members if re.fullmatch(rf"models/{_NAME}\.json", m)]
    if len(models) != 1:
        raise VettingError(name, None, f"holds {len(models)} programs (exactly one is vetted)")
    model = models[0][len("models/") : -len(".json")]
    expected = {pattern.format(model=model) for pattern, _ in PT2_MODEL_ENTRIES}
    for relative in sorted(PT2_FIXED_ENTRIES | expected):
        if relative not in members and relative != ".data/serialization_id":
            raise VettingError(name, f"{root}/{relative}", "is missing")
    for relative in members:
        if relative in PT2_FIXED_ENTRIES or relative in expected:
            continue
        if _PT2_PAYLOAD.match(relative):
            continue
        if relative == f"data/weights/{model}.pt" or relative == f"data/constants/{model}.pt":
            raise VettingError(
                name,
                f"{root}/{relative}",
                "is the legacy pickled weights layout: refused; "
                "save the program again with torch.export.save from torch >= 2.6",
            )
        raise VettingError(
            name, f"{root}/{relative}", "is not an entry torch.export.save writes for a program"
        )

    def text(relative: str, limit: int = 4096) -> str:
        data = _checked_read(name, archive, members[relative], limit)
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise VettingError(name, f"{root}/{relative}", "is not UTF-8 text") from exc

    if text("archive_format") != "pt2":
        raise VettingError(name, f"{root}/archive_format", "does not say pt2")
    if text("byteorder") not in ("little", "big"):
        raise VettingError(name, f"{root}/byteorder", "is neither little nor big")
    for relative in ("archive_version", ".data/version"):
        if not text(relative).isdigit():
            raise VettingError(name, f"{root}/{relative}", "is not a version number")

    def payload_sizes(prefix: str) -> dict[str, int]:
        return {
            relative.rsplit("/", 1)[1]: info.file_size
            for relative, info in members.items()
            if relative.startswith(prefix) and _PT2_PAYLOAD.match(relative)
        }

    for config, prefix, file_prefix in (
        (f"data/weights/{model}_weights_config.json", "data/weights/", "weight_"),
        (f"data/constants/{model}_constants_config.json", "data/constants/", "tensor_"),
    ):
        _vet_payload_config(
            name,
            f"{root}/{config}",
            _json(name, f"{root}/{config}", text(config, MAX_JSON_BYTES)),
            payload_sizes(prefix),
            file_prefix,
        )
    sample = f"data/sample_inputs/{model}.pt"
    _vet_tensor_archive(
        name, f"{root}/{sample}", _checked_read(name, archive, members[sample], MAX_JSON_BYTES)
    )
    graph = f"models/{model}.json"
    _vet_program_json(
        name, f"{root}/{graph}", _json(name, f"{root}/{graph}", text(graph, MAX_JSON_BYTES))
    )


def _json(name: str, entry: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise VettingError(name, entry, f"is not valid JSON: {exc}") from exc


def _vet_payload_config(
    name: str, entry: str, config: Any, sizes: dict[str, int], file_prefix: str
) -> None:
    """Each tensor stored raw (no pickle), its declared extent inside the bytes it points at."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise VettingError(name, entry, "is not a payload config")
    for fqn, meta in config["config"].items():
        where = f"{entry} [{fqn}]"
        if not isinstance(meta, dict):
            raise VettingError(name, where, "is not a payload entry")
        if meta.get("use_pickle"):
            raise VettingError(name, where, "is stored with pickle (use_pickle: true): refused")
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not re.fullmatch(rf"{file_prefix}\d+", path_name):
            raise VettingError(name, where, f"points at {path_name!r}, not a raw tensor file")
        if path_name not in sizes:
            raise VettingError(name, where, f"points at {path_name}, which the archive lacks")
        tensor = meta.get("tensor_meta")
        if not isinstance(tensor, dict):
            raise VettingError(name, where, "has no tensor layout")
        itemsize = _SCALAR_BYTES.get(tensor.get("dtype"))  # type: ignore[arg-type]
        if itemsize is None:
            raise VettingError(name, where, f"has an unknown dtype {tensor.get('dtype')!r}")
        shape = _ints(name, where, tensor.get("sizes"), "sizes")
        strides = _ints(name, where, tensor.get("strides"), "strides")
        offset = _ints(name, where, [tensor.get("storage_offset")], "storage_offset")[0]
        if len(shape) != len(strides) or min([offset, *shape, *strides], default=0) < 0:
            raise VettingError(name, where, "has an inconsistent tensor layout")
        extent = (
            0
            if 0 in shape
            else offset + 1 + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
        )
        declared = extent * itemsize
        if declared > sizes[path_name]:
            raise VettingError(
                name,
                where,
                f"declares {declared} bytes but {path_name} holds "
                f"{sizes[path_name]}: sizes that do not add up",
            )


def _ints(name: str, where: str, values: Any, what: str) -> list[int]:
    """`[{"as_int": n}, ...]` to ints; a symbolic size in a stored tensor is refused."""
    if not isinstance(values, list):
        raise VettingError(name, where, f"has no {what}")
    out = []
    for value in values:
        number = value.get("as_int") if isinstance(value, dict) and len(value) == 1 else None
        if not isinstance(number, int) or isinstance(number, bool):
            raise VettingError(name, where, f"has a {what} that is not a plain integer")
        out.append(number)
    return out


# The top-level fields of a serialized ExportedProgram in the schema vetted; a field a newer
# torch adds is refused until it has been looked at.
PT2_PROGRAM_KEYS = frozenset(
    {
        "graph_module",
        "opset_version",
        "range_constraints",
        "schema_version",
        "verifiers",
        "torch_version",
        "guards_code",
    }
)


def _vet_program_json(name: str, entry: str, program: Any) -> None:
    if not isinstance(program, dict) or "graph_module" not in program:
        raise VettingError(name, entry, "is not a serialized ExportedProgram")
    unknown = sorted(set(program) - PT2_PROGRAM_KEYS)
    if unknown:
        raise VettingError(name, entry, f"has fields this Bakeline has not vetted: {unknown}")
    version = program.get("schema_version")
    major = version.get("major") if isinstance(version, dict) else None
    if major not in PT2_SCHEMA_MAJORS:
        raise VettingError(
            name,
            entry,
            f"uses ExportedProgram schema {major!r}; this Bakeline vets schema "
            f"{sorted(PT2_SCHEMA_MAJORS)} only",
        )
    for guard in program.get("guards_code") or []:
        _vet_guard(name, entry, guard)
    for key in program.get("range_constraints") or {}:
        if not re.fullmatch(r"[a-z]+[0-9]+", str(key)):
            raise VettingError(name, entry, f"has a range constraint on {str(key)[:80]!r}")
    for path, key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            if not any(pattern.match(value) for pattern in _TARGET_PATTERNS):
                raise VettingError(
                    name,
                    entry,
                    f"calls {value[:120]!r} at {path}: not an operator an "
                    "inference program is vetted to call",
                )
        elif key == "expr_str":
            _vet_sympy(name, entry, str(value), path)
        elif key in ("as_custom_obj", "as_custom_objs") and value:
            raise VettingError(name, entry, f"passes a custom object at {path}: refused")
        elif key == "custom_obj_values" and value:
            raise VettingError(name, entry, "declares custom objects: refused")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    stack: list[tuple[str, Any]] = [(path, node)]
    while stack:
        where, current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                yield where, str(key), value
                stack.append((f"{where}/{key}", value))
        elif isinstance(current, list):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(current))


def _tokens(text: str) -> Iterator[tokenize.TokenInfo]:
    if "\n" in text or "\r" in text or len(text) > 65536:
        raise SyntaxError("more than one line")
    ignored = {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in ignored:
            yield token


def _vet_vocabulary(
    text: str, names: frozenset[str], ops: frozenset[str], literal: re.Pattern[str]
) -> str | None:
    """None when `text` uses only these names, operators, numbers and literals; else the first
    token that is not."""
    try:
        for token in _tokens(text):
            if token.type == tokenize.NAME and token.string in names:
                continue
            if token.type == tokenize.OP and token.string in ops:
                continue
            if token.type == tokenize.NUMBER and re.fullmatch(r"[0-9.eE+-]+", token.string):
                continue
            if token.type == tokenize.STRING and literal.match(token.string):
                continue
            return token.string
    except (SyntaxError, tokenize.TokenError):
        return text[:40]
    return None


def _vet_sympy(name: str, entry: str, text: str, path: str) -> None:
    bad = _vet_vocabulary(text, SYMPY_NAMES, _SYMPY_OPS, _SYMBOL_LITERAL)
    if bad is not None:
        raise VettingError(
            name,
            entry,
            f"has a shape expression with {bad!r} at {path}; torch evaluates these "
            "with sympy, so only sympy's shape vocabulary is let through",
        )


def _vet_guard(name: str, entry: str, guard: Any) -> None:
    bad = _vet_vocabulary(str(guard), GUARD_NAMES, _GUARD_OPS, _KEY_LITERAL)
    if bad is not None or not isinstance(guard, str):
        raise VettingError(
            name,
            entry,
            f"has guard code with {bad!r} ({str(guard)[:80]!r}); guards become "
            "Python code, so only comparisons of input sizes are let through",
        )


# --- pickles inside torch archives ---------------------------------------------------------------

_STORAGES = frozenset(
    f"{kind}Storage"
    for kind in (
        "Float",
        "Double",
        "Half",
        "BFloat16",
        "Long",
        "Int",
        "Short",
        "Char",
        "Byte",
        "Bool",
        "ComplexFloat",
        "ComplexDouble",
        "QInt8",
        "QUInt8",
        "QInt32",
        "Untyped",
    )
)
# (module, name) a tensor pickle may name: the rebuild functions torch.save and torch.jit.save
# write for tensors and containers, and the storage types as persistent-id tags.
TENSOR_GLOBALS = frozenset(
    {
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_tensor_v3"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch._utils", "_rebuild_qtensor"),
        ("torch._utils", "_rebuild_device_tensor_from_numpy"),
        ("collections", "OrderedDict"),
        ("torch", "device"),
        ("torch", "float32"),
        ("torch.jit._pickle", "build_intlist"),
        ("torch.jit._pickle", "build_floatlist"),
        ("torch.jit._pickle", "build_boollist"),
        ("torch.jit._pickle", "build_doublelist"),
        ("torch.jit._pickle", "build_tensorlist"),
        ("torch.jit._pickle", "build_tensor_from_id"),
        ("torch.jit._pickle", "restore_type_tag"),
    }
    | {("torch", storage) for storage in _STORAGES}
)
_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "SHORT_BINSTRING",
        "BINSTRING",
        "STRING",
    }
)
_MEMO_OPS = frozenset({"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"})


def pickle_globals(data: bytes) -> Iterator[tuple[str, str]]:
    """Every (module, name) a pickle would import, read with pickletools (never unpickled).
    A global that cannot be resolved statically (STACK_GLOBAL fed from the memo, extension
    codes) raises ValueError."""
    recent: list[str] = []
    for opcode, arg, _ in pickletools.genops(data):
        op = opcode.name
        if op in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            yield module, attr
        elif op == "STACK_GLOBAL":
            if len(recent) < 2:
                raise ValueError("a STACK_GLOBAL whose names are not literals")
            yield recent[-2], recent[-1]
        elif op in ("EXT1", "EXT2", "EXT4"):
            raise ValueError(f"an extension-registry global ({op})")
        if op in _STRING_OPS:
            recent.append(str(arg))
        elif op not in _MEMO_OPS:
            recent.clear()


def _vet_pickle(name: str, entry: str, data: bytes, allowed: Callable[[str, str], bool]) -> None:
    try:
        for module, attr in pickle_globals(data):
            if not allowed(module, attr):
                raise VettingError(
                    name,
                    entry,
                    f"is a pickle that imports {module}.{attr}: only tensor "
                    "rebuilders are let through",
                )
    except VettingError:
        raise
    except Exception as exc:  # pickletools raises ValueError and friends on malformed input
        raise VettingError(name, entry, f"is a malformed pickle: {exc}") from exc


def _tensor_global(module: str, attr: str) -> bool:
    return (module, attr) in TENSOR_GLOBALS


_TENSOR_ARCHIVE = re.compile(
    r"^(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|"
    r"\.data/serialization_id|\.data/version|data/\d+)$"
)


def _vet_tensor_archive(name: str, entry: str, data: bytes) -> None:
    """A torch.save archive nested in a .pt2 (its example inputs): tensors and containers only."""
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise VettingError(name, entry, f"is not a torch.save archive: {exc}") from exc
    with inner:
        label = f"{name}: {entry}"
        for info in inner.infolist():
            _vet_entry_name(label, info.filename)
        root = _root(label, inner)
        for info in inner.infolist():
            relative = info.filename[len(root) + 1 :]
            if not _TENSOR_ARCHIVE.match(relative):
                raise VettingError(
                    name, f"{entry}/{info.filename}", "is not a tensor archive entry"
                )
            if relative == "data.pkl":
                _vet_pickle(
                    name,
                    f"{entry}/{info.filename}",
                    _checked_read(label, inner, info, MAX_JSON_BYTES),
                    _tensor_global,
                )


# --- TorchScript ---------------------------------------------------------------------------------

_TS_ENTRY = re.compile(
    r"^(data\.pkl|constants\.pkl|traced_inputs\.pkl|version|byteorder|\.data/version|"
    r"\.data/serialization_id|data/\d+|constants/\d+|traced_inputs/\d+|"
    r"code/__torch__(/[A-Za-z0-9_.]+)*/[A-Za-z0-9_]+\.py(\.debug_pkl)?)$"
)
_TS_OP_NAMESPACES = frozenset({"aten", "prim", "quantized"})


def _torchscript_global(module: str, attr: str) -> bool:
    """Tensor rebuilders, plus classes of the archive's own compiled code (`__torch__.…`),
    which TorchScript resolves against that code, never by importing Python."""
    if (module, attr) in TENSOR_GLOBALS:
        return True
    return bool(re.fullmatch(r"__torch__(\.[A-Za-z0-9_]+)*", module) and re.fullmatch(_NAME, attr))


def _vet_torchscript(name: str, archive: zipfile.ZipFile) -> None:
    root = _root(name, archive)
    for info in archive.infolist():
        relative = info.filename[len(root) + 1 :]
        entry = info.filename
        if relative.startswith("extra/"):
            raise VettingError(name, entry, "is an extra file: refused")
        if not _TS_ENTRY.match(relative):
            raise VettingError(name, entry, "is not an entry torch.jit.save writes")
        if relative.endswith(".pkl"):
            _vet_pickle(
                name,
                entry,
                _checked_read(name, archive, info, MAX_JSON_BYTES),
                _torchscript_global,
            )
        elif relative.endswith(".py"):
            code = _checked_read(name, archive, info, MAX_JSON_BYTES).decode("utf-8", "replace")
            for namespace in set(re.findall(r"\bops\.([A-Za-z0-9_]+)\.", code)):
                if namespace not in _TS_OP_NAMESPACES:
                    raise VettingError(
                        name,
                        entry,
                        f"calls operators of namespace {namespace!r}: only "
                        f"{sorted(_TS_OP_NAMESPACES)} are let through",
                    )


# --- ONNX ----------------------------------------------------------------------------------------

_ONNX_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# TensorProto.DataType element sizes (STRING and UNDEFINED excluded).
_ONNX_BYTES = {
    1: 4,
    2: 1,
    3: 1,
    4: 2,
    5: 2,
    6: 4,
    7: 8,
    9: 1,
    10: 2,
    11: 8,
    12: 4,
    13: 8,
    14: 8,
    15: 16,
    16: 2,
    17: 1,
    18: 1,
    19: 1,
    20: 1,
    21: 1,
    22: 1,
    23: 1,
}


def _vet_onnx(path: Path, folder: Path) -> Vetted:
    import onnx  # protobuf parsing runs no code from the file

    name = path.name
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise VettingError(
            name, None, f"is not an ExportedProgram, TorchScript or ONNX model: {exc}"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise VettingError(name, None, "is not an ExportedProgram, TorchScript or ONNX model")
    local_domains = {function.domain for function in model.functions}
    external: list[str] = []
    for where, tensor in _onnx_tensors(model):
        label = f"tensor {tensor.name or where}"
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external.append(_vet_external(name, label, tensor, folder))
        else:
            _vet_inline_tensor(name, label, tensor)
    for node in _onnx_nodes(model):
        if node.domain not in _ONNX_DOMAINS and node.domain not in local_domains:
            raise VettingError(
                name,
                f"node {node.name or node.op_type}",
                f"uses operator domain {node.domain!r}, which needs a custom library",
            )
    try:
        if not external:  # the checker would look for external data beside the working folder
            onnx.checker.check_model(model)
    except Exception as exc:
        raise VettingError(name, None, f"is not a valid ONNX model: {exc}") from exc
    return Vetted("onnx", tuple(sorted(set(external))))


def _onnx_nodes(model: Any) -> Iterator[Any]:
    graphs = [model.graph]
    nodes: list[Any] = [node for function in model.functions for node in function.node]
    while graphs:
        graph = graphs.pop()
        nodes.extend(graph.node)
    while nodes:
        node = nodes.pop()
        yield node
        for attribute in node.attribute:
            for graph in ([attribute.g] if attribute.HasField("g") else []) + list(
                attribute.graphs
            ):
                nodes.extend(graph.node)


def _onnx_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    def of_graph(graph: Any) -> Iterable[tuple[str, Any]]:
        yield from ((f"initializer {t.name}", t) for t in graph.initializer)
        for sparse in graph.sparse_initializer:
            yield "sparse values", sparse.values
            yield "sparse indices", sparse.indices

    graphs = [model.graph]
    yield from of_graph(model.graph)
    for node in _onnx_nodes(model):
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield f"attribute {attribute.name}", attribute.t
            for tensor in attribute.tensors:
                yield f"attribute {attribute.name}", tensor
            for graph in ([attribute.g] if attribute.HasField("g") else []) + list(
                attribute.graphs
            ):
                graphs.append(graph)
                yield from of_graph(graph)


def _declared_bytes(tensor: Any) -> int | None:
    size = _ONNX_BYTES.get(tensor.data_type)
    if size is None:
        return None
    count = 1
    for dim in tensor.dims:
        if dim < 0:
            return -1
        count *= dim
    return count * size


def _vet_external(name: str, label: str, tensor: Any, folder: Path) -> str:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = str(info.get("location", ""))
    relative = PurePosixPath(location)
    if (
        not location
        or relative.is_absolute()
        or location.startswith(("\\", "~"))
        or re.match(r"^[A-Za-z]:", location)
        or ".." in relative.parts
        or "\x00" in location
    ):
        raise VettingError(
            name,
            label,
            f"reads external data from {location!r}: only files inside the "
            "model's own folder are let through",
        )
    target = (folder / location).resolve()
    if folder not in target.parents:
        raise VettingError(
            name,
            label,
            f"reads external data from {location!r}, outside the model's folder (through a link)",
        )
    if not target.is_file():
        raise VettingError(name, label, f"reads external data from {location!r}, which is missing")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else target.stat().st_size - offset
    except ValueError as exc:
        raise VettingError(name, label, "has a malformed external data offset or length") from exc
    if offset < 0 or length < 0 or offset + length > target.stat().st_size:
        raise VettingError(name, label, f"reads past the end of {location}")
    declared = _declared_bytes(tensor)
    if declared is not None and (declared < 0 or declared > length):
        raise VettingError(
            name, label, f"declares {declared} bytes but its external data holds {length}"
        )
    return os.path.normpath(location)


def _vet_inline_tensor(name: str, label: str, tensor: Any) -> None:
    declared = _declared_bytes(tensor)
    if declared is None:
        return
    if declared < 0:
        raise VettingError(name, label, "has a negative dimension")
    fields = (
        tensor.float_data,
        tensor.int32_data,
        tensor.int64_data,
        tensor.double_data,
        tensor.uint64_data,
        tensor.string_data,
    )
    held = (
        len(tensor.raw_data)
        or max(len(values) for values in fields) * _ONNX_BYTES[tensor.data_type]
    )
    if declared > max(held, _ONNX_BYTES[tensor.data_type]) and declared > 0:
        raise VettingError(name, label, f"declares {declared} bytes but holds {held}")


# --- Hugging Face model directories --------------------------------------------------------------

# A config.json is a few KiB; one bigger than this is not a model's configuration.
MAX_CONFIG_BYTES = 1 << 20
# The safetensors library refuses headers past 100 MB; so do we, before reading one.
MAX_SAFETENSORS_HEADER = 100_000_000
HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
# Sharded weights (save_pretrained past max_shard_size): this index maps each tensor to its shard.
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
_HF_SHARD = re.compile(r"model-\d+-of-\d+\.safetensors")
# Read as JSON or text only, and shipped with the model (tokenizer.json tokenizes text data).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HF_TEXT_FILES = ("vocab.txt",)
# Read as JSON only: how an image or waveform model prepares its inputs from media files.
HF_PREPROCESSOR = "preprocessor_config.json"
# Weights (or state) that only a pickle loader reads: never read here, whatever their name.
_PICKLED = re.compile(r"(^|/)[^/]*\.(bin|pt|pth|pkl|pickle|ckpt)$")
# safetensors dtypes and their element sizes in bytes.
SAFETENSORS_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_NEVER_REMOTE_CODE = (
    "Bakeline never runs code that comes with a model (trust_remote_code is never used): "
    "use an architecture transformers itself knows"
)


@dataclass(frozen=True)
class VettedFolder:
    """A Hugging Face model directory as vetting found it: the parsed config, the files to
    read (relative names: config, weights, tokenizer files) and what was left unread, why."""

    config: dict[str, Any]
    files: tuple[str, ...]
    ignored: tuple[str, ...] = field(default=())
    # The safetensors files the weights are read from: model.safetensors, or every shard its
    # index names (each vetted, no tensor in two).
    weights: tuple[str, ...] = field(default=(HF_WEIGHTS,))
    # preprocessor_config.json as vetting parsed it, where the folder has one.
    processing: dict[str, Any] | None = None

    @property
    def tokenizer(self) -> str | None:
        return "tokenizer.json" if "tokenizer.json" in self.files else None

    @property
    def preprocessor(self) -> str | None:
        return HF_PREPROCESSOR if HF_PREPROCESSOR in self.files else None


def vet_huggingface_folder(folder: Path, model_types: Iterable[str]) -> VettedFolder:
    """Vet a Hugging Face model directory from its bytes: config.json is JSON naming a
    `model_type` of `model_types` (transformers' CONFIG_MAPPING, handed in: this module imports
    no torch, which transformers does) and no custom code; weights come from model.safetensors
    alone, its header checked; tokenizer files are JSON or text. Pickled files are never read:
    beside model.safetensors they are left out (and named in `ignored`), without it refused."""
    name = folder.name
    if not folder.is_dir():
        raise VettingError(name, None, "is not a folder (a Hugging Face model is a directory)")
    present = set(tree_files(folder))  # what the folder's sha256 covers, no more
    if HF_CONFIG not in present:
        raise VettingError(
            name,
            None,
            "is a folder without config.json: a model folder must be a Hugging Face model "
            "directory (config.json, model.safetensors, tokenizer files)",
        )
    pickled = sorted(relative for relative in present if _PICKLED.search(relative))
    if HF_WEIGHTS not in present and HF_WEIGHTS_INDEX not in present:
        shards = sorted(r for r in present if _HF_SHARD.fullmatch(r))
        if shards:
            raise VettingError(
                name,
                shards[0],
                f"is one shard of sharded weights, but the folder has no {HF_WEIGHTS_INDEX} "
                "to say which tensors each shard holds: copy the whole folder save_pretrained "
                "wrote",
            )
        why = (
            f"holds {', '.join(pickled[:3])}, pickled weights, which are never unpickled; "
            if pickled
            else ""
        )
        raise VettingError(
            name,
            None,
            f"has no model.safetensors: {why}weights are read from model.safetensors (or the "
            f"shards {HF_WEIGHTS_INDEX} names) only: save the model with "
            "save_pretrained(..., safe_serialization=True)",
        )
    config = _vet_hf_config(name, folder / HF_CONFIG, frozenset(model_types))
    unread: list[str] = []
    if HF_WEIGHTS in present:  # what transformers reads first, too: an index beside it is not
        _vet_safetensors(name, folder / HF_WEIGHTS)
        weights: tuple[str, ...] = (HF_WEIGHTS,)
        files = [HF_CONFIG, HF_WEIGHTS]
        if HF_WEIGHTS_INDEX in present:
            unread.append(f"{HF_WEIGHTS_INDEX} (model.safetensors is read instead)")
    else:
        weights = _vet_shards(name, folder, present)
        files = [HF_CONFIG, HF_WEIGHTS_INDEX, *weights]
    unread += [
        f"{relative} (a shard {HF_WEIGHTS_INDEX} does not name: not read)"
        for relative in sorted(present)
        if _HF_SHARD.fullmatch(relative) and relative not in weights
    ]
    for relative in HF_TOKENIZER_FILES:
        if relative in present:
            document = _hf_json(name, folder / relative, MAX_JSON_BYTES)
            if relative == "tokenizer_config.json" and isinstance(document, dict):
                _refuse_remote_code(name, relative, document)
            files.append(relative)
    for relative in HF_TEXT_FILES:
        if relative in present:
            _hf_text(name, folder / relative, MAX_JSON_BYTES)
            files.append(relative)
    processing = None
    if HF_PREPROCESSOR in present:
        processing = _vet_preprocessor(name, folder / HF_PREPROCESSOR)
        files.append(HF_PREPROCESSOR)
    ignored = [f"{relative} (a pickle: never unpickled)" for relative in pickled]
    ignored += [
        f"{relative} (code: never imported)"
        for relative in sorted(present)
        if relative.endswith(".py")
    ]
    return VettedFolder(config, tuple(files), tuple(ignored + unread), weights, processing)


def _vet_shards(name: str, folder: Path, present: set[str]) -> tuple[str, ...]:
    """The shards model.safetensors.index.json names, in order, each vetted: plain file names
    of this folder's safetensors files, every tensor of the index in the shard it names, no
    tensor in two shards. Returns their names."""
    index = _hf_json(name, folder / HF_WEIGHTS_INDEX, MAX_CONFIG_BYTES * 16)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(v, str) for v in weight_map.values())
    ):
        raise VettingError(
            name, HF_WEIGHTS_INDEX, "has no weight_map of tensor names to shard files"
        )
    claimed: dict[str, set[str]] = {}
    for tensor, shard in weight_map.items():
        claimed.setdefault(shard, set()).add(tensor)
    seen: dict[str, str] = {}
    for shard, tensors in claimed.items():
        where = f"{HF_WEIGHTS_INDEX} [{shard[:80]}]"
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise VettingError(
                name, where, "names a shard that is not a .safetensors file of the folder itself"
            )
        if shard not in present:
            raise VettingError(name, where, "names a shard the folder does not hold")
        held = _vet_safetensors(name, folder / shard)
        missing = sorted(tensors - held)
        if missing:
            raise VettingError(
                name, where, f"maps {missing[0][:80]} to a shard that does not hold it"
            )
        for tensor in held:
            if tensor in seen:
                raise VettingError(
                    name, f"{shard} [{tensor[:80]}]", f"is also in {seen[tensor]}: refused"
                )
            seen[tensor] = shard
    return tuple(sorted(claimed))


def _hf_text(name: str, path: Path, limit: int) -> str:
    entry = path.name
    try:
        size = path.stat().st_size
        if size > limit:
            raise VettingError(name, entry, f"is {size} bytes (at most {limit})")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VettingError(name, entry, "is not UTF-8 text") from exc
    except OSError as exc:
        raise VettingError(name, entry, f"cannot be read: {exc}") from exc


def _hf_json(name: str, path: Path, limit: int) -> Any:
    return _json(name, path.name, _hf_text(name, path, limit))


def _refuse_remote_code(name: str, entry: str, document: dict[str, Any]) -> None:
    for key in ("auto_map", "custom_pipelines", "trust_remote_code"):
        if key in document:
            raise VettingError(
                name,
                entry,
                f"declares {key}, which names custom code: refused; {_NEVER_REMOTE_CODE}",
            )


def _vet_preprocessor(name: str, path: Path) -> dict[str, Any]:
    """A JSON object naming no custom code, and transformers' own classes only."""
    document = _hf_json(name, path, MAX_CONFIG_BYTES)
    if not isinstance(document, dict):
        raise VettingError(name, HF_PREPROCESSOR, "is not a JSON object")
    _refuse_remote_code(name, HF_PREPROCESSOR, document)
    for key in ("image_processor_type", "feature_extractor_type", "processor_class"):
        value = document.get(key)
        if value is not None and not (isinstance(value, str) and re.fullmatch(_NAME, value)):
            raise VettingError(name, HF_PREPROCESSOR, f"has a {key} that is not a class name")
    return document


def _vet_hf_config(name: str, path: Path, model_types: frozenset[str]) -> dict[str, Any]:
    config = _hf_json(name, path, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise VettingError(name, HF_CONFIG, "is not a JSON object")
    _refuse_remote_code(name, HF_CONFIG, config)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise VettingError(name, HF_CONFIG, "has no model_type")
    if model_type not in model_types:
        raise VettingError(
            name,
            HF_CONFIG,
            f"names model_type {model_type[:80]!r}, which this transformers does not know; "
            f"{_NEVER_REMOTE_CODE}",
        )
    architectures = config.get("architectures")
    if architectures is not None and (
        not isinstance(architectures, list)
        or not all(isinstance(a, str) and re.fullmatch(_NAME, a) for a in architectures)
    ):
        raise VettingError(name, HF_CONFIG, "has architectures that are not class names")
    if config.get("quantization_config") is not None:
        raise VettingError(
            name,
            HF_CONFIG,
            "declares quantization_config (a pre-quantized model, loaded with kernels of its "
            "own): give the unquantized weights, Bakeline quantizes them",
        )
    return config


def _vet_safetensors(name: str, path: Path) -> set[str]:
    """The header read as JSON, every tensor's dtype known and its extent inside the file,
    extents disjoint: what the safetensors library then maps is raw numbers, nothing else.
    Returns the names of the tensors it holds."""
    entry = path.name
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise VettingError(name, entry, "is too short to be safetensors")
        length = int.from_bytes(head, "little")
        if length < 2 or length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise VettingError(
                name,
                entry,
                f"declares a header of {length} bytes in a file of {size}: not safetensors",
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VettingError(name, entry, f"has a header that is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise VettingError(name, entry, "has a header that is not a JSON object")
    data = size - 8 - length
    spans: list[tuple[int, int, str]] = []
    for key, meta in header.items():
        if key == "__metadata__":
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise VettingError(name, entry, "has __metadata__ that is not strings")
            continue
        where = f"{entry} [{key[:80]}]"
        if not isinstance(meta, dict) or set(meta) != {"dtype", "shape", "data_offsets"}:
            raise VettingError(name, where, "is not a tensor entry (dtype, shape, data_offsets)")
        itemsize = SAFETENSORS_BYTES.get(meta["dtype"]) if isinstance(meta["dtype"], str) else None
        if itemsize is None:
            raise VettingError(name, where, f"has an unknown dtype {meta['dtype']!r}")
        shape, offsets = meta["shape"], meta["data_offsets"]
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise VettingError(name, where, "has a shape that is not non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data
        ):
            raise VettingError(name, where, f"has data offsets outside the file's {data} bytes")
        count = 1
        for n in shape:
            count *= n
        if count * itemsize != offsets[1] - offsets[0]:
            raise VettingError(
                name,
                where,
                f"declares {count * itemsize} bytes but its offsets span "
                f"{offsets[1] - offsets[0]}: sizes that do not add up",
            )
        spans.append((offsets[0], offsets[1], key))
    if not spans:
        raise VettingError(name, entry, "holds no tensors")
    spans.sort()
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise VettingError(name, f"{entry} [{second[:80]}]", f"overlaps {first[:80]}")
    return {key for _, _, key in spans}
