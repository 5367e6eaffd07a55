"""crds/ is exactly what the models generate, and it is a schema the API server accepts:
structural, described, bounded for CEL cost."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, Field

from bakeline.api import AGENTS, RESOURCE_KINDS
from bakeline.api.crdgen import HEADER, crd, main, rendered, structural_schema

CRDS = {resource.__name__: crd(resource) for resource in RESOURCE_KINDS}


def test_files_on_disk_match_the_models(repo_root: Path) -> None:
    stale = [
        path
        for path, text in rendered().items()
        if not (repo_root / path).is_file() or (repo_root / path).read_text() != text
    ]
    assert not stale, f"regenerate with `python -m bakeline.api.crdgen`: {stale}"
    generated = {p for p in rendered() if p.startswith("crds/")}
    on_disk = {f"crds/{p.name}" for p in (repo_root / "crds").glob("*.yaml")}
    assert on_disk == generated


def test_check_mode_reports_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "crds").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert "out of date" in capsys.readouterr().out
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--check", "--root", str(tmp_path)]) == 0
    # A generated file whose model is gone is removed, a hand-written one is left alone.
    (tmp_path / "crds" / "old.yaml").write_text(HEADER + "kind: X\n")
    (tmp_path / "crds" / "mine.yaml").write_text("kind: Y\n")
    assert main(["--check", "--root", str(tmp_path)]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "crds").iterdir()) == sorted(
        [*(Path(p).name for p in rendered() if p.startswith("crds/")), "mine.yaml"]
    )


def test_output_is_deterministic() -> None:
    assert rendered() == rendered()


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    for path, node in _nodes(_schema(kind), kind):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "nullable" not in node, path
        if "anyOf" in node:  # the one anyOf a structural schema allows
            assert node.get("x-kubernetes-int-or-string") is True, path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        assert {"type": "null"} not in node.get("anyOf", []), path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node["default"] is not None, path


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_has_a_description(kind: str) -> None:
    missing = [
        f"{path}.{name}"
        for path, node in _nodes(_schema(kind), kind)
        for name, child in node.get("properties", {}).items()
        if not child.get("description") and f"{path}.{name}" != f"{kind}.metadata"
    ]
    assert not missing


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_spec_lists_and_maps_are_bounded(kind: str) -> None:
    """The API server estimates CEL cost from maxItems / maxProperties / maxLength: unbounded
    collections under spec would make rules that iterate them too expensive to admit."""
    spec = _schema(kind)["properties"]["spec"]
    for path, node in _nodes(spec, f"{kind}.spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


def test_only_params_and_fallbacks_are_free_form() -> None:
    free = [
        path
        for kind in CRDS
        for path, node in _nodes(_schema(kind), kind)
        if node.get("x-kubernetes-preserve-unknown-fields")
    ]
    assert free == ["Workflow.spec.stages[].params", "Workflow.spec.stages[].fallbacks[]"]


def test_status_has_no_defaults_and_conditions_are_a_list_map() -> None:
    for kind in CRDS:
        status = _schema(kind)["properties"]["status"]
        assert all("default" not in node for _, node in _nodes(status, kind))
        conditions = status["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        fields = conditions["items"]["properties"]
        assert {"type", "status", "reason", "message", "lastTransitionTime"} <= set(fields)
        assert "observedGeneration" in fields
        assert conditions["items"]["required"] == ["type", "status", "reason", "lastTransitionTime"]
        assert fields["lastTransitionTime"]["format"] == "date-time"
        assert "observedGeneration" in status["properties"]


def test_names_columns_and_scope() -> None:
    expected = {
        "Lane": ("lanes", ["ln"], ["Running", "Queued", "Frozen", "Age"]),
        "Workflow": ("workflows", ["bwf"], ["Stages", "Ready", "Age"]),
        "BakingJob": (
            "bakingjobs",
            ["bj"],
            ["Phase", "Lane", "Progress", "Speedup", "Verified", "Output", "Age"],
        ),
        "SLOPolicy": ("slopolicies", ["slo"], ["State", "Budget", "Age"]),
    }
    for kind, (plural, short, columns) in expected.items():
        spec = CRDS[kind]["spec"]
        assert CRDS[kind]["metadata"]["name"] == f"{plural}.bakeline.io"
        assert spec["group"] == "bakeline.io" and spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural and spec["names"]["shortNames"] == short
        assert spec["names"]["categories"] == ["bakeline"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        assert [c["name"] for c in version["additionalPrinterColumns"]] == columns


def test_agent_enum_is_the_nine_agents_in_order() -> None:
    stage = _schema("Workflow")["properties"]["spec"]["properties"]["stages"]["items"]
    assert stage["properties"]["agent"]["enum"] == list(AGENTS)
    assert len(AGENTS) == 9


def test_optional_fields_are_not_required_and_have_no_null() -> None:
    source = _schema("BakingJob")["properties"]["spec"]["properties"]["model"]["properties"]
    source = source["source"]
    assert "required" not in source
    assert source["properties"]["builtin"] == {
        "description": source["properties"]["builtin"]["description"],
        "type": "string",
        "enum": ["minilm-l6", "digits-cnn"],
    }


def test_exclusive_bounds_use_openapi_v3_flags() -> None:
    objective = _schema("SLOPolicy")["properties"]["spec"]["properties"]["objectives"]["items"]
    target = objective["properties"]["target"]
    assert target["minimum"] == 0 and target["exclusiveMinimum"] is True
    assert target["maximum"] == 1 and target["exclusiveMaximum"] is True


def test_nested_defaults_match_the_models() -> None:
    lane_spec = _schema("Lane")["properties"]["spec"]
    assert lane_spec["default"]["circuitBreaker"] == {
        "consecutiveFailures": 3,
        "cooldownSeconds": 600,
    }
    alerts = _schema("SLOPolicy")["properties"]["spec"]["properties"]["burnRateAlerts"]
    assert [(a["longWindow"], a["shortWindow"], a["factor"]) for a in alerts["default"]] == [
        ("1h", "5m", 14.4),
        ("6h", "30m", 6.0),
        ("3d", "6h", 1.0),
    ]


def test_generator_refuses_what_it_cannot_translate() -> None:
    class Union(BaseModel):
        value: int | str = Field(description="either")

    with pytest.raises(ValueError, match="union of 2 types"):
        structural_schema(Union)


def test_files_parse_as_one_crd_each(repo_root: Path) -> None:
    for path in sorted((repo_root / "crds").glob("*.yaml")):
        (document,) = list(yaml.safe_load_all(path.read_text()))
        assert document["kind"] == "CustomResourceDefinition", path
