"""The built-in default workflow: what a BakingJob without workflowRef runs.

`examples/workflow-default.yaml` is generated from it (`python -m bakeline.api.crdgen`), so a
platform team can apply it, copy it and change it.
"""

from __future__ import annotations

from bakeline.api.common import ObjectMeta
from bakeline.api.workflow import QUALITY_METRIC, Gate, RetryPolicy, Stage, Workflow, WorkflowSpec

DEFAULT_WORKFLOW_NAME = "default"


def default_workflow() -> Workflow:
    """The nine agents in a chain. Optional optimizations skip on failure; quantization falls back
    to gentler settings; a failed quality gate rolls back to the nearest stage with a fallback left
    (memory first, then quantize), so the job ends with the fastest model that holds quality."""
    stages = [
        Stage(
            name="import",
            agent="BakingCoordinator",
            params={"calibrationSamples": 64},
            timeout_seconds=600,
            on_failure="Retry",
        ),
        # torch.export cannot capture every model; the rest of the chain works on eager models.
        # Transformer fusions (attention, skip LayerNorm, bias GELU) and padding removal (per-token
        # layers on the real tokens only) are kept only where they measure faster on this node.
        Stage(
            name="graph",
            agent="GraphOptimizer",
            params={"level": "basic", "fusions": "auto", "removePadding": "auto"},
            depends_on=["import"],
            timeout_seconds=900,
            on_failure="Skip",
        ),
        # Per-channel scales are what hold quality for int8 (baking notes: ~0.99 cosine vs
        # ~0.965 per tensor); activations with outlier channels smoothed into the weights and
        # 7-bit weights, each where it scores better (CPUs without VNNI saturate 8-bit ones);
        # the layers that lose the most, up to 12% of the weights, stay float or
        # blockwise int8, whichever is faster here; the fallback keeps as many as a stricter
        # target needs, then no int8 at all.
        Stage(
            name="quantize",
            agent="ModelOptimizer",
            params={"scheme": "int8-per-channel", "keepFloat": "auto", "sensitive": "auto"},
            depends_on=["graph"],
            timeout_seconds=1800,
            on_failure="Fallback",
            fallbacks=[
                {
                    "keepFloat": "auto",
                    "targetCosineMean": 0.999,
                    "maxFloatLayers": 24,
                    "maxFloatShare": 1.0,
                },
                {"scheme": "none"},
            ],
        ),
        # 4-bit embedding tables (a third of int8's bytes once the rest is int8) where the job's
        # quality gate holds on calibration data; else int8 per row, else float.
        Stage(
            name="memory",
            agent="MemoryOptimizer",
            params={"embeddings": "int4"},
            depends_on=["quantize"],
            timeout_seconds=900,
            on_failure="Fallback",
            fallbacks=[{"embeddings": "int8"}, {"embeddings": "none"}],
        ),
        # Cached like the rest: the cache key holds the job's target and quality, and for the
        # hardware-dependent agents the machine (`bakeline run`); the operator never reuses
        # those across pods, which may land on other nodes.
        Stage(
            name="hardware",
            agent="HardwareAdapter",
            depends_on=["memory"],
            timeout_seconds=300,
            on_failure="Retry",
        ),
        Stage(
            name="accelerate",
            agent="InferenceAccelerator",
            params={"candidates": ["onnxruntime", "openvino", "torch-eager", "torch-compile"]},
            depends_on=["hardware"],
            timeout_seconds=1800,
            on_failure="Skip",
        ),
        # One retry covers a lost pod; a failed gate rolls back.
        Stage(
            name="validate",
            agent="QualityValidator",
            depends_on=["accelerate"],
            timeout_seconds=900,
            retry=RetryPolicy(limit=1),
            on_failure="Rollback",
            gate=Gate(metric=QUALITY_METRIC),
        ),
        Stage(
            name="profile",
            agent="PerformanceProfiler",
            params={"runs": 50},
            depends_on=["validate"],
            timeout_seconds=1200,
            on_failure="Retry",
        ),
        Stage(
            name="package",
            agent="DeploymentPreparer",
            depends_on=["profile"],
            timeout_seconds=600,
            on_failure="Retry",
        ),
    ]
    return Workflow(
        metadata=ObjectMeta(name=DEFAULT_WORKFLOW_NAME),
        spec=WorkflowSpec(stages=stages, max_parallel_stages=1, fail_fast=True),
    )
