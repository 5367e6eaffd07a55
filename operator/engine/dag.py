"""Workflow DAG relations the planner needs (ordering and validation live in bakeline.api)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


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
