"""Models a user brings, built by the tests themselves, for more than one test module."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch


class SmallCnn(torch.nn.Module):
    """One convolution and a linear head over 1x8x8 images: ten classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.head(torch.relu(self.conv(image)).flatten(1))
        return result


WORDS = [
    "the",
    "a",
    "model",
    "bakes",
    "fast",
    "small",
    "quantized",
    "weights",
    "text",
    "token",
    "layer",
    "sentence",
    "data",
    "quality",
    "speed",
    "size",
    "user",
    "folder",
    "graph",
    "export",
    "runs",
    "every",
    "batch",
    "kernel",
    "memory",
    "cache",
    "gate",
    "held",
    "out",
    "calibration",
    "evaluation",
    "encoder",
    "attention",
    "head",
    "vector",
]


def build_huggingface_folder(
    folder: Path, max_shard_size: str | None = None
) -> tuple[Path, Path | None]:
    """A tiny BERT as `save_pretrained` writes it (config.json, model.safetensors, or its shards
    and model.safetensors.index.json past `max_shard_size`) with a WordPiece tokenizer.json
    over the test's own words and a tokenizer_config.json; the data is JSON lines of text,
    tokenized with that tokenizer by the import stage."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    directory = folder / "tiny-bert"
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    # transformers' own default shard size where none is asked for.
    BertModel(config).save_pretrained(
        directory, safe_serialization=True, max_shard_size=max_shard_size or "50GB"
    )
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizerFast", "model_max_length": 64})
    )
    rng = np.random.default_rng(7)
    lines = [
        json.dumps({"text": " ".join(rng.choice(WORDS, int(rng.integers(3, 14))))})
        for _ in range(60)
    ]
    (folder / "text.jsonl").write_text("\n".join(lines) + "\n")
    return directory, folder / "text.jsonl"


def build_sharded_huggingface_folder(folder: Path) -> tuple[Path, Path | None]:
    """`build_huggingface_folder`'s model saved in shards of at most 16 KB (several files)."""
    directory, data = build_huggingface_folder(folder, max_shard_size="16KB")
    assert not (directory / "model.safetensors").exists()
    assert len(list(directory.glob("model-*-of-*.safetensors"))) > 1
    return directory, data


def build_huggingface_image_folder(folder: Path) -> tuple[Path, Path | None]:
    """A tiny ViT image classifier as `save_pretrained` writes it (its config gives image_size,
    so no inputShapes is needed), and images for it: an npz keyed `pixel_values`."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    directory = folder / "tiny-vit"
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    config.num_labels = 10  # a PretrainedConfig attribute, not a typed argument
    ViTForImageClassification(config).save_pretrained(directory, safe_serialization=True)
    rng = np.random.default_rng(8)
    images = rng.normal(0, 1, (60, 3, 16, 16)).astype(np.float32)
    np.savez(folder / "images.npz", pixel_values=images)
    return directory, folder / "images.npz"


# How the tiny ViT preprocesses images, as the Hub's ViT folders say it (a legacy feature
# extractor's name, which transformers maps to its image processor).
TINY_VIT_PREPROCESSOR = {
    "feature_extractor_type": "ViTFeatureExtractor",
    "do_resize": True,
    "size": 16,
    "resample": 2,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
TINY_VIT_LABELS = [f"shade-{i}" for i in range(10)]


def image_files(count: int, seed: int = 9) -> list[tuple[str, bytes]]:
    """`count` smooth images of several sizes and modes as PNG or JPEG bytes, with a file
    name each (alternating formats)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        height, width = int(rng.integers(12, 41)), int(rng.integers(12, 41))
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        image = image.convert(("RGB", "RGBA", "L")[i % 3])
        kind = "PNG" if i % 2 == 0 else "JPEG"
        if kind == "JPEG" and image.mode == "RGBA":
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, kind, **({"progressive": True} if i % 4 == 1 else {}))
        files.append((f"img-{i:03d}.{'png' if kind == 'PNG' else 'jpg'}", buffer.getvalue()))
    return files


def build_huggingface_image_files(folder: Path) -> tuple[Path, Path | None]:
    """The tiny ViT with a preprocessor_config.json and labels of its own, and a zip of PNG
    and JPEG images of several sizes, each in the folder of the label the model gives it: the
    labels a baked model must agree with, read through the label names of its config."""

    from PIL import Image
    from transformers import AutoImageProcessor, ViTForImageClassification

    directory, _ = build_huggingface_image_folder(folder)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["id2label"] = dict(enumerate(TINY_VIT_LABELS))
    config["label2id"] = {name: i for i, name in enumerate(TINY_VIT_LABELS)}
    config_path.write_text(json.dumps(config, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps(TINY_VIT_PREPROCESSOR))
    processor = AutoImageProcessor.from_pretrained(directory, backend="pil")
    model = ViTForImageClassification.from_pretrained(directory)
    model.train(False)
    files = image_files(180)
    opened = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in files]
    pixels = torch.from_numpy(processor(images=opened, return_tensors="np")["pixel_values"])
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
    return directory, zip_by_surest_class(folder / "images.zip", files, logits, TINY_VIT_LABELS)


