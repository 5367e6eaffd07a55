"""The nine agents; importing this package registers them all."""

from bakeline.agents.stages.base import REGISTRY, Agent, StageContext, StageResult, resolve
from bakeline.agents.stages.coordinator import BakingCoordinator
from bakeline.agents.stages.graph_optimizer import GraphOptimizer
from bakeline.agents.stages.hardware_adapter import HardwareAdapter
from bakeline.agents.stages.memory_optimizer import MemoryOptimizer
from bakeline.agents.stages.model_optimizer import ModelOptimizer

__all__ = ["REGISTRY", "Agent", "BakingCoordinator", "GraphOptimizer", "HardwareAdapter", "MemoryOptimizer", "ModelOptimizer", "StageContext", "StageResult", "resolve"]
