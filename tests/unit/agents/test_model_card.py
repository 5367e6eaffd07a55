"""The package README (model card) says what the quality figures were measured on: synthetic
inputs (unverified), the job's dataset or the builtin model's split, with the split sizes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from bakeline.agents.checkpoint_io import InputCheckpoint
from bakeline.agents.pipeline import Chain
from bakeline.agents.stages.deployment_preparer import (
    HEADLINES,
    evaluation_data,
    headline_metrics,
    model_card,
)
from bakeline.checkpoints.manifest import FileEntry, LineageEntry, Manifest
from bakeline.contract import QUALITY_VERIFIED, SYNTHETIC_INPUTS


def _entry(agent: str, metrics: dict[str, float], params: dict[str, Any] | None = None) -> Any:
    return LineageEntry(
        stage=agent.lower(),
        agent=agent,
        agent_version="v",
        params=params or {},
        output_sha256="ef" * 32,
        started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:01Z",
        metrics=metrics,
    )


def _source(
    tmp_path: Path, lineage: list[LineageEntry], facts: dict[str, str] | None = None
) -> InputCheckpoint:
    manifest = Manifest(
        attributes={"facts": facts or {}},
        model_name="user-cnn",
        artifact="model.onnx",
        format="onnx",
        files=[FileEntry(path="model.onnx", sha256="ab" * 32, size_bytes=1000, role="model")],
        lineage=lineage,
    )
    return cast(InputCheckpoint, SimpleNamespace(manifest=manifest, directory=tmp_path))


def _card(source: InputCheckpoint) -> str:
    metrics = headline_metrics(source, 1000.0)
    return model_card(source, metrics, {"intraOpThreads": 1}, "model.onnx")


SPLIT = {"calibrationSamples": 128.0, "evaluationSamples": 256.0}


def test_a_bake_on_synthetic_inputs_says_its_quality_is_unverified(tmp_path: Path) -> None:
    source = _source(
        tmp_path,
        [
            _entry("BakingCoordinator", {SYNTHETIC_INPUTS: 1.0, **SPLIT}),
            _entry("QualityValidator", {"cosineMean": 0.9998, QUALITY_VERIFIED: 0.0}),
        ],
    )
    card = _card(source)
    assert "## Evaluation data" in card
    assert "**Quality unverified: evaluated on synthetic inputs.**" in card
    assert "on 256 made-up inputs" in card
    limitations = card[card.index("## Limitations") :]
    assert "synthetic inputs only" in limitations and "unverified" in limitations
    assert "held-out" not in limitations
    # The package manifest's metrics carry the same facts.
    metrics = headline_metrics(source, 1000.0)
    assert metrics[SYNTHETIC_INPUTS] == 1.0 and metrics[QUALITY_VERIFIED] == 0.0


def test_the_validators_word_alone_marks_it_unverified(tmp_path: Path) -> None:
    source = _source(tmp_path, [_entry("QualityValidator", {QUALITY_VERIFIED: 0.0})])
    assert evaluation_data(source)[0].startswith("**Quality unverified")


def test_a_bake_on_the_jobs_dataset_names_it_and_its_split(tmp_path: Path) -> None:
    source = _source(
        tmp_path,
        [
            _entry(
                "BakingCoordinator",
                {SYNTHETIC_INPUTS: 0.0, **SPLIT},
                {"dataset": "/data/eval.safetensors"},
            ),
            _entry("QualityValidator", {QUALITY_VERIFIED: 1.0}),
        ],
    )
    card = _card(source)
    assert "unverified" not in card.lower() and "synthetic inputs" not in card.lower()
    assert (
        "Quality was measured on the job's dataset: 256 held-out evaluation samples, with 128 "
        "others for calibration." in card
    )


def test_a_lineage_that_says_nothing_claims_nothing(tmp_path: Path) -> None:
    source = _source(tmp_path, [_entry("QualityValidator", {"cosineMean": 0.99})])
    card = _card(source)
    assert evaluation_data(source) == [] and "## Evaluation data" not in card
    assert "held-out" in card[card.index("## Limitations") :]


def test_the_builtin_digits_package_names_its_evaluation_split(digits_chain: Chain) -> None:
    package = digits_chain.dirs["DeploymentPreparer"]
    card = (package / "README.md").read_text()
    assert "Quality was measured on the builtin model's own evaluation split: " in card
    assert "held-out evaluation samples, with 256 others for calibration" in card
    assert "unverified" not in card.lower()
    assert ("QualityValidator", QUALITY_VERIFIED) in HEADLINES


def test_the_jobs_quality_dataset_is_named_from_the_import_stages_facts(tmp_path: Path) -> None:
    told = "the job's (labelled, sha256 0123): 4 calibration and 8 evaluation samples"
    source = _source(
        tmp_path,
        [_entry("BakingCoordinator", {SYNTHETIC_INPUTS: 0.0, "evaluationSamples": 8.0})],
        {"dataset": told},
    )
    lines = evaluation_data(source)
    assert lines[0].startswith("Quality was measured on the job's dataset: 8 held-out evaluation")
    assert lines[-1] == f"Dataset: {told}."


def test_the_package_runs_with_its_own_serve_py_as_it_was_profiled(
    digits_chain: Chain, tmp_path: Path
) -> None:
    """serve.py, run from a copy of the package (it imports onnxruntime and numpy only),
    applies runtime.json and gives what the agents' own sessions give."""
    import json
    import shutil
    import subprocess
    import sys

    import numpy as np

    package = tmp_path / "package"
    shutil.copytree(digits_chain.dirs["DeploymentPreparer"], package)
    runtime = json.loads((package / "runtime.json").read_text())
    card = (package / "README.md").read_text()
    assert "from serve import Model" in card and "runtime.json` applied in full" in card
    imports = [line for line in (package / "serve.py").read_text().splitlines() if "import" in line]
    assert not [line for line in imports if "bakeline" in line], imports  # standalone
    [feed] = json.loads((package / "manifest.json").read_text())["inputs"]
    batch = np.random.default_rng(1).random((3, *feed["shape"][1:]), dtype=np.float32)
    np.save(tmp_path / "batch.npy", batch)
    script = (
        "import json, sys, numpy as np\n"
        "from serve import Model, threads_for\n"
        "model = Model('.')\n"
        f"out = model.run({{'{feed['name']}': np.load(sys.argv[1])}})\n"
        "session = model.session(3)\n"
        "print(json.dumps({'shapes': [list(v.shape) for v in out.values()],\n"
        "  'threads': threads_for(model.runtime, 3),\n"
        "  'spinning': session.get_session_options().get_session_config_entry(\n"
        "      'session.intra_op.allow_spinning'),\n"
        "  'stops': session.get_session_options().get_session_config_entry(\n"
        "      'session.force_spinning_stop'),\n"
        "  'first': out[next(iter(out))].tolist()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "batch.npy")],
        cwd=package,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ran = json.loads(done.stdout)
    assert ran["shapes"][0][0] == 3
    assert ran["spinning"] == ("1" if runtime.get("allowSpinning") else "0")
    assert ran["stops"] == ran["spinning"]  # spinning workers stop at the end of each run
    sizes = {int(k): int(v) for k, v in (runtime.get("threadsByBatchSize") or {}).items()}
    fits = [size for size in sizes if size >= 3]
    assert ran["threads"] == (sizes[min(fits)] if fits else runtime.get("intraOpThreads", 0))
    # The same numbers the agents' own session gives (one code path: agents/serving.py).
    from bakeline.agents.serving import Model

    here = Model(package).run({feed["name"]: batch})
    assert np.allclose(np.asarray(ran["first"]), here[next(iter(here))], atol=1e-5)
