"""Attribute groups ("exactly one of these", DeepFashion-fine's six): the loss, the metrics and the
Predictor's output, against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fashionlens.inference import Predictor
from fashionlens.metrics import attribute_group_metrics, group_log_priors
from fashionlens.models.landmark_net import clothing_loss


def test_group_metrics_hand_worked():
    groups = {"a": [0, 1, 2], "b": [3, 4]}
    names = ["x", "y", "z", "p", "q"]
    targets = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [1, 0, 0, 0, 1], [0, 0, 1, 0, 0]])
    mask = np.ones_like(targets)
    mask[3, 3:] = 0  # photo 3's group b is unknown: it counts in group a only
    scores = np.array([[0.9, 0.1, 0.0, 0.2, 0.8],   # a: x right, b: q wrong
                       [0.2, 0.7, 0.1, 0.1, 0.9],   # a: y right, b: q right
                       [0.3, 0.6, 0.1, 0.4, 0.6],   # a: y wrong, b: q right
                       [0.5, 0.2, 0.3, 0.9, 0.1]])  # a: x wrong
    result = attribute_group_metrics(scores, targets, mask, groups, names)
    assert result["a_accuracy"] == pytest.approx(50.0)
    assert result["b_accuracy"] == pytest.approx(200 / 3)
    assert [result[f"recall_{n}"] for n in names] == pytest.approx([50.0, 100.0, 0.0, 0.0, 100.0])
    assert result["mean_class_accuracy"] == pytest.approx(50.0)
    assert result["mean_group_accuracy"] == pytest.approx((50.0 + 200 / 3) / 2)


def test_the_balanced_decision_subtracts_each_class_log_prior():
    # Training counts: group a 3 / 1 / 0 -> add-one 4 / 2 / 1 of 7; group b 5 / 5 -> 1/2 each; column 5 in none.
    priors = group_log_priors([3, 1, 0, 5, 5, 9], {"a": [0, 1, 2], "b": [3, 4]})
    assert priors == pytest.approx(np.log([4 / 7, 2 / 7, 1 / 7, 0.5, 0.5, 1.0]))
    # Photo 0 (true y): logits x 0.5, y 0: plain argmax x; balanced 0.5 - ln(4/7) = 1.06 < 0 - ln(2/7) = 1.25: y.
    # Photo 1 (true x): logits x 1.0, y 0: balanced 1.56 > 1.25: x. Photo 2 (true z): z needs ln 4 over x.
    scores = np.array([[0.5, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0 - math.log(4.0) + 0.01]])
    targets = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    result = attribute_group_metrics(scores, targets, None, {"a": [0, 1, 2]}, ["x", "y", "z"], train_counts=[3, 1, 0])
    assert result["mean_class_accuracy"] == pytest.approx(100 / 3)  # x only
    assert result["balanced_mean_class_accuracy"] == pytest.approx(100.0)
    assert result["balanced_mean_group_accuracy"] == pytest.approx(100.0)
    assert "balanced_mean_class_accuracy" not in attribute_group_metrics(scores, targets, None, {"a": [0, 1, 2]},
                                                                         ["x", "y", "z"])


def test_group_metrics_label_without_positive_is_left_out_of_the_mean():
    result = attribute_group_metrics(np.array([[0.9, 0.1, 0.0]]), np.array([[1, 0, 0]]), None, {"g": [0, 1, 2]},
                                     ["x", "y", "z"])
    assert result["recall_y"] is None and result["recall_z"] is None
    assert result["mean_class_accuracy"] == pytest.approx(100.0)


def test_group_metrics_names_count_is_checked():
    with pytest.raises(ValueError, match="label_names"):
        attribute_group_metrics(np.zeros((1, 3)), np.zeros((1, 3)), None, {"g": [0, 1, 2]}, ["x"])


def test_grouped_attributes_take_a_softmax_and_leave_the_bce():
    # Group [0, 1] with logits (0, ln 3), target 1: -log(3/4); group [2, 3, 4] with equal logits,
    # target 2: ln 3; their mean is ln 2. Column 5 is independent: BCE at logit 0 is ln 2 (weights 1).
    logits = torch.tensor([[0.0, math.log(3.0), 0.0, 0.0, 0.0, 0.0]])
    batch = {"labels": torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0, 1.0]]), "label_mask": torch.ones(1, 6)}
    groups = [torch.tensor([0, 1]), torch.tensor([2, 3, 4])]
    total, parts = clothing_loss({"attribute_logits": logits}, batch, attribute_groups=groups,
                                 attr_pos_weight=torch.ones(6), attr_neg_weight=torch.ones(6))
    assert parts["groups"].item() == pytest.approx(math.log(2.0))
    assert parts["attribute"].item() == pytest.approx(math.log(2.0))
    assert total.item() == pytest.approx(1.0 * math.log(2.0) + 20.0 * math.log(2.0))


def test_a_photo_with_an_unknown_group_is_left_out_of_that_group():
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, -5.0]])
    batch = {"labels": torch.tensor([[0.0, 1.0], [0.0, 0.0]]), "label_mask": torch.tensor([[1.0, 1.0], [0.0, 0.0]])}
    _, parts = clothing_loss({"attribute_logits": logits}, batch, attribute_groups=[torch.tensor([0, 1])])
    assert parts["groups"].item() == pytest.approx(-math.log(0.75))
    assert parts["attribute"].item() == 0.0


def _predictor(**kwargs) -> Predictor:
    labels = {"label_names": ["long_sleeve", "sleeveless", "solid", "floral", "shiny"],
              "display_names": ["long sleeve", "sleeveless", "solid", "floral", "shiny"],
              "attribute_types": ["sleeve", "sleeve", "texture", "texture", "finish"],
              "attribute_groups": ["sleeve", "texture"], "category_names": ["upper_body", "lower_body"],
              "landmark_names": ["left_collar", "left_waistline"],
              "landmarks_by_category": {"upper_body": ["left_collar"], "lower_body": ["left_waistline"]},
              "attribute_counts": [90, 10, 50, 50, 7]}
    heatmaps = np.zeros((2, 4, 4), dtype=np.float32)
    heatmaps[0, 1, 2] = 0.9  # left collar at cell (2, 1)
    heatmaps[1, 3, 0] = 0.8  # a confident waistline: not a landmark of an upper-body garment

    def runtime(batch):
        return {"category_logits": np.array([[2.0, 0.0]], dtype=np.float32),
                "attribute_logits": np.array([[math.log(3.0), 0.0, 0.0, 0.0, 0.0]], dtype=np.float32),
                "heatmaps": heatmaps[None]}

    return Predictor(runtime, {"task": "clothing", "image_size": 8}, labels, {"image_size": 8}, **kwargs)


def test_balanced_groups_name_the_class_that_is_rare_in_training():
    # Sleeve logits (ln 3, 0) with training counts 90 / 10 (add-one 91 / 11 of 102): balanced logits
    # ln 3 - ln(91/102) and -ln(11/102), so sleeveless has softmax (1/11) / (3/91 + 1/11) = 91 / (33 + 91).
    result = _predictor(balanced_groups=True)(torch.zeros(3, 8, 16, dtype=torch.uint8))
    assert result.attribute_groups["sleeve"].name == "sleeveless"
    assert result.attribute_groups["sleeve"].score == pytest.approx(91 / (91 + 33))
    assert result.attribute_groups["texture"].name == "solid"  # equal counts: the same answer as before
    from fashionlens.errors import ModelDirError

    labels = {"label_names": ["a", "b"], "attribute_types": ["g", "g"], "attribute_groups": ["g"]}
    with pytest.raises(ModelDirError, match="attribute_counts"):
        Predictor(lambda batch: {}, {"task": "clothing"}, labels, {"image_size": 8}, balanced_groups=True)


def test_predictions_carry_the_groups_with_softmax_scores():
    result = _predictor()(torch.zeros(3, 8, 16, dtype=torch.uint8)).to_dict()
    assert result["attribute_groups"]["sleeve"]["name"] == "long_sleeve"
    assert result["attribute_groups"]["sleeve"]["score"] == pytest.approx(0.75)
    assert result["attribute_groups"]["texture"]["score"] == pytest.approx(0.5)  # a tie: the first label
    assert result["attribute_groups"]["texture"]["name"] == "solid"
    assert "finish" not in result["attribute_groups"]  # an independent attribute keeps its sigmoid
    assert result["attributes_by_type"]["finish"][0]["score"] == pytest.approx(0.5)
    sleeve = result["attributes_by_type"]["sleeve"]
    assert [label["score"] for label in sleeve] == pytest.approx([0.75, 0.25])


def test_landmarks_the_predicted_garment_type_lacks_are_not_visible():
    result = _predictor()(torch.zeros(3, 8, 16, dtype=torch.uint8))
    collar, waistline = result.landmarks
    assert collar.visible and not waistline.visible
    # Cell (2, 1) of a 4 x 4 heatmap is input pixel ((2 + 0.5) * 2 - 0.5, (1 + 0.5) * 2 - 0.5) = (4.5, 2.5)
    # of the 8 x 8 input (no subpixel shift: its neighbours are 0); the photo is 16 wide, 8 high.
    assert (collar.x, collar.y) == pytest.approx(((4.5 + 0.5) * 2 - 0.5, 2.5))


def test_labels_json_groups_must_be_attribute_types(tmp_path):
    from fashionlens.errors import ModelDirError
    from fashionlens.modeldir import _check_labels

    labels = {"label_names": ["long_sleeve", "solid"], "attribute_types": ["sleeve", "texture"]}
    _check_labels(tmp_path / "labels.json", {**labels, "attribute_groups": ["sleeve"]})
    with pytest.raises(ModelDirError, match=r"labels.json: 'attribute_groups': \['fit'\] are not in 'attribute_types'"):
        _check_labels(tmp_path / "labels.json", {**labels, "attribute_groups": ["sleeve", "fit"]})
    with pytest.raises(ModelDirError, match="landmarks_by_category"):
        _check_labels(tmp_path / "labels.json", {**labels, "landmarks_by_category": ["left_collar"]})
    _check_labels(tmp_path / "labels.json", {**labels, "attribute_counts": [3, 0]})
    for counts in ([3], [3, -1], [3, 0.5], "3 0"):
        with pytest.raises(ModelDirError, match=r"'attribute_counts': expected a list of 2 training counts"):
            _check_labels(tmp_path / "labels.json", {**labels, "attribute_counts": counts})


@pytest.mark.slow
def test_a_deepfashion_fine_model_trains_evaluates_and_predicts_groups_and_landmarks(shared_data, tmp_path):
    """The whole path on the real files: 48 training photos, 64 px, one epoch; evaluate (which once
    crashed on the group names) and predict --json give the six groups and the eight named landmarks."""
    import json
    import subprocess
    import sys

    from fashionlens.config import ClothingConfig, DataSource, override
    from fashionlens.training import train_clothing
    from fashionlens.training.evaluate import evaluate_model_dir

    root = shared_data / "deepfashion-fine"
    config = override(ClothingConfig(), {
        "out": tmp_path / "run", "data.sources": [DataSource(root, "deepfashion-fine")], "data.limit": 48,
        "data.workers": 0, "data.batch_size": 16, "backbone.image_size": 64, "backbone.pretrained": "shipped",
        "recipe.epochs": 1, "model.head_width": 16, "model.upsample_width": 8})
    run = train_clothing(config)
    labels = json.loads((run / "model" / "labels.json").read_text())
    assert labels["attribute_groups"] == ["texture", "sleeve", "length", "neckline", "fabric", "fit"]
    assert labels["landmarks_by_category"]["lower_body"] == ["left_waistline", "right_waistline", "left_hem",
                                                             "right_hem"]
    # Every training photo has one class in each group: each group's training counts add up to the photos.
    types, counts = labels["attribute_types"], labels["attribute_counts"]
    assert {sum(c for c, t in zip(counts, types) if t == group) for group in labels["attribute_groups"]} == {48}
    metrics = evaluate_model_dir(run / "model", root, "deepfashion-fine", split="val", batch_size=64)
    assert metrics["num_images"] == 500 and metrics["mean_class_accuracy_classes"] == 25  # no square neckline in val
    assert 0.0 <= metrics["balanced_mean_class_accuracy"] <= 100.0
    assert 0.0 <= metrics["mean_class_accuracy"] <= 100.0 and metrics["normalized_error"] > 0.0
    photo = root / "img" / "00000.jpg"
    out = subprocess.run([sys.executable, "-m", "fashionlens.cli", "predict", str(run / "model"), str(photo), "--json",
                          "--top-k", "1", "--draw-landmarks", "--explain-dir", str(tmp_path / "png")],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.splitlines()[0])
    assert list(result["attribute_groups"]) == labels["attribute_groups"]
    assert all(len(labels_of_type) == 1 for labels_of_type in result["attributes_by_type"].values())  # --top-k 1
    assert [lm["name"] for lm in result["landmarks"]] == labels["landmark_names"]
    assert (tmp_path / "png" / "00000.landmarks.png").is_file()


def test_trimmed_lists_keep_the_groups_and_the_garment_type():
    """top_k=0 raised IndexError (the group winner was the trimmed list's first), and a threshold above
    the top category switched the landmark hiding off; both now read every score."""
    predictor = _predictor()
    result = predictor(torch.zeros(3, 8, 16, dtype=torch.uint8), top_k=0)
    assert result.attribute_groups["sleeve"].name == "long_sleeve" and result.attributes_by_type["sleeve"] == []
    result = predictor(torch.zeros(3, 8, 16, dtype=torch.uint8), threshold=0.99)
    assert [lm.visible for lm in result.landmarks] == [True, False]
