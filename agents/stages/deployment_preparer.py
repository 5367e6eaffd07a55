"""DeploymentPreparer: package the artifact with its manifest, runtime config and model card.

The package checkpoint holds the model, the tokenizer where there is one, `runtime.json` (how to
run it: backend, provider, threads, graph level), the stages' reports and a README model card;
its manifest carries the sha256 of every file, format, input/output signature, the lineage of
stages and the headline metrics. Calibration and evaluation data stay in earlier checkpoints.
Before writing, the packaged model is loaded from the package and must reproduce the reference
on a batch of evaluation data (a smoke test of the package, not a second quality gate).

Params: includeReports (true).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from bakeline.agents.checkpoint_io import ROLE_REPORT, TOKENIZER, InputCheckpoint
from bakeline.agents.contract import GateFailed, Outcome, StageParams
from bakeline.agents.quality import compare
from bakeline.agents.runtimes import open_runner
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import data_split, runtime_config

RUNTIME = "runtime.json"
README = "README.md"
SMOKE_SAMPLES = 16
SMOKE_COSINE = 0.95  # a broken package gives garbage; quality proper was gated earlier

# Headline metrics: (agent, metric in its lineage entry) -> name in the package manifest.
HEADLINES = {
    ("BakingCoordinator", "parameters"): "parameters",
    ("BakingCoordinator", "sizeBytes"): "originalSizeBytes",
    ("BakingCoordinator", "referenceAccuracy"): "referenceAccuracy",
    ("QualityValidator", "cosineMean"): "cosineMean",
    ("QualityValidator", "cosineMin"): "cosineMin",
    ("QualityValidator", "accuracy"): "accuracy",
    ("QualityValidator", "maxAbsError"): "maxAbsError",
    ("MemoryOptimizer", "peakMemoryMB"): "peakMemoryMB",
}


class DeploymentParams(StageParams):
    include_reports: bool = Field(default=True, alias="includeReports")


def headline_metrics(source: InputCheckpoint, size_bytes: float) -> dict[str, float]:
    metrics: dict[str, float] = {"sizeBytes": size_bytes}
    for entry in source.manifest.lineage:
        for (agent, key), name in HEADLINES.items():
            if entry.agent == agent and key in entry.metrics:
                metrics[name] = entry.metrics[key]
        if entry.agent == "PerformanceProfiler":
            metrics.update(
                {
                    k: v
                    for k, v in entry.metrics.items()
                    if k.endswith((".speedup", ".p50Ms", ".p95Ms"))
                }
            )
    if "originalSizeBytes" in metrics:
        metrics["sizeRatio"] = size_bytes / metrics["originalSizeBytes"]
    return metrics


def model_card(
    source: InputCheckpoint, metrics: dict[str, float], runtime: dict[str, Any], artifact: str
) -> str:
    m = source.manifest
    facts = m.attributes.get("facts", {})
    lines = [
        f"# {m.model_name} (baked by Bakeline)",
        "",
        f"Task: {m.task or 'unspecified'}. Source: {facts.get('source', 'unknown')}.",
        f"Artifact: `{artifact}` ({m.format}, {metrics['sizeBytes'] / 1e6:.2f} MB, sha256 in "
        "`manifest.json`).",
        "",
        "## Inputs and outputs",
        "",
        *[f"- input `{t.name}`: {t.dtype} {t.shape} {t.description}".rstrip() for t in m.inputs],
        *[f"- output `{t.name}`: {t.dtype} {t.shape} {t.description}".rstrip() for t in m.outputs],
        "",
        "## How to run",
        "",
        "```python",
        "import json, onnxruntime as ort",
        "cfg = json.load(open('runtime.json'))",
        "so = ort.SessionOptions(); so.intra_op_num_threads = cfg['intraOpThreads']",
        f"session = ort.InferenceSession('{artifact}', so, providers=[cfg['executionProvider']])",
        "```",
        "",
        f"Runtime: `{json.dumps(runtime)}`.",
    ]
    if runtime.get("threadsByBatchSize"):
        lines.append(
            "Batches of at most N rows run fastest on the threads `threadsByBatchSize` gives for "
            "N (larger ones on `intraOpThreads`): keep one session per thread count."
        )
    if (source.directory / TOKENIZER).exists():
        lines.append("Tokenize with `tokenizer.json` (tokenizers library), padding to the longest.")
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    lines += ["", "## Lineage", "", "| stage | agent | output sha256 |", "|---|---|---|"]
    lines += [f"| {e.stage} | {e.agent} | `{e.output_sha256[:16]}…` |" for e in m.lineage]
    lines += [
        "",
        "## Limitations",
        "",
        "Quality was measured against the original model's outputs on the held-out evaluation",
        "data listed in the lineage, not on the task itself. Timings are from the machine that",
        "baked it; an int8 graph optimised for one CPU may run slower on another.",
        "",
    ]
    return "\n".join(lines)


@register
class DeploymentPreparer(Agent[DeploymentParams]):
    name = "DeploymentPreparer"
    params_model = DeploymentParams
    writes = (RUNTIME, README)
    metrics = ("sizeBytes", "files")

    def run(self, ctx: StageContext, params: DeploymentParams) -> StageResult:
        source = ctx.open_input()
        runtime = runtime_config(source)
        out = ctx.output(source)
        artifact = source.manifest.artifact
        out.add_copy(source.artifact, artifact, "model")
        roles = ("tokenizer", ROLE_REPORT) if params.include_reports else ("tokenizer",)
        out.carry_forward(roles=roles)
        out.path(RUNTIME).write_text(json.dumps(runtime.dump(), indent=2))
        out.add(RUNTIME, "runtime")

        # Smoke test from the package itself.
        probe = data_split(source, "evaluation", SMOKE_SAMPLES)
        packaged = open_runner(out.directory / artifact, source.format, source.input_names, runtime)
        check = compare(
            packaged(probe.batch(0, len(probe))),
            source.reference("evaluation")[: len(probe)],
            probe.labels,
        )
        if check["cosineMean"] < SMOKE_COSINE:
            raise GateFailed(
                f"the packaged model does not reproduce the reference "
                f"(cosine {check['cosineMean']:.4f})"
            )

        size_bytes = float(source.artifact.stat().st_size)
        metrics = headline_metrics(source, size_bytes)
        out.path(README).write_text(model_card(source, metrics, runtime.dump(), artifact))
        out.add(README, "report")
        metrics["files"] = float(len(list(out.directory.rglob("*"))))
        manifest = out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=artifact,
            format=source.format,
            params=params.model_dump(by_alias=True),
            metrics=metrics,
            started_at=ctx.started_at,
            attributes={"package": {"runtime": RUNTIME, "readme": README}},
        )
        message = (
            f"packaged {manifest.model_name}: {artifact} ({size_bytes / 1e6:.2f} MB, "
            f"{len(manifest.files)} files, {len(manifest.lineage)} stages of lineage)"
        )
        return StageResult(Outcome(message, metrics), manifest)
