"""QualityValidator: compare against the reference outputs on held-out evaluation data; gate.

The evaluation split is never used for calibration or for choosing among candidates, so this is
the honest number. Metrics: cosine (mean; `minThreshold` bounds the worst sample), accuracy
(labels needed; default threshold: the reference model's accuracy minus one point),
max-abs-error. The gate comes from params, else job.quality, else the metric's default; a miss
exits 3 with the reason.

A model with several outputs (a tuple, list or dict) is gated on every output (cosine and max abs
error; accuracy is the primary output's), and a miss names the output. The unsuffixed metrics
are the primary (first) output's; each output's mean cosine and max abs error are reported as
`cosineMean.<output>` / `maxAbsError.<output>` (the first eight outputs: the termination message
has 4 KiB), all of them in the stage's report.

Params: metric, threshold, minThreshold (all optional).
"""

from __future__ import annotations

from pydantic import Field

from bakeline.agents.contract import GateFailed, Outcome, QualityMetric, StageParams
from bakeline.agents.quality import by_output, named_metrics
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import (
    lineage_metric,
    open_model,
    quality_gate,
    runtime_config,
    score,
    write_report,
)
from bakeline.contract import QUALITY_THRESHOLD, QUALITY_VERIFIED, SYNTHETIC_INPUTS


class QualityParams(StageParams):
    metric: QualityMetric | None = None
    threshold: float | None = None
    min_threshold: float | None = Field(default=None, alias="minThreshold")


@register
class QualityValidator(Agent[QualityParams]):
    name = "QualityValidator"
    params_model = QualityParams

    def run(self, ctx: StageContext, params: QualityParams) -> StageResult:
        source = ctx.open_input()
        gate = quality_gate(source, ctx.job, params.metric, params.threshold, params.min_threshold)
        runner = open_model(source, config=runtime_config(source))
        measured = score(runner, source, "evaluation")
        ok, why = gate.check(measured)
        synthetic = bool(lineage_metric(source, SYNTHETIC_INPUTS))
        metrics = {
            **{k: v for k, v in measured.items() if "." not in k},  # the primary output's
            QUALITY_THRESHOLD: gate.threshold,
            "passed": float(ok),
            QUALITY_VERIFIED: float(not synthetic),
        }
        if gate.min_threshold is not None:
            metrics["minThreshold"] = gate.min_threshold
        # Last: the first to go when the termination message is cut.
        metrics.update(named_metrics(measured, ("cosineMean", "maxAbsError")))
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
                "outputs": by_output(measured) if len(by_output(measured)) > 1 else {},
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
