"""validate_workflow reports every problem with its path; topological_order is deterministic."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bakeline.api import (
    AGENTS,
    Problem,
    WorkflowInvalidError,
    WorkflowSpec,
    default_workflow,
    topological_order,
    validate_workflow,
)


def spec(*stages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"stages": list(stages), **fields}


def stage(name: str, *depends_on: str, agent: str = "ModelOptimizer") -> dict[str, Any]:
    return {"name": name, "agent": agent, "dependsOn": list(depends_on)}


def reasons(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.reason, p.path) for p in problems]


def test_a_valid_workflow_has_no_problems() -> None:
    assert validate_workflow(spec(stage("a"), stage("b", "a"), stage("c", "a"))) == []
    assert validate_workflow(default_workflow().spec) == []


def test_unknown_agent_with_a_suggestion() -> None:
    (problem,) = validate_workflow(spec(stage("a", agent="GraphOptimiser")))
    assert problem.reason == "UnknownAgent"
    assert problem.path == "spec.stages[0].agent"
    assert "did you mean 'GraphOptimizer'?" in problem.message


def test_unknown_dependency_with_a_suggestion() -> None:
    (problem,) = validate_workflow(spec(stage("graph"), stage("quantize", "grahp")))
    assert (problem.reason, problem.path) == ("UnknownDependency", "spec.stages[1].dependsOn[0]")
    assert "'grahp', which is not a stage" in problem.message
    assert "did you mean 'graph'?" in problem.message


def test_self_dependency_and_duplicate_names() -> None:
    problems = validate_workflow(spec(stage("a", "a"), stage("a")))
    assert reasons(problems) == [
        ("SelfDependency", "spec.stages[0].dependsOn[0]"),
        ("DuplicateName", "spec.stages[1].name"),
    ]


def test_a_cycle_is_named_stage_by_stage() -> None:
    problems = validate_workflow(spec(stage("a", "c"), stage("b", "a"), stage("c", "b")))
    (problem,) = problems
    assert (problem.reason, problem.path) == ("Cycle", "spec.stages[0].dependsOn")
    assert "a -> c -> b -> a" in problem.message


def test_stages_behind_a_cycle_are_unreachable() -> None:
    problems = validate_workflow(
        spec(
            stage("root"),
            stage("x", "y"),
            stage("y", "x"),
            stage("after", "y"),
            stage("late", "after"),
        )
    )
    assert reasons(problems) == [
        ("Cycle", "spec.stages[1].dependsOn"),
        ("Unreachable", "spec.stages[3].dependsOn"),
        ("Unreachable", "spec.stages[4].dependsOn"),
    ]
    assert "'after' can never run: it depends on 'y'" in problems[1].message


def test_every_problem_at_once_with_schema_problems_first() -> None:
    problems = validate_workflow(
        spec(
            stage("a", "b", agent="Nope"),
            stage("b", "a"),
            stage("c", "zz"),
            {"name": "d", "agent": "ModelOptimizer", "timeoutSeconds": 0},
            maxParallelStages=0,
        ),
        path="workflow.spec",
    )
    assert reasons(problems) == [
        ("Invalid", "workflow.spec.stages[3].timeoutSeconds"),
        ("Invalid", "workflow.spec.maxParallelStages"),
        ("UnknownAgent", "workflow.spec.stages[0].agent"),
        ("UnknownDependency", "workflow.spec.stages[2].dependsOn[0]"),
        ("Cycle", "workflow.spec.stages[0].dependsOn"),
    ]


def test_malformed_input_is_reported_not_raised() -> None:
    problems = validate_workflow({"stages": [{"agent": 3}, "text"], "extra": 1})
    paths = {p.path for p in problems}
    assert {"spec.stages[0].name", "spec.stages[1]", "spec.extra"} <= paths
    assert validate_workflow({"stages": "no"})[0].path == "spec.stages"
    assert validate_workflow({})[0].path == "spec.stages"


def test_order_follows_dependencies_and_declaration() -> None:
    workflow = spec(stage("d", "b", "c"), stage("c", "a"), stage("b", "a"), stage("a"))
    assert topological_order(workflow) == ["a", "c", "b", "d"]
    assert topological_order(WorkflowSpec.model_validate(workflow)) == ["a", "c", "b", "d"]


def test_order_of_an_invalid_workflow_raises_with_the_problems() -> None:
    with pytest.raises(WorkflowInvalidError) as error:
        topological_order(spec(stage("a", "b"), stage("b", "a")))
    assert [p.reason for p in error.value.problems] == ["Cycle"]
    assert "spec.stages[0].dependsOn" in str(error.value)


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    """Random DAGs: each stage depends only on stages declared before it, then shuffled."""
    count = draw(st.integers(min_value=1, max_value=12))
    names = [f"s{i}" for i in range(count)]
    stages = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=4)) if i else []
        stages.append(stage(name, *deps, agent=draw(st.sampled_from(AGENTS))))
    return spec(*draw(st.permutations(stages)))


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dags_are_valid_and_ordered(workflow: dict[str, Any]) -> None:
    assert validate_workflow(workflow) == []
    order = topological_order(workflow)
    assert sorted(order) == sorted(s["name"] for s in workflow["stages"])
    position = {name: i for i, name in enumerate(order)}
    for entry in workflow["stages"]:
        assert all(position[d] < position[entry["name"]] for d in entry["dependsOn"])


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_a_back_edge_is_always_reported_as_a_cycle(
    workflow: dict[str, Any], data: st.DataObject
) -> None:
    stages = workflow["stages"]
    order = topological_order(workflow)
    if len(order) < 2:
        return
    # Make an early stage depend on a later one that (transitively or not) follows it.
    i = data.draw(st.integers(min_value=0, max_value=len(order) - 2))
    j = data.draw(st.integers(min_value=i + 1, max_value=len(order) - 1))
    early, late = order[i], order[j]
    by_name = {s["name"]: s for s in stages}
    if late in by_name[early]["dependsOn"]:
        return
    by_name[late]["dependsOn"] = sorted({*by_name[late]["dependsOn"], early})
    by_name[early]["dependsOn"] = [*by_name[early]["dependsOn"], late]
    problems = validate_workflow(workflow)
    assert "Cycle" in [p.reason for p in problems]
    assert all(p.reason in {"Cycle", "Unreachable"} for p in problems)
    cycle = next(p for p in problems if p.reason == "Cycle")
    assert f"{early}" in cycle.message and f"{late}" in cycle.message
