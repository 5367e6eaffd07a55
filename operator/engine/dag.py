"""Workflow DAG: topological order and the relations the planner needs."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence


class WorkflowError(ValueError):
    """The workflow cannot run: a cycle, an unknown or duplicate stage."""


def topological_order(depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    """Stages in an order where every stage follows its dependencies.

    Ties keep the declaration order (the mapping's), so the same workflow always gives the same
    order. Raises WorkflowError naming the problem.
    """
    position = {name: index for index, name in enumerate(depends_on)}
    for name, deps in depends_on.items():
        for dep in deps:
            if dep not in position:
                raise WorkflowError(f"stage {name!r} depends on unknown stage {dep!r}")
            if dep == name:
                raise WorkflowError(f"stage {name!r} depends on itself")
    waiting = {name: len(set(deps)) for name, deps in depends_on.items()}
    dependents: dict[str, list[str]] = {name: [] for name in depends_on}
    for name, deps in depends_on.items():
        for dep in set(deps):
            dependents[dep].append(name)
    ready = [position[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    names = list(depends_on)
    order: list[str] = []
    while ready:
        name = names[heapq.heappop(ready)]
        order.append(name)
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) != len(names):
        stuck = sorted((n for n in names if n not in order), key=position.__getitem__)
        raise WorkflowError(f"the workflow has a dependency cycle through {', '.join(stuck)}")
    return order


def ancestors(depends_on: Mapping[str, Sequence[str]], stage: str) -> set[str]:
    """Every stage `stage` depends on, directly or not."""
    seen: set[str] = set()
    todo = list(depends_on[stage])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(depends_on[name])
    return seen


def descendants(depends_on: Mapping[str, Sequence[str]], stages: Iterable[str]) -> set[str]:
    """Every stage that depends, directly or not, on one of `stages`."""
    roots = set(stages)
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, deps in depends_on.items():
            if name not in found and any(d in roots or d in found for d in deps):
                found.add(name)
                changed = True
    return found
