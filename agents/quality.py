"""Output comparisons against reference outputs: cosine, accuracy, max absolute error.

A model may have several outputs (a tuple, list or dict: `bakeline.agents.runtimes.Outputs`).
Each is compared on its own; the metrics keep their names for the first (primary) output
(`cosineMean`, `cosineMin`, `maxAbsError`, `agreement`, `accuracy`), and where there are several
each output's also go by `<metric>.<output name>` (`cosineMean.logits`). A gate on cosine or max
abs error holds for every output, and its message names the output that misses it; accuracy
(labels name the primary output's classes) is the primary output's.

A token-level output ([batch, sequence, ...]) of a model with an attention mask is compared over
the real positions only: its padding is whatever the model leaves there.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from bakeline.agents.contract import QualityMetric
from bakeline.contract import REFERENCE_ACCURACY, default_threshold


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    denom = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    return np.asarray((a2 * b2).sum(axis=1) / np.maximum(denom, 1e-12))


# The metrics each output of a several-output model reports as `<metric>.<output name>`.
PER_OUTPUT = ("cosineMean", "cosineMin", "maxAbsError", "scaledError", "agreement")
# Errors: the worst output is the one with the largest (the others: the smallest).
_ERRORS = frozenset({"maxAbsError", "scaledError"})


def _wider(array: np.ndarray, width: int) -> np.ndarray:
    pad = [(0, 0), (0, width - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad) if width > array.shape[1] else array


def real_positions(
    outputs: np.ndarray, reference: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A token-level output and its reference with every padded position zeroed (the mask's
    zeros), both as wide as the wider of the two (a batch trimmed narrower is padded)."""
    width = max(outputs.shape[1], reference.shape[1])
    real = _wider(np.asarray(mask)[: outputs.shape[0]], width)[:, :width] != 0
    real = real.reshape(real.shape + (1,) * (outputs.ndim - 2))
    return _wider(outputs, width) * real, _wider(reference, width) * real


def compare(
    outputs: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray | None,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Every metric we can compute for these outputs (names are camelCase, as in results).
    With `mask` ([samples, sequence]) the outputs are token-level: compared on real positions."""
    token_level = mask is not None and outputs.ndim >= 2 and reference.ndim == outputs.ndim
    if token_level and mask is not None:
        outputs, reference = real_positions(outputs, reference, mask)
    if outputs.shape != reference.shape:
        raise ValueError(f"output shape {outputs.shape} differs from reference {reference.shape}")
    cos = cosine_rows(outputs, reference)
    error = float(np.abs(outputs.astype(np.float64) - reference).max())
    # Relative to the output's own scale (its largest magnitude, where above 1): logits in the
    # hundreds differ by 1e-4 under any reordering of a float sum.
    scale = max(1.0, float(np.abs(reference).max()) if reference.size else 1.0)
    metrics = {
        "cosineMean": float(cos.mean()),
        "cosineMin": float(cos.min()),
        "maxAbsError": error,
        "scaledError": error / scale,
        "samples": float(outputs.shape[0]),
    }
    if outputs.ndim == 2 and not token_level:  # class scores: does the argmax agree?
        predicted, expected = outputs.argmax(axis=1), reference.argmax(axis=1)
        metrics["agreement"] = float((predicted == expected).mean())
        if labels is not None:
            metrics["accuracy"] = float((predicted == labels).mean())
            metrics[REFERENCE_ACCURACY] = float((expected == labels).mean())
    return metrics


def compare_outputs(
    outputs: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    mask: np.ndarray | None = None,
    token_level: Collection[str] = (),
) -> dict[str, float]:
    """Each reference output compared with the output of the same name (by position where the
    names differ but the counts agree): the primary's metrics under their own names, and with
    several outputs every output's `PER_OUTPUT` metrics as `<metric>.<name>`. Labels go with
    the primary output; outputs in `token_level` are compared on the mask's real positions."""
    if set(outputs) != set(reference):
        if len(outputs) != len(reference):
            raise ValueError(
                f"the model has outputs {list(outputs)}, the reference {list(reference)}"
            )
        outputs = dict(zip(reference, outputs.values(), strict=True))
    per: dict[str, dict[str, float]] = {}
    for index, (name, expected) in enumerate(reference.items()):
        try:
            per[name] = compare(
                outputs[name],
                expected,
                labels if index == 0 else None,
                mask if name in token_level else None,
            )
        except ValueError as exc:
            raise ValueError(f"output {name!r}: {exc}") from exc
    metrics = dict(next(iter(per.values())))
    if len(per) > 1:
        for name, found in per.items():
            metrics.update({f"{key}.{name}": found[key] for key in PER_OUTPUT if key in found})
    return metrics


def by_output(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """The per-output metrics of `compare_outputs`' result, by output name; a one-output result
    is {"": metrics}."""
    prefix = "cosineMean."
    names = [key[len(prefix) :] for key in metrics if key.startswith(prefix)]
    if not names:
        return {"": dict(metrics)}
    return {
        name: {key: metrics[f"{key}.{name}"] for key in PER_OUTPUT if f"{key}.{name}" in metrics}
        for name in names
    }


def worst(metrics: Mapping[str, float], key: str) -> float:
    """`key` of the output that does worst on it (the largest max abs error, the smallest
    cosine or agreement)."""
    values = [found[key] for found in by_output(metrics).values() if key in found]
    if not values:
        return metrics[key]
    return max(values) if key in _ERRORS else min(values)


def worst_output(metrics: Mapping[str, float], key: str) -> str:
    """The name of the output that does worst on `key` ("" for a one-output model)."""
    found = by_output(metrics)
    named = {name: m[key] for name, m in found.items() if key in m}
    if not named:
        return ""
    pick = max if key in _ERRORS else min
    return pick(named, key=named.__getitem__)


def named_metrics(
    metrics: Mapping[str, float], keys: tuple[str, ...] = ("cosineMean",), limit: int = 8
) -> dict[str, float]:
    """The per-output metrics worth a termination message's room: `keys` of the first `limit`
    outputs of a several-output result (none of a one-output one)."""
    outputs = [name for name in by_output(metrics) if name][:limit]
    return {
        f"{key}.{name}": metrics[f"{key}.{name}"]
        for name in outputs
        for key in keys
        if f"{key}.{name}" in metrics
    }


@dataclass(frozen=True)
class Gate:
    """A quality bound: `value` of `metric` must be >= threshold (<= for max-abs-error)."""

    metric: QualityMetric
    threshold: float
    min_threshold: float | None = None  # cosine only: bound on the worst sample

    def check(self, metrics: Mapping[str, float]) -> tuple[bool, str]:
        """Whether the metrics hold the bound, and why. Cosine and max abs error must hold for
        every output of a several-output model (the reason names the output that misses);
        accuracy is the primary output's."""
        if self.metric == "accuracy":
            return self._check_one(metrics)
        outputs = by_output(metrics)
        reasons = []
        for name, found in outputs.items():
            ok, why = self._check_one(found)
            label = f"output `{name}`: {why}" if name else why
            if not ok:
                return False, label
            reasons.append(label)
        return True, "; ".join(reasons)

    def _check_one(self, metrics: Mapping[str, float]) -> tuple[bool, str]:
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
    """`threshold`, else the metric's default (the contract's: both drivers report it)."""
    if threshold is None:
        threshold = default_threshold(metric, reference_accuracy)
    return Gate(metric, threshold)
