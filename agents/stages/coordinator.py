"""BakingCoordinator: import, validate and fingerprint the model; record reference outputs.

Sources: `builtin` (minilm-l6, digits-cnn: they bring their own calibration and held-out evaluation
data) or a local file resolved by the runner (`model.localPath`, checked against `model.sha256`):
an ExportedProgram (.pt2), a TorchScript archive or an ONNX model. The file is copied into the
checkpoint, its copy checked against the sha256 and vetted from its bytes
(`bakeline.agents.vetting`) before any loader opens it: a pickle, a `torch.save` archive, or an
archive that would make torch unpickle, load native code or evaluate a string is refused (exit 2).
A Hugging Face model directory (a folder with config.json; `model.format` huggingface or auto)
is copied, checked against its folder digest (`sha256_tree`), vetted
(`vetting.vet_huggingface_folder`), built offline by `bakeline.agents.huggingface` and exported
to `original.pt2`, from there on an ExportedProgram like any other; its tokenizer.json is the
model's tokenizer (text data) and ships in the checkpoint with the other tokenizer files.

Data: the job's `quality.dataset`, as the driver resolved it (a `file://` address, see
`bakeline.agents.datasets`: safetensors, npz or JSON lines, read as data only), split into
calibration (every third sample) and evaluation (the rest); `syntheticInputs` is then 0, for a
builtin too (its own data is replaced). Without one, a builtin brings its own data and a user
model gets synthetic inputs shaped as real ones (`bakeline.agents.synthetic`), with
`syntheticInputs` 1.

Params:
  calibrationSamples / evaluationSamples (int): sizes of synthetic data for user models.
  inputShapes ({input: [dims without batch]}): for user models whose shapes are not recorded;
    the job's spec.model.inputShapes, when set, wins.
  inputRoles ({input: tokens|mask|segments|values}): what synthetic data each input gets,
    where inferring it from the graph and the names would guess wrong; the input whose role is
    mask is the attention mask of the job's data too (batches trimmed, quality on real
    positions, padding removal), whatever its name.
  dataset (path): a dataset file as quality.dataset takes it, for a custom Workflow; the job's
    quality.dataset, when set, wins.
  seed (int): synthetic data seed.

Writes checkpoint 0: the model (`original.pt2|.ts|.onnx`), calibration.safetensors,
evaluation.safetensors, reference.safetensors (outputs of the imported model on both) and the
tokenizer where the model has one.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from pydantic import Field

from bakeline.agents import huggingface
from bakeline.agents.archives import MediaReading
from bakeline.agents.audio import AudioReading
from bakeline.agents.builtins import BUILTINS, BuiltinModel
from bakeline.agents.checkpoint_io import (
    CALIBRATION,
    EVALUATION,
    REFERENCE,
    ROLE_PREPROCESSOR,
    ROLE_TOKENIZER,
    TOKEN_OUTPUTS,
    artifact_name,
    reference_arrays,
)
from bakeline.agents.contract import InvalidInput, Outcome, StageParams
from bakeline.agents.data import MASK, Dataset, Feeds, save_arrays
from bakeline.agents.datasets import conform, read_dataset, split
from bakeline.agents.images import ImageReading
from bakeline.agents.logs import log
from bakeline.agents.onnx_tools import _dynamic_shapes
from bakeline.agents.runtimes import (
    Outputs,
    OutputsRunner,
    load_exported_program,
    load_torch_module,
    open_outputs,
    run_outputs,
    torch_outputs,
    torch_runner,
)
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.synthetic import (
    ModelHints,
    Role,
    dimension_sizes,
    infer_roles,
    mask_input,
    onnx_hints,
    program_hints,
    synthesize,
)
from bakeline.agents.timing import Stopwatch
from bakeline.agents.vetting import (
    HF_PREPROCESSOR,
    HF_TEXT_FILES,
    HF_TOKENIZER_FILES,
    VettedFolder,
    vet_huggingface_folder,
    vet_model_file,
)
from bakeline.checkpoints.manifest import (
    ArtifactFormat,
    TensorSpec,
    sha256_file,
    sha256_tree,
    tree_files,
)
from bakeline.contract import REFERENCE_ACCURACY, SYNTHETIC_INPUTS

# A Hugging Face folder's files shipped with the model: role tokenizer, and role preprocessor
# (how an image or audio model's files become its input).
TOKENIZER_FILES = frozenset(HF_TOKENIZER_FILES + HF_TEXT_FILES)
SHIPPED_FILES = {
    **dict.fromkeys(TOKENIZER_FILES, ROLE_TOKENIZER),
    HF_PREPROCESSOR: ROLE_PREPROCESSOR,
}


class CoordinatorParams(StageParams):
    calibration_samples: int = Field(default=128, alias="calibrationSamples", ge=1, le=100_000)
    evaluation_samples: int = Field(default=256, alias="evaluationSamples", ge=1, le=100_000)
    input_shapes: dict[str, list[int]] | None = Field(default=None, alias="inputShapes")
    input_roles: dict[str, Role] | None = Field(default=None, alias="inputRoles")
    dataset: str | None = None
    seed: int = 0


def weights_fingerprint(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of the weights: stable across file formats."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _torch_weights(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _check_outputs(outputs: Outputs, what: str) -> None:
    for name, value in outputs.items():
        if not np.isfinite(value).all():
            output = f" (output {name!r})" if len(outputs) > 1 else ""
            raise InvalidInput(f"the model produces non-finite outputs on {what}{output}")


def token_outputs(runner: OutputsRunner, feeds: Feeds, mask: str | None = MASK) -> list[str]:
    """The outputs whose second axis is the attention mask's sequence ([batch, sequence, ...]):
    run on `feeds` and on them one position wider (or narrower), padded, those that follow."""
    if mask is None or mask not in feeds or feeds[mask].ndim != 2:
        return []
    width = int(feeds[mask].shape[1])
    base = runner(feeds)
    for other in (width + 1, width - 1):
        if other < 1:
            continue
        changed = {
            name: (
                np.pad(value, [(0, 0), (0, 1)])[:, :other]
                if value.ndim == 2 and value.shape[1] == width
                else value
            )
            for name, value in feeds.items()
        }
        try:
            found = runner({k: np.ascontiguousarray(v) for k, v in changed.items()})
        except Exception:  # noqa: S112 - a fixed sequence length: try the other way
            continue
        return [
            name
            for name, value in base.items()
            if value.ndim >= 2
            and value.shape[1] == width
            and name in found
            and found[name].ndim == value.ndim
            and found[name].shape[1] == other
        ]
    return []


def output_specs(
    probe: Outputs,
    declared: list[TensorSpec],
    tokens: list[str],
    inputs: list[TensorSpec],
    mask: str | None = MASK,
) -> list[TensorSpec]:
    """Every output with its true shape: `batch` first, a token-level output's sequence named
    as the mask input's, other dims as the graph names them (dynamic) or as the probe ran."""
    sequence = next(
        (spec.shape[1] for spec in inputs if spec.name == mask and len(spec.shape) > 1),
        "sequence",
    )
    same = declared if len(declared) == len(probe) else []
    specs = []
    for index, (name, value) in enumerate(probe.items()):
        known = same[index].shape if same else []
        dims: list[int | str] = []
        for axis, size in enumerate(value.shape):
            graph = known[axis] if axis < len(known) else None
            if axis == 0:
                dims.append("batch")
            elif axis == 1 and name in tokens:
                dims.append(graph if isinstance(graph, str) else sequence)
            else:
                dims.append(graph if isinstance(graph, str) else int(size))
        dtype = same[index].dtype if same and same[index].dtype else str(value.dtype)
        specs.append(TensorSpec(name=name, dtype=dtype, shape=dims))
    return specs


