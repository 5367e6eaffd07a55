"""A Hugging Face model directory, vetted (`bakeline.agents.vetting.vet_huggingface_folder`),
built offline and exported with torch.export: what the import stage then treats as any other
ExportedProgram.

Nothing reaches the hub (`HF_HUB_OFFLINE`) and no code of the model's runs: the configuration
is the vetted config.json's dict handed to the config class transformers registers for its
`model_type`, the model is the class transformers itself defines (the first of
`config.architectures` it knows, else `AutoModel`), loaded by transformers' own
`from_pretrained` (`use_safetensors`, `trust_remote_code=False`) from a scratch folder that
holds links to the vetted config.json and weight files alone (model.safetensors, or the shards
its index names), so that transformers' renamings between a checkpoint's names and its modules'
apply and no other file of the folder is read. Text, image and audio models: a text model's
graph takes `input_ids` and, where the forward accepts them, `attention_mask` and
`token_type_ids`, all dynamic in batch and sequence; an image model's takes `pixel_values`
(channels, height and width from the job's inputShapes or the config's num_channels and
image_size), dynamic in batch; a waveform model's (wav2vec2, HuBERT, WavLM ...) takes
`input_values` (samples from the job's inputShapes, else one second at its feature extractor's
rate), dynamic in batch. Each returns every tensor of the model's output by its field name
(`last_hidden_state`, `pooler_output`, `logits`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bakeline.agents.audio import sampling_rate
from bakeline.agents.contract import InvalidInput
from bakeline.agents.vetting import HF_CONFIG, HF_WEIGHTS_INDEX, VettedFolder

# Set before transformers is imported: it reads them once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
IMAGE_INPUT = "pixel_values"  # an image model's one input: batch x channels x height x width
AUDIO_INPUT = "input_values"  # a waveform model's one input: batch x samples
# Where neither config nor tokenizer says how long a text may be.
DEFAULT_MAX_LENGTH = 512


def model_types() -> Iterable[str]:
    """The model types this transformers knows: what vetting lets a config.json name."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return list(CONFIG_MAPPING.keys())


@dataclass
class HuggingFaceModel:
    module: torch.nn.Module  # takes `inputs` positionally, returns {output name: tensor}
    inputs: list[str]
    architecture: str
    max_length: int  # the longest sequence to tokenize to
    image: tuple[int, int, int] | None = None  # an image model's input: channels, height, width
    audio: int | None = None  # a waveform model's input: samples

    @property
    def signal(self) -> tuple[int, ...] | None:
        """An image or audio model's one input's dims past the batch, all static."""
        return self.image if self.image is not None else (self.audio,) if self.audio else None

    def example(self) -> dict[str, torch.Tensor]:
        """Two samples of the model's inputs: what it is exported on and checked against."""
        if self.signal is not None:
            noise = torch.Generator().manual_seed(0)
            return {self.inputs[0]: torch.randn((2, *self.signal), generator=noise)}
        return {
            "input_ids": torch.ones((2, 8), dtype=torch.int64),
            "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3]),
            "token_type_ids": torch.zeros((2, 8), dtype=torch.int64),
        }


def _tensors(out: Any) -> dict[str, torch.Tensor]:
    """A ModelOutput's tensors by field name (it also carries None and caches, which no
    exporter takes)."""
    items = out.items() if hasattr(out, "items") else [("output", out)]
    return {str(k): v for k, v in items if isinstance(v, torch.Tensor)}


class _Outputs(torch.nn.Module):
    """A text model with plain tensor inputs in a fixed order and a dict of its tensor outputs."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], extra: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.extra = extra

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {"input_ids": input_ids, **{k: v for k, v in given.items() if k in self.inputs}}
        return _tensors(self.model(**feeds, **self.extra))


class _ImageOutputs(torch.nn.Module):
    """An image model taking pixel_values alone, with a dict of its tensor outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return _tensors(self.model(pixel_values=pixel_values, return_dict=True))


