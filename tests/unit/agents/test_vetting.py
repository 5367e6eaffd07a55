"""Vetting from the bytes: what torch writes passes, and the vetting keeps up with torch.

The hostile corpus itself is tried end to end in tests/reliability/test_hostile_models.py;
these tests pin the other side: a file torch writes today is accepted, and a newer torch that
writes entries or fields the vetting has not seen makes a test here fail before users meet it.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from reliability.models import onnx_with_external

from bakeline.agents import vetting
from bakeline.agents.pipeline import Chain
from bakeline.agents.vetting import VettingError, pickle_globals, vet_model_file


class _Small(torch.nn.Module):
    """A parameter, a buffer, a lifted tensor constant, a dynamic batch: every kind of entry."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.register_buffer("shift", torch.ones(3))
        self.scale = torch.tensor([1.0, 2.0, 3.0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x) * self.scale + self.shift
        return out


@pytest.fixture(scope="module")
def small_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "small.pt2"
    program = torch.export.export(
        _Small(), (torch.randn(2, 4),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}}
    )
    torch.export.save(program, str(path))
    return path


def _layout_of(name: str, model: str) -> str:
    """An entry as the vetting's table names it: `{model}` for the program, N for indices."""
    return re.sub(r"\d+$", "N", name.replace(f"/{model}", "/{model}", 1))


def test_the_entries_torch_writes_are_exactly_the_entries_vetted(small_pt2: Path) -> None:
    """Fails when a newer torch changes the .pt2 layout: new entries could carry code the
    vetting does not look at, and missing ones mean the table has gone stale."""
    with zipfile.ZipFile(small_pt2) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        written = {name[len(root) + 1 :] for name in archive.namelist()}
        program = json.loads(archive.read(f"{root}/models/model.json"))
    layout = {_layout_of(entry, "model") for entry in written}
    vetted = (
        set(vetting.PT2_FIXED_ENTRIES)
        | {pattern for pattern, _ in vetting.PT2_MODEL_ENTRIES}
        | {"data/weights/weight_N", "data/constants/tensor_N"}
    )
    assert layout == vetted
    assert set(program) == vetting.PT2_PROGRAM_KEYS
    assert program["schema_version"]["major"] in vetting.PT2_SCHEMA_MAJORS
    assert vet_model_file(small_pt2).format == "exported-program"


def test_what_torch_writes_for_the_builtins_passes(digits_chain: Chain, tmp_path: Path) -> None:
    """The digits CNN as the import stage saved it, and as TorchScript: both pass."""
    original = digits_chain.dirs["BakingCoordinator"] / "original.pt2"
    assert vet_model_file(original).format == "exported-program"
    module = torch.export.load(str(original)).module()
    traced = tmp_path / "digits.ts"
    torch.jit.save(torch.jit.trace(module, torch.randn(2, 1, 8, 8)), str(traced))  # type: ignore[no-untyped-call]
    assert vet_model_file(traced).format == "torchscript"
    scripted = tmp_path / "linear.ts"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3)), str(scripted))
    assert vet_model_file(scripted).format == "torchscript"


def test_torchs_guards_and_shape_expressions_are_in_the_vocabulary(small_pt2: Path) -> None:
    vetting._vet_guard("m", "e", "L['input_ids'].size()[1] == L['token_type_ids'].size()[1]")
    symbol = "Symbol('s41', positive=True, integer=True)"
    vetting._vet_sympy("m", "e", f"Mul(Integer(12), Pow({symbol}, Integer(2)))", "")
    for bad in ("L['x'].__class__", "__import__('os')", "L['x'].size()[0] == open('f')"):
        with pytest.raises(VettingError, match="guard code"):
            vetting._vet_guard("m", "e", bad)
    for bad in ("Symbol('s0').__class__", "eval('1')", "Symbol('os; rm')", "Integer(1)\nx"):
        with pytest.raises(VettingError, match="shape expression"):
            vetting._vet_sympy("m", "e", bad, "")


def test_pickle_globals_are_read_without_unpickling() -> None:
    tensors = io.BytesIO()
    torch.save(OrderedDict(w=torch.ones(2)), tensors)
    with zipfile.ZipFile(tensors) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    assert set(pickle_globals(data)) <= vetting.TENSOR_GLOBALS
    # Protocol 4 names globals with STACK_GLOBAL from the two strings pushed before it.
    assert ("collections", "OrderedDict") in set(pickle_globals(pickle.dumps(OrderedDict(), 4)))
    assert ("posix", "system") in set(
        pickle_globals(pickle.dumps(__import__("os").system, protocol=4))
    )
    # A STACK_GLOBAL fed from the memo cannot be read statically: refused, not guessed.
    memo_fed = b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94h\x00h\x01\x93."
    with pytest.raises(ValueError, match="not literals"):
        list(pickle_globals(memo_fed))


def test_onnx_external_data_inside_the_models_folder_passes(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(bytes(64))
    vetted = vet_model_file(onnx_with_external(tmp_path / "model.onnx", "weights.bin"))
    assert vetted.format == "onnx" and vetted.external_data == ("weights.bin",)


def test_onnx_external_data_that_is_short_or_through_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "short.bin").write_bytes(bytes(16))
    with pytest.raises(VettingError, match="declares 64 bytes"):
        vet_model_file(onnx_with_external(tmp_path / "model.onnx", "short.bin", length=16))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.bin"
    outside.write_bytes(bytes(64))
    (tmp_path / "link.bin").symlink_to(outside)
    with pytest.raises(VettingError, match="outside the model's folder"):
        vet_model_file(onnx_with_external(tmp_path / "model.onnx", "link.bin"))


def test_a_renamed_zip_or_a_duplicate_entry_is_refused(small_pt2: Path, tmp_path: Path) -> None:
    twice = tmp_path / "twice.pt2"
    with zipfile.ZipFile(small_pt2) as source, zipfile.ZipFile(twice, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        first = source.infolist()[0]
        with pytest.warns(UserWarning, match="Duplicate name"):
            target.writestr(first.filename, source.read(first))
    with pytest.raises(VettingError, match="appears twice"):
        vet_model_file(twice)
    # Bytes in front of the zip (a "polyglot"): still read as the zip torch would open.
    prefixed = tmp_path / "prefixed.bin"
    prefixed.write_bytes(b"#!/bin/sh\n" + small_pt2.read_bytes())
    assert vet_model_file(prefixed).format == "exported-program"


def test_a_loader_skips_a_file_already_vetted_but_never_one_changed_since(
    small_pt2: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model.pt2"
    model.write_bytes(small_pt2.read_bytes())
    vetting.vet_or_raise(model, "exported-program")
    assert any(kind == "exported-program" for kind in vetting._VETTED.values())
    # The same path, other bytes (a pickle where the archive was): vetted afresh, refused.
    model.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(VettingError, match="is a Python pickle"):
        vetting.vet_or_raise(model, "exported-program")
