"""A dataset of image files: each image vetted from its header before Pillow decodes it, then
preprocessed by the model's own image processor, labelled by its folder."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from bakeline.agents import images
from bakeline.agents.contract import InvalidInput
from bakeline.agents.datasets import read_dataset
from bakeline.agents.huggingface import model_types
from bakeline.agents.images import ImageReading, header_size, vet_image
from bakeline.agents.vetting import VettingError, vet_huggingface_folder
from support.user_models import (
    TINY_VIT_LABELS,
    TINY_VIT_PREPROCESSOR,
    build_huggingface_image_files,
    image_files,
    write_zip,
)

READING = ImageReading(
    TINY_VIT_PREPROCESSOR,
    {
        "model_type": "vit",
        "label2id": {name: i for i, name in enumerate(TINY_VIT_LABELS)},
    },
)


def _zip(path: Path, members: dict[str, bytes]) -> str:
    return write_zip(path, members).as_uri()


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_header_says_what_pillow_then_decodes() -> None:
    for name, data in image_files(12):
        kind, width, height = header_size(name, data)
        with Image.open(io.BytesIO(data)) as opened:
            assert (kind, width, height) == (opened.format, *opened.size), name


def test_an_image_declaring_too_many_pixels_is_refused_before_any_decoder_sees_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytearray(_png(4, 4))
    data[16:24] = (50_000).to_bytes(4, "big") * 2  # IHDR: 50000 x 50000
    opened: list[Any] = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    address = _zip(tmp_path / "bomb.zip", {f"shade-0/{i}.png": bytes(data) for i in range(4)})
    with pytest.raises(InvalidInput, match=r"declares 50000x50000 pixels; the limit"):
        read_dataset(address, ["pixel_values"], media=READING)
    assert opened == []


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"GIF89a" + b"\0" * 30, "neither PNG nor JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 4 + b"IEND", "without its IHDR"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\0" * 10, "without a frame header"),
        (_png(2, 3)[:16] + (0).to_bytes(4, "big") + (3).to_bytes(4, "big"), "declares 0x3"),
    ],
)
def test_what_is_not_a_png_or_jpeg_of_real_size_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        vet_image("x.png", data)


def test_an_image_that_decodes_to_another_size_than_vetted_is_refused() -> None:
    jpeg = dict(image_files(2))["img-001.jpg"]
    # A second frame header first: vetting reads 9x7 from it, the decoder the real one.
    frame = b"\xff\xc0\x00\x11\x08\x00\x07\x00\x09\x03" + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    with pytest.raises(InvalidInput, match="not the 9x7 its header declares"):
        images.decode("lie.jpg", jpeg[:2] + frame + jpeg[2:], "RGB")


def test_images_are_preprocessed_by_the_models_processor_and_labelled_by_folder(
    tmp_path: Path,
) -> None:
    files = image_files(8)
    members = {
        f"{'shade-2' if i % 2 else '7'}/{name}": data for i, (name, data) in enumerate(files)
    }
    data, sha256 = read_dataset(_zip(tmp_path / "d.zip", members), ["pixel_values"], media=READING)
    assert len(sha256) == 64
    order = sorted(members)
    processor = AutoImageProcessor.from_pretrained(_processor_folder(tmp_path / "p"), backend="pil")
    expected = processor(
        images=[Image.open(io.BytesIO(members[n])).convert("RGB") for n in order],
        return_tensors="np",
    )["pixel_values"]
    assert data.inputs["pixel_values"].shape == (8, 3, 16, 16)
    np.testing.assert_allclose(data.inputs["pixel_values"], expected, atol=1e-6)
    assert data.labels is not None
    assert data.labels.tolist() == [2 if n.startswith("shade-2") else 7 for n in order]


def _processor_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_VIT_PREPROCESSOR))
    (folder / "config.json").write_text(json.dumps({"model_type": "vit"}))
    return folder


@pytest.mark.parametrize("folder", ["", "photos/", "shoot/photos/"])
def test_images_at_the_top_level_or_in_one_folder_naming_no_class_are_unlabelled(
    tmp_path: Path, folder: str
) -> None:
    members = {folder + name: data for name, data in image_files(6)}
    data, _ = read_dataset(_zip(tmp_path / "d.zip", members), ["pixel_values"], media=READING)
    assert data.labels is None and len(data) == 6
    # One folder that names a class labels them all.
    members = {"shoot/shade-4/" + name: data for name, data in image_files(6)}
    data, _ = read_dataset(_zip(tmp_path / "e.zip", members), ["pixel_values"], media=READING)
    assert data.labels is not None and data.labels.tolist() == [4] * 6


@pytest.mark.parametrize(
    ("layout", "reading", "says"),
    [
        ({"cat/a.png": 1, "dog/b.png": 1}, READING, "folder 'cat', which is neither"),
        ({"a.png": 1, "shade-1/b.png": 1}, READING, "files in class folders and files at its top"),
        ({"a.png": 1, "b.npy": 0}, READING, "neither arrays .* nor media"),
        ({"a.png": 1, "notes.txt": 0}, READING, "it holds notes.txt"),
        ({"a.png": 1, "b.png": 1}, None, "declares no preprocessing of images"),
    ],
)
def test_archives_a_model_cannot_read_as_images_are_refused_saying_why(
    tmp_path: Path, layout: dict[str, int], reading: ImageReading | None, says: str
) -> None:
    png = _png(8, 8)
    members = {name: png if is_image else b"x" for name, is_image in layout.items()}
    with pytest.raises(InvalidInput, match=says):
        read_dataset(_zip(tmp_path / "d.zip", members), ["pixel_values"], media=reading)


def test_a_model_of_several_inputs_is_told_to_give_arrays(tmp_path: Path) -> None:
    members = {name: data for name, data in image_files(4)}
    with pytest.raises(InvalidInput, match="images, but the model takes 2 inputs"):
        read_dataset(_zip(tmp_path / "d.zip", members), ["a", "b"], media=READING)


def test_the_preprocessor_config_is_vetted_with_the_folder(tmp_path: Path) -> None:
    folder, _ = build_huggingface_image_files(tmp_path)
    assert vet_huggingface_folder(folder, model_types()).preprocessor == (
        "preprocessor_config.json"
    )
    path = folder / "preprocessor_config.json"
    for lie in (
        {"auto_map": {"AutoImageProcessor": "evil.Processor"}},
        {"image_processor_type": "os.system('x')"},
    ):
        path.write_text(json.dumps({**TINY_VIT_PREPROCESSOR, **lie}))
        with pytest.raises(VettingError, match=r"preprocessor_config\.json"):
            vet_huggingface_folder(folder, model_types())
    path.write_text("[1, 2]")
    with pytest.raises(VettingError, match="not a JSON object"):
        vet_huggingface_folder(folder, model_types())