class _AudioOutputs(torch.nn.Module):
    """A waveform model taking input_values alone, with a dict of its tensor outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return _tensors(self.model(input_values=input_values, return_dict=True))


def build(
    folder: Path, vetted: VettedFolder, input_shapes: Mapping[str, list[int]] | None = None
) -> HuggingFaceModel:
    """The vetted folder's model, in eval mode and float32, with its weights loaded. An image
    model's input dims come from `input_shapes` (the job's spec.model.inputShapes) where they
    name pixel_values, else from its config (num_channels, image_size)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    settings = dict(vetted.config)
    model_type = str(settings.pop("model_type"))
    try:
        config = CONFIG_MAPPING[model_type].from_dict(settings)
    except Exception as exc:
        raise InvalidInput(
            f"config.json does not make a {model_type} configuration: {exc}"
        ) from exc
    # Plain attention ops: what every exporter and ONNX Runtime's quantizer handle.
    config._attn_implementation = "eager"
    cls = next(
        (
            found
            for name in settings.get("architectures") or []
            if isinstance(found := getattr(transformers, name, None), type)
            and issubclass(found, transformers.PreTrainedModel)
            and found.config_class is not None
            and isinstance(config, found.config_class)
        ),
        None,
    )
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # noise in a log
    loader = cls if cls is not None else transformers.AutoModel
    try:
        # transformers' own loader, for the renamings and conversions between the names a
        # checkpoint was saved under and those of this version's modules; it sees a folder of
        # the vetted config and weights alone, so no other file of the user's is read.
        with _vetted_only(folder, vetted) as weights:
            loaded: Any = loader.from_pretrained(
                weights,
                config=config,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
                output_loading_info=True,
            )
            model, loading = loaded  # with output_loading_info, a (model, info) pair
    except Exception as exc:
        raise InvalidInput(f"transformers cannot build a {model_type} model: {exc}") from exc
    architecture = type(model).__name__
    missing = sorted(loading.get("missing_keys") or [])
    if missing:  # transformers would leave them random
        files = vetted.weights
        raise InvalidInput(
            f"{files[0] + ' lacks' if len(files) == 1 else f'the {len(files)} shards lack'} "
            f"{len(missing)} of {architecture}'s weights ({', '.join(missing[:3])}): "
            "save the whole model with save_pretrained"
        )
    if model.main_input_name not in ("input_ids", IMAGE_INPUT, AUDIO_INPUT):
        raise InvalidInput(
            f"{architecture} takes {model.main_input_name}: only text (input_ids), image "
            f"({IMAGE_INPUT}) and waveform ({AUDIO_INPUT}) models are imported from a Hugging "
            "Face folder so far; export it with torch.export.save and bake the .pt2"
        )
    model = model.float().eval()
    if model.main_input_name == IMAGE_INPUT:
        image = _image_dims(config, architecture, dict(input_shapes or {}))
        return HuggingFaceModel(
            _ImageOutputs(model), [IMAGE_INPUT], architecture, DEFAULT_MAX_LENGTH, image
        )
    if model.main_input_name == AUDIO_INPUT:
        samples = _audio_samples(vetted, config, architecture, dict(input_shapes or {}))
        return HuggingFaceModel(
            _AudioOutputs(model), [AUDIO_INPUT], architecture, DEFAULT_MAX_LENGTH, audio=samples
        )
    accepted = inspect.signature(model.forward).parameters
    # Positional, in this order (the exported graph's inputs are the wrapper's arguments): the
    # longest run of them the forward accepts.
    inputs: list[str] = []
    for name in TEXT_INPUTS:
        if name not in accepted:
            break
        inputs.append(name)
    extra: dict[str, Any] = {"return_dict": True}
    if "use_cache" in accepted:
        extra["use_cache"] = False
    limits = [DEFAULT_MAX_LENGTH]
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 1:
        limits.append(positions)
    return HuggingFaceModel(_Outputs(model, inputs, extra), inputs, architecture, min(limits))