@register
class BakingCoordinator(Agent[CoordinatorParams]):
    name = "BakingCoordinator"
    params_model = CoordinatorParams
    writes = ("original.*", CALIBRATION, EVALUATION, REFERENCE)

    def run(self, ctx: StageContext, params: CoordinatorParams) -> StageResult:
        spec = ctx.job.model
        if spec is None:
            raise InvalidInput("the BakingCoordinator needs job.model (a builtin or a local file)")
        out = ctx.output(None)
        dataset = _dataset_address(ctx.job.quality.dataset, params.dataset)
        if spec.builtin:
            if spec.builtin not in BUILTINS:
                raise InvalidInput(f"unknown builtin {spec.builtin!r}; known: {sorted(BUILTINS)}")
            with Stopwatch() as build:
                model = BUILTINS[spec.builtin]()
            imported = self._import_builtin(model, out.directory, build.seconds, dataset)
        elif spec.local_path:
            if spec.input_shapes:  # the job's field wins over a Workflow's param
                params = params.model_copy(update={"input_shapes": spec.input_shapes})
            imported = self._import_file(
                Path(spec.local_path), spec.sha256, spec.format, params, out.directory, dataset
            )
        else:
            raise InvalidInput(
                "job.model.source must be a builtin, or the runner must resolve it to "
                "job.model.localPath"
            )
        artifact, fmt, calibration, evaluation, metrics, extra = imported
        origin = _downloaded_from(spec.source)
        if origin:  # the model card's provenance: where the bytes came from, not the cache
            extra["facts"] = {
                **extra["facts"],
                "source": f"{extra['facts']['source']} from {origin}",
            }
        # A gate on accuracy needs labels: say so now, not after the bake.
        if ctx.job.quality.metric == "accuracy" and evaluation.labels is None:
            raise InvalidInput(
                "quality.metric accuracy needs labelled evaluation data, and this model's has "
                "no labels: give a dataset with `__labels__`, or gate on cosine or max-abs-error"
            )
        metrics[SYNTHETIC_INPUTS] = float(not spec.builtin and not dataset)

        runner: OutputsRunner = extra.pop("runner")
        tokens: list[str] = extra.pop("tokens")
        with Stopwatch() as ref_time:
            try:
                ref_cal = run_outputs(runner, calibration, token_level=tokens)
                ref_eval = run_outputs(runner, evaluation, token_level=tokens)
            except Exception as exc:  # a user's model that fails on its data: not transient
                if spec.builtin:
                    raise
                raise InvalidInput(
                    f"the model does not run over the data in batches: {exc}; check the "
                    "data's shapes against the model's inputs"
                ) from exc
        _check_outputs(ref_cal, "calibration data")
        _check_outputs(ref_eval, "evaluation data")
        calibration.save(out.path(CALIBRATION))
        evaluation.save(out.path(EVALUATION))
        save_arrays(
            out.path(REFERENCE),
            {
                **reference_arrays("calibration", ref_cal),
                **reference_arrays("evaluation", ref_eval),
            },
        )
        out.add(CALIBRATION, "calibration")
        out.add(EVALUATION, "evaluation")
        out.add(REFERENCE, "reference")
        for relative, source in extra.pop("files").items():
            role = SHIPPED_FILES.get(
                relative, ROLE_TOKENIZER if "tokenizer" in relative else "data"
            )
            if source == out.directory / relative:  # a Hugging Face folder's, put in place
                out.add(relative, role)
            else:
                out.add_copy(source, relative, role)

        metrics.update(
            {
                "sizeBytes": float((out.directory / artifact).stat().st_size),
                "calibrationSamples": float(len(calibration)),
                "evaluationSamples": float(len(evaluation)),
                "referenceSeconds": ref_time.seconds,
            }
        )
        primary = next(iter(ref_eval.values()))
        if (
            evaluation.labels is not None
            and primary.ndim == 2
            and next(iter(ref_eval)) not in tokens
        ):
            metrics[REFERENCE_ACCURACY] = float((primary.argmax(1) == evaluation.labels).mean())
        if len(ref_eval) > 1:
            metrics["outputs"] = float(len(ref_eval))
        out.add(artifact, "model")
        fingerprint = {
            "artifactSha256": sha256_file(out.directory / artifact),
            "weightsSha256": extra.pop("weightsSha256"),
            "parameters": int(metrics["parameters"]),
        }
        attributes: dict[str, Any] = {
            "original": {"path": artifact, "format": fmt},
            "fingerprint": fingerprint,
            "dynamicAxes": extra.pop("dynamic"),
            "facts": extra.pop("facts"),
            "defaultMetric": extra.pop("metric"),
            TOKEN_OUTPUTS: tokens,
        }
        manifest = out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=artifact,
            format=fmt,
            params=params.model_dump(by_alias=True, exclude_none=True),
            metrics=metrics,
            started_at=ctx.started_at,
            attributes=attributes,
            inputs=extra.pop("inputs"),
            outputs=extra.pop("outputs"),
            model_name=extra.pop("name"),
            task=extra.pop("task"),
        )
        made_up = " synthetic (no data of the job's)" if metrics[SYNTHETIC_INPUTS] else ""
        message = (
            f"imported {manifest.model_name} as {fmt} ({int(metrics['parameters'])} parameters); "
            f"reference outputs on {len(calibration)} calibration + {len(evaluation)} evaluation"
            f"{made_up} samples"
        )
        return StageResult(Outcome(message, metrics), manifest)

    # -- builtins: export with torch.export, check the saved program reproduces eager -------------

    def _import_builtin(
        self, model: BuiltinModel, directory: Path, build_seconds: float, dataset: str | None
    ) -> tuple[str, ArtifactFormat, Dataset, Dataset, dict[str, float], dict[str, Any]]:
        names = [spec.name for spec in model.inputs]
        example = model.calibration.batch(0, 2)
        args = tuple(torch.from_numpy(example[n]) for n in names)
        with Stopwatch() as export_time:
            program = torch.export.export(
                model.module, args, dynamic_shapes=_dynamic_shapes(names, model.dynamic)
            )
        artifact = artifact_name("exported-program", "original")
        torch.export.save(program, str(directory / artifact))
        # Round trip: what later stages load must compute what the module computes.
        reloaded = load_exported_program(directory / artifact).module()
        probe = model.evaluation.batch(0, 8)
        eager = torch_runner(model.module, names)(probe)
        loaded = torch_runner(reloaded, names)(probe)
        error = float(np.abs(eager - loaded).max())
        if error > 1e-4:
            raise InvalidInput(f"the exported program differs from the module by {error}")
        log("imported builtin", model=model.name, exportSeconds=export_time.seconds)
        metrics = {
            "parameters": float(sum(p.numel() for p in model.module.parameters())),
            "buildSeconds": build_seconds,
            "exportSeconds": export_time.seconds,
            "roundTripMaxAbsError": error,
        }
        runner = torch_outputs(model.module, names, [spec.name for spec in model.outputs])
        extra: dict[str, Any] = {
            "runner": runner,
            "files": model.files,
            "weightsSha256": weights_fingerprint(_torch_weights(model.module)),
            "dynamic": {k: {str(a): d for a, d in v.items()} for k, v in model.dynamic.items()},
            "facts": model.facts,
            "metric": model.metric,
            "inputs": model.inputs,
            "outputs": model.outputs,
            "name": model.name,
            "task": model.task,
        }
        calibration, evaluation = model.calibration, model.evaluation
        if dataset:  # the job's data replaces the builtin's own
            calibration, evaluation, facts = _job_data(
                dataset,
                model.inputs,
                model.calibration.mask,
                tokenizer=model.files.get("tokenizer.json"),
                max_length=int(model.facts.get("maxSequenceLength", 128)),
            )
            extra["facts"] = {**model.facts, **facts}
        extra["tokens"] = token_outputs(runner, calibration.batch(0, 2), calibration.mask)
        return artifact, "exported-program", calibration, evaluation, metrics, extra

    # -- user files -------------------------------------------------------------------------------

    def _import_file(
        self,
        path: Path,
        sha256: str | None,
        spec_format: str | None,
        params: CoordinatorParams,
        directory: Path,
        dataset: str | None,
    ) -> tuple[str, ArtifactFormat, Dataset, Dataset, dict[str, float], dict[str, Any]]:
        folder: _Folder | None = None
        if path.is_dir() or spec_format == "huggingface":
            target, fmt, actual, folder = _stage_folder(
                path, sha256, spec_format, directory, params.input_shapes
            )
        else:
            target, fmt, actual = _stage_file(path, sha256, spec_format, directory)
        return self._import_staged(path, target, fmt, actual, folder, params, dataset)

    def _import_staged(
        self,
        path: Path,
        target: Path,
        fmt: ArtifactFormat,
        actual: str,
        folder: _Folder | None,
        params: CoordinatorParams,
        dataset: str | None,
    ) -> tuple[str, ArtifactFormat, Dataset, Dataset, dict[str, float], dict[str, Any]]:
        try:
            inputs, outputs, weights, hints = _signature(target, fmt, params)
        except InvalidInput:
            raise
        except Exception as exc:  # what a damaged file makes the loaders raise
            raise InvalidInput(f"{path.name} does not load as {fmt}: {exc}") from exc
        unknown = set(params.input_roles or {}) - {spec.name for spec in inputs}
        if unknown:
            raise InvalidInput(f"inputRoles names no input of the model: {sorted(unknown)}")
        roles = infer_roles(inputs, hints, params.input_roles)
        mask = mask_input(inputs, roles)
        _refuse_static_sequence(inputs, mask)
        names = [spec.name for spec in inputs]
        try:
            runner = open_outputs(target, fmt, names)
        except Exception as exc:
            raise InvalidInput(f"the {fmt} model does not load: {exc}") from exc
        facts = {"source": f"user file {path.name} (sha256 {actual})"}
        if folder is not None:
            facts = {"source": f"Hugging Face folder {path.name} ({folder.facts}, sha256 {actual})"}
            if folder.ignored:
                facts["ignored"] = "; ".join(folder.ignored)
        if dataset:
            calibration, evaluation, data_facts = _job_data(
                dataset,
                inputs,
                mask,
                tokenizer=folder.tokenizer if folder else None,
                max_length=folder.max_length if folder else 128,
                media=folder.media if folder else None,
            )
            facts.update(data_facts)
        else:
            calibration, evaluation = _synthetic_data(inputs, params, hints, roles)
        try:
            probe = runner(calibration.batch(0, 2))
        except Exception as exc:
            raise InvalidInput(
                f"the {fmt} model does not run on its declared inputs: {exc}"
            ) from exc
        _check_outputs(probe, "a probe batch")
        for name, value in probe.items():
            if value.ndim == 0 or value.shape[0] != 2:
                raise InvalidInput(
                    f"the model's output {name!r} {value.shape} has no batch dimension: every "
                    "output must have the batch first"
                )
        try:
            tokens = token_outputs(runner, calibration.batch(0, 2), mask)
        except Exception as exc:
            raise InvalidInput(
                f"the {fmt} model does not run on its declared inputs: {exc}"
            ) from exc
        outputs = output_specs(probe, outputs, tokens, inputs, mask)
        metrics = {"parameters": float(sum(w.size for w in weights.values()))}
        extra: dict[str, Any] = {
            "runner": runner,
            "files": folder.files if folder else {},
            "weightsSha256": weights_fingerprint(weights),
            "dynamic": {
                spec.name: {
                    str(axis): str(dim)
                    for axis, dim in enumerate(spec.shape)
                    if not isinstance(dim, int)
                }
                for spec in inputs
            },
            "facts": facts,
            "metric": "cosine",
            "inputs": inputs,
            "outputs": outputs,
            "tokens": tokens,
            "name": path.name if folder else path.stem,
            "task": "",
        }
        return target.name, fmt, calibration, evaluation, metrics, extra


