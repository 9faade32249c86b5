"""Per-label decision thresholds chosen on the validation split.

One global cut-off (0.5) makes every photo get the same frequent labels and no rare ones (mmfashion
issues #32, #39, #78). Here each label gets its own threshold on its predicted probability, chosen
on validation photos at the end of training and stored in the model directory
(``thresholds.json``): by default the one that maximises that label's F1; ``precision@P`` takes
the lowest threshold whose precision is at least P (the most recall at that precision). A label
with fewer than ``min_positives`` known validation positives keeps the global threshold, and the
file says which labels those are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fashionlens.config import parse_method
from fashionlens.errors import ModelDirError

GLOBAL_THRESHOLD = 0.5
MIN_POSITIVES = 5


@dataclass(frozen=True)
class Thresholds:
    """Per-label probability thresholds and how they were chosen."""

    label_names: tuple[str, ...]
    values: tuple[float, ...]
    method: str = "f1"
    global_threshold: float = GLOBAL_THRESHOLD
    fallback: tuple[str, ...] = ()  # labels that kept the global threshold (too few validation positives)
    validation_positives: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "global_threshold": self.global_threshold,
                "thresholds": dict(zip(self.label_names, self.values)), "fallback": list(self.fallback),
                "validation_positives": dict(self.validation_positives)}

    @classmethod
    def from_json(cls, data: dict[str, Any], label_names: list[str], where: str = "thresholds.json") -> "Thresholds":
        """Validated: one finite threshold in [0, 1] for each of the model's labels, in its order."""
        values = data.get("thresholds") if isinstance(data, dict) else None
        if not isinstance(values, dict):
            raise ModelDirError(f"{where}: expected an object with a 'thresholds' mapping of label -> probability")
        missing = [name for name in label_names if name not in values]
        if missing:
            raise ModelDirError(f"{where}: thresholds: no threshold for label(s) {missing[:5]}")
        out = []
        for name in label_names:
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0.0 <= value <= 1.0:
                raise ModelDirError(f"{where}: thresholds.{name}: expected a probability in [0, 1], found {value!r}")
            out.append(float(value))
        return cls(tuple(label_names), tuple(out), str(data.get("method", "f1")),
                   float(data.get("global_threshold", GLOBAL_THRESHOLD)), tuple(data.get("fallback", ())),
                   dict(data.get("validation_positives", {})))


def best_threshold(probabilities: np.ndarray, positive: np.ndarray, method: str = "f1") -> float | None:
    """One label's threshold on its probabilities (known samples only); None when none qualifies.

    Candidates are the midpoints between consecutive distinct scores (and just below the lowest), so
    a threshold never sits on a validation score. F1 ties go to the higher threshold (fewer false
    positives on unseen photos).
    """
    kind, target = parse_method(method)
    order = np.argsort(-probabilities, kind="stable")
    scores, hits = probabilities[order], positive[order].astype(np.float64)
    total = hits.sum()
    if total == 0:
        return None
    true_pos = np.cumsum(hits)
    predicted = np.arange(1, len(scores) + 1, dtype=np.float64)
    # Only cut where the next score differs: tied scores are predicted together.
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    true_pos, predicted, cut_scores = true_pos[last_of_run], predicted[last_of_run], scores[last_of_run]
    following = np.r_[scores[np.flatnonzero(last_of_run)[:-1] + 1], cut_scores[-1] - 1e-6]
    thresholds = np.clip((cut_scores + following) / 2.0, 0.0, 1.0)
    precision = true_pos / predicted
    recall = true_pos / total
    if kind == "f1":
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = np.flatnonzero(f1 == f1.max())[0]  # the first = the highest threshold among ties
        return float(thresholds[best])
    qualifying = np.flatnonzero(precision >= target)
    if not len(qualifying):
        return None
    return float(thresholds[qualifying[-1]])  # the lowest threshold that keeps the precision


def choose_thresholds(probabilities: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
                      label_names: list[str], method: str = "f1", min_positives: int = MIN_POSITIVES,
                      global_threshold: float = GLOBAL_THRESHOLD) -> Thresholds:
    """Per-label thresholds from validation probabilities ``(N, C)``, labels and known-mask."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    mask = np.ones_like(labels, dtype=bool) if mask is None else np.asarray(mask) > 0.5
    values, fallback, positives = [], [], {}
    for column, name in enumerate(label_names):
        known = mask[:, column]
        count = int((labels[:, column] & known).sum())
        positives[name] = count
        threshold = None
        if count >= min_positives:
            threshold = best_threshold(probabilities[known, column], labels[known, column], method)
        if threshold is None:
            fallback.append(name)
            threshold = global_threshold
        values.append(float(threshold))
    return Thresholds(tuple(label_names), tuple(values), method, global_threshold, tuple(fallback), positives)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities of independent labels, float64 (clipped so that no logit overflows ``exp``)."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, dtype=np.float64), -500, 500)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities of exclusive classes over the last axis, float64."""
    shifted = np.exp(np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
