"""Datasets and named arrays as safetensors files (never pickle). The job's own data files
(npz too, with `allow_pickle=False`) are read by `bakeline.agents.datasets`.

A dataset holds the model's named inputs, stacked along axis 0, optional labels, and which input
is the attention mask: the one whose role is to mark real positions (1) and padding (0), found
by role at import (`bakeline.agents.synthetic.infer_roles`; a file records it in its metadata).
Token inputs are stored padded to the longest sample; `batches` trims each batch to its own
longest sample, so that a batch is shaped as a real tokenizer would shape it, and quality is
judged on real positions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

LABELS = "__labels__"
MASK = "attention_mask"  # the mask's name where nothing found another (Hugging Face's)
_MASK_METADATA = "mask"  # a dataset file's metadata key naming its mask ("": none)

Feeds = dict[str, np.ndarray]


@dataclass
class Dataset:
    inputs: Feeds
    labels: np.ndarray | None = None
    mask: str | None = MASK  # the attention mask's input name (None: the model has none)

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    @property
    def mask_array(self) -> np.ndarray | None:
        """The whole [samples, sequence] attention mask, where the dataset has one."""
        found = self.inputs.get(self.mask) if self.mask else None
        return found if found is not None and found.ndim == 2 else None

    def batch(self, start: int, stop: int) -> Feeds:
        feeds = {name: array[start:stop] for name, array in self.inputs.items()}
        if self.mask_array is not None:
            mask = feeds[str(self.mask)]
            # Cut the columns no sample of this batch uses (dataset-wide padding).
            width = max(1, int(mask.sum(axis=1).max()))
            feeds = {
                name: (
                    array[:, :width]
                    if array.ndim == 2 and array.shape[1] == mask.shape[1]
                    else array
                )
                for name, array in feeds.items()
            }
        return {name: np.ascontiguousarray(array) for name, array in feeds.items()}

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[Feeds]:
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, batch_size):
            yield self.batch(start, min(start + batch_size, total))

    def head(self, count: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:count]
        return Dataset({k: v[:count] for k, v in self.inputs.items()}, labels, self.mask)

    def save(self, path: Path) -> None:
        arrays = {k: np.ascontiguousarray(v) for k, v in self.inputs.items()}
        if self.labels is not None:
            arrays[LABELS] = np.ascontiguousarray(self.labels)
        save_file(arrays, str(path), metadata={_MASK_METADATA: self.mask or ""})

    @classmethod
    def load(cls, path: Path, input_names: list[str] | None = None) -> Dataset:
        arrays = load_file(str(path))
        with safe_open(str(path), "np") as handle:
            metadata = handle.metadata() or {}
        labels = arrays.pop(LABELS, None)
        if input_names:  # keep the model's input order
            arrays = {name: arrays[name] for name in input_names}
        return cls(arrays, labels, metadata.get(_MASK_METADATA, MASK) or None)


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    return dict(load_file(str(path)))