@dataclass
class _Folder:
    """What a Hugging Face folder adds to an import: the files shipped with the model (already
    in the checkpoint), its tokenizer, what was left unread and what it is."""

    files: dict[str, Path]
    tokenizer: Path | None
    max_length: int
    ignored: tuple[str, ...]
    facts: str
    media: MediaReading | None = None  # an image or audio model's preprocessing, if shipped


def _stage_file(
    path: Path, sha256: str | None, spec_format: str | None, directory: Path
) -> tuple[Path, ArtifactFormat, str]:
    """The model file copied into the checkpoint as `original.*`, hashed and vetted."""
    if not path.is_file():
        raise InvalidInput(f"model file {path} does not exist")
    # Copy first, then hash and vet the copy: the bytes checked are the bytes loaded, even
    # if the source changes meanwhile.
    incoming = directory / ".incoming"
    incoming.mkdir(exist_ok=True)
    staged = incoming / path.name
    try:
        staged.write_bytes(path.read_bytes())
        actual = sha256_file(staged)
        if sha256 and actual != sha256.lower():
            raise InvalidInput(
                f"model file sha256 {actual} does not match job.model.sha256 {sha256}"
            )
        vetted = vet_model_file(staged, data_folder=path.resolve().parent)
        fmt: ArtifactFormat = vetted.format
        declared = spec_format if spec_format not in (None, "auto") else None
        if declared is not None and declared != fmt:
            raise InvalidInput(
                f"{path.name} is {fmt} by its bytes, but job.model.format says {declared}: "
                "fix the format, or leave it auto"
            )
        artifact = artifact_name(fmt, "original")
        target = directory / artifact
        if vetted.external_data:
            # Vetted to lie inside the model's own folder; folded into one file so the
            # checkpoint holds all of the model.
            onnx.save(onnx.load(str(path), load_external_data=True), str(target))
        else:
            staged.replace(target)
    finally:  # nothing refused, and no copy of it, stays in the checkpoint
        staged.unlink(missing_ok=True)
        incoming.rmdir()
    return target, fmt, actual


