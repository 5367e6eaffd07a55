"""DeploymentPreparer: package the artifact with its manifest, runtime config and model card.

The package checkpoint holds the model, the tokenizer where there is one, `runtime.json` (how to
run it: backend, provider, threads, graph level), `serve.py` (a loader that applies all of
runtime.json: `agents/serving.py`), the stages' reports and a README model card;
its manifest carries the sha256 of every file, format, input/output signature, the lineage of
stages and the headline metrics. Calibration and evaluation data stay in earlier checkpoints.
Before writing, the packaged model is loaded from the package and must reproduce the reference
on a batch of evaluation data, every output of it (a smoke test of the package, not a second
quality gate). The model card lists every output of the model, in order, with its true shape
(dynamic dims by name: `batch`, the sequence's), and the validator's per-output quality.

Params: includeReports (true).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from bakeline.agents import AGENT_VERSION, serving
from bakeline.agents.checkpoint_io import (
    ROLE_PREPROCESSOR,
    ROLE_REPORT,
    ROLE_TOKENIZER,
    TOKEN_OUTPUTS,
    TOKENIZER,
    InputCheckpoint,
)
from bakeline.agents.contract import GateFailed, Outcome, StageParams
from bakeline.agents.huggingface import AUDIO_INPUT
from bakeline.agents.quality import worst, worst_output
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import open_model, runtime_config, score
from bakeline.agents.vetting import HF_PREPROCESSOR
from bakeline.contract import QUALITY_VERIFIED, SYNTHETIC_INPUTS

RUNTIME = "runtime.json"
README = "README.md"
LOADER = "serve.py"  # agents/serving.py: runtime.json applied in full, onnxruntime + numpy only
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
    # What the quality figures were measured on (see `evaluation_data`).
    ("BakingCoordinator", SYNTHETIC_INPUTS): SYNTHETIC_INPUTS,
    ("BakingCoordinator", "calibrationSamples"): "calibrationSamples",
    ("BakingCoordinator", "evaluationSamples"): "evaluationSamples",
    ("QualityValidator", QUALITY_VERIFIED): QUALITY_VERIFIED,
}


PER_OUTPUT_HEADLINES = ("cosineMean.", "maxAbsError.")


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
        if entry.agent == "QualityValidator":  # each output's, where the model has several
            metrics.update(
                {k: v for k, v in entry.metrics.items() if k.startswith(PER_OUTPUT_HEADLINES)}
            )
    if "originalSizeBytes" in metrics:
        metrics["sizeRatio"] = size_bytes / metrics["originalSizeBytes"]
    return metrics


def synthetic_inputs(source: InputCheckpoint) -> bool | None:
    """Whether the quality figures were measured on made-up inputs: the import stage said it
    made them up, or the validator said its quality is unverified; None if neither said."""
    said = [
        bool(e.metrics[SYNTHETIC_INPUTS]) if SYNTHETIC_INPUTS in e.metrics else None
        for e in source.manifest.lineage
    ] + [
        e.metrics[QUALITY_VERIFIED] == 0.0 if QUALITY_VERIFIED in e.metrics else None
        for e in source.manifest.lineage
    ]
    known = [x for x in said if x is not None]
    return any(known) if known else None


def evaluation_data(source: InputCheckpoint) -> list[str]:
    """The model card's words on the data the quality figures were measured on: synthetic
    inputs (unverified), the job's dataset or the builtin model's evaluation split, with the
    split sizes the import stage reported. Empty when the lineage does not say."""
    synthetic = synthetic_inputs(source)
    if synthetic is None:
        return []
    imported = next((e for e in source.manifest.lineage if SYNTHETIC_INPUTS in e.metrics), None)
    found = imported.metrics if imported is not None else {}
    sizes = {k: int(found[k]) for k in ("calibrationSamples", "evaluationSamples") if k in found}
    if synthetic:
        count = f"{sizes['evaluationSamples']} " if "evaluationSamples" in sizes else ""
        return [
            "**Quality unverified: evaluated on synthetic inputs.** The job gave no data of its",
            f"own, so the quality figures below compare outputs on {count}made-up inputs",
            "generated from the model's input signature, not on data like the model's. They say",
            "the baked model computes much the same function on those inputs; they do not say",
            "it keeps its quality on real ones. Bake again with data of your own",
            "(`spec.quality.dataset`) to verify it.",
        ]
    # The job's data: quality.dataset (the import stage records it among its facts) or the
    # import stage's own `dataset` param.
    fact = source.manifest.attributes.get("facts", {}).get("dataset")
    dataset = fact or (imported.params.get("dataset") if imported is not None else None)
    where = "the job's dataset" if dataset else "the builtin model's own evaluation split"
    split = []
    if "evaluationSamples" in sizes:
        split.append(f"{sizes['evaluationSamples']} held-out evaluation samples")
    if "calibrationSamples" in sizes:
        split.append(f"{sizes['calibrationSamples']} others for calibration")
    told = f": {', with '.join(split)}" if split else ""
    lines = [
        f"Quality was measured on {where}{told}. Calibration and evaluation samples never",
        "overlap.",
    ]
    if isinstance(fact, str):
        lines.append(f"Dataset: {fact}.")
    return lines


def _outputs_note(source: InputCheckpoint) -> list[str]:
    """What the card says of a model with several outputs, or token-level ones."""
    lines = []
    outputs = source.manifest.outputs
    if len(outputs) > 1:
        lines += [
            "",
            f"The model returns {len(outputs)} outputs, in this order (an ONNX artifact's output "
            "names are these). Each was checked against the original model's at every quality "
            "check, and the quality gate held for each (`cosineMean.<output>` below).",
        ]
    tokens = sorted(str(n) for n in source.manifest.attributes.get(TOKEN_OUTPUTS) or [])
    if tokens:
        named = ", ".join(f"`{name}`" for name in tokens)
        lines += [
            "",
            f"Token-level outputs ({named}) were compared on real positions only (the attention "
            "mask's ones): what they hold at padded positions is unspecified.",
        ]
    return lines


def _how_to_run(source: InputCheckpoint, runtime: dict[str, Any]) -> list[str]:
    """The snippet that runs the model as it was timed: `serve.py` applies runtime.json."""
    backend = runtime.get("backend", "onnxruntime")
    if backend not in serving.BACKENDS:
        return [f"Runtime: `{json.dumps(runtime)}` (not ONNX Runtime: `serve.py` does not apply)."]
    feeds = ", ".join(f"'{t.name}': {t.name}" for t in source.manifest.inputs)
    first = source.manifest.outputs[0].name if source.manifest.outputs else "output"
    if backend == "openvino":
        applied = [
            f"The InferenceAccelerator timed it fastest on **OpenVINO** ({_openvino_version()}),",
            "so it needs `openvino` beside numpy (`pip install openvino`); `serve.py` runs it",
            "exactly as it was profiled: `runtime.json` applied in full (threads, threads per",
            "batch size with one compiled model per thread count, the inference precision",
            f"{runtime.get('inferencePrecision') or 'of the CPU'}). The file is plain ONNX:",
            "ONNX Runtime runs it too, slower on the node it was baked on.",
        ]
    else:
        applied = [
            "`serve.py` (ONNX Runtime and numpy only) runs it exactly as it was profiled:",
            "`runtime.json` applied in full (graph level, disabled optimizers, threads and",
            "threads per batch size with one session per thread count, spinning between",
            "operators and not after a run, execution provider).",
        ]
    return [
        *applied,
        "",
        "```python",
        "from serve import Model  # run from this folder, or put it on sys.path",
        "",
        "model = Model('.')",
        f"outputs = model.run({{{feeds}}})  # numpy arrays, batch first",
        f"print(outputs['{first}'].shape)",
        "```",
        "",
        f"Runtime: `{json.dumps(runtime)}`.",
    ]


def _openvino_version() -> str:
    from importlib.metadata import version

    return f"openvino {version('openvino')}"


def _kserve_name(model_name: str) -> str:
    """An InferenceService name (a DNS label) for the model."""
    label = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:45].strip("-")
    return label or "model"


def _serving_on_kserve(source: InputCheckpoint, runtime: dict[str, Any]) -> list[str]:
    """A KServe ServingRuntime that runs the package's own serve.py (the v2 protocol, runtime.json
    applied) and an InferenceService reading the package where spec.output delivered it."""
    if runtime.get("backend", "onnxruntime") not in serving.BACKENDS:
        return []
    name = _kserve_name(source.manifest.model_name)
    return [
        "",
        "## Serve it on KServe",
        "",
        "`serve.py` also serves the package over HTTP with KServe's v2 (Open Inference)",
        "protocol: `python serve.py PACKAGE --name NAME --port 8080`. Deliver the package with",
        "the job's `spec.output` to `s3://BUCKET/PREFIX` or `pvc://CLAIM/PATH` (KServe's storage",
        "initializer reads both into `/mnt/models`), put that URI in `storageUri`, and apply:",
        "",
        "```yaml",
        "apiVersion: serving.kserve.io/v1alpha1",
        "kind: ServingRuntime",
        "metadata:",
        "  name: bakeline-onnx",
        "spec:",
        "  supportedModelFormats:",
        "    - name: onnx",
        '      version: "1"',
        "      autoSelect: false  # chosen by name only, never for another onnx model",
        "  protocolVersions: [v2]",
        "  containers:",
        "    - name: kserve-container",
        f"      image: bakeline:{AGENT_VERSION}  # Python, ONNX Runtime, OpenVINO, numpy",
        "      command: [python, /mnt/models/serve.py, /mnt/models]",
        '      args: ["--name={{.Name}}", "--port=8080"]',
        "      ports:",
        "        - containerPort: 8080",
        "          protocol: TCP",
        "      securityContext:",
        "        runAsNonRoot: true",
        "        runAsUser: 65532",
        "        allowPrivilegeEscalation: false",
        "        readOnlyRootFilesystem: true",
        "        capabilities:",
        "          drop: [ALL]",
        "        seccompProfile:",
        "          type: RuntimeDefault",
        "---",
        "apiVersion: serving.kserve.io/v1beta1",
        "kind: InferenceService",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  predictor:",
        "    model:",
        "      runtime: bakeline-onnx",
        "      modelFormat:",
        "        name: onnx",
        "      protocolVersion: v2",
        f"      storageUri: s3://models/{name}  # the job's spec.output.uri (s3:// or pvc://)",
        "```",
        "",
        "Requests go to `/v2/models/NAME/infer` with JSON tensors (named as above, datatype",
        "and shape given). For a private bucket give the predictor a `serviceAccountName` whose",
        "Secret carries KServe's `serving.kserve.io/s3-*` annotations. An `oci://` delivery is",
        "an OCI artifact (one layer per file), not a KServe modelcar image: `oras pull` it onto",
        "a volume and serve that as `pvc://`.",
    ]


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
        *_outputs_note(source),
        "",
        "## How to run",
        "",
        *_how_to_run(source, runtime),
    ]
    if (source.directory / TOKENIZER).exists():
        lines.append("Tokenize with `tokenizer.json` (tokenizers library), padding to the longest.")
    if (source.directory / HF_PREPROCESSOR).exists():
        audio = [t.name for t in m.inputs] == [AUDIO_INPUT]
        what, loader = (
            ("clips", "AutoFeatureExtractor") if audio else ("images", "AutoImageProcessor")
        )
        lines.append(
            f"Prepare {what} with `{HF_PREPROCESSOR}` (transformers' {loader}), as the "
            "evaluation data was."
        )
    lines += _serving_on_kserve(source, runtime)
    data = evaluation_data(source)
    if data:
        lines += ["", "## Evaluation data", "", *data]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    lines += ["", "## Lineage", "", "| stage | agent | output sha256 |", "|---|---|---|"]
    lines += [f"| {e.stage} | {e.agent} | `{e.output_sha256[:16]}…` |" for e in m.lineage]
    measured = (
        [
            "Quality was measured against the original model's outputs on synthetic inputs only:",
            "the figures above are unverified, and say nothing of the task itself.",
        ]
        if synthetic_inputs(source)
        else [
            "Quality was measured against the original model's outputs on the held-out",
            "evaluation data listed in the lineage, not on the task itself.",
        ]
    )
    lines += [
        "",
        "## Limitations",
        "",
        *measured,
        "Timings are from the machine that baked it; an int8 graph optimised for one CPU may",
        "run slower on another.",
        "",
    ]
    return "\n".join(lines)


@register
class DeploymentPreparer(Agent[DeploymentParams]):
    name = "DeploymentPreparer"
    params_model = DeploymentParams
    writes = (RUNTIME, README, LOADER)

    def run(self, ctx: StageContext, params: DeploymentParams) -> StageResult:
        source = ctx.open_input()
        runtime = runtime_config(source)
        out = ctx.output(source)
        artifact = source.manifest.artifact
        out.add_copy(source.artifact, artifact, "model")
        shipped = (ROLE_TOKENIZER, ROLE_PREPROCESSOR)
        roles = (*shipped, ROLE_REPORT) if params.include_reports else shipped
        out.carry_forward(roles=roles)
        out.path(RUNTIME).write_text(json.dumps(runtime.dump(), indent=2))
        out.add(RUNTIME, "runtime")
        out.path(LOADER).write_text(Path(serving.__file__).read_text())
        out.add(LOADER, "loader")

        # Smoke test from the package itself, every output.
        packaged = open_model(source, out.directory / artifact, source.format, runtime)
        check = score(packaged, source, "evaluation", SMOKE_SAMPLES, batch_size=SMOKE_SAMPLES)
        cosine = worst(check, "cosineMean")
        if cosine < SMOKE_COSINE:
            output = worst_output(check, "cosineMean")
            raise GateFailed(
                f"the packaged model does not reproduce the reference "
                f"(cosine {cosine:.4f}{f' on output `{output}`' if output else ''})"
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
