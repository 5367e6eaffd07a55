"""The nine agents; importing this package registers them all."""

from bakeline.agents.stages.base import REGISTRY, Agent, StageContext, StageResult, resolve
from bakeline.agents.stages.coordinator import BakingCoordinator

__all__ = ["REGISTRY", "Agent", "BakingCoordinator", "StageContext", "StageResult", "resolve"]