def zip_by_surest_class(
    archive: Path, files: list[tuple[str, bytes]], logits: torch.Tensor, labels: list[str]
) -> Path:
    """The 60 files a model is surest of, each in the folder of the label it gives it. A
    random model's classes are near ties; those with the widest margin between its two best
    classes are the ones int8 should not flip, whatever the CPU."""
    top = logits.topk(2, dim=-1)
    margin = (top.values[:, 0] - top.values[:, 1]).tolist()
    kept = sorted(sorted(range(len(files)), key=lambda i: -margin[i])[:60])
    members = {f"{labels[int(top.indices[i, 0])]}/{files[i][0]}": files[i][1] for i in kept}
    return write_zip(archive, members)


def write_zip(archive: Path, members: dict[str, bytes]) -> Path:
    """A zip holding `members` (name: bytes), as a user's zip tool would write it."""
    import zipfile

    with zipfile.ZipFile(archive, "w") as writer:
        for name, data in members.items():
            writer.writestr(name, data)
    return archive


TINY_WAV2VEC2_EXTRACTOR = {
    "feature_extractor_type": "Wav2Vec2FeatureExtractor",
    "feature_size": 1,
    "sampling_rate": 16000,
    "padding_value": 0.0,
    "do_normalize": True,
    "return_attention_mask": False,
}
TINY_WAV2VEC2_LABELS = ["yes", "no", "up", "down"]


def wav_bytes(clip: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    """`clip` (floats in [-1, 1]) as a PCM WAV file written by the standard library's wave
    module: `width` bytes a sample, the clip repeated on each of `channels`."""
    import wave

    scale = 2 ** (8 * width - 1) - 1
    ints = np.round(np.clip(clip, -1, 1) * scale).astype(np.int64)
    frames = np.repeat(ints[:, None], channels, axis=1).reshape(-1)
    if width == 1:
        raw = (frames + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in frames)
    else:
        raw = frames.astype(f"<i{width}").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(raw)
    return buffer.getvalue()


def audio_clips(
    count: int, rate: int = 16000, seed: int = 10, samples: int = 16000
) -> list[tuple[str, bytes]]:
    """`count` clips of half to one and a half times `samples` (tones and noise), as WAV files
    of several widths and channel counts, with a file name each."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        length = int(rng.integers(samples // 2, samples * 3 // 2))
        t = np.arange(length) / rate
        tone = np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * rng.uniform(0.1, 0.8)
        clip = tone + rng.normal(0, rng.uniform(0.01, 0.2), length)
        width, channels = (2, 1) if i % 3 else ((1, 2) if i % 2 else (3, 1))
        files.append((f"clip-{i:03d}.wav", wav_bytes(clip, rate, width, channels)))
    return files


AUDIO_SAMPLES = 8000  # half a second at 16 kHz: the job's inputShapes.input_values


def build_huggingface_audio_files(folder: Path) -> tuple[Path, Path | None]:
    """A tiny wav2vec2 keyword classifier as save_pretrained writes it, with its feature
    extractor's preprocessor_config.json and labels of its own, and a zip of WAV clips, each
    in the folder of the label the model gives it at AUDIO_SAMPLES (the clips it is surest
    of)."""

    from transformers import (
        AutoFeatureExtractor,
        Wav2Vec2Config,
        Wav2Vec2ForSequenceClassification,
    )

    torch.manual_seed(0)
    directory = folder / "tiny-wav2vec2"
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        id2label=dict(enumerate(TINY_WAV2VEC2_LABELS)),
        label2id={name: i for i, name in enumerate(TINY_WAV2VEC2_LABELS)},
    )
    model = Wav2Vec2ForSequenceClassification(config)
    model.train(False)
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "preprocessor_config.json").write_text(json.dumps(TINY_WAV2VEC2_EXTRACTOR))
    extractor = AutoFeatureExtractor.from_pretrained(directory)
    files = audio_clips(150, samples=AUDIO_SAMPLES)
    import wave

    clips: list[np.ndarray] = []
    for _, data in files:
        with wave.open(io.BytesIO(data)) as reader:
            width, channels = reader.getsampwidth(), reader.getnchannels()
            raw = reader.readframes(reader.getnframes())
        ints: np.ndarray
        if width == 1:
            ints = np.frombuffer(raw, np.uint8).astype(np.float64) - 128
        elif width == 3:
            padded = np.zeros((len(raw) // 3, 4), np.uint8)
            padded[:, 1:] = np.frombuffer(raw, np.uint8).reshape(-1, 3)
            ints = padded.view("<i4").reshape(-1).astype(np.float64) / 256
        else:
            ints = np.frombuffer(raw, f"<i{width}").astype(np.float64)
        clips.append(ints.reshape(-1, channels).mean(axis=1) / 2 ** (8 * width - 1))
    values = extractor(
        clips,
        sampling_rate=16000,
        padding="max_length",
        max_length=AUDIO_SAMPLES,
        truncation=True,
        return_tensors="pt",
    )["input_values"]
    with torch.no_grad():
        logits = model(input_values=values).logits
    return directory, zip_by_surest_class(folder / "clips.zip", files, logits, TINY_WAV2VEC2_LABELS)
