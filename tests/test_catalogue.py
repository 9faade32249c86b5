"""Tags in a catalogue's shape: the category first, attributes grouped, attributes that do not apply
to the photo's garments not marked (fashionlens.catalogue and the Predictor)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fashionlens.calibration import Thresholds
from fashionlens.catalogue import catalogue_labels
from fashionlens.cli_predict import csv_row, parquet_row, text_block
from fashionlens.data import open_dataset
from fashionlens.errors import ModelDirError
from fashionlens.inference import Predictor
from fashionlens.modeldir import _check_labels

NAMES = ["dress", "shoes", "hat", "heels", "bag", "sleeve_long", "sleeve_short", "collar", "logo"]


def test_catalogue_labels_groups_and_applies_to_by_hand() -> None:
    # Rows: a dress photo with long sleeves and a bag (sleeves annotated); a street photo with shoes,
    # heels and a bag (sleeves unknown); a hat photo (only the category known); "logo" is never
    # annotated together with a category.
    labels = np.array([[1, 0, 0, 0, 1, 1, 0, 1, 0],
                       [0, 1, 0, 1, 1, 0, 0, 0, 0],
                       [0, 0, 1, 0, 0, 0, 0, 0, 0],
                       [0, 0, 0, 0, 0, 0, 0, 0, 1]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0],
                     [1, 1, 1, 1, 1, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0, 0, 0, 0, 0],
                     [0, 0, 0, 0, 0, 0, 0, 0, 1]])
    out = catalogue_labels(NAMES, ["dress", "shoes", "hat", "tee"], labels, mask)
    assert out["groups"] == {"category": ["dress", "shoes", "hat"], "details": ["bag", "collar"],
                             "garments": ["heels", "logo"], "sleeve": ["sleeve_long", "sleeve_short"]}
    # Seen on a full-body garment only: applies to the dress; bag was seen with the dress and the shoes.
    assert out["applies_to"] == {"bag": ["dress", "shoes"], "sleeve_long": ["dress"], "sleeve_short": [],
                                 "collar": ["dress"]}
    assert out["exclusive_groups"] == ["sleeve"]  # no photo has two sleeve lengths
    labels[2, 5:7] = mask[2, 5:7] = 1  # now one does
    assert catalogue_labels(NAMES, ["dress", "shoes", "hat"], labels, mask)["exclusive_groups"] == []
    assert catalogue_labels(NAMES, [], labels, mask) == {}


def _predictor(logits: list[list[float]]) -> Predictor:
    labels = {"label_names": NAMES, "display_names": [n.replace("_", " ") for n in NAMES],
              "groups": {"category": ["dress", "shoes", "hat"], "garments": ["heels", "bag", "logo", "collar"],
                         "sleeve": ["sleeve_long", "sleeve_short"]},
              "applies_to": {"sleeve_long": ["dress"], "sleeve_short": ["dress"], "collar": ["dress"]},
              "exclusive_groups": ["sleeve"]}
    _check_labels(Path("labels.json"), labels)
    outputs = {"logits": np.array(logits, dtype=np.float32)}
    thresholds = Thresholds(tuple(NAMES), (0.5,) * len(NAMES))
    return Predictor(lambda batch: outputs, {"task": "style"}, labels, {"image_size": 32}, thresholds=thresholds)


def test_the_category_comes_first_and_sleeves_on_shoes_are_not_marked() -> None:
    # Photo 1: shoes (best garment), long sleeves scored high: not marked. Photo 2: the same, but a dress is
    # also above its threshold (a street photo): the sleeves belong to the dress and stay marked, but
    # only the best of the exclusive sleeve group (short sleeves are above their threshold too).
    predictor = _predictor([[-3.0, 4.0, -3.0, 1.0, 1.0, 3.0, -2.0, 2.0, 0.5],
                            [1.0, 4.0, -3.0, 1.0, 1.0, 3.0, 2.5, 2.0, 0.5]])
    shoes, street = predictor([torch.zeros(3, 40, 30, dtype=torch.uint8)] * 2)
    assert shoes.category.name == "shoes" and shoes.category.score == pytest.approx(1 / (1 + np.exp(-4.0)))
    assert [label.name for label in shoes.predicted] == ["shoes", "heels", "bag", "logo"]
    assert {group: [label.name for label in labels] for group, labels in shoes.groups.items()} == {
        "garments": ["collar", "heels", "bag", "logo", "dress", "hat"], "sleeve": ["sleeve_long", "sleeve_short"]}
    assert [label.name for label in street.predicted] == ["shoes", "sleeve_long", "collar", "dress", "heels", "bag",
                                                           "logo"]
    record = json.loads(json.dumps(shoes.to_dict()))
    assert record["category"] == {"name": "shoes", "display_name": "shoes", "score": shoes.category.score}
    assert record["groups"]["sleeve"][0] == {"name": "sleeve_long", "display_name": "sleeve long",
                                             "score": pytest.approx(1 / (1 + np.exp(-3.0))), "logit": 3.0,
                                             "threshold": 0.5, "predicted": False}
    assert text_block(shoes).splitlines()[:3] == ["<Tensor>", "  shoes 0.982  (category)",
                                                  "  garments: heels 0.73, bag 0.73, logo 0.62"]
    row = parquet_row(shoes, "m")
    assert (row["category"], row["predicted"]) == ("shoes", ["shoes", "heels", "bag", "logo"])
    assert csv_row(shoes, ["path", "category", "category_score", "label_1"]) == [
        "<Tensor>", "shoes", f"{shoes.category.score:.6f}", "shoes"]


def test_a_model_without_groups_predicts_as_before() -> None:
    labels = {"label_names": NAMES}
    outputs = {"logits": np.zeros((1, len(NAMES)), dtype=np.float32)}
    prediction = Predictor(lambda batch: outputs, {"task": "style"}, labels, {"image_size": 32})(
        torch.zeros(3, 8, 8, dtype=torch.uint8))
    assert prediction.category is None and prediction.groups == {} and "category" not in prediction.to_dict()


@pytest.mark.parametrize("change, message", [
    ({"groups": {"category": ["dress", "gown"]}}, "'groups': every name must be one of 'label_names'"),
    ({"groups": {"category": ["dress"], "x": ["dress"]}}, "in one group at most"),
    ({"groups": {"category": ["dress"]}, "applies_to": {"collar": ["shoes"]}}, "'applies_to.collar'"),
    ({"groups": ["dress"]}, "'groups'"),
    ({"groups": {"category": ["dress"]}, "exclusive_groups": ["sleeve"]}, "'exclusive_groups'"),
])
def test_bad_groups_are_refused_naming_the_key(change: dict, message: str) -> None:
    with pytest.raises(ModelDirError, match=message):
        _check_labels(Path("labels.json"), {"label_names": NAMES, **change})


def test_clothing_dataset_layout_reads_classes_and_leaves_out_non_classes(shared_data: Path) -> None:
    dataset = open_dataset(shared_data / "clothing-dataset-rest", "clothing-dataset")
    assert len(dataset) == 1058 and len(dataset.label_names) == 17 and "polo" in dataset.label_names
    assert dataset.notes == ["left out 302 row(s) without a garment class: {'Not sure': 228, 'Other': 67, 'Skip': 7}"]
    first = dataset.records[0]
    assert first.labels.sum() == 1 and first.label_mask.all() and dataset.label_names[first.category] in (
        "blazer", "blouse", "body", "dress", "hat", "hoodie", "longsleeve", "outwear", "pants", "polo", "shirt",
        "shoes", "shorts", "skirt", "t-shirt", "top", "undershirt")


def test_clothing_dataset_names_the_line_of_a_missing_photo(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images.csv").write_text("image,sender_id,label,kids\nabc,1,Other,False\nxyz,1,Pants,False\n")
    with pytest.raises(Exception, match=r"images.csv:3: photo images/xyz.jpg not found"):
        open_dataset(tmp_path, "clothing-dataset")
