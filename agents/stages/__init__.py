"""The nine agents; importing this package registers them all."""

from bakeline.agents.stages.base import REGISTRY, Agent, StageContext, StageResult, resolve
from bakeline.agents.stages.coordinator import BakingCoordinator
from bakeline.agents.stages.deployment_preparer import DeploymentPreparer
from bakeline.agents.stages.graph_optimizer import GraphOptimizer
from bakeline.agents.stages.hardware_adapter import HardwareAdapter
from bakeline.agents.stages.inference_accelerator import InferenceAccelerator
from bakeline.agents.stages.memory_optimizer import MemoryOptimizer
from bakeline.agents.stages.model_optimizer import ModelOptimizer
from bakeline.agents.stages.performance_profiler import PerformanceProfiler
from bakeline.agents.stages.quality_validator import QualityValidator

# The default order of the nine stages (the operator's built-in workflow may use its own).
PIPELINE = (
    BakingCoordinator,
    GraphOptimizer,
    ModelOptimizer,
    MemoryOptimizer,
    HardwareAdapter,
    InferenceAccelerator,
    QualityValidator,
    PerformanceProfiler,
    DeploymentPreparer,
)

__all__ = [
    "PIPELINE",
    "REGISTRY",
    "Agent",
    "BakingCoordinator",
    "DeploymentPreparer",
    "GraphOptimizer",
    "HardwareAdapter",
    "InferenceAccelerator",
    "MemoryOptimizer",
    "ModelOptimizer",
    "PerformanceProfiler",
    "QualityValidator",
    "StageContext",
    "StageResult",
    "resolve",
]
