"""What CEL cannot check about a workflow: cycles, unreachable stages, and every problem at once.

The CRD's rules stop at the first broken rule per object and cannot walk a graph. These functions
take a workflow spec (a model or the raw mapping from the API server or a YAML file) and report
every problem with the path of the field at fault, so the operator can put them all in
Workflow.status.problems and `bakeline run` can print them all.
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from bakeline.api.names import AGENTS
from bakeline.api.workflow import Problem, Stage, WorkflowSpec

# The rules validate_workflow reports itself, stage by stage, instead of pydantic's one message.
_GRAPH_RULES = (*WorkflowSpec.cel_rules, Stage.cel_rules[0])


class WorkflowInvalidError(ValueError):
    """The workflow cannot run; `problems` says why, each with its path."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in self.problems))


def validate_workflow(
    spec: WorkflowSpec | Mapping[str, Any], *, path: str = "spec"
) -> list[Problem]:
    """Every problem of a workflow spec, each with its field path under `path`; [] means valid."""
    data: Mapping[str, Any] = spec.to_wire() if isinstance(spec, WorkflowSpec) else spec
    problems = _schema_problems(data, path)
    stages = data.get("stages") if isinstance(data, Mapping) else None
    if isinstance(stages, list):
        problems += _graph_problems(stages, path)
    return problems


def topological_order(spec: WorkflowSpec | Mapping[str, Any]) -> list[str]:
    """Stage names in an order that respects dependsOn; ties keep declaration order, so the
    order is deterministic. Raises WorkflowInvalidError when the workflow is invalid."""
    problems = validate_workflow(spec)
    if problems:
        raise WorkflowInvalidError(problems)
    model = spec if isinstance(spec, WorkflowSpec) else WorkflowSpec.model_validate(spec)
    index = {stage.name: i for i, stage in enumerate(model.stages)}
    waiting_on = {stage.name: len(stage.depends_on) for stage in model.stages}
    dependents: dict[str, list[str]] = {stage.name: [] for stage in model.stages}
    for stage in model.stages:
        for dependency in stage.depends_on:
            dependents[dependency].append(stage.name)
    ready = [(index[name], name) for name, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            waiting_on[dependent] -= 1
            if waiting_on[dependent] == 0:
                heapq.heappush(ready, (index[dependent], dependent))
    return order


def _path(root: str, loc: Sequence[int | str]) -> str:
    text = root
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _schema_problems(data: Any, root: str) -> list[Problem]:
    try:
        WorkflowSpec.model_validate(data, context={"skip_rules": _GRAPH_RULES})
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = item["loc"]
            # Unknown agents are reported by the graph check, with a suggestion.
            if loc and loc[-1] == "agent" and item["type"] == "literal_error":
                continue
            message = item["msg"].removeprefix("Value error, ")
            problems.append(Problem(path=_path(root, loc), reason="Invalid", message=message))
        return problems
    return []


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _graph_problems(stages: list[Any], root: str) -> list[Problem]:
    problems: list[Problem] = []
    first_index: dict[str, int] = {}
    for i, stage in enumerate(stages):
        name = stage.get("name") if isinstance(stage, Mapping) else None
        if isinstance(name, str) and name not in first_index:
            first_index[name] = i
    names = list(first_index)
    edges: dict[str, list[str]] = {name: [] for name in names}

    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping):
            continue
        name = stage.get("name")
        here = f"{root}.stages[{i}]"
        if isinstance(name, str) and first_index[name] != i:
            problems.append(
                Problem(
                    path=f"{here}.name",
                    reason="DuplicateName",
                    message=f"stage name '{name}' is already used by stages[{first_index[name]}]; "
                    "stage names must be unique",
                )
            )
        agent = stage.get("agent")
        if isinstance(agent, str) and agent not in AGENTS:
            problems.append(
                Problem(
                    path=f"{here}.agent",
                    reason="UnknownAgent",
                    message=f"unknown agent '{agent}'{_suggest(agent, AGENTS)}; agents are "
                    + ", ".join(AGENTS),
                )
            )
        depends_on = stage.get("dependsOn") or []
        if not isinstance(depends_on, list):
            continue
        for k, dependency in enumerate(depends_on):
            if not isinstance(dependency, str):
                continue
            if dependency == name:
                problems.append(
                    Problem(
                        path=f"{here}.dependsOn[{k}]",
                        reason="SelfDependency",
                        message=f"stage '{name}' depends on itself",
                    )
                )
            elif dependency not in first_index:
                problems.append(
                    Problem(
                        path=f"{here}.dependsOn[{k}]",
                        reason="UnknownDependency",
                        message=f"stage '{name}' depends on '{dependency}', which is not a stage "
                        f"of this workflow{_suggest(dependency, names)}",
                    )
                )
            elif isinstance(name, str) and first_index[name] == i:
                edges[name].append(dependency)

    problems += _cycle_problems(edges, first_index, root)
    return problems


def _cycle_problems(
    edges: Mapping[str, list[str]], first_index: Mapping[str, int], root: str
) -> list[Problem]:
    """One problem per cycle (strongly connected component), and one per stage that can never
    run because it depends, directly or not, on a cycle."""
    components = _strongly_connected(edges)
    in_cycle: dict[str, list[str]] = {}
    problems = []
    for component in components:
        if len(component) < 2:
            continue  # self-dependencies are reported on their own
        start = min(component, key=lambda n: first_index[n])
        cycle = _cycle_through(start, set(component), edges)
        for name in component:
            in_cycle[name] = cycle
        problems.append(
            Problem(
                path=f"{root}.stages[{first_index[start]}].dependsOn",
                reason="Cycle",
                message="dependsOn forms a cycle: "
                + " -> ".join(cycle)
                + " (each stage depends on the next); remove one of these dependencies",
            )
        )
    if not in_cycle:
        return problems
    # A stage downstream of a cycle waits forever.
    for name in sorted(edges, key=lambda n: first_index[n]):
        if name in in_cycle:
            continue
        blocker = _reaches(name, in_cycle, edges)
        if blocker is not None:
            problems.append(
                Problem(
                    path=f"{root}.stages[{first_index[name]}].dependsOn",
                    reason="Unreachable",
                    message=f"stage '{name}' can never run: it depends on '{blocker}', which is "
                    "in a cycle",
                )
            )
    return problems


def _strongly_connected(edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (a recursion limit is no place to fail on user input)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, next_edge = work.pop()
            if next_edge == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            successors = edges[node]
            if next_edge < len(successors):
                work.append((node, next_edge + 1))
                successor = successors[next_edge]
                if successor not in index:
                    work.append((successor, 0))
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components


def _cycle_through(start: str, members: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """A concrete cycle start -> ... -> start inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        following = []
        for node in frontier:
            for successor in edges[node]:
                if successor == start:
                    chain = [node]
                    while chain[-1] != start:
                        chain.append(previous[chain[-1]])
                    return [*reversed(chain), start]
                if successor in members and successor not in seen:
                    seen.add(successor)
                    previous[successor] = node
                    following.append(successor)
        frontier = following
    return [start, start]  # unreachable for a component of two or more


def _reaches(
    name: str, targets: Mapping[str, list[str]], edges: Mapping[str, list[str]]
) -> str | None:
    """The first stage in `targets` that `name` depends on, directly or not."""
    seen = {name}
    frontier = [name]
    while frontier:
        following = []
        for node in frontier:
            for dependency in edges[node]:
                if dependency in targets:
                    return dependency
                if dependency not in seen:
                    seen.add(dependency)
                    following.append(dependency)
        frontier = following
    return None