def _stage_folder(
    path: Path,
    sha256: str | None,
    spec_format: str | None,
    directory: Path,
    input_shapes: dict[str, list[int]] | None = None,
) -> tuple[Path, ArtifactFormat, str, _Folder]:
    """A Hugging Face model directory: copied, its digest checked and vetted, built offline
    from the copy and exported to the checkpoint as `original.pt2` (what later stages load for
    any ExportedProgram); its tokenizer files go into the checkpoint beside it."""
    if not path.is_dir():
        raise InvalidInput(
            f"job.model.format says huggingface, but {path.name} is a file: name the model "
            "directory (the folder holding config.json and model.safetensors)"
        )
    if spec_format not in (None, "auto", "huggingface"):
        raise InvalidInput(
            f"{path.name} is a folder (a Hugging Face model directory), but job.model.format "
            f"says {spec_format}: fix the format, or leave it auto"
        )
    # Copy first, then hash, vet and load the copy: the bytes checked are the bytes loaded.
    incoming = directory / ".incoming"
    staged = incoming / (path.resolve().name or "model")  # refusals name the user's folder
    target = directory / artifact_name("exported-program", "original")
    try:
        staged.mkdir(parents=True)
        for relative in tree_files(path):
            (staged / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / relative, staged / relative)
        actual = sha256_tree(staged)
        if sha256 and actual != sha256.lower():
            raise InvalidInput(
                f"model folder sha256 {actual} does not match job.model.sha256 {sha256} (a "
                "folder's sha256 is over its files: `bakeline digest` prints it)"
            )
        vetted = vet_huggingface_folder(staged, huggingface.model_types())
        for ignored in vetted.ignored:
            log("left unread", file=ignored)
        model = huggingface.build(staged, vetted, input_shapes)
        example = model.example()
        with Stopwatch() as export_time:
            huggingface.export(model, example, target)
        # Round trip: what later stages load must compute what the model computes.
        names = model.inputs
        eager = torch_outputs(model.module, names)({n: example[n].numpy() for n in names})
        loaded = torch_outputs(load_exported_program(target).module(), names)(
            {n: example[n].numpy() for n in names}
        )
        for name, value in eager.items():
            error = float(np.abs(value - loaded[name]).max())
            if error > 1e-4 * max(1.0, float(np.abs(value).max())):
                raise InvalidInput(f"the exported {name} differs from the model's by {error}")
        log(
            "exported Hugging Face model",
            architecture=model.architecture,
            exportSeconds=export_time.seconds,
        )
        files = {}
        for relative in vetted.files:
            if relative in SHIPPED_FILES:
                shutil.copyfile(staged / relative, directory / relative)
                files[relative] = directory / relative
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:  # nothing refused, and no copy of it, stays in the checkpoint
        shutil.rmtree(incoming, ignore_errors=True)
    folder = _Folder(
        files=files,
        tokenizer=files.get("tokenizer.json"),
        max_length=model.max_length,
        ignored=vetted.ignored,
        facts=f"{vetted.config['model_type']}, {model.architecture}",
        media=_media(model, vetted),
    )
    return target, "exported-program", actual, folder


