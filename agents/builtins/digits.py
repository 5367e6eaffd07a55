"""digits-cnn: a small CNN trained deterministically, in seconds, on scikit-learn's digits.

The 8x8 images ship with scikit-learn (no download). A stratified 70/30 split fixed by seed: the
CNN trains on the 70 %, calibration data is drawn from it, evaluation is the held-out 30 %. The
network carries BatchNorm and Dropout on purpose: they are the training-only structure a graph
optimizer must fold or remove.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SEED = 0
EPOCHS = 30
CALIBRATION_SAMPLES = 256


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.25),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(image))
        return logits


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images float32 [N, 1, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, random_state=SEED, stratify=labels
    )
    return x_train, y_train, x_test, y_test


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    """Deterministic: fixed seed, fixed batch order, single-threaded, deterministic kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            model.train()
            for _ in range(EPOCHS):
                order = torch.randperm(len(images), generator=generator)
                for start in range(0, len(images), 64):
                    index = order[start : start + 64]
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(images[index]), labels[index])
                    loss.backward()  # type: ignore[no-untyped-call]
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()
