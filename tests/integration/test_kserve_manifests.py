"""The ServingRuntime and InferenceService every model card shows are valid KServe objects: the
real API server, holding KServe's own CRDs (the release pinned in hack/tools/kserve), accepts
them under strict field validation, and refuses the same with one field misspelt."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import yaml

from bakeline.agents.checkpoint_io import InputCheckpoint
from bakeline.agents.stages.deployment_preparer import model_card
from bakeline.checkpoints.manifest import FileEntry, Manifest
from controlplane import ControlPlane
from support.kserve import kserve_crds
from support.kube import wait_for

pytestmark = pytest.mark.cluster


def _card_yaml(tmp_path: Path, model_name: str) -> str:
    manifest = Manifest(
        model_name=model_name,
        artifact="model.onnx",
        format="onnx",
        files=[FileEntry(path="model.onnx", sha256="ab" * 32, size_bytes=1000, role="model")],
    )
    source = cast(InputCheckpoint, SimpleNamespace(manifest=manifest, directory=tmp_path))
    card = model_card(source, {"sizeBytes": 1000.0}, {"intraOpThreads": 2}, "model.onnx")
    [block] = re.findall(r"```yaml\n(.*?)```", card, flags=re.S)
    return str(block)


def test_the_model_cards_kserve_objects_pass_kserves_own_schema(
    cluster: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    for crd in kserve_crds():
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    # (`kubectl wait` and jsonpath fail at once while a new CRD has no conditions at all)
    for name in ("servingruntimes", "inferenceservices"):

        def established(name: str = name) -> bool:
            crd = json.loads(
                cluster.kubectl("get", f"crd/{name}.serving.kserve.io", "-o", "json").stdout
            )
            conditions = (crd.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        wait_for(established, 120, interval=0.5, what=f"{name} Established")
    block = _card_yaml(tmp_path, "all-MiniLM-L6-v2")
    kinds = [doc["kind"] for doc in yaml.safe_load_all(block) if doc]
    assert kinds == ["ServingRuntime", "InferenceService"]
    path = tmp_path / "serve.yaml"
    path.write_text(block)
    done = cluster.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(path)
    )
    assert "servingruntime.serving.kserve.io/bakeline-onnx created (server dry run)" in done.stdout
    assert "inferenceservice.serving.kserve.io/all-minilm-l6-v2 created" in done.stdout

    # The check is real: one misspelt field and the server refuses it.
    path.write_text(block.replace("protocolVersion: v2", "protocolVersoin: v2"))
    refused = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        str(path),
        check=False,
    )
    assert refused.returncode != 0 and "protocolVersoin" in refused.stderr
