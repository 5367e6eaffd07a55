"""Audio clips in a dataset (a zip of WAV files, `bakeline.agents.archives`), read for a model
whose input is a waveform: each file's header vetted and its samples decoded here, with numpy,
from the bytes the header bounds; then prepared by the model's own feature extractor.

No third-party decoder sees the bytes. The RIFF/WAVE chunks are walked within the file, the
format must be integer PCM (8, 16, 24 or 32 bits) or 32-bit float, plain or as
WAVE_FORMAT_EXTENSIBLE; channels, rate and length are bounded; a clip of several channels is
mixed down to one (the mean), as Hugging Face's audio pipelines do. The rate must be the one
the model's feature extractor declares (`sampling_rate`): nothing is resampled.

The feature extractor is a Hugging Face folder's `preprocessor_config.json` (vetted as JSON, no
custom code) built by transformers' own AutoFeatureExtractor; it normalizes each clip as the
model was trained, then pads or truncates it to the model's input length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bakeline.agents.archives import MediaReading
from bakeline.agents.contract import InvalidInput

MAX_CHANNELS = 8
MAX_FRAMES = 48_000 * 600  # ten minutes at 48 kHz, per clip
RATES = (1_000, 384_000)
PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
DEFAULT_RATE = 16_000  # wav2vec2's, where the extractor does not say


@dataclass(frozen=True)
class WavHeader:
    format: int  # PCM or FLOAT
    channels: int
    rate: int
    bits: int
    data: tuple[int, int]  # where the samples lie: offset and length in bytes

    @property
    def frames(self) -> int:
        return self.data[1] // (self.channels * self.bits // 8)


def vet_wav(name: str, data: bytes) -> WavHeader:
    """The header of a WAV file, read within its bytes and bounded; refused unless PCM or
    float samples the file holds whole."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidInput(f"{name} is not a WAV file by its bytes (RIFF/WAVE, the format read)")
    fmt: bytes | None = None
    at = 12
    while at + 8 <= len(data):
        chunk, size = data[at : at + 4], int.from_bytes(data[at + 4 : at + 8], "little")
        body = at + 8
        if body + size > len(data):
            if chunk == b"data":  # streaming writers leave the size unset; the file bounds it
                size = len(data) - body
            else:
                raise InvalidInput(f"{name}: chunk {chunk!r} runs past the end of the file")
        if chunk == b"fmt ":
            fmt = data[body : body + size]
        elif chunk == b"data":
            if fmt is None:
                raise InvalidInput(f"{name}: the samples come before the format chunk")
            return _header(name, fmt, (body, size))
        at = body + size + (size & 1)  # chunks are padded to an even length
    raise InvalidInput(f"{name} has no {'format' if fmt is None else 'data'} chunk")


def _header(name: str, fmt: bytes, data: tuple[int, int]) -> WavHeader:
    if len(fmt) < 16:
        raise InvalidInput(f"{name}: the format chunk is {len(fmt)} bytes, not 16 or more")
    tag = int.from_bytes(fmt[0:2], "little")
    channels = int.from_bytes(fmt[2:4], "little")
    rate = int.from_bytes(fmt[4:8], "little")
    bits = int.from_bytes(fmt[14:16], "little")
    if tag == EXTENSIBLE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # the sub-format GUID's first two bytes
    if not (tag == PCM and bits in (8, 16, 24, 32)) and not (tag == FLOAT and bits == 32):
        raise InvalidInput(
            f"{name} holds format {tag} at {bits} bits: WAV files are read as integer PCM (8 "
            "to 32 bits) or 32-bit float"
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"{name} declares {channels} channels; 1 to {MAX_CHANNELS} are read")
    if not RATES[0] <= rate <= RATES[1]:
        raise InvalidInput(f"{name} declares {rate} Hz; {RATES[0]} to {RATES[1]} are read")
    header = WavHeader(tag, channels, rate, bits, data)
    if header.frames < 1 or header.frames > MAX_FRAMES:
        raise InvalidInput(f"{name} holds {header.frames} frames; 1 to {MAX_FRAMES} are read")
    return header


def decode(name: str, data: bytes) -> tuple[np.ndarray, int]:
    """A WAV file's samples, mixed down to one channel, as float32 in [-1, 1], and its rate."""
    header = vet_wav(name, data)
    width = header.bits // 8
    count = header.frames * header.channels
    offset = header.data[0]
    raw = np.frombuffer(data, dtype=np.uint8, count=count * width, offset=offset)
    if header.format == FLOAT:
        samples = raw.view("<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise InvalidInput(f"{name} holds samples that are not finite numbers")
    elif width == 1:  # 8-bit PCM is unsigned
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # little-endian 24-bit, sign-extended into 32
        wide = np.zeros((count, 4), dtype=np.uint8)
        wide[:, 1:] = raw.reshape(count, 3)
        samples = wide.view("<i4").reshape(count).astype(np.float32) / 2.0**31
    else:
        samples = raw.view(f"<i{width}").astype(np.float32) / 2.0 ** (8 * width - 1)
    frames = samples.reshape(header.frames, header.channels).mean(axis=1)
    return np.ascontiguousarray(frames, dtype=np.float32), header.rate


def sampling_rate(preprocessor: Mapping[str, Any] | None) -> int:
    """The rate a feature extractor config declares (`sampling_rate`), else DEFAULT_RATE."""
    rate = (preprocessor or {}).get("sampling_rate")
    return rate if isinstance(rate, int) and rate > 0 else DEFAULT_RATE


@dataclass(frozen=True)
class AudioReading(MediaReading):
    """How a model reads audio (`MediaReading`), and the samples its input takes."""

    samples: int
    kind = "audio"
    loader = "AutoFeatureExtractor"

    @property
    def rate(self) -> int:
        return sampling_rate(self.preprocessor)

    def prepare(self, files: list[tuple[str, bytes]]) -> np.ndarray:
        """A batch of WAV files as the model's input_values: normalized by the extractor,
        padded or cut to the model's length."""
        clips = []
        for name, data in files:
            clip, rate = decode(name, data)
            if rate != self.rate:
                raise InvalidInput(
                    f"{name} is sampled at {rate} Hz, but the model's feature extractor takes "
                    f"{self.rate} Hz: resample the clips (nothing is resampled here)"
                )
            clips.append(clip)
        out = self.processor(
            clips,
            sampling_rate=self.rate,
            padding="max_length",
            max_length=self.samples,
            truncation=True,
            return_tensors="np",
        )
        return np.asarray(out["input_values"], dtype=np.float32)
