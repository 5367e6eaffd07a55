"""Hostile model files: each would prove execution by creating `marker` if it ever ran.

A pickle's __reduce__ names a callable the unpickler calls; here it is `pathlib.Path.touch`
on the marker path, the smallest side effect anyone can check afterwards.
"""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _Touch:
    """Unpickling this calls Path(marker).touch(): proof that a loader executed the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_Touch(marker), protocol=2)


def write_pickle(path: Path, marker: Path) -> Path:
    """A bare pickle, as `torch.save(model)` of old wrote them."""
    path.write_bytes(pickle_payload(marker))
    return path


def write_torch_save_zip(path: Path, marker: Path) -> Path:
    """The layout of `torch.save` (zip with archive/data.pkl): a pickle in a zip."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_payload(marker))
        archive.writestr("archive/version", "3\n")
    return path


def write_fake_exported_program(path: Path, marker: Path) -> Path:
    """Looks like torch.export.save's archive (archive_format, models/*.json) but carries
    pickles where the weights and constants go."""
    payload = pickle_payload(marker)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/version", "0")
        archive.writestr("model/models/model.json", "{}")
        archive.writestr("model/data/weights/model.pt", payload)
        archive.writestr("model/data/constants/model.pt", payload)
        archive.writestr("model/data/sample_inputs/model.pt", payload)
    return path


