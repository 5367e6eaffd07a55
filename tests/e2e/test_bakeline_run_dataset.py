"""`bakeline run` of a user's model file judged on the user's dataset file (issue 25):
quality.dataset names an npz beside the job file; the import stage reads it (no synthetic
inputs), splits it and says how, and the bake runs on it through all nine stages. A model by
http(s):// url is downloaded first (a real HTTP server on loopback) and baked the same way."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from bakeline.checkpoints.manifest import sha256_file
from support.user_models import SmallCnn

pytestmark = pytest.mark.slow


def _bake(manifest: Path, workdir: Path) -> dict[str, Any]:
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    done = subprocess.run(
        [command, "run", str(manifest), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return report


def test_a_user_model_bakes_on_the_users_dataset_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tmp_path / "cnn.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        SmallCnn().eval(), (torch.rand(2, 1, 8, 8),), dynamic_shapes={"image": {0: batch}}
    )
    torch.export.save(program, str(model))
    rng = np.random.default_rng(0)
    images = rng.random((60, 1, 8, 8)).astype(np.float32)
    (tmp_path / "data").mkdir()
    arrays: dict[str, Any] = {"image": images, "__labels__": np.arange(60) % 10}
    np.savez(tmp_path / "data" / "evals.npz", **arrays)
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "user-cnn"},
        "spec": {
            "model": {"source": {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}},
            # relative to the job file, as a model url may be
            "quality": {"dataset": "data/evals.npz", "metric": "cosine", "threshold": 0.9},
        },
    }
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    report = _bake(manifest, tmp_path / "work")
    assert report["phase"] == "Succeeded", report.get("reason")
    imported = report["stages"][0]
    assert imported["metrics"]["syntheticInputs"] == 0.0
    assert imported["metrics"]["calibrationSamples"] == 20.0  # rows 0, 3, ..., 57
    assert imported["metrics"]["evaluationSamples"] == 40.0
    assert "synthetic" not in imported["message"]
    validate = next(s for s in report["stages"] if s["agent"] == "QualityValidator")
    assert "unverified" not in validate["message"], validate

    # The dataset's bytes are in the import stage's cache key: other data, a new import.
    fewer: dict[str, Any] = {"image": images[:30], "__labels__": np.arange(30) % 10}
    np.savez(tmp_path / "data" / "evals.npz", **fewer)
    again = _bake(manifest, tmp_path / "work")
    assert again["stages"][0]["phase"] == "Succeeded"  # run again, not Cached
    assert again["stages"][0]["metrics"]["evaluationSamples"] == 20.0


def test_a_user_model_by_url_is_downloaded_then_baked_and_its_card_says_from_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    served = tmp_path / "served"
    served.mkdir()
    model = served / "cnn.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        SmallCnn().eval(), (torch.rand(2, 1, 8, 8),), dynamic_shapes={"image": {0: batch}}
    )
    torch.export.save(program, str(model))
    images = np.random.default_rng(1).random((30, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "evals.npz", image=images)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("BAKELINE_CACHE", str(tmp_path / "cache"))  # the bake's child inherits it
    url = f"http://127.0.0.1:{httpd.server_address[1]}/cnn.pt2"
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "cnn-by-url"},
        "spec": {
            "model": {"source": {"url": {"url": url, "sha256": sha256_file(model)}}},
            "quality": {"dataset": "evals.npz", "metric": "cosine", "threshold": 0.9},
        },
    }
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    try:
        report = _bake(manifest, tmp_path / "work")
    finally:
        httpd.shutdown()
    assert report["phase"] == "Succeeded", report.get("reason")
    cached = tmp_path / "cache" / "downloads" / sha256_file(model) / "cnn.pt2"
    assert cached.read_bytes() == model.read_bytes()
    facts = report["stages"][0]["checkpoint"]["attributes"]["facts"]
    assert facts["source"] == f"user file cnn.pt2 (sha256 {sha256_file(model)}) from {url}"
