"""QualityValidator: compare against the reference outputs on held-out evaluation data; gate.

The evaluation split is never used for calibration or for choosing among candidates, so this is
the honest number. Metrics: cosine (mean; `minThreshold` bounds the worst sample), accuracy
(labels needed; default threshold: the reference model's accuracy minus one point),
max-abs-error. The gate comes from params, else job.quality, else the metric's default; a miss
exits 3 with the reason.

Params: metric, threshold, minThreshold (all optional).
"""

from __future__ import annotations

from pydantic import Field

from bakeline.agents.contract import GateFailed, Outcome, QualityMetric, StageParams
from bakeline.agents.runtimes import open_runner
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    lineage_metric,
    quality_gate,
    runtime_config,
    score,
    write_report,
)
from bakeline.contract import QUALITY_VERIFIED, SYNTHETIC_INPUTS


class QualityParams(StageParams):
    metric: QualityMetric | None = None
    threshold: float | None = None
    min_threshold: float | None = Field(default=None, alias="minThreshold")


@register
class QualityValidator(Agent[QualityParams]):
    name = "QualityValidator"
    params_model = QualityParams
    metrics = (
        "cosineMean",
        "cosineMin",
        "accuracy",
        "maxAbsError",
        "threshold",
        QUALITY_VERIFIED,
    )

    def run(self, ctx: StageContext, params: QualityParams) -> StageResult:
        source = ctx.open_input()
        gate = quality_gate(source, ctx.job, params.metric, params.threshold, params.min_threshold)
        runner = open_runner(
            source.artifact, source.format, source.input_names, runtime_config(source)
        )
        measured = score(runner, source, "evaluation")
        ok, why = gate.check(measured)
        synthetic = bool(lineage_metric(source, SYNTHETIC_INPUTS))
        metrics = {
            **measured,
            "threshold": gate.threshold,
            "passed": float(ok),
            QUALITY_VERIFIED: float(not synthetic),
        }
        if gate.min_threshold is not None:
            metrics["minThreshold"] = gate.min_threshold
        where = (
            f"on {int(measured['samples'])} synthetic evaluation inputs: quality unverified "
            "(the job gave no data of its own)"
            if synthetic
            else f"on {int(measured['samples'])} held-out evaluation samples"
        )
        if not ok:
            raise GateFailed(f"quality gate failed ({gate.metric}): {why} {where}", metrics)
        out = ctx.output(source)
        out.carry_forward(keep_model=True)
        out.add(source.manifest.artifact, "model")
        write_report(
            out,
            ctx.stage,
            {
                "gate": {
                    "metric": gate.metric,
                    "threshold": gate.threshold,
                    "minThreshold": gate.min_threshold,
                },
                "metrics": measured,
            },
        )
        manifest = out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=source.manifest.artifact,
            format=source.format,
            params=params.model_dump(by_alias=True, exclude_none=True),
            metrics=metrics,
            started_at=ctx.started_at,
        )
        return StageResult(
            Outcome(f"quality gate passed ({gate.metric}): {why} {where}", metrics), manifest
        )
