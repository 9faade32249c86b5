"""Metrics checked against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fashionlens.metrics import (
    LANDMARK_NAMES,
    deepfashion_metrics,
    landmark_metrics,
    multilabel_metrics,
    normalized_error,
)

# ---------------------------------------------------------------------------------------------
# multi-label: mAP

# 4 samples x 3 classes.
# class a: a tie at 0.5 between a negative (sample 1) and a positive (sample 2).
# class b: sample 0 is unknown (mask 0); it has the highest score and target 0, so it would be a
#          negative ranked first if the mask were ignored.
# class c: its only positive (sample 0) is unknown, so the class has no known positive.
AP_SCORES = [
    [0.9, 0.8, 0.4],
    [0.5, 0.7, -0.2],
    [0.5, 0.3, -0.5],
    [0.1, 0.2, 0.6],
]
AP_TARGETS = [
    [1, 0, 1],
    [0, 1, 0],
    [1, 1, 0],
    [0, 0, 0],
]
AP_MASK = [
    [1, 0, 0],
    [1, 1, 1],
    [1, 1, 1],
    [1, 1, 1],
]


def test_map_with_tie_mask_and_empty_class():
    result = multilabel_metrics(
        np.array(AP_SCORES), np.array(AP_TARGETS), np.array(AP_MASK), label_names=["a", "b", "c"]
    )
    # class a, pessimistic ties (negative before positive at 0.5):
    #   0.9 pos (rank 1, 1 hit) | 0.5 neg (rank 2) | 0.5 pos (rank 3, 2 hits) | 0.1 neg
    #   AP = (1/1 + 2/3) / 2 = 5/6 = 83.333 %   (the optimistic order would give (1/1 + 2/2)/2 = 100 %)
    # class b, known samples 1..3: 0.7 pos (1/1) | 0.3 pos (2/2) | 0.2 neg -> AP = 100 %
    #   (ignoring the mask: 0.8 neg | 0.7 pos (1/2) | 0.3 pos (2/3) -> 58.3 %)
    # class c: no known positive -> not evaluated, per-class AP None
    # mAP = (5/6 + 1) / 2 = 11/12 = 91.667 %
    assert result["per_class_AP"]["a"] == pytest.approx(100 * 5 / 6)
    assert result["per_class_AP"]["b"] == pytest.approx(100.0)
    assert result["per_class_AP"]["c"] is None
    assert result["mAP"] == pytest.approx(100 * 11 / 12)
    assert result["num_classes_evaluated"] == 2
    assert result["num_samples"] == 4


def test_map_tie_convention_does_not_depend_on_sample_order():
    scores, targets, mask = map(np.array, (AP_SCORES, AP_TARGETS, AP_MASK))
    for order in ([3, 2, 1, 0], [2, 0, 3, 1], [1, 2, 0, 3]):
        result = multilabel_metrics(scores[order], targets[order], mask[order])
        # same 5/6 for class a whichever of the tied samples comes first
        assert result["per_class_AP"]["0"] == pytest.approx(100 * 5 / 6)
        assert result["mAP"] == pytest.approx(100 * 11 / 12)


def test_map_without_mask_counts_every_entry():
    result = multilabel_metrics(np.array(AP_SCORES), np.array(AP_TARGETS))
    # class b ranked on all 4: 0.8 neg | 0.7 pos (1/2) | 0.3 pos (2/3) | 0.2 neg -> (1/2 + 2/3)/2 = 7/12
    # class c: 0.6 neg | 0.4 pos (1/2) | ... -> AP = 1/2
    # mAP = (5/6 + 7/12 + 1/2) / 3 = (10 + 7 + 6) / 36 = 23/36
    assert result["per_class_AP"]["1"] == pytest.approx(100 * 7 / 12)
    assert result["per_class_AP"]["2"] == pytest.approx(50.0)
    assert result["mAP"] == pytest.approx(100 * 23 / 36)


def test_map_matches_the_definition_on_random_tied_scores():
    # Brute force straight from the definition: sort each class's known samples by
    # (score descending, negatives first), then average the precision at each positive.
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, c = int(rng.integers(1, 25)), int(rng.integers(1, 6))
        scores = rng.integers(-2, 3, (n, c)).astype(np.float64)  # many ties
        mask = rng.random((n, c)) < 0.8
        targets = (rng.random((n, c)) < 0.4) & mask
        result = multilabel_metrics(scores, targets.astype(int), mask.astype(int))
        for j in range(c):
            s, t = scores[mask[:, j], j], targets[mask[:, j], j]
            if not t.any():
                assert result["per_class_AP"][str(j)] is None
                continue
            t = t[np.lexsort((t, -s))]
            precision = np.cumsum(t) / np.arange(1, t.size + 1)
            assert result["per_class_AP"][str(j)] == pytest.approx(100 * precision[t].mean())


# ---------------------------------------------------------------------------------------------
# multi-label: thresholded metrics


def test_thresholded_metrics_with_a_class_never_predicted():
    logits = np.array(
        [
            # A    B     C    D
            [2.0, -1.0, 0.0, 1.0],
            [-1.0, -2.0, -1.0, -1.0],
            [1.0, -0.5, -2.0, -1.0],
            [-3.0, -3.0, 3.0, -1.0],
        ]
    )
    targets = np.array(
        [
            [1, 0, 1, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
            [0, 1, 1, 0],
        ]
    )
    result = multilabel_metrics(logits, targets)
    # predicted = logit >= 0 (0.0 counts, sample 0 class C)
    # A: pred {0,2}, pos {0,1}: Nc=1 Np=2 Ng=2
    # B: pred {},    pos {1,3}: Nc=0 Np=0->1 Ng=2
    # C: pred {0,3}, pos {0,3}: Nc=2 Np=2 Ng=2
    # D: pred {0},   pos {}:    Nc=0 Np=1 Ng=0  -> left out of CP/CR, counted in OP
    # CP = (1/2 + 0/1 + 2/2)/3 = 50 %   (the reference's mean over all 4 classes: 1.5/4 = 37.5 %)
    # CR = (1/2 + 0/2 + 2/2)/3 = 50 %;  CF1 = 2*50*50/100 = 50 %
    # OP = (1+0+2+0)/(2+0+2+1) = 3/5 = 60 %;  OR = 3/(2+2+2+0) = 50 %
    # OF1 = 2*0.6*0.5/1.1 = 54.545 %
    assert result["CP"] == pytest.approx(50.0)
    assert result["CR"] == pytest.approx(50.0)
    assert result["CF1"] == pytest.approx(50.0)
    assert result["OP"] == pytest.approx(60.0)
    assert result["OR"] == pytest.approx(50.0)
    assert result["OF1"] == pytest.approx(100 * 0.6 / 1.1)


def test_cf1_is_f1_of_averages_not_average_of_f1s():
    logits = np.array([[1.0, 1.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]])
    targets = np.array([[1, 1], [0, 1], [0, 1], [0, 1]])
    result = multilabel_metrics(logits, targets)
    # class 0: Nc=1 Np=4 Ng=1 -> P=1/4 R=1 ; class 1: Nc=1 Np=1 Ng=4 -> P=1 R=1/4
    # CP = CR = 5/8 -> CF1 = 62.5 %  (the mean of per-class F1s would be 2*(1/4)/(5/4) = 40 %)
    assert result["CF1"] == pytest.approx(62.5)


def test_no_positives_and_no_predictions_give_zero_not_nan():
    result = multilabel_metrics(np.full((3, 2), -1.0), np.zeros((3, 2)))
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CP_top3", "OF1_top3"):
        assert result[key] == 0.0
    assert result["num_classes_evaluated"] == 0
    assert result["per_class_AP"] == {"0": None, "1": None}


# 3 samples x 5 classes for the top-3 variant.
TOP3_LOGITS = np.array(
    [
        [3.0, 2.0, 1.0, 0.5, -1.0],  # top 3 = {0,1,2}; class 3 is >= 0 but 4th
        [-0.5, 2.0, 1.0, 1.0, 3.0],  # top 3 = {4,1} + tie at 1.0 between 2 and 3 -> lower index 2
        [0.5, -1.0, -2.0, -3.0, -4.0],  # top 3 = {0,1,2}, but only class 0 is >= 0
    ]
)
TOP3_TARGETS = np.array(
    [
        [0, 1, 0, 1, 0],
        [0, 0, 0, 1, 1],
        [1, 1, 0, 0, 0],
    ]
)


def test_top3_metrics_with_tie_and_negative_logits():
    result = multilabel_metrics(TOP3_LOGITS, TOP3_TARGETS)
    # top-3 predictions: s0 {0,1,2}, s1 {4,1,2}, s2 {0}
    # class 0: Np=2 (s0,s2) Ng=1 (s2)    Nc=1
    # class 1: Np=2 (s0,s1) Ng=2 (s0,s2) Nc=1
    # class 2: Np=2 (s0,s1) Ng=0         Nc=0  (not in CP/CR)
    # class 3: Np=0->1      Ng=2 (s0,s1) Nc=0  (would be 1 if the tie went to class 3)
    # class 4: Np=1 (s1)    Ng=1 (s1)    Nc=1
    # CP = (1/2 + 1/2 + 0 + 1)/4 = 50 % ; CR = (1 + 1/2 + 0 + 1)/4 = 62.5 %
    # CF1 = 2*50*62.5/112.5 = 55.556 %
    # OP = 3/7 = 42.857 % ; OR = 3/6 = 50 % ; OF1 = 2*(3/7)(1/2)/(3/7 + 1/2) = 6/13 = 46.154 %
    assert result["CP_top3"] == pytest.approx(50.0)
    assert result["CR_top3"] == pytest.approx(62.5)
    assert result["CF1_top3"] == pytest.approx(100 * 2 * 0.5 * 0.625 / 1.125)
    assert result["OP_top3"] == pytest.approx(100 * 3 / 7)
    assert result["OR_top3"] == pytest.approx(50.0)
    assert result["OF1_top3"] == pytest.approx(100 * 6 / 13)
    # plain threshold, same data: predictions s0 {0,1,2,3}, s1 {1,2,3,4}, s2 {0}
    # Nc = [1,1,0,2,1], Np = [2,2,2,2,1], Ng = [1,2,0,2,1]
    # CP = (1/2 + 1/2 + 1 + 1)/4 = 75 % ; CR = (1 + 1/2 + 1 + 1)/4 = 87.5 % ; OP = 5/9 ; OR = 5/6
    assert result["CP"] == pytest.approx(75.0)
    assert result["CR"] == pytest.approx(87.5)
    assert result["OP"] == pytest.approx(100 * 5 / 9)
    assert result["OR"] == pytest.approx(100 * 5 / 6)


def test_top3_is_taken_over_all_scores_and_unknown_labels_are_not_counted():
    mask = np.ones_like(TOP3_TARGETS)
    mask[0, 1] = 0  # sample 0, class 1 unknown: it still holds a top-3 slot (class 3 stays out)
    result = multilabel_metrics(TOP3_LOGITS, TOP3_TARGETS, mask)
    # class 1 now: Np=1 (s1) Ng=1 (s2) Nc=0; the other classes as before
    # Nc = [1,0,0,0,1], Np = [2,1,2,0,1], Ng = [1,1,0,2,1]
    # CP = (1/2 + 0 + 0 + 1)/4 = 37.5 % ; CR = (1 + 0 + 0 + 1)/4 = 50 %
    # OP = 2/6 = 33.333 % ; OR = 2/5 = 40 %
    # (a top 3 over known labels only would put class 3 in s0's top 3 and give Nc[3] = 1)
    assert result["CP_top3"] == pytest.approx(37.5)
    assert result["CR_top3"] == pytest.approx(50.0)
    assert result["OP_top3"] == pytest.approx(100 * 2 / 6)
    assert result["OR_top3"] == pytest.approx(40.0)


def test_threshold_argument_moves_the_cut():
    result = multilabel_metrics(TOP3_LOGITS, TOP3_TARGETS, threshold=1.5)
    # predicted (>= 1.5): s0 {0,1}, s1 {1,4}, s2 {}; Nc = [0,1,0,0,1], Np = [1,2,0,0,1], Ng = [1,2,0,2,1]
    # OP = 2/4 = 50 % ; OR = 2/6 = 33.333 %
    assert result["OP"] == pytest.approx(50.0)
    assert result["OR"] == pytest.approx(100 / 3)


# ---------------------------------------------------------------------------------------------
# DeepFashion

# 3 images x 6 attributes: texture (0,1), fabric (2,3,4), style (5); no shape or part attributes.
ATTR_TYPES = [1, 1, 2, 2, 2, 5]
ATTR_SCORES = np.array(
    [
        [0.9, 0.1, 0.8, 0.7, 0.2, 0.5],
        [0.2, 0.6, 0.1, 0.9, 0.3, 0.4],
        [0.5, 0.4, 0.3, 0.2, 0.6, 0.1],
    ]
)
ATTR_TARGETS = np.array(
    [
        [1, 0, 0, 1, 0, 1],
        [0, 1, 0, 0, 1, 0],
        [0, 1, 1, 0, 0, 1],
    ]
)


def test_attribute_recall_pooled_per_attribute_and_mmfashion():
    result = deepfashion_metrics(None, None, ATTR_SCORES, ATTR_TARGETS, ATTR_TYPES, ks=(1, 2), mmfashion_top=2)
    # 8 positives. All attributes ranked together:
    # top-1: img0 -> a0 (hit), img1 -> a3 (miss), img2 -> a4 (miss): 1/8 = 12.5 %
    # top-2: img0 {a0,a2} 1 hit, img1 {a3,a1} 1 hit, img2 {a4,a0} 0: 2/8 = 25 %
    assert result["attr_top1"] == pytest.approx(12.5)
    assert result["attr_top2"] == pytest.approx(25.0)
    # per attribute (positives: a0 1, a1 2, a2 1, a3 1, a4 1, a5 2):
    # top-1 recalls [1,0,0,0,0,0] -> mean 1/6 = 16.667 % (not the pooled 12.5 %)
    # top-2 recalls [1,1/2,0,0,0,0] -> mean 1.5/6 = 25 %
    assert result["attr_top1_mean_per_attribute"] == pytest.approx(100 / 6)
    assert result["attr_top2_mean_per_attribute"] == pytest.approx(25.0)
    # mmfashion, best 2: top-1 mean(1, 0) = 50 %; top-2 mean(1, 1/2) = 75 %
    assert result["attr_top1_mmfashion"] == pytest.approx(50.0)
    assert result["attr_top2_mmfashion"] == pytest.approx(75.0)
    # per type, ranked within the type:
    # texture [a0,a1]: top-1 img0 a0 hit, img1 a1 hit, img2 a0 miss -> 2/3 ; top-2 = all -> 3/3
    # fabric [a2,a3,a4]: top-1 img0 a2, img1 a3, img2 a4 all miss -> 0 ; top-2 each image 1 hit -> 3/3
    # style [a5]: k clipped to 1 -> 2/2 ; shape/part: no attributes -> 0.0
    assert result["texture_top1"] == pytest.approx(100 * 2 / 3)
    assert result["texture_top2"] == pytest.approx(100.0)
    assert result["fabric_top1"] == pytest.approx(0.0)
    assert result["fabric_top2"] == pytest.approx(100.0)
    assert result["style_top1"] == pytest.approx(100.0)
    assert result["shape_top2"] == 0.0 and result["part_top2"] == 0.0
    assert result["num_attribute_positives"] == 8


def test_mmfashion_best_n_is_clipped_to_available_attributes():
    result = deepfashion_metrics(None, None, ATTR_SCORES, ATTR_TARGETS, ATTR_TYPES, ks=(1,))
    # default best 50 > 6 attributes -> mean of all 6, the per-attribute mean
    assert result["attr_top1_mmfashion"] == pytest.approx(100 / 6)


def test_attribute_mask_removes_positives():
    mask = np.ones_like(ATTR_TARGETS)
    mask[0, 0] = 0  # the only top-1 hit becomes unknown
    result = deepfashion_metrics(
        None, None, ATTR_SCORES, ATTR_TARGETS, ["texture", "texture", "fabric", "fabric", "fabric", "style"],
        ks=(1,), attr_mask=mask,
    )
    # 7 positives, no top-1 hit -> 0 % ; a0 has no positive left, the other 5 recall 0 -> 0 %
    # texture top-1: positives img1 a1, img2 a1 ; img1 -> a1 hit, img2 -> a0 miss -> 1/2
    assert result["attr_top1"] == 0.0
    assert result["attr_top1_mean_per_attribute"] == 0.0
    assert result["texture_top1"] == pytest.approx(50.0)
    assert result["num_attribute_positives"] == 7


def test_default_keys():
    result = deepfashion_metrics(None, None, ATTR_SCORES, ATTR_TARGETS, ATTR_TYPES)
    for prefix in ("attr", "texture", "fabric", "shape", "part", "style"):
        assert f"{prefix}_top3" in result and f"{prefix}_top5" in result
    assert "attr_top5_mmfashion" in result and "attr_top3_mean_per_attribute" in result


def test_category_topk_pooled_with_missing_category():
    logits = np.array(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0],  # true 2 -> rank 3
            [1.0, 2.0, 3.0, 4.0, 5.0],  # true 0 -> rank 5
            [0.0, 0.0, 0.0, 0.0, 1.0],  # no category (-1): left out
            [1.0, 0.0, 0.0, 0.0, 0.0],  # true 0 -> rank 1
            [0.0, 1.0, 1.0, 1.0, 1.0],  # true 4, tied with 1,2,3 -> lower indices win: rank 4
        ]
    )
    targets = torch.tensor([2, 0, -1, 0, 4])
    result = deepfashion_metrics(logits, targets, None, None, None, ks=(1, 3, 5))
    # 4 images with a category: top-1 {img3} 1/4 ; top-3 {img0, img3} 2/4 ; top-5 all 4/4
    assert result["category_top1"] == pytest.approx(25.0)
    assert result["category_top3"] == pytest.approx(50.0)
    assert result["category_top5"] == pytest.approx(100.0)
    assert result["num_category_images"] == 4


# ---------------------------------------------------------------------------------------------
# landmarks


def _landmark_case():
    true = np.zeros((2, 8, 2))
    pred = np.zeros((2, 8, 2))
    visibility = np.full((2, 8), 2)
    # image 0 is 200 wide, 100 high
    true[0, 0], pred[0, 0], visibility[0, 0] = (100, 50), (106, 54), 0  # (6/200, 4/100) -> 0.05
    true[0, 1], pred[0, 1], visibility[0, 1] = (20, 20), (20, 30), 0  # (0, 10/100) -> 0.1
    true[0, 2], pred[0, 2], visibility[0, 2] = (10, 10), (110, 10), 1  # occluded: ignored
    # image 1 is 300 x 300
    true[1, 0], pred[1, 0], visibility[1, 0] = (150, 150), (210, 150), 0  # 60/300 -> 0.2
    true[1, 2], pred[1, 2], visibility[1, 2] = (40, 40), (40, 40), 0  # 0
    true[1, 5] = np.nan  # not present: its coordinates are never read
    sizes = np.array([[200, 100], [300, 300]])
    return pred, true, visibility, sizes


def test_landmark_errors_and_detection_rates():
    pred, true, visibility, sizes = _landmark_case()
    result = landmark_metrics(pred, true, visibility, sizes, thresholds=(0.06, 0.15))
    # visible distances 0.05, 0.1, 0.2, 0 -> mean 0.35/4 = 0.0875
    # (dividing both offsets by the width would give sqrt(0.03^2 + 0.02^2) = 0.036 for the first)
    assert result["normalized_error"] == pytest.approx(0.0875)
    assert result["normalized_error_left_collar"] == pytest.approx((0.05 + 0.2) / 2)
    assert result["normalized_error_right_collar"] == pytest.approx(0.1)
    assert result["normalized_error_left_sleeve"] == pytest.approx(0.0)  # occluded image-0 one left out
    assert result["normalized_error_right_hem"] is None
    # <= 0.06: {0.05, 0} 2/4 ; <= 0.15: {0.05, 0.1, 0} 3/4
    assert result["detection_rate@0.06"] == pytest.approx(50.0)
    assert result["detection_rate@0.15"] == pytest.approx(75.0)
    assert result["num_visible_landmarks"] == 4
    assert normalized_error(pred, true, visibility, sizes) == pytest.approx(0.0875)
    assert set(landmark_metrics(pred, true, visibility, sizes)) >= {"detection_rate@0.05", "detection_rate@0.1"}


def test_landmark_six_points_need_names_and_sizes_broadcast():
    pred, true, visibility, _ = _landmark_case()
    pred, true, visibility = pred[:1, :6], true[:1, :6], visibility[:1, :6]
    with pytest.raises(ValueError, match="landmark_names"):
        landmark_metrics(pred, true, visibility, (200, 100))
    names = list(LANDMARK_NAMES[:4]) + ["left_hem", "right_hem"]
    result = landmark_metrics(pred, true, visibility, (200, 100), landmark_names=names)
    # image 0 alone: 0.05 and 0.1 -> 0.075
    assert result["normalized_error"] == pytest.approx(0.075)
    assert result["normalized_error_left_hem"] is None


def test_landmark_input_errors():
    pred, true, visibility, sizes = _landmark_case()
    with pytest.raises(ValueError, match="visibility: expected DeepFashion codes"):
        landmark_metrics(pred, true, visibility == 0, sizes)
    with pytest.raises(ValueError, match="image_sizes"):
        landmark_metrics(pred, true, visibility, sizes[:1])
    with pytest.raises(ValueError, match="no visible landmark"):
        normalized_error(pred, true, np.full((2, 8), 1), sizes)


# ---------------------------------------------------------------------------------------------
# numpy and torch inputs, errors


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _same(a[key], b[key])
        elif a[key] is None:
            assert b[key] is None
        else:
            assert math.isclose(a[key], b[key], rel_tol=1e-12, abs_tol=1e-12), key


def test_numpy_and_torch_inputs_agree():
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((30, 7)).astype(np.float32)
    targets = (rng.random((30, 7)) < 0.3).astype(np.float32)
    mask = (rng.random((30, 7)) < 0.8).astype(np.float32)
    _same(
        multilabel_metrics(scores, targets, mask),
        multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(targets), torch.from_numpy(mask).bool()),
    )
    cat_logits = rng.standard_normal((30, 5)).astype(np.float32)
    cat = rng.integers(-1, 5, 30)
    types = [1, 2, 3, 4, 5, 1, 2]
    _same(
        deepfashion_metrics(cat_logits, cat, scores, targets, types, attr_mask=mask),
        deepfashion_metrics(
            torch.from_numpy(cat_logits), torch.from_numpy(cat), torch.from_numpy(scores),
            torch.from_numpy(targets).long(), torch.tensor(types), attr_mask=torch.from_numpy(mask),
        ),
    )
    pred, true, visibility, sizes = _landmark_case()
    true = np.nan_to_num(true)
    _same(
        landmark_metrics(pred, true, visibility, sizes),
        landmark_metrics(*(torch.from_numpy(x) for x in (pred, true, visibility, sizes))),
    )


def test_clear_errors_for_bad_inputs():
    scores = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"targets: expected the same shape as scores \(4, 3\), found \(4, 2\)"):
        multilabel_metrics(scores, np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"mask: expected the same shape"):
        multilabel_metrics(scores, np.zeros((4, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"scores: expected a 2-d array"):
        multilabel_metrics(np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match=r"targets: expected only 0/1 values, found \[-1\.0\]"):
        multilabel_metrics(scores, -np.ones((4, 3)))
    with pytest.raises(ValueError, match="label_names: expected 3 names"):
        multilabel_metrics(scores, np.zeros((4, 3)), label_names=["a"])
    nan_scores = scores.copy()
    nan_scores[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"scores: expected finite scores, found NaN at index \(1, 2\)"):
        multilabel_metrics(nan_scores, np.zeros((4, 3)))
    unknown = np.ones((4, 3))
    unknown[1, 2] = 0
    multilabel_metrics(nan_scores, np.zeros((4, 3)), unknown)  # a NaN on an unknown entry is ignored
    # ... and ranks last in the top 3: with it last, top 3 = classes 1,2,3, all >= 0 and positive,
    # so OR_top3 = 3/3 = 100 % (a NaN taken as the maximum would push class 1 out: 2/3).
    result = multilabel_metrics(np.array([[np.nan, 1.0, 2.0, 3.0]]), np.array([[0, 1, 1, 1]]), np.array([[0, 1, 1, 1]]))
    assert result["OR_top3"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="category_targets: expected 4 indices"):
        deepfashion_metrics(np.zeros((4, 5)), np.zeros(3), None, None, None)
    with pytest.raises(ValueError, match=r"category_targets: expected indices in 0..4"):
        deepfashion_metrics(np.zeros((4, 5)), np.array([0, 1, 5, -2]), None, None, None)
    with pytest.raises(ValueError, match="attr_types: expected one type per attribute"):
        deepfashion_metrics(None, None, ATTR_SCORES, ATTR_TARGETS, ATTR_TYPES[:5])
    with pytest.raises(ValueError, match=r"attr_types\[0\]"):
        deepfashion_metrics(None, None, ATTR_SCORES, ATTR_TARGETS, ["colour"] + ATTR_TYPES[1:])
    with pytest.raises(ValueError, match="ks"):
        deepfashion_metrics(None, None, ATTR_SCORES, ATTR_TARGETS, ATTR_TYPES, ks=(0,))


def test_topk_tie_rule_also_holds_with_minus_infinity_scores():
    # -inf scores take the partition code path instead of the argmax one; the tie rule must match.
    logits = np.array([[-np.inf, 1.0, 1.0, 1.0, 1.0], [-np.inf, 2.0, 1.0, 1.0, 1.0]])
    result = deepfashion_metrics(logits, np.array([4, 3]), None, None, None, ks=(3,))
    # row 0: four-way tie at 1.0 for three places -> classes 1,2,3; true 4 is out
    # row 1: class 1, then a three-way tie at 1.0 for two places -> classes 2,3; true 3 is in
    # top-3 = 1/2 = 50 %
    assert result["category_top3"] == pytest.approx(50.0)


def test_clothing_metrics_give_category_top1_and_leave_out_attributes_nobody_annotated():
    import torch

    from fashionlens.training import clothing_metrics

    # 4 photos, 3 categories; the last has no category (-1). Top-1 right for photos 0 and 2 of 3 -> 66.67;
    # photo 1's true category (2) is second -> top-3 100.
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.5, 4.0], [9.0, 0.0, 0.0]])
    outputs = {"category_logits": logits, "category": torch.tensor([0, 2, 2, -1]),
               "attr_scores": torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]), "labels": torch.zeros(4, 2),
               "mask": torch.zeros(4, 2)}
    only_categories = clothing_metrics(outputs, ["texture", "part"])
    assert only_categories["category_top1"] == pytest.approx(200 / 3)
    assert only_categories["category_top3"] == pytest.approx(100.0)
    # No attribute is annotated for any photo here (a class-folder dataset): no attribute figure at all,
    # not zeros that read as a model that never finds one.
    assert not [key for key in only_categories if key.startswith(("attr", "texture", "part"))]
    outputs["labels"] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    outputs["mask"] = torch.ones(4, 2)
    with_attributes = clothing_metrics(outputs, ["texture", "part"])
    # Attribute 0 ranks pos, neg, pos: AP (1 + 2/3) / 2; attribute 1 ranks neg, neg, pos: AP 1/3.
    assert with_attributes["attr_mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert with_attributes["category_top1"] == pytest.approx(200 / 3)