def _media(model: huggingface.HuggingFaceModel, vetted: VettedFolder) -> MediaReading | None:
    """How an image or audio model prepares media files, where its folder says
    (preprocessor_config.json, as vetting parsed it)."""
    if vetted.processing is None:
        return None
    if model.image:
        return ImageReading(vetted.processing, vetted.config, model.image[0])
    if model.audio:
        return AudioReading(vetted.processing, vetted.config, model.audio)
    return None


_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}


def _dim_name(name: str) -> str:
    """A dynamic dimension's name, usable as an identifier (torch.export.Dim)."""
    cleaned = re.sub(r"[^0-9A-Za-z_]", "_", name) or "dim"
    return cleaned if not cleaned[0].isdigit() else f"d{cleaned}"


def _signature(
    path: Path, fmt: ArtifactFormat, params: CoordinatorParams
) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, np.ndarray], ModelHints]:
    """Input/output specs (a dynamic dimension by its name, e.g. "batch", "s0"), the weights
    and what the graph says of the inputs (embedding tables, dimension ranges) of a user model."""
    shapes = params.input_shapes or {}
    static: list[tuple[str, list[int | str]]] = []  # inputs whose batch is a number
    if fmt == "onnx":
        model = onnx.load(str(path))
        inits = {i.name for i in model.graph.initializer}
        inputs = []
        for i in model.graph.input:
            if i.name in inits:
                continue
            first = i.type.tensor_type.shape.dim[:1]
            if first and first[0].dim_value > 0:
                static.append((i.name, [d.dim_value or "?" for d in i.type.tensor_type.shape.dim]))
            dims: list[int | str] = [
                d.dim_value or _dim_name(d.dim_param or f"{i.name}_{axis}")
                for axis, d in enumerate(i.type.tensor_type.shape.dim[1:], 1)
            ]
            inputs.append(
                TensorSpec(
                    name=i.name,
                    dtype=_ONNX_DTYPES.get(i.type.tensor_type.elem_type, "float32"),
                    shape=["batch", *shapes.get(i.name, dims)],
                )
            )
        outputs = [
            TensorSpec(
                name=o.name,
                dtype=_ONNX_DTYPES.get(o.type.tensor_type.elem_type, "float32"),
                shape=[
                    d.dim_value or _dim_name(d.dim_param or f"{o.name}_{axis}")
                    for axis, d in enumerate(o.type.tensor_type.shape.dim)
                ],
            )
            for o in model.graph.output
        ]
        _refuse_static_batch(static)
        weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        return inputs, outputs, weights, onnx_hints(model)
    if fmt == "exported-program":
        program = load_exported_program(path)
        inputs = []
        for spec in program.graph_signature.input_specs:
            if spec.kind.name != "USER_INPUT":
                continue
            name = getattr(spec.arg, "name", "input")
            node = next(n for n in program.graph.nodes if n.name == name)
            val = node.meta.get("val")
            whole = list(getattr(val, "shape", []))
            if whole and isinstance(whole[0], int):
                static.append((name, [d if isinstance(d, int) else str(d) for d in whole]))
            dims = [
                int(d) if isinstance(d, int) else _dim_name(str(d))
                for d in getattr(val, "shape", [])[1:]
            ]
            dtype = str(getattr(val, "dtype", torch.float32)).replace("torch.", "")
            inputs.append(
                TensorSpec(name=name, dtype=dtype, shape=["batch", *shapes.get(name, dims)])
            )
        _refuse_static_batch(static)
        weights = {k: v.detach().numpy() for k, v in program.state_dict.items()}
        hints = program_hints(program)
        hints.bounds = {_dim_name(k): v for k, v in hints.bounds.items()}
        return inputs, _program_outputs(program), weights, hints
    module = load_torch_module(path, "torchscript")
    names = _script_inputs(module)
    if not shapes:
        example = ", ".join(f"{name}: [3, 224, 224]" for name in names) or "input: [3, 224, 224]"
        raise InvalidInput(
            "a TorchScript file records no input shapes: set spec.model.inputShapes to each "
            f"input's dims without the batch, by name, e.g. inputShapes: {{{example}}}"
        )
    if names and set(shapes) != set(names):
        raise InvalidInput(
            f"spec.model.inputShapes names {sorted(shapes)}, but the TorchScript model's "
            f"forward takes {names}: give a shape for each of those"
        )
    # Called positionally: the forward's own order, not the mapping's.
    inputs = [
        TensorSpec(name=n, dtype="float32", shape=["batch", *shapes[n]]) for n in names or shapes
    ]
    return inputs, [], _torch_weights(module), ModelHints()


