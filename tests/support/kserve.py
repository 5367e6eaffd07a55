"""KServe's own CRDs, from the module pinned in hack/tools/kserve (fetched by `go mod download`,
checked against its go.sum), so tests can have the real API server validate the ServingRuntime
and InferenceService a model card shows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = ROOT / "hack" / "tools" / "kserve"
CRDS = ("serving.kserve.io_servingruntimes.yaml", "serving.kserve.io_inferenceservices.yaml")


def kserve_crds() -> list[Path]:
    """The ServingRuntime and InferenceService CRDs of the pinned KServe release."""
    done = subprocess.run(
        ["go", "mod", "download", "-json", "github.com/kserve/kserve"],
        cwd=PIN,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"go mod download github.com/kserve/kserve failed: {done.stderr}")
    folder = Path(json.loads(done.stdout)["Dir"]) / "config" / "crd" / "full"
    return [folder / name for name in CRDS]
