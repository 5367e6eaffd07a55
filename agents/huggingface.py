"""A Hugging Face model directory, vetted (`bakeline.agents.vetting.vet_huggingface_folder`),
built offline and exported with torch.export: what the import stage then treats as any other
ExportedProgram.

Nothing reaches the hub (`HF_HUB_OFFLINE`) and no code of the model's runs: the configuration
is the vetted config.json's dict handed to the config class transformers registers for its
`model_type`, the model is the class transformers itself defines (the first of
`config.architectures` it knows, else `AutoModel`), built empty with `trust_remote_code=False`,
and its weights are the raw numbers of model.safetensors, or of the shards its index names
(`safetensors.torch.load_file`). Text models only (their main input is `input_ids`): the
graph takes `input_ids` and, where the forward accepts them, `attention_mask` and
`token_type_ids`, all dynamic in batch and sequence, and returns every tensor of the model's
output by its field name (`last_hidden_state`, `pooler_output`, `logits`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bakeline.agents.contract import InvalidInput
from bakeline.agents.vetting import VettedFolder

# Set before transformers is imported: it reads them once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
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


class _Outputs(torch.nn.Module):
    """The model with plain tensor inputs in a fixed order and a dict of its tensor outputs
    (a ModelOutput also carries None and caches, which no exporter takes)."""

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
        out = self.model(**feeds, **self.extra)
        items = out.items() if hasattr(out, "items") else [("output", out)]
        return {str(k): v for k, v in items if isinstance(v, torch.Tensor)}


def build(folder: Path, vetted: VettedFolder) -> HuggingFaceModel:
    """The vetted folder's model, in eval mode and float32, with its weights loaded."""
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
    try:
        model = (
            cls(config)
            if cls is not None
            # Untyped in transformers; remote code is off whatever the default.
            else transformers.AutoModel.from_config(config, trust_remote_code=False)  # type: ignore[no-untyped-call]
        )
    except Exception as exc:
        raise InvalidInput(f"transformers cannot build a {model_type} model: {exc}") from exc
    if model.main_input_name != "input_ids":
        raise InvalidInput(
            f"{type(model).__name__} takes {model.main_input_name}: only text models (input_ids) "
            "are imported from a Hugging Face folder so far; export it with torch.export.save "
            "and bake the .pt2"
        )
    _load_weights(model, [folder / name for name in vetted.weights])
    model = model.float().eval()
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
    return HuggingFaceModel(
        _Outputs(model, inputs, extra), inputs, type(model).__name__, min(limits)
    )


def _load_weights(model: Any, paths: list[Path]) -> None:
    """The vetted safetensors files (model.safetensors, or its shards) into the model, under
    its own names or its base model's prefix; a parameter they lack (and no tied one provides)
    is refused, not left random."""
    weights = {}
    for path in paths:  # vetting saw that no tensor is in two of them
        weights.update(load_file(str(path)))
    own = model.state_dict()
    prefix = f"{model.base_model_prefix}." if model.base_model_prefix else ""

    def rename(key: str) -> str:
        if key in own or not prefix:
            return key
        if key.startswith(prefix) and key[len(prefix) :] in own:
            return key[len(prefix) :]  # a head model's file, loaded into its base model
        if prefix + key in own:
            return prefix + key  # a base model's file, loaded into a model with a head
        return key

    state = {}
    for key, tensor in weights.items():
        name = rename(key)
        if name in own:
            state[name] = tensor.float() if tensor.is_floating_point() else tensor
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    loaded = {own[name].data_ptr() for name in state}
    missing = sorted(
        name
        for name, tensor in model.state_dict().items()
        if name not in state and tensor.data_ptr() not in loaded
    )
    if missing:
        raise InvalidInput(
            f"{paths[0].name + ' lacks' if len(paths) == 1 else f'the {len(paths)} shards lack'} "
            f"{len(missing)} of {type(model).__name__}'s weights ({', '.join(missing[:3])}): "
            "save the whole model with save_pretrained"
        )


def export(model: HuggingFaceModel, example: dict[str, Any], target: Path) -> None:
    """torch.export with batch and sequence dynamic, saved as an ExportedProgram."""
    args = tuple(torch.as_tensor(example[name]) for name in model.inputs)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=model.max_length)
    shapes = {name: {0: batch, 1: sequence} for name in model.inputs}
    try:
        program = torch.export.export(model.module, args, dynamic_shapes=shapes)
    except Exception as exc:
        raise InvalidInput(
            f"{model.architecture} does not export with torch.export at a dynamic batch and "
            f"sequence: {exc}"
        ) from exc
    torch.export.save(program, str(target))
