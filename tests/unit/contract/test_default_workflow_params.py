"""The built-in workflow only passes params the agents accept: a contract between two layers
that nothing else checks until a job fails at that stage with exit 2."""

from __future__ import annotations

import pytest

from bakeline.agents.stages import REGISTRY
from bakeline.api.defaults import default_workflow
from bakeline.api.workflow import Stage

STAGES = default_workflow().spec.stages


@pytest.mark.parametrize("stage", STAGES, ids=[s.name for s in STAGES])
def test_every_params_set_of_the_default_workflow_is_valid_for_its_agent(stage: Stage) -> None:
    model = REGISTRY[stage.agent].params_model
    for overrides in [{}, *stage.fallbacks]:
        model.model_validate({**stage.params, **overrides})  # a fallback merges over params


def test_every_agent_of_the_workflow_is_registered() -> None:
    assert {s.agent for s in STAGES} == set(REGISTRY)
