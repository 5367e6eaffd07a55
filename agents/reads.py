"""Which roles of its input checkpoint each agent reads, for stage pods that restore only that.

Kept apart from bakeline.agents.contract, and free of imports: `bakeline stage` reads it in
every stage pod before the agent starts, and the contract's pydantic models cost 50 ms of CPU
to import there.
"""

from __future__ import annotations

# The agents that never open their input's original model (InputCheckpoint.original): on
# ConfigMap lanes the stage wrapper restores their input without it and their output carries it
# by reference (bakeline.checkpoints.configmap). The other built-in agents, InferenceAccelerator
# and PerformanceProfiler, time against it; an agent not named here gets every file.
ORIGINAL_UNREAD = frozenset(
    {
        "GraphOptimizer",
        "ModelOptimizer",
        "MemoryOptimizer",
        "HardwareAdapter",
        "QualityValidator",
        "DeploymentPreparer",
    }
)
ROLE_ORIGINAL = "original"


def roles_left_in_store(agent: str | None) -> frozenset[str]:
    """The checkpoint file roles `agent` (CamelCase or kebab-case) never reads."""
    name = (agent or "").replace("-", "").lower()
    unread = any(name == known.lower() for known in ORIGINAL_UNREAD)
    return frozenset({ROLE_ORIGINAL}) if unread else frozenset()