def write_zip_bomb(path: Path, gibibytes: int = 2) -> Path:
    """An ExportedProgram-looking zip whose one member inflates to `gibibytes` GiB of zeros
    from a few MiB on disk. The deflate stream is one compressed MiB repeated (full-flush
    blocks are byte-aligned and independent), so building it takes well under a second."""
    mib = b"\0" * (1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = packer.compress(mib) + packer.flush(zlib.Z_FULL_FLUSH)
    tail = packer.flush(zlib.Z_FINISH)
    count = gibibytes << 10
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(mib, crc)
    member = zipfile.ZipInfo("model/data/weights/model.pt")
    member.compress_type = zipfile.ZIP_DEFLATED
    member.CRC = crc
    member.file_size = count << 20
    member.compress_size = len(block) * count + len(tail)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/models/model.json", "{}")
        # Write the member's header and raw deflate bytes by hand: zipfile would deflate 2 GiB.
        archive.fp.seek(archive.start_dir)  # type: ignore[union-attr]
        member.header_offset = archive.start_dir
        archive.fp.write(member.FileHeader(zip64=True))  # type: ignore[union-attr]
        for _ in range(count):
            archive.fp.write(block)  # type: ignore[union-attr]
        archive.fp.write(tail)  # type: ignore[union-attr]
        archive.start_dir = archive.fp.tell()  # type: ignore[union-attr]
        archive.filelist.append(member)
        archive.NameToInfo[member.filename] = member
        archive._didModify = True  # type: ignore[attr-defined]
    return path


def write_truncated_onnx(path: Path) -> Path:
    """A real ONNX model (a 4x4 MatMul), cut off halfway through."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weight],
    )
    data = onnx.helper.make_model(graph).SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_throwing_torchscript(path: Path) -> Path:
    """A TorchScript model that loads cleanly and raises on every forward call."""
    import torch

    class Throws(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > -1e30:
                raise RuntimeError("this model throws on forward")
            out: torch.Tensor = self.linear(x)
            return out

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Throws()), buffer)
    path.write_bytes(buffer.getvalue())
    return path


# --- the current formats, as torch and onnx write them, then tampered with ----------------------
# Each writer below starts from a file the real exporter wrote, so the vetting is tried on the
# layout a user's file has, not on a guess of it.


def _small_program(path: Path) -> Path:
    """torch.export.save of a module with a parameter, a buffer, a lifted tensor constant and
    a dynamic batch dimension: every kind of entry the .pt2 layout has."""
    import torch

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 3)
            self.register_buffer("shift", torch.ones(3))
            self.scale = torch.tensor([1.0, 2.0, 3.0])  # a constant, not a buffer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.linear(x) * self.scale + self.shift
            return out

    program = torch.export.export(
        Small(), (torch.randn(2, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(path))
    return path


def _rewrite_zip(
    source: Path,
    target: Path,
    change: Callable[[str, bytes], bytes | None],
    add: dict[str, bytes] | None = None,
) -> Path:
    """Copy a zip, each member through `change` (None drops it), then `add` (names relative to
    the archive's one folder), stored uncompressed as torch writes."""
    with zipfile.ZipFile(source) as old:
        members = [(info.filename, old.read(info)) for info in old.infolist()]
    root = members[0][0].split("/", 1)[0]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for name, data in members:
            changed = change(name, data)
            if changed is not None:
                new.writestr(name, changed)
        for name, data in (add or {}).items():
            new.writestr(name if name.startswith("../") else f"{root}/{name}", data)
    return target


def _json_change(suffix: str, edit: Callable[[Any], None]) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if not name.endswith(suffix):
            return data
        document = json.loads(data)
        edit(document)
        return json.dumps(document).encode()

    return change


def write_pt2_pickled_constant(path: Path, marker: Path) -> Path:
    """The case found by a user: a constant marked `use_pickle: true` with a pickle beside it
    (torch.export.load would torch.load it with weights_only=False)."""
    clean = _small_program(path.with_suffix(".clean.pt2"))

    def edit(config: Any) -> None:
        for meta in config["config"].values():
            meta["use_pickle"] = True

    payload = pickle_payload(marker)
    return _rewrite_zip(
        clean,
        path,
        lambda n, d: (
            payload
            if "/data/constants/tensor_" in n
            else _json_change("_constants_config.json", edit)(n, d)
        ),
    )


def write_pt2_pickled_weight(path: Path, marker: Path) -> Path:
    clean = _small_program(path.with_suffix(".clean.pt2"))

    def edit(config: Any) -> None:
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True

    payload = pickle_payload(marker)
    return _rewrite_zip(
        clean,
        path,
        lambda n, d: (
            payload
            if n.endswith("/data/weights/weight_0")
            else _json_change("_weights_config.json", edit)(n, d)
        ),
    )


def _object_constant(prefix: str) -> Callable[[Path, Path], Path]:
    def write(path: Path, marker: Path) -> Path:
        clean = _small_program(path.with_suffix(".clean.pt2"))

        def edit(config: Any) -> None:
            config["config"]["evil"] = {
                "path_name": f"{prefix}0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }

        return _rewrite_zip(
            clean,
            path,
            _json_change("_constants_config.json", edit),
            add={f"data/constants/{prefix}0": pickle_payload(marker)},
        )

    return write


write_pt2_opaque_object = _object_constant("opaque_obj_")
write_pt2_custom_object = _object_constant("custom_obj_")


def write_pt2_aotinductor(path: Path, marker: Path) -> Path:
    """An AOTInductor entry with a shared object whose constructor creates the marker."""
    import subprocess
    import tempfile

    clean = _small_program(path.with_suffix(".clean.pt2"))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "evil.c"
        source.write_text(
            "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {\n"
            f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n'
        )
        library = Path(tmp) / "model.so"
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        so = library.read_bytes()
    return _rewrite_zip(
        clean,
        path,
        lambda n, d: d,
        add={
            "data/aotinductor/model/model.so": so,
            "data/aotinductor/model/model.wrapper.cpp": b"// generated\n",
        },
    )


def _program_edit(edit: Callable[[Any, Path], None]) -> Callable[[Path, Path], Path]:
    def write(path: Path, marker: Path) -> Path:
        clean = _small_program(path.with_suffix(".clean.pt2"))
        return _rewrite_zip(
            clean, path, _json_change("/models/model.json", lambda doc: edit(doc, marker))
        )

    return write


def _touch_code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _guard(document: Any, marker: Path) -> None:
    document["guards_code"] = [*document.get("guards_code", []), _touch_code(marker)]


def _sympy(document: Any, marker: Path) -> None:
    found = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr_str":
                    node[key] = f"Add({value}, Integer(0*len(str({_touch_code(marker)}))))"
                    found.append(key)
                else:
                    visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(document)
    assert found, "the program has no shape expression to tamper with"


def _target(document: Any, marker: Path) -> None:
    nodes = document["graph_module"]["graph"]["nodes"]
    nodes[0]["target"] = "torch.os.system"


write_pt2_guard_code = _program_edit(_guard)
write_pt2_shape_expression = _program_edit(_sympy)
write_pt2_operator_target = _program_edit(_target)


def write_pt2_sample_inputs(path: Path, marker: Path) -> Path:
    """The example inputs (a nested torch.save archive) carry a pickle that runs code."""
    clean = _small_program(path.with_suffix(".clean.pt2"))

    def change(name: str, data: bytes) -> bytes:
        if "/data/sample_inputs/" not in name:
            return data
        buffer = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as inner, zipfile.ZipFile(buffer, "w") as out:
            for info in inner.infolist():
                body = inner.read(info)
                out.writestr(
                    info.filename,
                    pickle_payload(marker) if info.filename.endswith("data.pkl") else body,
                )
        return buffer.getvalue()

    return _rewrite_zip(clean, path, change)


def write_pt2_path_traversal(path: Path, marker: Path) -> Path:
    clean = _small_program(path.with_suffix(".clean.pt2"))
    return _rewrite_zip(clean, path, lambda n, d: d, add={"../../evil.sh": b"touch marker\n"})


def write_pt2_huge_tensor(path: Path, marker: Path) -> Path:
    """A weight that declares 10 GB (100,000 x 25,000 float32) over a 48-byte file."""
    clean = _small_program(path.with_suffix(".clean.pt2"))

    def edit(config: Any) -> None:
        first = next(iter(config["config"].values()))
        first["tensor_meta"]["sizes"] = [{"as_int": 100_000}, {"as_int": 25_000}]
        first["tensor_meta"]["strides"] = [{"as_int": 25_000}, {"as_int": 1}]

    return _rewrite_zip(clean, path, _json_change("_weights_config.json", edit))


def write_pt2_truncated(path: Path, marker: Path) -> Path:
    clean = _small_program(path.with_suffix(".clean.pt2"))
    data = clean.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def write_pt2_zip_bomb(path: Path, marker: Path) -> Path:
    """A real program with one more member that inflates 2 GiB from a few MiB."""
    clean = _small_program(path.with_suffix(".clean.pt2"))
    bomb = write_zip_bomb(path.with_suffix(".bomb.zip"))
    with zipfile.ZipFile(bomb) as source:
        info = source.getinfo("model/data/weights/model.pt")
        raw_start = info.header_offset
    # Splice the bomb's deflated member in as the program's weight_0, by rewriting its central
    # directory entry: cheaper than deflating 2 GiB again.
    with zipfile.ZipFile(clean) as old:
        members = [(i, old.read(i)) for i in old.infolist()]
    root = members[0][0].filename.split("/", 1)[0]
    with zipfile.ZipFile(path, "w") as new:
        for info_, data in members:
            if not info_.filename.endswith("/data/weights/weight_0"):
                new.writestr(info_.filename, data)
        with bomb.open("rb") as handle:
            handle.seek(raw_start)
            header = handle.read(30)
            name_length, extra_length = (
                int.from_bytes(header[26:28], "little"),
                int.from_bytes(header[28:30], "little"),
            )
            handle.seek(raw_start + 30 + name_length + extra_length)
            member = zipfile.ZipInfo(f"{root}/data/weights/weight_0")
            member.compress_type = zipfile.ZIP_DEFLATED
            member.CRC = info.CRC
            member.file_size = info.file_size
            member.compress_size = info.compress_size
            new.fp.seek(new.start_dir)  # type: ignore[union-attr]
            member.header_offset = new.start_dir
            new.fp.write(member.FileHeader(zip64=True))  # type: ignore[union-attr]
            remaining = info.compress_size
            while remaining:
                chunk = handle.read(min(remaining, 1 << 20))
                new.fp.write(chunk)  # type: ignore[union-attr]
                remaining -= len(chunk)
            new.start_dir = new.fp.tell()  # type: ignore[union-attr]
            new.filelist.append(member)
            new.NameToInfo[member.filename] = member
            new._didModify = True  # type: ignore[attr-defined]
    bomb.unlink()
    return path


def write_torchscript_os_system(path: Path, marker: Path) -> Path:
    """torch.jit.save output whose data.pkl names `os.system` (GLOBAL 'os system')."""
    import torch

    clean = path.with_suffix(".clean.ts")
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(clean))
    command = f"touch {marker}".encode()
    evil = b"\x80\x02cos\nsystem\nq\x00X" + len(command).to_bytes(4, "little") + command + b"\x85R."
    return _rewrite_zip(clean, path, lambda n, d: evil if n.endswith("/data.pkl") else d)


def onnx_with_external(path: Path, location: str, length: int = 64) -> Path:
    """A 4x4 MatMul whose weight (64 bytes) is external data at `location`, `length` bytes."""
    from onnx import TensorProto, helper, save

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    save(helper.make_model(graph), str(path))
    return path


def write_onnx_external_outside(path: Path, marker: Path) -> Path:
    secret = path.parent.parent / f"{path.parent.name}-secret.bin"
    secret.write_bytes(b"s" * 64)
    return onnx_with_external(path, f"../{secret.name}")


def write_onnx_external_absolute(path: Path, marker: Path) -> Path:
    return onnx_with_external(path, "/etc/hostname")