def _downloaded_from(source: dict[str, Any]) -> str | None:
    """The https:// or http:// address `bakeline run` downloaded the model from, if it did."""
    url = source.get("url")
    address = str(url.get("url", "")) if isinstance(url, dict) else str(url or "")
    return address if address.startswith(("https://", "http://")) else None


def _refuse_static_sequence(inputs: list[TensorSpec], mask_name: str | None) -> None:
    """Batches of padded text are cut to their longest sample (`Dataset.batch`), so a model
    exported at one sequence length would fail on the first shorter batch, deep in a later
    stage: say how to export it instead."""
    mask = next((spec for spec in inputs if spec.name == mask_name and len(spec.shape) == 2), None)
    if mask is None or not isinstance(mask.shape[1], int):
        return
    same = [spec.name for spec in inputs if len(spec.shape) == 2 and spec.shape[1] == mask.shape[1]]
    dynamic = ", ".join(f"'{name}': {{0: batch, 1: sequence}}" for name in same)
    raise InvalidInput(
        f"the model is exported with a fixed sequence length of {mask.shape[1]} (input "
        f"`{mask.name}` is {mask.shape}): Bakeline runs padded text at each batch's own "
        "length, so export it with a dynamic sequence: batch, sequence = "
        "torch.export.Dim('batch'), torch.export.Dim('sequence'); torch.export.export(model, args, "
        f"dynamic_shapes={{{dynamic}}})"
    )


