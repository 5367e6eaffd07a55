"""Hostile model files: refused with a named reason before any loader sees them, nothing in
them executed, nothing left running.

Each file would create a marker if a loader ever ran its payload. Through `bakeline run` (the
real BakingCoordinator, one stage) every kind is tried; through the operator, a pickle in a
ConfigMap model source. A hostile file is invalid input: exit 2, no retry. RELIABILITY.md has
the table this test prints (`pytest tests/reliability -k hostile -rP`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
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


# name: (writer(dir, marker) -> file, words the refusal must contain, params). Every file is
# made from what torch.export.save, torch.jit.save or onnx write, then tampered with
# (tests/reliability/models.py); `test_the_corpus_is_live` shows torch alone runs several.
Writer = Callable[[Path, Path], Path]
CASES: dict[str, tuple[Writer, str, dict[str, Any] | None]] = {
    "pickle": (
        lambda d, m: models.write_pickle(d / "model.pt", m),
        "is a Python pickle: refused",
        None,
    ),
    "torch-save-zip": (
        lambda d, m: models.write_torch_save_zip(d / "model.pth", m),
        "is a torch.save archive",
        None,
    ),
    "pt2-pickled-constant": (
        lambda d, m: models.write_pt2_pickled_constant(d / "model.pt2", m),
        "is stored with pickle (use_pickle: true)",
        None,
    ),
    "pt2-pickled-weight": (
        lambda d, m: models.write_pt2_pickled_weight(d / "model.pt2", m),
        "is stored with pickle (use_pickle: true)",
        None,
    ),
    "pt2-opaque-object": (
        lambda d, m: models.write_pt2_opaque_object(d / "model.pt2", m),
        "is an opaque Python object",
        None,
    ),
    "pt2-custom-object": (
        lambda d, m: models.write_pt2_custom_object(d / "model.pt2", m),
        "is a TorchScript-bound custom object",
        None,
    ),
    "pt2-aotinductor-so": (
        lambda d, m: models.write_pt2_aotinductor(d / "model.pt2", m),
        "is an AOTInductor payload (native code)",
        None,
    ),
    "pt2-guard-code": (
        lambda d, m: models.write_pt2_guard_code(d / "model.pt2", m),
        "has guard code with '__import__'",
        None,
    ),
    "pt2-shape-expression": (
        lambda d, m: models.write_pt2_shape_expression(d / "model.pt2", m),
        "has a shape expression with",
        None,
    ),
    "pt2-operator-target": (
        lambda d, m: models.write_pt2_operator_target(d / "model.pt2", m),
        "calls 'torch.os.system'",
        None,
    ),
    "pt2-sample-inputs-pickle": (
        lambda d, m: models.write_pt2_sample_inputs(d / "model.pt2", m),
        "is a pickle that imports",
        None,
    ),
    "pt2-path-traversal": (
        lambda d, m: models.write_pt2_path_traversal(d / "model.pt2", m),
        "is not a plain relative path inside the archive",
        None,
    ),
    "pt2-10GB-tensor": (
        lambda d, m: models.write_pt2_huge_tensor(d / "model.pt2", m),
        "declares 10000000000 bytes but weight_0 holds 48",
        None,
    ),
    "pt2-zip-bomb": (
        lambda d, m: models.write_pt2_zip_bomb(d / "model.pt2", m),
        "a zip bomb",
        None,
    ),
    "pt2-truncated": (
        lambda d, m: models.write_pt2_truncated(d / "model.pt2", m),
        "is a truncated or damaged zip archive",
        None,
    ),
    "pt2-old-fake-layout": (
        lambda d, m: models.write_fake_exported_program(d / "model.pt2", m),
        "model.pt2",
        None,
    ),
    "torchscript-os-system": (
        lambda d, m: models.write_torchscript_os_system(d / "model.ts", m),
        "is a pickle that imports os.system",
        None,
    ),
    "onnx-external-outside": (
        lambda d, m: models.write_onnx_external_outside(d / "model.onnx", m),
        "only files inside the model's own folder",
        None,
    ),
    "onnx-external-absolute": (
        lambda d, m: models.write_onnx_external_absolute(d / "model.onnx", m),
        "reads external data from '/etc/hostname'",
        None,
    ),
    "zip-bomb": (lambda d, m: models.write_zip_bomb(d / "bomb.pt2"), "bomb.pt2", None),
    "truncated-onnx": (
        lambda d, m: models.write_truncated_onnx(d / "cut.onnx"),
        "cut.onnx: is not an ExportedProgram, TorchScript or ONNX model",
        None,
    ),
    "sha256-mismatch": (
        lambda d, m: models.write_pickle(d / "model.pt", m),
        "has sha256",
        None,
    ),
    "throws-on-forward": (
        lambda d, m: models.write_throwing_torchscript(d / "throws.ts"),
        "this model throws on forward",
        {"inputShapes": {"x": [1, 4]}},
    ),
}
# Refused before any stage runs (the runner checks the sha256 as it resolves the source).
BEFORE_STAGES = {"sha256-mismatch"}


def _write(name: str, workdir: Path) -> tuple[str, Path]:
    """The hostile file for `name`, in a folder of its own (one at a time: torch.export is not
    thread-safe)."""
    folder = workdir / name
    folder.mkdir()
    return name, CASES[name][0](folder, folder / "EXECUTED")


def _bake(name: str, model: Path) -> tuple[str, subprocess.CompletedProcess[str], Path, Path]:
    params = CASES[name][2]
    folder = model.parent
    marker = folder / "EXECUTED"
    job = {
        "apiVersion": API,
        "kind": "BakingJob",
        "metadata": {"name": f"hostile-{name}"},
        "spec": {
            "model": {
                "source": {
                    "url": {
                        "url": f"file://{model}",
                        "sha256": "0" * 64
                        if name in BEFORE_STAGES
                        else hashlib.sha256(model.read_bytes()).hexdigest(),
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


def _still_running(folder: Path) -> list[str]:
    """Processes whose command line names `folder`: an agent or a child left behind."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in command:
            left.append(f"{proc.name}: {command[:120]}")
    return left


