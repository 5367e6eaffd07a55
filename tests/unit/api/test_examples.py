"""Every example parses into its model and serializes back to the same object; the default
workflow example is the built-in default workflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.api import (
    AGENTS,
    RESOURCE_KINDS,
    Resource,
    Workflow,
    default_workflow,
    topological_order,
    validate_workflow,
)

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
MODELS: dict[str, type[Resource]] = {kind.__name__: kind for kind in RESOURCE_KINDS}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for i, document in enumerate(yaml.safe_load_all(path.read_text())):
            found.append((f"{path.name}#{i}", document))
    return found


def test_the_examples_are_there() -> None:
    names = {path.name for path in EXAMPLES.glob("*.yaml")}
    assert {
        "lanes.yaml",
        "workflow-default.yaml",
        "bakingjob-minilm.yaml",
        "bakingjob-digits.yaml",
        "slopolicy.yaml",
    } <= names
    kinds = [document["kind"] for _, document in documents()]
    assert sorted(set(kinds)) == sorted(MODELS)
    lanes = [d["metadata"]["name"] for _, d in documents() if d["kind"] == "Lane"]
    assert lanes == ["express", "standard", "batch"]


@pytest.mark.parametrize(("name", "document"), documents(), ids=[n for n, _ in documents()])
def test_example_round_trips(name: str, document: dict[str, Any]) -> None:
    model = MODELS[document["kind"]].model_validate(document)
    assert model.to_manifest(exclude_unset=True) == document
    # ...and once more through the full form with every default spelled out.
    full = model.to_manifest()
    assert MODELS[document["kind"]].model_validate(full).to_manifest() == full


def test_builtin_models_of_the_job_examples() -> None:
    builtins = {
        d["metadata"]["name"]: d["spec"]["model"]["source"]["builtin"]
        for _, d in documents()
        if d["kind"] == "BakingJob"
    }
    assert builtins == {"minilm-l6": "minilm-l6", "digits-cnn": "digits-cnn"}


def test_default_workflow_example_is_the_builtin_default() -> None:
    document = yaml.safe_load((EXAMPLES / "workflow-default.yaml").read_text())
    assert document == default_workflow().to_manifest(exclude_unset=True)
    assert Workflow.model_validate(document).to_manifest() == default_workflow().to_manifest()


def test_default_workflow_is_the_nine_agents_in_a_chain() -> None:
    spec = default_workflow().spec
    names = ["import", "graph", "quantize", "memory", "hardware"]
    names += ["accelerate", "validate", "profile", "package"]
    assert [s.name for s in spec.stages] == names
    assert tuple(s.agent for s in spec.stages) == AGENTS
    assert [s.depends_on for s in spec.stages] == [[], *[[n] for n in names[:-1]]]
    assert validate_workflow(spec) == []
    assert topological_order(spec) == names


def test_default_workflow_failure_policies() -> None:
    stages = {s.name: s for s in default_workflow().spec.stages}
    quantize = stages["quantize"]
    assert quantize.on_failure == "Fallback"
    assert quantize.params == {
        "scheme": "int8-per-channel",
        "keepFloat": "auto",
        "sensitive": "auto",
    }
    assert quantize.fallbacks == [
        {
            "keepFloat": "auto",
            "targetCosineMean": 0.999,
            "maxFloatLayers": 24,
            "maxFloatShare": 1.0,
        },
        {"scheme": "none"},
    ]
    validate = stages["validate"]
    assert validate.gate is not None and validate.gate.metric == "quality"
    assert validate.on_failure == "Rollback"
    # Optional optimizations must not sink a job.
    assert stages["graph"].on_failure == "Skip" and stages["accelerate"].on_failure == "Skip"


def test_default_workflow_is_a_fresh_object_each_time() -> None:
    first = default_workflow()
    first.spec.stages[0].params["calibrationSamples"] = 1
    assert default_workflow().spec.stages[0].params == {"calibrationSamples": 64}
