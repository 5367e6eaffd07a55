"""Hostile model files: each would prove execution by creating `marker` if it ever ran.

A pickle's __reduce__ names a callable the unpickler calls; here it is `pathlib.Path.touch`
on the marker path, the smallest side effect anyone can check afterwards.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import zipfile
import zlib
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