def test_hostile_model_files_are_refused_by_bakeline_run(tmp_path: Path) -> None:
    # Two at a time: the machine has two cores, and each run is mostly torch's import.
    with ThreadPoolExecutor(max_workers=2) as pool:
        files = [_write(name, tmp_path) for name in CASES]
        results = list(pool.map(lambda written: _bake(*written), files))
    wrong = []
    rows = []
    for name, done, marker, workdir in results:
        words = CASES[name][1]
        if name in BEFORE_STAGES:
            reason, phase, attempts = done.stderr.strip(), "refused", 1
        else:
            report = json.loads((workdir / "report.json").read_text())
            stage = report["stages"][0]
            reason, phase, attempts = stage.get("message", ""), stage["phase"], stage["attempts"]
        ran = marker.exists()
        rows.append((name, done.returncode, phase, attempts, ran, reason))
        line = f"{name}: exit {done.returncode}, {phase} after {attempts} attempt(s): {reason}"
        if ran:
            wrong.append(f"{name}: EXECUTED (the marker exists)")
        if done.returncode != EXIT_INVALID_INPUT or attempts != 1:
            wrong.append(f"{name}: not refused as invalid input at once: {line[:400]}")
        if words not in reason:
            wrong.append(f"{name}: the reason lacks {words!r}: {line[:400]}")
    print(f"\n{'hostile file':<26} exit  ran  reason")
    for name, code, _, _, ran, reason in rows:
        print(f"{name:<26} {code:>4}  {'YES' if ran else 'no':<3}  {reason[:150]}")
    assert len(CASES) - 1 >= 12  # the corpus, less the model that merely throws
    left = _still_running(tmp_path)
    assert left == [], f"processes left running: {left}"
    assert wrong == [], "\n".join(wrong)


# Cases whose payload torch's own loader runs, with no vetting in front: the corpus is live.
TORCH_RUNS = (
    "pt2-pickled-constant",
    "pt2-pickled-weight",
    "pt2-opaque-object",
    "pt2-shape-expression",
    "pt2-sample-inputs-pickle",
)


def test_the_corpus_is_live_torch_alone_runs_these_payloads(tmp_path: Path) -> None:
    """Without the vetting, torch.export.load would have run each of these files' code: the
    refusals above stop real attacks, not files that fail by themselves."""
    ran = []
    for name in TORCH_RUNS:
        folder = tmp_path / name
        folder.mkdir()
        marker = folder / "EXECUTED"
        model = CASES[name][0](folder, marker)
        subprocess.run(
            [sys.executable, "-c", f"import torch; torch.export.load({str(model)!r}).module()"],
            capture_output=True,
            timeout=300,
            check=False,
        )
        ran.append((name, marker.exists()))
        print(
            f"torch.export.load alone on {name}: {'ran the payload' if marker.exists() else 'no'}"
        )
    assert all(executed for _, executed in ran), ran


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