def _refuse_static_batch(static: list[tuple[str, list[int | str]]]) -> None:
    """A model exported at one batch size cannot be run at the target's batch sizes, nor over
    the data in batches of any size: say how to export it, not what torch or ORT raise later."""
    if not static:
        return
    name, shape = static[0]
    dynamic = ", ".join(f"'{n}': {{0: batch}}" for n, _ in static)
    raise InvalidInput(
        f"the model is exported with a static batch of {shape[0]} (input `{name}` is {shape}): "
        "Bakeline runs it at target.batchSizes and over the data in batches of any size, so "
        "export it with a dynamic batch: batch = torch.export.Dim('batch'); "
        f"torch.export.export(model, args, dynamic_shapes={{{dynamic}}}) (for ONNX, "
        "dynamic_axes or dynamic_shapes with the batch axis named)"
    )


def _script_inputs(module: torch.nn.Module) -> list[str]:
    """The names of a scripted module's forward arguments (its schema), `self` left out."""
    try:
        arguments = module.forward.schema.arguments  # type: ignore[attr-defined]
    except AttributeError:
        return []
    return [a.name for a in arguments if a.name != "self"]


def _program_outputs(program: torch.export.ExportedProgram) -> list[TensorSpec]:
    """The user outputs of an ExportedProgram as the graph records them, dynamic dims by their
    symbols' names (the batch's as `batch`); names are the runner's to give."""
    batch = set()
    for spec in program.graph_signature.input_specs:
        if spec.kind.name == "USER_INPUT":
            node = next(n for n in program.graph.nodes if n.name == getattr(spec.arg, "name", ""))
            shape = getattr(node.meta.get("val"), "shape", [])
            if len(shape) and not isinstance(shape[0], int):
                batch.add(str(shape[0]))
    nodes = {n.name: n for n in program.graph.nodes}
    found = []
    for name in program.graph_signature.user_outputs:
        val = nodes[name].meta.get("val") if name in nodes else None
        shape = getattr(val, "shape", None)
        if shape is None:
            continue
        dims: list[int | str] = [
            int(d) if isinstance(d, int) else "batch" if str(d) in batch else _dim_name(str(d))
            for d in shape
        ]
        dtype = str(getattr(val, "dtype", torch.float32)).replace("torch.", "")
        found.append(TensorSpec(name=name, dtype=dtype, shape=dims))
    return found


