"""The nine baking agents, in the order the default workflow runs them."""

from __future__ import annotations

from typing import Literal, get_args

AgentName = Literal[
    "BakingCoordinator",
    "GraphOptimizer",
    "ModelOptimizer",
    "MemoryOptimizer",
    "HardwareAdapter",
    "InferenceAccelerator",
    "QualityValidator",
    "PerformanceProfiler",
    "DeploymentPreparer",
]

AGENTS: tuple[AgentName, ...] = get_args(AgentName)
