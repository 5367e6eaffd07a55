"""A dataset of WAV clips: each header vetted and its samples decoded with numpy (no decoder
library), mixed down to one channel, then prepared by the model's own feature extractor."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoFeatureExtractor

from bakeline.agents import huggingface
from bakeline.agents.audio import AudioReading, decode, vet_wav
from bakeline.agents.contract import InvalidInput
from bakeline.agents.datasets import read_dataset
from bakeline.agents.runtimes import load_exported_program
from bakeline.agents.vetting import vet_huggingface_folder
from support.user_models import (
    TINY_WAV2VEC2_EXTRACTOR,
    TINY_WAV2VEC2_LABELS,
    audio_clips,
    build_huggingface_audio_files,
    wav_bytes,
    write_zip,
)

READING = AudioReading(
    TINY_WAV2VEC2_EXTRACTOR,
    {
        "model_type": "wav2vec2",
        "label2id": {name: i for i, name in enumerate(TINY_WAV2VEC2_LABELS)},
    },
    samples=8000,
)
TYPES = huggingface.model_types()


def _zip(path: Path, members: dict[str, bytes]) -> str:
    return write_zip(path, members).as_uri()


@pytest.mark.parametrize(("width", "channels"), [(1, 1), (2, 1), (2, 2), (3, 1), (4, 3)])
def test_pcm_decodes_to_what_the_standard_library_reads(width: int, channels: int) -> None:
    rng = np.random.default_rng(width * 10 + channels)
    clip = rng.uniform(-0.9, 0.9, 999)
    data = wav_bytes(clip, 22050, width, channels)
    samples, rate = decode("c.wav", data)
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnframes()) == (rate, len(samples)) == (22050, 999)
    # The same clip on every channel: the mix is the clip, to the sample width's precision.
    np.testing.assert_allclose(samples, clip, atol=max(2.0 / 2 ** (8 * width - 1), 1e-6))


def test_float_samples_and_the_extensible_header_are_read() -> None:
    clip = np.linspace(-0.5, 0.5, 64, dtype=np.float32)
    fmt = (
        (0xFFFE).to_bytes(2, "little")  # WAVE_FORMAT_EXTENSIBLE ...
        + (1).to_bytes(2, "little")
        + (8000).to_bytes(4, "little")
        + (32000).to_bytes(4, "little")
        + (4).to_bytes(2, "little")
        + (32).to_bytes(2, "little")
        + (22).to_bytes(2, "little")
        + (32).to_bytes(2, "little")
        + (4).to_bytes(4, "little")
        + (3).to_bytes(2, "little")  # ... of IEEE float samples
        + bytes(14)
    )
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    body += b"data" + (clip.nbytes).to_bytes(4, "little") + clip.tobytes()
    samples, rate = decode("f.wav", b"RIFF" + len(body).to_bytes(4, "little") + body)
    assert rate == 8000
    np.testing.assert_array_equal(samples, clip)


def _with_format(data: bytes, **fields: int) -> bytes:
    """`data` (a WAV the wave module wrote: fmt at byte 20) with format fields overwritten."""
    at = {"tag": 20, "channels": 22, "rate": 24, "bits": 34}
    patched = bytearray(data)
    for field, value in fields.items():
        size = 4 if field == "rate" else 2
        patched[at[field] : at[field] + size] = value.to_bytes(size, "little")
    return bytes(patched)


@pytest.mark.parametrize(
    ("lie", "says"),
    [
        (lambda d: b"OggS" + d[4:], "not a WAV file by its bytes"),
        (lambda d: _with_format(d, tag=2), "format 2 at 16 bits"),
        (lambda d: _with_format(d, bits=12), "format 1 at 12 bits"),
        (lambda d: _with_format(d, channels=40), "40 channels"),
        (lambda d: _with_format(d, rate=10), "10 Hz"),
        (lambda d: d[:16] + (4000).to_bytes(4, "little") + d[20:], "runs past the end"),
        (lambda d: d[:44], "holds 0 frames"),
    ],
)
def test_what_is_not_a_wav_of_pcm_or_float_samples_is_refused(lie: object, says: str) -> None:
    data = wav_bytes(np.zeros(100), 16000)
    with pytest.raises(InvalidInput, match=says):
        vet_wav("c.wav", lie(data))  # type: ignore[operator]


def test_clips_are_prepared_by_the_models_extractor_and_labelled_by_folder(
    tmp_path: Path,
) -> None:
    files = audio_clips(6)
    members = {f"{'up' if i % 2 else '0'}/{name}": data for i, (name, data) in enumerate(files)}
    data, _ = read_dataset(_zip(tmp_path / "c.zip", members), ["input_values"], media=READING)
    order = sorted(members)
    extractor = AutoFeatureExtractor.from_pretrained(_extractor_folder(tmp_path / "x"))
    expected = extractor(
        [decode(n, members[n])[0] for n in order],
        sampling_rate=16000,
        padding="max_length",
        max_length=8000,
        truncation=True,
        return_tensors="np",
    )["input_values"]
    assert data.inputs["input_values"].shape == (6, 8000)
    np.testing.assert_allclose(data.inputs["input_values"], expected, atol=1e-6)
    assert data.labels is not None
    assert data.labels.tolist() == [2 if n.startswith("up/") else 0 for n in order]


def _extractor_folder(folder: Path) -> Path:
    import json

    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(TINY_WAV2VEC2_EXTRACTOR))
    (folder / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    return folder


def test_a_clip_at_another_rate_is_refused_saying_to_resample(tmp_path: Path) -> None:
    members = {f"{i}.wav": wav_bytes(np.zeros(800), 8000) for i in range(4)}
    with pytest.raises(InvalidInput, match=r"8000 Hz, but .* takes 16000 Hz: resample"):
        read_dataset(_zip(tmp_path / "c.zip", members), ["input_values"], media=READING)


def test_clips_for_a_model_without_an_extractor_are_refused(tmp_path: Path) -> None:
    members = {name: data for name, data in audio_clips(4)}
    with pytest.raises(InvalidInput, match="declares no preprocessing of audio"):
        read_dataset(_zip(tmp_path / "c.zip", members), ["input_values"])


def test_a_waveform_model_builds_at_one_second_and_exports_at_any_batch(tmp_path: Path) -> None:
    from transformers import Wav2Vec2ForSequenceClassification

    folder, _ = build_huggingface_audio_files(tmp_path)
    vetted = vet_huggingface_folder(folder, TYPES)
    model = huggingface.build(folder, vetted)
    assert (model.inputs, model.audio, model.architecture) == (
        ["input_values"],
        16000,  # one second at the extractor's rate
        "Wav2Vec2ForSequenceClassification",
    )
    target = tmp_path / "original.pt2"
    huggingface.export(model, model.example(), target)
    clips = torch.randn(3, 16000)
    ours = load_exported_program(target).module()(clips)
    reference = Wav2Vec2ForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        theirs = reference(input_values=clips).logits
    assert sorted(ours) == ["logits"] and torch.allclose(ours["logits"], theirs, atol=1e-5)
    assert huggingface.build(folder, vetted, {"input_values": [4000]}).audio == 4000
    with pytest.raises(InvalidInput, match=r"of 20 samples at least .* gives 9"):
        huggingface.build(folder, vetted, {"input_values": [9]})
    with pytest.raises(InvalidInput, match=r"\[samples\] without the batch"):
        huggingface.build(folder, vetted, {"input_values": [1, 4000]})
