"""Image files in a dataset (a zip of PNG or JPEG images, `bakeline.agents.archives`), read
for a model whose input is pixels: each image vetted from its bytes before a decoder sees it,
then preprocessed by the model's own image processor.

Vetting comes first and owes nothing to a decoder: the format is told by the signature (PNG
and baseline or progressive JPEG only), the width and height are read from the header (PNG's
IHDR, JPEG's start-of-frame) and bounded (`MAX_PIXELS`). Only then does Pillow decode, told
which one format to expect, and the decoded size must be the size the header declared.

Preprocessing is the model's: a Hugging Face folder's `preprocessor_config.json` (vetted as
JSON, no custom code) builds transformers' own image processor (its Pillow backend), which
resizes, crops, rescales and normalizes exactly as the model was trained to see. A model
without one has no declared preprocessing, and an archive of images is refused for it: its
data is the preprocessed arrays (npz or safetensors).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from bakeline.agents.archives import MediaReading
from bakeline.agents.contract import InvalidInput

MAX_PIXELS = 40_000_000  # per image, from its header; Pillow itself warns past ~89 M
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; not DHT/JPG/DAC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers that stand alone, with no length after them.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True)
class ImageReading(MediaReading):
    """How a model reads images (`MediaReading`), and the channels its input takes."""

    channels: int = 3
    kind = "images"
    loader = "AutoImageProcessor"
    options = (("backend", "pil"),)

    @property
    def mode(self) -> str:
        """The Pillow mode the model's channels mean: one channel is grayscale."""
        return "L" if self.channels == 1 else "RGB"

    def prepare(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        """A batch of image files as the model's pixel_values."""
        decoded = [decode(name, data, self.mode) for name, data in files]
        out = self.processor(images=decoded, return_tensors="np")
        return np.asarray(out["pixel_values"], dtype=np.float32)


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
