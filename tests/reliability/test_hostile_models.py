"""Hostile model files: refused or failed with a clear reason, and nothing in them executed.

Each file would create a marker if a loader ever ran its pickle. Through `bakeline run` (the
real BakingCoordinator, one stage) every kind is tried; through the operator, a pickle in a
ConfigMap model source. A hostile file is invalid input: exit 2, no retry (DESIGN §3).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import OperatorProcess
from reliability import models
from reliability.probes import condition_of, wait_terminal

from controlplane import ControlPlane
from support.kube import apply
from support.node_harness import NodeHarness

pytestmark = pytest.mark.slow

EXIT_INVALID_INPUT = 2
API = "bakeline.io/v1alpha1"


def _import_only(params: dict[str, Any] | None = None) -> dict[str, Any]:
    stage: dict[str, Any] = {"name": "import", "agent": "BakingCoordinator"}
    if params:
        stage["params"] = params
    # No retries: a hostile file must be refused as invalid input at the first attempt;
    # one retried as transient would show as attempts > 1 below.
    stage["retry"] = {"limit": 1, "backoff": {"durationSeconds": 1, "maxSeconds": 1}}
    return {
        "apiVersion": API,
        "kind": "Workflow",
        "metadata": {"name": "import-only"},
        "spec": {"stages": [stage]},
    }


CASES: dict[str, tuple[Callable[[Path, Path], Path], str, dict[str, Any] | None]] = {
    # name: (writer(dir, marker) -> file, words the failure must contain, params)
    "pickle": (
        lambda d, m: models.write_pickle(d / "model.pt", m),
        "is a Python pickle: refused",
        None,
    ),
    "torch-save-zip": (
        lambda d, m: models.write_torch_save_zip(d / "model.pth", m),
        "neither an ExportedProgram nor TorchScript",
        None,
    ),
    "fake-exported-program": (
        lambda d, m: models.write_fake_exported_program(d / "model.pt2", m),
        "model.pt2",
        None,
    ),
    "zip-bomb": (lambda d, m: models.write_zip_bomb(d / "bomb.pt2"), "bomb.pt2", None),
    "truncated-onnx": (
        lambda d, m: models.write_truncated_onnx(d / "cut.onnx"),
        "cut.onnx is not an ExportedProgram, TorchScript or ONNX model",
        None,
    ),
    "throws-on-forward": (
        lambda d, m: models.write_throwing_torchscript(d / "throws.ts"),
        "this model throws on forward",
        {"inputShapes": {"x": [1, 4]}},
    ),
}


def _bake(name: str, workdir: Path) -> tuple[str, subprocess.CompletedProcess[str], Path, Path]:
    writer, _, params = CASES[name]
    folder = workdir / name
    folder.mkdir()
    marker = folder / "EXECUTED"
    model = writer(folder, marker)
    job = {
        "apiVersion": API,
        "kind": "BakingJob",
        "metadata": {"name": f"hostile-{name}"},
        "spec": {
            "model": {
                "source": {
                    "url": {
                        "url": f"file://{model}",
                        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
                    }
                }
            },
            "workflowRef": "import-only",
        },
    }
    manifest = folder / "job.yaml"
    manifest.write_text(yaml.safe_dump_all([_import_only(params), job]))
    command = shutil.which("bakeline") or pytest.fail("the bakeline command is not installed")
    done = subprocess.run(
        [command, "run", str(manifest), "--workdir", str(folder / "work")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=folder,
    )
    return name, done, marker, folder / "work"


def test_hostile_model_files_are_refused_by_bakeline_run(tmp_path: Path) -> None:
    # Two at a time: the machine has two cores, and each run is mostly torch's import.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda name: _bake(name, tmp_path), CASES))
    wrong = []
    for name, done, marker, workdir in results:
        words = CASES[name][1]
        report = json.loads((workdir / "report.json").read_text())
        stage = report["stages"][0]
        line = (
            f"{name}: exit {done.returncode}, {stage['phase']} after {stage['attempts']} "
            f"attempt(s): {stage.get('message', '')[:200]}"
        )
        print(line)
        if marker.exists():
            wrong.append(f"{name}: EXECUTED (the marker exists)")
        if done.returncode != EXIT_INVALID_INPUT or stage["attempts"] != 1:
            wrong.append(f"{name}: not refused as invalid input at once: {line}")
        if words not in stage.get("message", ""):
            wrong.append(f"{name}: the reason lacks {words!r}: {line}")
    assert wrong == [], "\n".join(wrong)


@pytest.mark.cluster
def test_a_pickle_in_a_configmap_model_source_fails_the_job_and_never_runs(
    cluster: ControlPlane,
    namespace: str,
    node: NodeHarness,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    """Through the operator, with the real agent in the pod (the node harness runs it)."""
    marker = tmp_path / "EXECUTED"
    payload = base64.b64encode(models.pickle_payload(marker)).decode()
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "innocent-model"},
        "binaryData": {"model.pt": payload},
    }
    lane = {"apiVersion": API, "kind": "Lane", "metadata": {"name": "standard"}, "spec": {}}
    job = {
        "apiVersion": API,
        "kind": "BakingJob",
        "metadata": {"name": "pickled"},
        "spec": {
            "model": {"source": {"configMap": {"name": "innocent-model", "key": "model.pt"}}},
            "workflowRef": "import-only",
        },
    }
    apply(cluster, [configmap, lane, _import_only(), job], namespace)
    done = wait_terminal(cluster, "pickled", namespace, 180)
    status = done["status"]
    failed = condition_of(done, "Failed")
    assert status["phase"] == "Failed", json.dumps(status)[-2000:] + operator.log()[-3000:]
    assert "is a Python pickle: refused" in failed.get("message", ""), failed
    assert status["stages"][0]["attempt"] == 1  # invalid input is not retried
    assert not marker.exists(), "the pickle was executed"
    print(f"operator: {failed['reason']}: {failed['message']}")
