"""A Hugging Face model directory, vetted from its bytes before transformers sees it (issue 25):
a folder save_pretrained writes passes, whole or sharded; custom code, an unknown model_type,
pickled weights, a config.json too big or not JSON, a safetensors whose header lies and a shard
index that lies are refused, each saying why. Then the vetted folder builds offline and exports
to what later stages load."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

from bakeline.agents import huggingface
from bakeline.agents.contract import InvalidInput
from bakeline.agents.runtimes import load_exported_program
from bakeline.agents.stages.coordinator import _stage_folder
from bakeline.agents.vetting import MAX_CONFIG_BYTES, VettingError, vet_huggingface_folder
from bakeline.checkpoints.manifest import sha256_tree
from support.user_models import build_huggingface_image_folder

TYPES = frozenset(huggingface.model_types())


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 32}))
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\nword\n")
    return folder


def _copy(saved: Path, tmp_path: Path) -> Path:
    folder = tmp_path / saved.name
    folder.mkdir(parents=True)
    for path in saved.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _refused(folder: Path, *words: str) -> VettingError:
    with pytest.raises(VettingError) as caught:
        vet_huggingface_folder(folder, TYPES)
    for word in words:
        assert word in str(caught.value), caught.value
    assert "nothing in it was run" in str(caught.value)
    return caught.value


def test_a_folder_save_pretrained_writes_passes(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")  # beside safetensors
    (folder / "modeling_evil.py").write_text("import os\n")
    vetted = vet_huggingface_folder(folder, TYPES)
    assert vetted.config["model_type"] == "bert"
    assert vetted.files == (
        "config.json",
        "model.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    )
    assert vetted.ignored == (
        "pytorch_model.bin (a pickle: never unpickled)",
        "modeling_evil.py (code: never imported)",
    )


def test_custom_code_is_refused_saying_trust_remote_code_is_never_used(
    saved: Path, tmp_path: Path
) -> None:
    folder = _copy(saved, tmp_path)
    _config(folder, auto_map={"AutoModel": "modeling_evil.EvilModel"})
    _refused(folder, "config.json", "auto_map", "trust_remote_code is never used")
    folder = _copy(saved, tmp_path / "tokenizer")
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {}}))
    _refused(folder, "tokenizer_config.json", "auto_map")


def test_an_unknown_model_type_is_refused(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    _config(folder, model_type="evil-bert")
    _refused(folder, "model_type 'evil-bert'", "does not know")


def test_pickled_weights_alone_are_refused_never_unpickled(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that is never read")
    _refused(folder, "no model.safetensors", "pytorch_model.bin", "never unpickled")


def test_a_config_too_big_or_not_json_is_refused(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "config.json").write_text(" " * (MAX_CONFIG_BYTES + 1) + "{}")
    _refused(folder, "config.json", f"at most {MAX_CONFIG_BYTES}")
    (folder / "config.json").write_text('{"model_type": "bert",')
    _refused(folder, "config.json", "not valid JSON")
    (folder / "config.json").write_bytes(b"\xff\xfe{}")
    _refused(folder, "config.json", "not UTF-8")
    (folder / "config.json").unlink()
    _refused(folder, "without config.json")


def _header(folder: Path, header: object, data: int = 8, name: str = "model.safetensors") -> None:
    raw = json.dumps(header).encode()
    (folder / name).write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data))


def test_a_safetensors_whose_header_lies_is_refused(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    _refused(folder, "model.safetensors", "declares a header of")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"nope")
    _refused(folder, "not JSON")
    _header(folder, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    _refused(folder, "[w]", "outside the file")
    _header(folder, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})
    _refused(folder, "[w]", "do not add up")
    _header(folder, {"w": {"dtype": "OBJECT", "shape": [1], "data_offsets": [0, 8]}})
    _refused(folder, "unknown dtype")
    _header(
        folder,
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
    )
    _refused(folder, "overlaps")


def test_the_vetted_folder_builds_offline_and_exports(saved: Path, tmp_path: Path) -> None:
    vetted = vet_huggingface_folder(saved, TYPES)
    model = huggingface.build(saved, vetted)
    assert model.inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert model.architecture == "BertModel" and model.max_length == 32
    reference = BertModel.from_pretrained(saved)  # in eval mode
    ids = torch.tensor([[2, 5, 7, 0], [3, 4, 0, 0]])
    mask = (ids > 0).long()
    target = tmp_path / "original.pt2"
    huggingface.export(
        model,
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)},
        target,
    )
    program = load_exported_program(target).module()
    longer = torch.tensor([[2, 5, 7, 9, 11, 0], [3, 4, 6, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    ours = program(longer, (longer > 0).long(), torch.zeros_like(longer))
    with torch.no_grad():
        theirs = reference(input_ids=longer, attention_mask=(longer > 0).long())
    assert sorted(ours) == ["last_hidden_state", "pooler_output"]
    assert torch.allclose(ours["pooler_output"], theirs.pooler_output, atol=1e-5)


def test_the_import_stage_honours_model_format_for_folders(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "checkpoint"
    out.mkdir()
    with pytest.raises(InvalidInput, match=r"says huggingface, but config\.json is a file"):
        _stage_folder(saved / "config.json", None, "huggingface", out)
    with pytest.raises(InvalidInput, match=r"is a folder .* but job\.model\.format says onnx"):
        _stage_folder(saved, None, "onnx", out)
    with pytest.raises(InvalidInput, match=r"does not match job\.model\.sha256"):
        _stage_folder(saved, "0" * 64, "auto", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VettingError, match=r"without config\.json"):
        _stage_folder(empty, None, "auto", out)
    assert sorted(p.name for p in out.iterdir()) == []  # nothing refused stays
    target, fmt, actual, folder = _stage_folder(saved, sha256_tree(saved), "huggingface", out)
    assert (target.name, fmt, actual) == ("original.pt2", "exported-program", sha256_tree(saved))
    assert sorted(folder.files) == ["tokenizer_config.json", "vocab.txt"]
    assert folder.tokenizer is None and folder.max_length == 32
    assert sorted(p.name for p in out.iterdir()) == [
        "original.pt2",
        "tokenizer_config.json",
        "vocab.txt",
    ]


def test_weights_the_file_lacks_are_refused_not_left_random(saved: Path, tmp_path: Path) -> None:
    folder = _copy(saved, tmp_path)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = next(name for name in sorted(weights) if name.endswith("query.weight"))
    save_file({k: v for k, v in weights.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(InvalidInput, match="lacks 1 of BertModel's weights"):
        huggingface.build(folder, vet_huggingface_folder(folder, TYPES))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory, saved: Path) -> Path:
    """The same tiny BERT saved past a max_shard_size: model.safetensors.index.json and shards."""
    folder = tmp_path_factory.mktemp("hf-sharded") / "tiny-bert"
    BertModel.from_pretrained(saved).save_pretrained(
        folder, safe_serialization=True, max_shard_size="8KB"
    )
    for name in ("tokenizer_config.json", "vocab.txt"):
        (folder / name).write_bytes((saved / name).read_bytes())
    return folder


def _shards(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))


def _index(folder: Path, change: Callable[[dict[str, str]], None]) -> None:
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def test_sharded_weights_are_vetted_shard_by_shard_and_build_the_same_model(
    saved: Path, sharded: Path, tmp_path: Path
) -> None:
    shards = _shards(sharded)
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    vetted = vet_huggingface_folder(sharded, TYPES)
    assert vetted.weights == tuple(shards)
    assert vetted.files[:2] == ("config.json", "model.safetensors.index.json")
    assert vetted.files[2 : 2 + len(shards)] == tuple(shards)
    whole = huggingface.build(saved, vet_huggingface_folder(saved, TYPES)).module
    parts = huggingface.build(sharded, vetted).module
    ids = torch.tensor([[2, 5, 7, 0], [3, 4, 0, 0]])
    with torch.no_grad():
        ours, theirs = parts(ids, (ids > 0).long()), whole(ids, (ids > 0).long())
    assert torch.equal(ours["last_hidden_state"], theirs["last_hidden_state"])
    # A stray shard the index does not name is left unread, and said so.
    folder = _copy(sharded, tmp_path / "stray")
    (folder / "model-00009-of-00009.safetensors").write_bytes(b"never read")
    assert vet_huggingface_folder(folder, TYPES).ignored == (
        "model-00009-of-00009.safetensors (a shard model.safetensors.index.json does not name: "
        "not read)",
    )


def test_an_index_that_lies_is_refused(sharded: Path, tmp_path: Path) -> None:
    first, second = _shards(sharded)[:2]
    folder = _copy(sharded, tmp_path / "outside")
    _index(folder, lambda m: m.update({"x": "../elsewhere.safetensors"}))
    _refused(folder, "../elsewhere.safetensors", "not a .safetensors file of the folder itself")
    folder = _copy(sharded, tmp_path / "pickle")
    _index(folder, lambda m: m.update({"x": "pytorch_model-00001-of-00002.bin"}))
    _refused(folder, "pytorch_model-00001-of-00002.bin", "not a .safetensors file")
    folder = _copy(sharded, tmp_path / "missing")
    (folder / second).unlink()
    _refused(folder, second, "names a shard the folder does not hold")
    folder = _copy(sharded, tmp_path / "misplaced")
    held = sorted(load_file(str(folder / second)))[0]
    _index(folder, lambda m: m.update({held: first}))
    _refused(folder, first, f"maps {held} to a shard that does not hold it")
    folder = _copy(sharded, tmp_path / "twice")
    extra = load_file(str(folder / second))
    save_file({**load_file(str(folder / first)), held: extra[held]}, str(folder / first))
    _refused(folder, held, "is also in")
    folder = _copy(sharded, tmp_path / "no-map")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    _refused(folder, "model.safetensors.index.json", "no weight_map")
    folder = _copy(sharded, tmp_path / "no-index")
    (folder / "model.safetensors.index.json").unlink()
    _refused(folder, first, "no model.safetensors.index.json")
    folder = _copy(sharded, tmp_path / "lying-shard")
    _header(folder, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, name=first)
    _refused(folder, first, "outside the file")


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
    return folder


def test_an_image_model_builds_with_its_configured_size_and_exports_at_any_batch(
    tmp_path: Path,
) -> None:
    from transformers import ViTForImageClassification

    folder, _ = build_huggingface_image_folder(tmp_path)  # its config: image_size 16
    model = huggingface.build(folder, vet_huggingface_folder(folder, TYPES))
    assert (model.inputs, model.image, model.architecture) == (
        ["pixel_values"],
        (3, 16, 16),
        "ViTForImageClassification",
    )
    target = tmp_path / "original.pt2"
    huggingface.export(model, model.example(), target)
    images = torch.randn(5, 3, 16, 16)
    ours = load_exported_program(target).module()(images)
    reference = ViTForImageClassification.from_pretrained(folder)
    with torch.no_grad():
        theirs = reference(pixel_values=images).logits
    assert sorted(ours) == ["logits"] and torch.allclose(ours["logits"], theirs, atol=1e-5)
    # inputShapes, where given, wins over the config; anything but pixel_values is refused.
    assert huggingface.build(
        folder, vet_huggingface_folder(folder, TYPES), {"pixel_values": [3, 32, 32]}
    ).image == (3, 32, 32)
    with pytest.raises(InvalidInput, match=r"takes pixel_values alone"):
        huggingface.build(folder, vet_huggingface_folder(folder, TYPES), {"image": [3, 16, 16]})
    with pytest.raises(InvalidInput, match=r"\[channels, height, width\]"):
        huggingface.build(folder, vet_huggingface_folder(folder, TYPES), {"pixel_values": [16]})


def test_an_image_model_without_a_configured_size_needs_input_shapes(tmp_path: Path) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
    config.num_labels = 3
    folder = _save(ResNetForImageClassification(config), tmp_path / "tiny-resnet")
    vetted = vet_huggingface_folder(folder, TYPES)
    with pytest.raises(InvalidInput, match=r"no image_size: set spec\.model\.inputShapes"):
        huggingface.build(folder, vetted)
    model = huggingface.build(folder, vetted, {"pixel_values": [3, 32, 32]})
    target = tmp_path / "original.pt2"
    huggingface.export(model, model.example(), target)
    assert load_exported_program(target).module()(torch.randn(3, 3, 32, 32))["logits"].shape == (
        3,
        3,
    )


def test_a_model_of_another_input_is_refused_saying_what_is_imported(tmp_path: Path) -> None:
    from transformers import ASTConfig, ASTForAudioClassification, WhisperConfig, WhisperModel

    whisper = WhisperConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=16,
        vocab_size=100,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=0,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    folder = _save(WhisperModel(whisper), tmp_path / "tiny-whisper")
    with pytest.raises(InvalidInput, match=r"takes input_features: only text .* and waveform"):
        huggingface.build(folder, vet_huggingface_folder(folder, TYPES))
    # input_values that are a spectrogram, not a waveform: named as such.
    spectrogram = ASTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_length=32,
        num_mel_bins=32,
    )
    folder = _save(ASTForAudioClassification(spectrogram), tmp_path / "tiny-ast")
    with pytest.raises(InvalidInput, match=r"not a waveform \(a spectrogram model\)"):
        huggingface.build(folder, vet_huggingface_folder(folder, TYPES))
