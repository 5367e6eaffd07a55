"""`bakeline run` with the real agents on the digits CNN: bake, re-run from the cache, and a
quality gate no model can meet.

No cluster is involved: this is the one-machine path of the same engine the operator drives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.api import Gate, ObjectMeta, Stage, Workflow, WorkflowSpec, default_workflow
from bakeline.checkpoints.manifest import sha256_file, verify_checkpoint

pytestmark = pytest.mark.slow


def _bakeline(*args: str | Path, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    return subprocess.run(
        [command, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _report(workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((workdir / "report.json").read_text())
    return report


@pytest.fixture(scope="module")
def baked(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The example job baked once; the tests below read it and build on it."""
    workdir = tmp_path_factory.mktemp("digits")
    example = repo_root / "examples" / "bakingjob-digits.yaml"
    done = _bakeline("run", example, "--workdir", workdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return example, workdir


def test_the_digits_example_bakes_end_to_end(baked: tuple[Path, Path]) -> None:
    _, workdir = baked
    report = _report(workdir)
    assert report["phase"] == "Succeeded" and report["progress"] == "9/9"
    assert {s["phase"] for s in report["stages"]} == {"Succeeded"}
    for stage in report["stages"]:
        assert stage["attempts"] >= 1 and stage["durationSeconds"] > 0
        assert stage["checkpoint"] and Path(stage["checkpoint"]["path"]).is_dir()
    result = report["result"]
    artifact = Path(result["artifact"])
    assert artifact.is_file() and sha256_file(artifact) == result["sha256"]
    assert result["sizeBytes"] == artifact.stat().st_size
    verify_checkpoint(Path(result["manifest"]).parent)
    quality = result["quality"]
    assert quality["metric"] == "accuracy" and quality["passed"] and quality["value"] >= 0.97
    # The example names no threshold: within one point of the original's own accuracy.
    imported = next(s for s in report["stages"] if s["name"] == "import")
    reference = imported["metrics"]["referenceAccuracy"]
    assert quality["threshold"] == pytest.approx(reference - 0.01, abs=1e-6), quality
    assert (workdir / "report.html").is_file()


def test_a_rerun_serves_every_stage_from_the_cache_in_a_tenth_of_the_time(
    baked: tuple[Path, Path],
) -> None:
    example, workdir = baked
    first = _report(workdir)
    done = _bakeline("run", example, "--workdir", workdir)
    assert done.returncode == 0, done.stderr[-6000:]
    report = _report(workdir)
    assert {s["phase"] for s in report["stages"]} == {"Cached"}, report["stages"]
    assert "Cached" in done.stderr
    assert report["durationSeconds"] < 0.1 * first["durationSeconds"]
    assert report["result"]["sha256"] == first["result"]["sha256"]


def test_a_run_killed_mid_stage_resumes_to_the_same_artifact(
    baked: tuple[Path, Path], tmp_path: Path
) -> None:
    example, workdir = baked
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [command, "run", str(example), "--workdir", str(interrupted)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Kill it (and its agent) once a few stages have checkpoints and another is running.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and process.poll() is None:
            if len(list((interrupted / "checkpoints").glob("*/manifest.json"))) >= 3:
                break
            time.sleep(0.5)
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = {
        path.parent.name: path.stat().st_mtime_ns
        for path in (interrupted / "checkpoints").glob("*/manifest.json")
    }
    done = _bakeline("run", example, "--workdir", interrupted)
    assert done.returncode == 0, done.stderr[-6000:]
    report = _report(interrupted)
    kept = {Path(s["checkpoint"]["path"]).name for s in report["stages"]} & set(before)
    assert len(kept) >= 3, "the stages finished before the kill ran again"
    for name in kept:  # untouched: read from the checkpoint, not rewritten by a second run
        assert (interrupted / "checkpoints" / name / "manifest.json").stat().st_mtime_ns == (
            before[name]
        )
    assert report["result"]["sha256"] == _report(workdir)["result"]["sha256"]


def test_an_unreachable_gate_rolls_back_then_fails_with_a_clear_reason(
    baked: tuple[Path, Path], tmp_path: Path
) -> None:
    example, _ = baked
    job = yaml.safe_load(example.read_text())
    job["spec"]["workflowRef"] = "strict"
    # Accuracy is a fraction: `> 1` can never hold, whatever the fallbacks do.
    stages = [
        s.model_copy(update={"gate": Gate(metric="accuracy", operator=">", bound=1.0)})
        if s.agent == "QualityValidator"
        else s
        for s in _default_stages()
        if s.agent in ("BakingCoordinator", "ModelOptimizer", "QualityValidator")
    ]
    chain = [
        s.model_copy(update={"depends_on": [stages[i - 1].name] if i else []})
        for i, s in enumerate(stages)
    ]
    strict = Workflow(
        metadata=ObjectMeta(name="strict"), spec=WorkflowSpec(stages=chain, max_parallel_stages=1)
    )
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump_all([job, strict.to_manifest()]))
    workdir = tmp_path / "wd"
    done = _bakeline("run", path, "--workdir", workdir)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-6000:]
    report = _report(workdir)
    quantize = next(s for s in chain if s.agent == "ModelOptimizer")
    assert report["phase"] == "Failed"
    assert report["rollbacks"] == len(quantize.fallbacks)
    assert "accuracy" in report["reason"] and "needs > 1" in report["reason"]
    assert "no fallback left" in report["reason"]
    assert report["result"] is None and report["lastGoodCheckpoint"]["id"]
    assert "FAILED" in done.stderr


