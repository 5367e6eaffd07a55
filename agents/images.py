"""A dataset of image files (a zip of PNG or JPEG images), read for a model whose input is
pixels: each image vetted from its bytes before a decoder sees it, then preprocessed by the
model's own image processor.

Vetting comes first and owes nothing to a decoder: the format is told by the signature (PNG
and baseline or progressive JPEG only), the width and height are read from the header (PNG's
IHDR, JPEG's start-of-frame) and bounded (`MAX_PIXELS`), and what the archive would inflate to
is bounded before anything is inflated. Only then does Pillow decode, told which one format
to expect, and the decoded size must be the size the header declared.

Preprocessing is the model's: a Hugging Face folder's `preprocessor_config.json` (vetted as
JSON, no custom code) builds transformers' own image processor (its Pillow backend), which
resizes, crops, rescales and normalizes exactly as the model was trained to see. A model
without one has no declared preprocessing, and an archive of images is refused for it: its
data is the preprocessed arrays (npz or safetensors).

Labels come from folders: `CLASS/IMAGE.png` (at any depth) is labelled CLASS, where CLASS is a
class index (`3`) or a label of the model's config (`label2id`, Hugging Face's); images at the
archive's top level, or all in one folder that names no class (a zipped folder of images), are
unlabelled. Labelled and unlabelled images do not mix.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from bakeline.agents.contract import InvalidInput
from bakeline.agents.data import LABELS

SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PIXELS = 40_000_000  # per image, from its header; Pillow itself warns past ~89 M
MAX_IMAGES = 100_000
MAX_IMAGE_BYTES = 256 * 1024**2  # one file, inflated, before it is read
MAX_ARRAY_BYTES = 2 * 1024**3  # what the preprocessed images may fill, as any dataset
BATCH = 32  # images preprocessed at once: bounds what decoded images hold in memory
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers that stand alone, with no length after them.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class ImageReading:
    """How a model reads images: its vetted image processor config, its model config (the
    processor's class where the first does not name it; the label names) and the channels its
    input takes."""

    preprocessor: dict[str, Any]
    config: dict[str, Any]
    channels: int = 3

    @property
    def labels(self) -> dict[str, int]:
        raw = self.config.get("label2id") or {}
        return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}

    @property
    def mode(self) -> str:
        """The Pillow mode the model's channels mean: one channel is grayscale."""
        return "L" if self.channels == 1 else "RGB"


def is_image_member(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)


def header_size(name: str, data: bytes) -> tuple[str, int, int]:
    """(format, width, height) as the header declares them; refused unless PNG or JPEG."""
    if data[:8] == PNG_SIGNATURE:
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidInput(f"image {name} is a PNG without its IHDR header")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return "PNG", width, height
    if data[:2] == b"\xff\xd8":
        return ("JPEG", *_jpeg_size(name, data))
    raise InvalidInput(f"image {name} is neither PNG nor JPEG by its bytes (the formats read)")


def _jpeg_size(name: str, data: bytes) -> tuple[int, int]:
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            raise InvalidInput(f"image {name} is a damaged JPEG (no marker at byte {at})")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2:
            raise InvalidInput(f"image {name} is a damaged JPEG (segment length {length})")
        if marker in _SOF:
            if at + 9 > len(data):
                break
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            return width, height
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            break
        at += 2 + length
    raise InvalidInput(f"image {name} is a JPEG without a frame header")


def vet_image(name: str, data: bytes) -> tuple[str, int, int]:
    """The header's (format, width, height), each side at least 1, pixels bounded."""
    kind, width, height = header_size(name, data)
    if width < 1 or height < 1:
        raise InvalidInput(f"image {name} declares {width}x{height} pixels")
    if width * height > MAX_PIXELS:
        raise InvalidInput(
            f"image {name} declares {width}x{height} pixels; the limit is {MAX_PIXELS} per image"
        )
    return kind, width, height


def decode(name: str, data: bytes, mode: str) -> Any:
    """The vetted image decoded by Pillow (told its one format), in `mode`."""
    from PIL import Image

    kind, width, height = vet_image(name, data)
    try:
        with Image.open(io.BytesIO(data), formats=[kind]) as image:
            if image.size != (width, height):
                raise InvalidInput(
                    f"image {name} decodes to {image.size[0]}x{image.size[1]}, not the "
                    f"{width}x{height} its header declares"
                )
            image.load()
            return image.convert(mode)
    except InvalidInput:
        raise
    except Exception as exc:  # a truncated or damaged image
        raise InvalidInput(f"image {name} does not decode as {kind}: {exc}") from exc


def _class(folder: str, labels: Mapping[str, int]) -> int | None:
    if folder in labels:
        return labels[folder]
    return int(folder) if folder.isdigit() else None


def label_of(member: str, labels: Mapping[str, int]) -> int | None:
    """The class of an archive member: its folder's name, a class index or a config label."""
    parent = PurePosixPath(member).parent
    if parent == PurePosixPath("."):
        return None
    folder = parent.name
    found = _class(folder, labels)
    if found is not None:
        return found
    known = ", ".join(sorted(labels)[:8]) or "none"
    raise InvalidInput(
        f"image {member} is in folder {folder!r}, which is neither a class index nor a label "
        f"of the model's config (label2id: {known}): name each folder by its class"
    )


def read_image_archive(
    path: Path, members: list[zipfile.ZipInfo], input_names: list[str], reading: ImageReading
) -> dict[str, np.ndarray]:
    """The archive's images as the model's one input (and `__labels__` where labelled), in
    member-name order."""
    if len(input_names) != 1:
        raise InvalidInput(
            f"dataset {path.name} is images, but the model takes {len(input_names)} inputs "
            f"({', '.join(input_names)}): give its inputs as arrays (npz or safetensors)"
        )
    images = sorted((m for m in members if not m.is_dir()), key=lambda m: m.filename)
    if len(images) > MAX_IMAGES:
        raise InvalidInput(f"dataset {path.name} holds {len(images)} images; limit {MAX_IMAGES}")
    parents = {PurePosixPath(m.filename).parent for m in images}
    if len(parents) == 1 and _class(next(iter(parents)).name, reading.labels) is None:
        labels: list[int | None] = [None] * len(images)  # one folder of images, no class
    else:
        labels = [label_of(m.filename, reading.labels) for m in images]
    large = next((m for m in images if m.file_size > MAX_IMAGE_BYTES), None)
    if large is not None:
        raise InvalidInput(
            f"image {large.filename} inflates to {large.file_size} bytes; the limit is "
            f"{MAX_IMAGE_BYTES} per image"
        )
    if any(label is None for label in labels) and any(label is not None for label in labels):
        raise InvalidInput(
            f"dataset {path.name} has images in class folders and images at its top level: "
            "put every image in its class's folder, or none"
        )
    processor = image_processor(reading)
    batches: list[np.ndarray] = []
    with zipfile.ZipFile(path) as archive:
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            # One batch of decoded images is held at a time.
            decoded = [decode(m.filename, archive.read(m), reading.mode) for m in chunk]
            out = processor(images=decoded, return_tensors="np")
            batches.append(np.asarray(out["pixel_values"], dtype=np.float32))
            total = batches[0][0].nbytes * len(images)
            if total > MAX_ARRAY_BYTES:
                raise InvalidInput(
                    f"dataset {path.name}'s {len(images)} images preprocess to {total} bytes; "
                    f"the limit is {MAX_ARRAY_BYTES}"
                )
    arrays = {input_names[0]: np.concatenate(batches)}
    if labels and labels[0] is not None:
        arrays[LABELS] = np.asarray(labels, dtype=np.int64)
    return arrays


def image_processor(reading: ImageReading) -> Any:
    """transformers' image processor for the model, built from the vetted configs alone (a
    scratch folder holding nothing else), Pillow backend, never remote code."""
    from transformers import AutoImageProcessor

    with tempfile.TemporaryDirectory(prefix="bakeline-processor-") as scratch:
        folder = Path(scratch)
        (folder / "preprocessor_config.json").write_text(json.dumps(reading.preprocessor))
        (folder / "config.json").write_text(json.dumps(reading.config))
        try:
            return AutoImageProcessor.from_pretrained(
                folder, backend="pil", local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:
            raise InvalidInput(
                f"preprocessor_config.json does not build an image processor: {exc}"
            ) from exc
