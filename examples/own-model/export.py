"""Export a model the way Bakeline reads it, and data to judge it on.

The model: `torch.export` with a dynamic batch dimension, saved with `torch.export.save` (a
.pt2 file: no pickle, vetted from its bytes before anything loads it). Here a small CNN
trained on scikit-learn's 8x8 digits for a few seconds; put your own model in its place.

The data: one array per model input, keyed by the input's name (the argument of `forward`),
samples on axis 0, and the labels as `__labels__` (optional; needed for an accuracy gate).
Bakeline calibrates on every third sample and judges the bake on the others.

    python export.py model.pt2 data.npz
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels))


def main(model_path: str, data_path: str) -> None:
    torch.manual_seed(0)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    train, held_out = slice(0, 1200), slice(1200, None)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(images[train]), torch.from_numpy(labels[train])
    for _ in range(15):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[start : start + 64]), y[start : start + 64])
            loss.backward()
            optimizer.step()
    model.eval()

    batch = torch.export.Dim("batch", min=1, max=1024)
    example = (torch.from_numpy(images[:2]),)
    program = torch.export.export(model, example, dynamic_shapes=({0: batch},))
    torch.export.save(program, model_path)
    np.savez(data_path, pixels=images[held_out], __labels__=labels[held_out])
    print(f"wrote {model_path} and {data_path} ({len(labels[held_out])} held-out samples)")


if __name__ == "__main__":
    main(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("model.pt2", "data.npz")))
