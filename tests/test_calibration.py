"""Per-label thresholds, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fashionlens.calibration import best_threshold, choose_thresholds, parse_method


def test_f1_optimal_threshold_by_hand():
    # Scores 0.9 0.8 0.7 0.3 0.2, positives at 0.9, 0.7 and 0.2. Predicting the top k:
    # k=1 F1 .50, k=2 .40, k=3 .667, k=4 .571, k=5 .75 -> predict all five: a cut below 0.2.
    scores = np.array([0.3, 0.9, 0.2, 0.8, 0.7])
    positive = np.array([0, 1, 1, 0, 1], dtype=bool)
    assert best_threshold(scores, positive, "f1") == pytest.approx(0.2 - 0.5e-6)
    # precision@0.9: only the top one (precision 1.0): the cut sits between 0.9 and 0.8.
    assert best_threshold(scores, positive, "precision@0.9") == pytest.approx(0.85)
    # precision@0.6: k=1 (1.0), k=3 (.667) and k=5 (.6) qualify; the lowest cut wins (most recall).
    assert best_threshold(scores, positive, "precision@0.6") == pytest.approx(0.2 - 0.5e-6)


def test_ties_are_predicted_together_and_f1_ties_take_the_higher_cut():
    scores = np.array([0.8, 0.8, 0.4, 0.4])
    positive = np.array([1, 0, 1, 0], dtype=bool)
    # Cut after the 0.8 pair: P .5 R .5 F1 .5; after all four: P .5 R 1 F1 .667.
    assert best_threshold(scores, positive, "f1") == pytest.approx(0.4 - 0.5e-6)
    positive = np.array([1, 1, 0, 0], dtype=bool)
    assert best_threshold(scores, positive, "f1") == pytest.approx(0.6)  # between the two tied pairs


def test_labels_with_few_validation_positives_keep_the_global_threshold():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 3))
    labels[:10, 0] = 1
    labels[:2, 1] = 1  # two positives only
    scores = rng.uniform(size=(40, 3))
    scores[:10, 0] += 1.0
    mask = np.ones_like(labels)
    mask[:, 2] = 0  # never known
    result = choose_thresholds(scores / 2.0, labels, mask, ["a", "b", "c"], min_positives=5)
    assert result.fallback == ("b", "c") and result.values[1:] == (0.5, 0.5)
    assert 0.0 < result.values[0] < 1.0 and result.validation_positives == {"a": 10, "b": 2, "c": 0}
    # Every positive of "a" scores above every negative: the F1 cut separates them exactly.
    assert (scores[:10, 0] / 2 > result.values[0]).all() and (scores[10:, 0] / 2 < result.values[0]).all()


@pytest.mark.parametrize("method", ["f2", "precision@", "precision@1.5", "precision@x"])
def test_unknown_methods_are_refused(method):
    with pytest.raises(ValueError, match="expected 'f1', 'precision@P'"):
        parse_method(method)


@pytest.mark.slow
def test_calibrated_thresholds_beat_one_cut_off_on_held_out_real_photos(tmp_path, shared_data):
    """Clothing Attribute photos, frozen pretrained features, the last epoch (the held-out photos pick
    nothing): thresholds chosen on one half of the held-out photos give the other half a higher CF1
    than 0.5, and predict more distinct label sets (benchmarks/calibration_table.py measures the same
    at full size in docs/results.md)."""
    from pathlib import Path

    from fashionlens import cli
    from fashionlens.calibration import GLOBAL_THRESHOLD, sigmoid
    from fashionlens.metrics import multilabel_metrics

    out = Path(tmp_path) / "run"
    assert cli.main(["train", "style", "--data", str(shared_data / "clothing-attributes"),
                     "--format", "clothing-attributes", "--out", str(out), "--head", "linear", "--image-size", "128",
                     "--limit", "600", "--val-split", "0.5", "--cache-features", "--epochs", "6",
                     "--final-weights", "last", "--workers", "0", "--progress", "none"]) == 0
    saved = np.load(out / "val_predictions.npz")
    scores, labels, mask = saved["scores"].astype(np.float64), saved["labels"], saved["mask"]
    names = [str(k) for k in range(scores.shape[1])]
    gains, more_sets = [], []
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(scores))
        fit, test = order[: len(order) // 2], order[len(order) // 2:]
        chosen = np.asarray(choose_thresholds(sigmoid(scores[fit]), labels[fit], mask[fit], names).values)
        flat = sigmoid(scores[test]) >= GLOBAL_THRESHOLD
        calibrated = sigmoid(scores[test]) >= chosen
        f1 = [multilabel_metrics(np.where(p, 1.0, -1.0), labels[test], mask[test])["CF1"] for p in (flat, calibrated)]
        gains.append(f1[1] - f1[0])
        more_sets.append(len({r.tobytes() for r in calibrated}) - len({r.tobytes() for r in flat}))
    assert np.mean(gains) > 2.0 and min(gains) > 0.0, gains
    assert min(more_sets) > 0, more_sets
