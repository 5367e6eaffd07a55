"""Datasets and named arrays as safetensors files (never pickle). The job's own data files
(npz too, with `allow_pickle=False`) are read by `bakeline.agents.datasets`.

A dataset holds the model's named inputs, stacked along axis 0, and optional labels. Token inputs
are stored padded to the longest sample; `batches` trims each batch to its own longest sample, so
that a batch is shaped as a real tokenizer would shape it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

LABELS = "__labels__"
MASK = "attention_mask"

Feeds = dict[str, np.ndarray]


@dataclass
class Dataset:
    inputs: Feeds
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def batch(self, start: int, stop: int) -> Feeds:
        feeds = {name: array[start:stop] for name, array in self.inputs.items()}
        if MASK in feeds:
            # Cut the columns no sample of this batch uses (dataset-wide padding).
            width = max(1, int(feeds[MASK].sum(axis=1).max()))
            feeds = {
                name: (
                    array[:, :width]
                    if array.ndim == 2 and array.shape[1] == feeds[MASK].shape[1]
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
        return Dataset({k: v[:count] for k, v in self.inputs.items()}, labels)

    def save(self, path: Path) -> None:
        arrays = {k: np.ascontiguousarray(v) for k, v in self.inputs.items()}
        if self.labels is not None:
            arrays[LABELS] = np.ascontiguousarray(self.labels)
        save_file(arrays, str(path))

    @classmethod
    def load(cls, path: Path, input_names: list[str] | None = None) -> Dataset:
        arrays = load_file(str(path))
        labels = arrays.pop(LABELS, None)
        if input_names:  # keep the model's input order
            arrays = {name: arrays[name] for name in input_names}
        return cls(arrays, labels)


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    return dict(load_file(str(path)))
