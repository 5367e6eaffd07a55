"""The pydantic models reject every manifest the API server rejects (invalid_manifests.yaml),
with the same words for the rules written once for both (`Rule`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from bakeline.api import API_VERSION, RESOURCE_KINDS, Resource
from bakeline.api.common import WireModel

MODELS: dict[str, type[Resource]] = {kind.__name__: kind for kind in RESOURCE_KINDS}
CORPUS = Path(__file__).with_name("invalid_manifests.yaml")


def load_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(CORPUS.read_text())
    for case in cases:
        case["manifest"] = {
            "apiVersion": API_VERSION,
            "metadata": {"name": "invalid"},
            **case["manifest"],
        }
    return cases


CASES = load_cases()


def test_there_are_at_least_thirty_cases_with_unique_ids() -> None:
    assert len(CASES) >= 30
    assert len({case["id"] for case in CASES}) == len(CASES)
    assert all({"id", "field", "rule", "manifest"} <= set(case) for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_models_reject(case: dict[str, Any]) -> None:
    if case.get("server"):  # a limit of the cluster: `bakeline run` accepts it
        MODELS[case["manifest"]["kind"]].model_validate(case["manifest"])
        return
    with pytest.raises(ValidationError) as error:
        MODELS[case["manifest"]["kind"]].model_validate(case["manifest"])
    if "message" in case:
        assert case["message"] in str(error.value)


def _models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = list(RESOURCE_KINDS)
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for candidate in _types(field.annotation):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    todo.append(candidate)
    return seen


def _types(annotation: object) -> list[object]:
    found = [annotation]
    for argument in getattr(annotation, "__args__", ()):
        found += _types(argument)
    return found


def test_every_cel_rule_is_exercised_by_a_case() -> None:
    """Each rule's message is what some case expects from the API server."""
    messages = {
        rule.message
        for model in _models()
        if issubclass(model, WireModel)
        for rule in model.__dict__.get("cel_rules", ())
    }
    assert len(messages) >= 20
    # A rule `bakeline run` alone checks (no CEL) is exercised by a case's `message`.
    said = [case["rule"] for case in CASES] + [case.get("message", "") for case in CASES]
    uncovered = {m for m in messages if not any(words and words in m for words in said)}
    assert uncovered == set()
