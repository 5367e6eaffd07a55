"""Output comparisons against reference outputs: cosine, accuracy, max absolute error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bakeline.agents.contract import QualityMetric

# Defaults when neither the job nor the stage's params name a threshold. Accuracy's default is
# relative: within one point of the reference model's own accuracy.
DEFAULT_COSINE = 0.99
DEFAULT_ACCURACY_DROP = 0.01
DEFAULT_MAX_ABS_ERROR = 0.05


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return np.asarray((a2 * b2).sum(axis=1) / np.maximum(denom, 1e-12))


def compare(
    outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None
) -> dict[str, float]:
    """Every metric we can compute for these outputs (names are camelCase, as in results)."""
    if outputs.shape != reference.shape:
        raise ValueError(f"output shape {outputs.shape} differs from reference {reference.shape}")
    cos = cosine_rows(outputs, reference)
    metrics = {
        "cosineMean": float(cos.mean()),
        "cosineMin": float(cos.min()),
        "maxAbsError": float(np.abs(outputs.astype(np.float64) - reference).max()),
        "samples": float(outputs.shape[0]),
    }
    if outputs.ndim == 2:  # class scores: does the argmax agree (and match the labels)?
        predicted, expected = outputs.argmax(axis=1), reference.argmax(axis=1)
        metrics["agreement"] = float((predicted == expected).mean())
        if labels is not None:
            metrics["accuracy"] = float((predicted == labels).mean())
            metrics["referenceAccuracy"] = float((expected == labels).mean())
    return metrics


@dataclass(frozen=True)
class Gate:
    """A quality bound: `value` of `metric` must be >= threshold (<= for max-abs-error)."""

    metric: QualityMetric
    threshold: float
    min_threshold: float | None = None  # cosine only: bound on the worst sample

    def check(self, metrics: dict[str, float]) -> tuple[bool, str]:
        if self.metric == "cosine":
            mean, worst = metrics["cosineMean"], metrics["cosineMin"]
            if mean < self.threshold:
                return False, f"mean cosine {mean:.5f} < threshold {self.threshold}"
            if self.min_threshold is not None and worst < self.min_threshold:
                return False, f"min cosine {worst:.5f} < minThreshold {self.min_threshold}"
            return True, f"mean cosine {mean:.5f} >= {self.threshold} (min {worst:.5f})"
        if self.metric == "accuracy":
            if "accuracy" not in metrics:
                return False, "accuracy needs labelled evaluation data and class scores"
            acc = metrics["accuracy"]
            if acc < self.threshold:
                return False, f"accuracy {acc:.4f} < threshold {self.threshold:.4f}"
            return True, f"accuracy {acc:.4f} >= {self.threshold:.4f}"
        err = metrics["maxAbsError"]
        if err > self.threshold:
            return False, f"max abs error {err:.6g} > threshold {self.threshold}"
        return True, f"max abs error {err:.6g} <= {self.threshold}"


def default_gate(
    metric: QualityMetric, threshold: float | None, reference_accuracy: float | None
) -> Gate:
    if threshold is not None:
        return Gate(metric, threshold)
    if metric == "cosine":
        return Gate(metric, DEFAULT_COSINE)
    if metric == "accuracy":
        return Gate(metric, (reference_accuracy or 0.0) - DEFAULT_ACCURACY_DROP)
    return Gate(metric, DEFAULT_MAX_ABS_ERROR)
