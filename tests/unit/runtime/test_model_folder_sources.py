"""A Hugging Face model directory as a model source (issue 25): `bakeline run` checks a folder
against the digest of its files; a stage pod mounts a claim's folder read-only; a ConfigMap
holds one file, so a folder there is refused with what to do instead."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from bakeline.api.bakingjob import HUGGINGFACE_CONFIGMAP_MESSAGE, ModelSpec
from bakeline.checkpoints.manifest import sha256_path, sha256_tree, tree_files
from bakeline.cli.main import main
from bakeline.runtime import pods
from bakeline.runtime.local import ModelSourceError, job_document


def _folder(root: Path) -> Path:
    folder = root / "tiny-bert"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "sub" / "vocab.txt").write_text("[PAD]\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")  # hidden: not part of the model
    (folder / ".gitattributes").write_text("*")
    return folder


def test_a_folders_sha256_is_sha256sum_lines_over_its_files_hashed_again(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    assert tree_files(folder) == ["config.json", "model.safetensors", "sub/vocab.txt"]
    lines = "".join(
        f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
        for name in tree_files(folder)
    )
    assert sha256_tree(folder) == hashlib.sha256(lines.encode()).hexdigest()
    assert sha256_path(folder) == sha256_tree(folder)
    assert (
        sha256_path(folder / "config.json") == hashlib.sha256(b'{"model_type": "bert"}').hexdigest()
    )
    before = sha256_tree(folder)
    (folder / ".git" / "HEAD").write_text("other")
    assert sha256_tree(folder) == before
    (folder / "sub" / "vocab.txt").write_text("[UNK]\n")
    assert sha256_tree(folder) != before


def test_bakeline_digest_prints_a_folders_or_a_files_sha256(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _folder(tmp_path)
    assert main(["digest", str(folder), str(folder / "config.json")]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{sha256_tree(folder)}  {folder}",
        f"{sha256_path(folder / 'config.json')}  {folder / 'config.json'}",
    ]
    assert main(["digest", str(tmp_path / "missing")]) == 2


def test_bakeline_run_resolves_a_folder_by_its_digest(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    source = {"url": {"url": f"file://{folder}", "sha256": sha256_tree(folder)}}
    document = job_document("j", {"source": source, "format": "huggingface"}, {}, {}, tmp_path)
    assert document["model"]["localPath"] == str(folder)
    assert document["model"]["sha256"] == sha256_tree(folder)
    wrong = {"url": {"url": f"file://{folder}", "sha256": "0" * 64}}
    with pytest.raises(ModelSourceError, match=r"model folder .*`bakeline digest`"):
        job_document("j", {"source": wrong}, {}, {}, tmp_path)


def test_a_stage_pod_mounts_a_claims_model_folder_read_only() -> None:
    source = {"pvc": {"claimName": "models", "path": "bert/tiny-bert"}}
    mount = pods.model_source_mount(source, "huggingface")
    assert mount is not None
    volume, volume_mount, local = mount
    assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volume_mount["readOnly"] is True
    assert local == f"{pods.MODEL_MOUNT}/bert/tiny-bert"


def test_a_configmap_folder_is_refused_saying_where_to_put_it() -> None:
    source = {"configMap": {"name": "m", "key": "model"}}
    with pytest.raises(ValueError, match="PersistentVolumeClaim") as caught:
        pods.model_source_mount(source, "huggingface")
    assert str(caught.value) == HUGGINGFACE_CONFIGMAP_MESSAGE
    assert pods.model_source_mount(source, "auto") is not None  # one file: as before
    with pytest.raises(ValidationError, match="cannot come from a ConfigMap"):
        ModelSpec.model_validate(
            {"source": {"configMap": source["configMap"]}, "format": "huggingface"}
        )
    spec = ModelSpec.model_validate(
        {"source": {"pvc": {"claimName": "m", "path": "d"}}, "format": "huggingface"}
    )
    assert spec.format == "huggingface"