def _default_stages() -> list[Stage]:
    return list(default_workflow().spec.stages)


def _url_job(name: str, model: Path, workflow: dict[str, Any] | None = None) -> str:
    job = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": {"url": {"url": f"file://{model}", "sha256": sha256_file(model)}}},
            **({"workflowRef": workflow["metadata"]["name"]} if workflow else {}),
        },
    }
    return yaml.safe_dump_all([workflow, job] if workflow else [job])


def test_a_pt2_torch_wrote_for_the_digits_cnn_bakes_as_a_user_file(
    baked: tuple[Path, Path], tmp_path: Path
) -> None:
    """The vetting refuses the hostile, not the ordinary: the program torch.export.save wrote
    in the import stage, handed back as an outside file, passes and bakes through all nine."""
    _, workdir = baked
    written = Path(_report(workdir)["stages"][0]["checkpoint"]["path"]) / "original.pt2"
    model = tmp_path / "digits.pt2"
    shutil.copy(written, model)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(_url_job("user-digits", model))
    done = _bakeline("run", manifest, "--workdir", tmp_path / "work")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = _report(tmp_path / "work")
    assert report["phase"] == "Succeeded" and report["progress"] == "9/9"
    assert "imported digits" in report["stages"][0]["message"]
    # No data of the user's: the gate measured made-up inputs, and says so.
    validate = next(s for s in report["stages"] if s["agent"] == "QualityValidator")
    assert "synthetic evaluation inputs: quality unverified" in validate["message"], validate


def test_a_pt2_torch_wrote_for_minilm_bakes_as_a_user_file_on_its_data(
    repo_root: Path, tmp_path: Path
) -> None:
    """MiniLM (90 MB; dynamic batch and sequence, so guards and shape expressions in its
    program) as torch.export.save writes it, handed in as an outside file with real tokenized
    sentences as its data: vetted, loaded and baked through all nine stages."""
    only_import = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "import-only"},
        "spec": {"stages": [{"name": "import", "agent": "BakingCoordinator"}]},
    }
    builtin = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": "minilm-export"},
        "spec": {"model": {"source": {"builtin": "minilm-l6"}}, "workflowRef": "import-only"},
    }
    first = tmp_path / "export.yaml"
    first.write_text(yaml.safe_dump_all([only_import, builtin]))
    done = _bakeline("run", first, "--workdir", tmp_path / "export")
    assert done.returncode == 0, done.stderr[-3000:]
    written = Path(_report(tmp_path / "export")["stages"][0]["checkpoint"]["path"])
    model = tmp_path / "minilm.pt2"
    shutil.copy(written / "original.pt2", model)
    data = tmp_path / "sentences.safetensors"  # held-out sentences, tokenized, right-padded
    shutil.copy(written / "evaluation.safetensors", data)
    workflow = yaml.safe_load((repo_root / "examples" / "workflow-default.yaml").read_text())
    workflow["metadata"] = {"name": "with-data"}
    for stage in workflow["spec"]["stages"]:
        if stage["agent"] == "BakingCoordinator":
            stage["params"] = {"dataset": str(data)}
    second = tmp_path / "user.yaml"
    second.write_text(_url_job("user-minilm", model, workflow))
    done = _bakeline("run", second, "--workdir", tmp_path / "user")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = _report(tmp_path / "user")
    assert report["phase"] == "Succeeded" and report["progress"] == "9/9"
    assert "imported minilm as exported-program" in report["stages"][0]["message"]
    validate = next(s for s in report["stages"] if s["agent"] == "QualityValidator")
    assert "held-out evaluation samples" in validate["message"], validate