def _image_dims(
    config: Any, architecture: str, input_shapes: dict[str, list[int]]
) -> tuple[int, int, int]:
    """An image model's input dims without the batch: spec.model.inputShapes' pixel_values,
    else the config's num_channels and image_size; refused where neither says."""
    channels = getattr(config, "num_channels", 3)
    example = f"{{{IMAGE_INPUT}: [{channels}, 224, 224]}}"
    dims = ("channels", "height", "width")
    given = _declared(input_shapes, IMAGE_INPUT, dims, architecture, example)
    if given is not None:
        return given[0], given[1], given[2]
    size = getattr(config, "image_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        return channels, size, size
    if isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(n, int) for n in size):
        return channels, size[0], size[1]
    raise InvalidInput(
        f"config.json gives {architecture} no image_size: set spec.model.inputShapes to the "
        f"images' dims (channels, height, width), e.g. inputShapes: {example}"
    )


def _declared(
    input_shapes: dict[str, list[int]],
    name: str,
    dims: tuple[str, ...],
    architecture: str,
    example: str,
) -> list[int] | None:
    """spec.model.inputShapes' dims for a model of one input, `name`, where given: one for
    each of `dims`; refused where it names another input or gives another count."""
    if set(input_shapes) - {name}:
        raise InvalidInput(
            f"spec.model.inputShapes names {sorted(input_shapes)}, but {architecture} takes "
            f"{name} alone: give its dims ({', '.join(dims)}), e.g. {example}"
        )
    given = input_shapes.get(name)
    if given is not None and len(given) != len(dims):
        raise InvalidInput(
            f"spec.model.inputShapes.{name} is {given}: {architecture}'s input is "
            f"[{', '.join(dims)}] without the batch, e.g. {example}"
        )
    return given


def _audio_samples(
    vetted: VettedFolder,
    config: Any,
    architecture: str,
    input_shapes: dict[str, list[int]],
) -> int:
    """A waveform model's input length: spec.model.inputShapes' input_values, else one second
    at its feature extractor's sampling rate; at least what its convolutions take in."""
    kernels, strides = getattr(config, "conv_kernel", None), getattr(config, "conv_stride", None)
    if not kernels or not strides:
        raise InvalidInput(
            f"{architecture} takes {AUDIO_INPUT} that are not a waveform (a spectrogram model): "
            "only waveform models (wav2vec2, HuBERT, WavLM ...) are imported from a Hugging "
            "Face folder so far; export it with torch.export.save and bake the .pt2"
        )
    # The feature encoder's receptive field: the shortest clip it makes one frame of.
    shortest = kernels[0] + sum(
        (k - 1) * math.prod(strides[:i]) for i, k in enumerate(kernels) if i > 0
    )
    example = f"{{{AUDIO_INPUT}: [16000]}}"
    given = _declared(input_shapes, AUDIO_INPUT, ("samples",), architecture, example)
    samples = given[0] if given is not None else sampling_rate(vetted.processing)
    if samples < shortest:
        said = "spec.model.inputShapes gives" if given is not None else "one second is"
        raise InvalidInput(
            f"{architecture} takes {AUDIO_INPUT} of {shortest} samples at least (its feature "
            f"encoder's receptive field); {said} {samples}"
        )
    return samples


@contextlib.contextmanager
def _vetted_only(folder: Path, vetted: VettedFolder) -> Iterator[Path]:
    """A scratch folder holding links to the vetted config.json and weight files alone."""
    with tempfile.TemporaryDirectory(prefix="bakeline-hf-") as scratch:
        for name in vetted.files:
            if name in (HF_CONFIG, HF_WEIGHTS_INDEX, *vetted.weights):
                (Path(scratch) / name).symlink_to((folder / name).resolve())
        yield Path(scratch)


def export(model: HuggingFaceModel, example: dict[str, Any], target: Path) -> None:
    """torch.export with the batch dynamic (and a text model's sequence), saved as an
    ExportedProgram."""
    args = tuple(torch.as_tensor(example[name]) for name in model.inputs)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=model.max_length)
    shapes: dict[str, dict[int, Any]] = {
        name: {0: batch} if model.signal else {0: batch, 1: sequence} for name in model.inputs
    }
    try:
        program = torch.export.export(model.module, args, dynamic_shapes=shapes)
    except Exception as exc:
        dynamic = "batch" if model.signal else "batch and sequence"
        raise InvalidInput(
            f"{model.architecture} does not export with torch.export at a dynamic {dynamic}: {exc}"
        ) from exc
    torch.export.save(program, str(target))