def _dataset_address(job_dataset: str | None, param: str | None) -> str | None:
    """The dataset to read: the job's quality.dataset as the driver resolved it, else the
    import stage's `dataset` param (a path, or the same forms); None: none given."""
    if job_dataset and job_dataset != "builtin":
        return job_dataset
    if not param:
        return None
    return param if "://" in param else Path(param).resolve().as_uri()


def _job_data(
    address: str,
    inputs: list[TensorSpec],
    mask: str | None,
    tokenizer: Path | None = None,
    max_length: int = 128,
    media: MediaReading | None = None,
) -> tuple[Dataset, Dataset, dict[str, str]]:
    """The job's dataset in the model's dtypes, split into calibration and evaluation; `mask`
    names the input whose role is the attention mask, `media` how an image or audio model
    reads media files."""
    names = [spec.name for spec in inputs]
    data, sha256 = read_dataset(address, names, tokenizer, max_length, mask, media)
    data = conform(data, {spec.name: spec.dtype for spec in inputs})
    _check_shapes(inputs, data, media)
    calibration, evaluation = split(data)
    labelled = "labelled" if data.labels is not None else "unlabelled"
    facts = {
        "dataset": (
            f"the job's ({labelled}, sha256 {sha256}): {len(calibration)} calibration and "
            f"{len(evaluation)} evaluation samples, every third to calibration"
        )
    }
    log("read the job's dataset", samples=len(data), sha256=sha256, labelled=labelled)
    return calibration, evaluation, facts


def _check_shapes(inputs: list[TensorSpec], data: Dataset, media: MediaReading | None) -> None:
    """Each input's static dimensions (past the batch) are the dataset's, or the job is refused
    saying which differ and what sets them, before a probe fails on them."""
    for spec in inputs:
        got = list(data.inputs[spec.name].shape[1:])
        want = spec.shape[1:]
        if len(got) != len(want) or any(
            isinstance(w, int) and w != g for w, g in zip(want, got, strict=False)
        ):
            shown = "x".join(str(w) if isinstance(w, int) else "any" for w in want)
            where = (
                f" (the {media.kind} as preprocessor_config.json prepares them: its size must "
                "be the model's, or set spec.model.inputShapes to it)"
                if media is not None
                else ""
            )
            raise InvalidInput(
                f"the dataset's {spec.name} is {'x'.join(map(str, got))} per sample{where}, but "
                f"the model takes {shown}"
            )


def _synthetic_data(
    inputs: list[TensorSpec], params: CoordinatorParams, hints: ModelHints, roles: dict[str, Role]
) -> tuple[Dataset, Dataset]:
    """Synthetic data from the signature, shaped as real inputs: enough to calibrate ranges
    and time the model at its real shapes; it says nothing of quality (a job that cares names
    a dataset)."""
    sizes = dimension_sizes(inputs, hints)
    log("synthetic inputs", roles=roles, sizes=sizes, vocab=hints.vocab)
    rng = np.random.default_rng(params.seed)
    calibration = synthesize(inputs, params.calibration_samples, rng, roles, hints, sizes)
    evaluation = synthesize(inputs, params.evaluation_samples, rng, roles, hints, sizes)
    return calibration, evaluation
