"""`bakeline run` of user `.pt2` files whose output is not one tensor (issue 25): a dict of two
outputs and a tuple of two. Both bake through all nine stages; every output is named, with its
true shape, in the validator's quality figures and in the package README."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bakeline.checkpoints.manifest import sha256_file

pytestmark = pytest.mark.slow


class _DictOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(32, 16)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = torch.tanh(self.body(features))
        return {"scores": self.head(embedding), "embedding": embedding}


class _TwoOutputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = torch.relu(self.conv(image))
        return self.head(maps.flatten(1)), maps


def _job_file(tmp_path: Path, name: str, module: torch.nn.Module, example: torch.Tensor) -> Path:
    argument = next(iter(module.forward.__code__.co_varnames[1:]))
    program = torch.export.export(
        module.eval(), (example,), dynamic_shapes={argument: {0: torch.export.Dim("batch")}}
    )
    model = tmp_path / f"{name}.pt2"
    torch.export.save(program, str(model))
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}},
            "target": {"batchSizes": [1, 8]},
            "quality": {"metric": "cosine", "threshold": 0.95},
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def baked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Both jobs baked side by side (each its own `bakeline run` and workdir)."""
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("outputs")
    jobs = {
        "dict-outputs": _job_file(tmp, "dict-outputs", _DictOutputs(), torch.randn(2, 32)),
        "two-outputs": _job_file(tmp, "two-outputs", _TwoOutputs(), torch.rand(2, 1, 8, 8)),
    }
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    running = {
        name: subprocess.Popen(
            [command, "run", str(job), "--workdir", str(tmp / f"work-{name}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, job in jobs.items()
    }
    reports: dict[str, dict[str, Any]] = {}
    for name, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, out[-3000:] + err[-3000:]
        reports[name] = json.loads((tmp / f"work-{name}" / "report.json").read_text())
    return reports


def _readme(report: dict[str, Any]) -> str:
    return (Path(report["result"]["manifest"]).parent / "README.md").read_text()


def _validated(report: dict[str, Any]) -> dict[str, Any]:
    stage: dict[str, Any] = next(s for s in report["stages"] if s["agent"] == "QualityValidator")
    return stage


@pytest.mark.parametrize(
    ("job", "outputs"),
    [
        ("dict-outputs", {"scores": "['batch', 5]", "embedding": "['batch', 16]"}),
        ("two-outputs", {"output_0": "['batch', 10]", "output_1": "['batch', 4, 8, 8]"}),
    ],
)
def test_every_output_is_baked_gated_and_listed(
    baked: dict[str, dict[str, Any]], job: str, outputs: dict[str, str]
) -> None:
    report = baked[job]
    assert report["phase"] == "Succeeded" and report["progress"] == "9/9", report.get("reason")
    assert {s["phase"] for s in report["stages"]} == {"Succeeded"}
    validated = _validated(report)
    for name in outputs:
        assert validated["metrics"][f"cosineMean.{name}"] >= 0.95, validated
        assert f"`{name}`" in validated["message"]
    first = next(iter(outputs))
    assert validated["metrics"]["cosineMean"] == validated["metrics"][f"cosineMean.{first}"]
    readme = _readme(report)
    for name, shape in outputs.items():
        assert f"- output `{name}`: float32 {shape}" in readme, readme
        assert f"cosineMean.{name}" in readme
    manifest = json.loads(Path(report["result"]["manifest"]).read_text())
    assert [o["name"] for o in manifest["outputs"]] == list(outputs)
