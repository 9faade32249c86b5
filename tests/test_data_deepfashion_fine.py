"""The DeepFashion fine-grained attribute reader (``--format deepfashion-fine``) on the real release."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fashionlens.data import FashionDataset, open_dataset, read_deepfashion_fine
from fashionlens.data.check import check_dataset
from fashionlens.data.deepfashion_fine import GARMENT_TYPES, GROUPS
from fashionlens.errors import DataError
from fashionlens.vocabulary import CLOTHING_FORMATS, CUT_OFF, FORMATS, LANDMARK_NAMES, TYPED_ATTRIBUTE_FORMATS, VISIBLE

NAMES = [
    "floral", "graphic", "striped", "embroidered", "pleated", "solid", "lattice",
    "long_sleeve", "short_sleeve", "sleeveless",
    "maxi_length", "mini_length", "no_dress",
    "crew_neckline", "v_neckline", "square_neckline", "no_neckline",
    "denim", "chiffon", "cotton", "leather", "faux", "knit",
    "tight", "loose", "conventional",
]
GROUP_SIZES = (7, 3, 3, 4, 6, 3)
# Rows of train used below: 0 upper_body, 4 full_body (slots 6/7), 11 lower_body (slots 0-3), 15 lower_body (one slot).
SMALL_ROWS = (0, 4, 11, 15)


@pytest.fixture(scope="module")
def root(shared_data: Path) -> Path:
    path = shared_data / "deepfashion-fine"
    if not (path / "split" / "train.txt").is_file():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def train(root: Path) -> FashionDataset:
    # The one read of the 5,000 train photos' headers in this file.
    return read_deepfashion_fine(root, "train")


@pytest.fixture(scope="module")
def val(root: Path) -> FashionDataset:
    return read_deepfashion_fine(root, "val")


@pytest.fixture
def small(root: Path, tmp_path: Path) -> Path:
    """Rows SMALL_ROWS of train, their photos and the list file, copied into tmp_path (to edit)."""
    (tmp_path / "split").mkdir()
    (tmp_path / "img").mkdir()
    shutil.copy(root / "split" / "list_attr_cloth.txt", tmp_path / "split")
    for suffix in ("", "_attr", "_landmards", "_bbox"):
        lines = (root / "split" / f"train{suffix}.txt").read_text().splitlines()
        (tmp_path / "split" / f"train{suffix}.txt").write_text("".join(lines[i] + "\n" for i in SMALL_ROWS))
    for line in (tmp_path / "split" / "train.txt").read_text().split():
        shutil.copy(root / line, tmp_path / line)
    return tmp_path


def edit_line(path: Path, line: int, new: str | None) -> None:
    """Replace (or with None delete) 1-based ``line`` of ``path``."""
    lines = path.read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    path.write_text("".join(text + "\n" for text in lines))


def decode(sample_landmarks: np.ndarray, visibility: np.ndarray) -> dict[str, tuple[float, float]]:
    return {name: tuple(point) for name, point, v in zip(LANDMARK_NAMES, sample_landmarks.tolist(), visibility) if v == VISIBLE}


def test_sizes_vocabulary_and_groups(train: FashionDataset, val: FashionDataset) -> None:
    assert (len(train), len(val)) == (5000, 500)
    assert GROUPS == ("texture", "sleeve", "length", "neckline", "fabric", "fit")
    assert train.label_names == NAMES
    assert train.display_names[7] == "long sleeve" and train.display_names[-1] == "conventional"
    assert train.attribute_types == [g for g, size in zip(GROUPS, GROUP_SIZES) for _ in range(size)]
    assert train.exclusive_types == GROUPS
    assert train.category_names == list(GARMENT_TYPES) == ["upper_body", "lower_body", "full_body"]
    assert train.crop_to_bbox and train.bbox_margin == 0.0
    labels = np.stack([r.labels for r in train.records])
    mask = np.stack([r.label_mask for r in train.records])
    assert labels.dtype == np.uint8 and labels.shape == (5000, 26) and mask.all()
    # One class per group on every row.
    starts = np.cumsum((0,) + GROUP_SIZES)
    for a, b in zip(starts[:-1], starts[1:]):
        assert (labels[:, a:b].sum(1) == 1).all()


def test_row_0_decoded_by_hand(train: FashionDataset) -> None:
    # attr 5 0 2 0 2 2; landmarks 076 082 112 090 077 278 148 243 086 279 139 248 0 0 0 0; bbox 062 062 165 300
    record = train.records[0]
    assert record.image.name == "00000.jpg" and record.line == 1
    assert [NAMES[j] for j in np.flatnonzero(record.labels)] == [
        "solid", "long_sleeve", "no_dress", "crew_neckline", "cotton", "conventional"]
    assert GARMENT_TYPES[record.category] == "upper_body"
    assert decode(record.landmarks, record.landmark_visibility) == {
        "left_collar": (76, 82), "right_collar": (112, 90), "left_sleeve": (77, 278), "right_sleeve": (148, 243),
        "left_hem": (86, 279), "right_hem": (139, 248)}
    assert record.landmark_visibility.tolist() == [VISIBLE] * 4 + [CUT_OFF] * 2 + [VISIBLE] * 2
    assert record.landmarks.dtype == np.float32 and record.landmark_visibility.dtype == np.int64
    assert record.bbox == (62.0, 62.0, 165.0, 300.0)


def test_lower_and_full_body_rows_decoded_by_hand(train: FashionDataset) -> None:
    # Line 12: 5 2 2 3 2 2 (solid, sleeveless, no_dress, no_neckline, cotton, conventional), only slots 0-3:
    # 078 011 155 012 096 288 140 289 0 0 0 0 0 0 0 0 -> waistline and hem.
    lower = train.records[11]
    assert GARMENT_TYPES[lower.category] == "lower_body"
    assert [NAMES[j] for j in np.flatnonzero(lower.labels)] == [
        "solid", "sleeveless", "no_dress", "no_neckline", "cotton", "conventional"]
    assert decode(lower.landmarks, lower.landmark_visibility) == {
        "left_waistline": (78, 11), "right_waistline": (155, 12), "left_hem": (96, 288), "right_hem": (140, 289)}
    assert lower.landmark_visibility.tolist() == [CUT_OFF] * 4 + [VISIBLE] * 4
    # Line 16: only slot 2 (113 147) -> lower_body's left hem.
    assert decode(train.records[15].landmarks, train.records[15].landmark_visibility) == {"left_hem": (113, 147)}
    # Line 5: 0 2 1 3 2 2 (floral, sleeveless, mini_length, ...), slots 1, 3-7:
    # 0 0 155 081 0 0 148 097 097 149 142 150 084 246 176 236 -> the identity layout.
    full = train.records[4]
    assert GARMENT_TYPES[full.category] == "full_body"
    assert [NAMES[j] for j in np.flatnonzero(full.labels)][:3] == ["floral", "sleeveless", "mini_length"]
    assert decode(full.landmarks, full.landmark_visibility) == {
        "right_collar": (155, 81), "right_sleeve": (148, 97), "left_waistline": (97, 149),
        "right_waistline": (142, 150), "left_hem": (84, 246), "right_hem": (176, 236)}
    assert full.bbox == (66.0, 60.0, 198.0, 265.0)


def test_garment_type_counts_two_ways(root: Path, train: FashionDataset, val: FashionDataset) -> None:
    counts = {s: Counter(GARMENT_TYPES[r.category] for r in d.records) for s, d in (("train", train), ("val", val))}
    assert counts["train"] == {"upper_body": 2334, "full_body": 1718, "lower_body": 948}
    assert counts["val"] == {"upper_body": 229, "full_body": 164, "lower_body": 107}
    for split, dataset in (("train", train), ("val", val)):
        # The rule again, vectorised over the raw files (classes: sleeve 2 = sleeveless, length 0/1 = a dress,
        # neckline 3 = no_neckline).
        attr = np.loadtxt(root / "split" / f"{split}_attr.txt", dtype=int)
        present = (np.loadtxt(root / "split" / f"{split}_landmards.txt", dtype=int).reshape(-1, 8, 2) != 0).any(2)
        full = present[:, 6] | present[:, 7] | (attr[:, 2] < 2)
        upper = ~full & (present[:, 4] | present[:, 5] | (attr[:, 3] != 3) | (attr[:, 1] != 2))
        expected = np.where(full, 2, np.where(upper, 0, 1))
        assert [r.category for r in dataset.records] == expected.tolist()
        # Every present slot became a visible landmark (no slot the garment type lacks is present).
        assert [int((r.landmark_visibility == VISIBLE).sum()) for r in dataset.records] == present.sum(1).tolist()
        # The lower-body rows are exactly those with no neckline, no sleeves, no dress length and no slot 4-7.
        lower = (~present[:, 4:].any(1)) & (attr[:, 1] == 2) & (attr[:, 2] == 2) & (attr[:, 3] == 3)
        assert (expected == 1).tolist() == lower.tolist()
    assert train.notes == ["garment type inferred: 3928 rows from the landmark slots, 1072 by the attributes "
                           "(66 full_body, 58 upper_body, 948 lower_body: only slots 0-3, no neckline, sleeveless, "
                           "no dress length; ambiguous, called lower_body)"]


def test_landmarks_against_the_box(train: FashionDataset, val: FashionDataset) -> None:
    # No landmark lies outside its box; one (train line 4707, right hem x = 235 = x2) lies on its far edge,
    # so the margin-0 crop marks it cut off.
    for dataset, on_edge in ((train, [(4706, 7)]), (val, [])):
        points = np.stack([r.landmarks for r in dataset.records])
        visible = np.stack([r.landmark_visibility for r in dataset.records]) == VISIBLE
        box = np.array([r.bbox for r in dataset.records])[:, None, :]
        x, y = points[..., 0], points[..., 1]
        assert not (visible & ((x < box[..., 0]) | (y < box[..., 1]) | (x > box[..., 2]) | (y > box[..., 3]))).any()
        edge = visible & ((x >= box[..., 2] - 0.5) | (y >= box[..., 3] - 0.5))
        assert list(zip(*map(list, np.nonzero(edge)))) == on_edge


def test_sample_landmarks_after_the_crop(train: FashionDataset) -> None:
    sample = train[0]  # no transform: cropped to the box 62 62 165 300
    assert sample["image"].shape == (3, 300 - 62, 165 - 62)
    assert sample["crop_box"].tolist() == [62.0, 62.0, 165.0, 300.0]
    assert sample["bbox"].tolist() == [[0.0, 0.0, 103.0, 238.0]]
    assert sample["landmarks"][0].tolist() == [76 - 62, 82 - 62] and sample["landmarks"][7].tolist() == [139 - 62, 248 - 62]
    assert sample["landmark_visibility"].tolist() == [VISIBLE] * 4 + [CUT_OFF] * 2 + [VISIBLE] * 2
    assert sample["category"].item() == 0 and sample["labels"].sum().item() == 6


def test_registered_and_split_passed_through(root: Path, small: Path) -> None:
    assert "deepfashion-fine" in FORMATS and "deepfashion-fine" in CLOTHING_FORMATS
    assert "deepfashion-fine" in TYPED_ATTRIBUTE_FORMATS
    assert len(open_dataset(root, "deepfashion-fine", split="val")) == 500
    assert len(open_dataset(small, "deepfashion-fine")) == 4  # split None -> train
    report = check_dataset(small, "deepfashion-fine")  # `fashionlens data check PATH --format deepfashion-fine`
    assert report.num_images == 4 and not report.problems
    assert report.category_counts == {"upper_body": 1, "full_body": 1, "lower_body": 2}


def test_forced_vocabulary(small: Path) -> None:
    order = list(reversed(NAMES))
    dataset = read_deepfashion_fine(small, label_names=order)
    assert dataset.label_names == order and dataset.exclusive_types == GROUPS
    assert [order[j] for j in np.flatnonzero(dataset.records[0].labels)][-1] == "solid"
    # Without all of a group's classes, that group is no longer "exactly one".
    subset = read_deepfashion_fine(small, label_names=[n for n in NAMES if n != "lattice"])
    assert "texture" not in subset.exclusive_types and "sleeve" in subset.exclusive_types


def test_exclusive_types_must_be_attribute_types() -> None:
    with pytest.raises(ValueError, match=r"exclusive_types \['colour'\] are not attribute types"):
        FashionDataset([], ["a"], attribute_types=["texture"], exclusive_types=["colour"])
    assert FashionDataset([], ["a"]).exclusive_types == ()


def test_split_without_attributes(small: Path) -> None:
    (small / "split" / "train_attr.txt").unlink()
    dataset = read_deepfashion_fine(small)
    assert not np.stack([r.label_mask for r in dataset.records]).any()
    # The slots alone: 0 has slots 4/5 (upper), 4 has 6/7 (full), 11 and 15 only slots 0-3 (lower).
    assert [GARMENT_TYPES[r.category] for r in dataset.records] == ["upper_body", "full_body", "lower_body", "lower_body"]
    assert "slots alone" in dataset.notes[0] and "2 rows with only slots 0-3 called lower_body" in dataset.notes[0]


def test_files_of_different_lengths(small: Path) -> None:
    edit_line(small / "split" / "train_bbox.txt", 4, None)
    with pytest.raises(DataError, match=r"train_bbox\.txt:4: expected 4 rows, one per path of train\.txt, found 3"):
        read_deepfashion_fine(small)
    (small / "split" / "train_attr.txt").write_text((small / "split" / "train_attr.txt").read_text() + "5 0 2 0 2 2\n")
    with pytest.raises(DataError, match=r"train_attr\.txt:5: expected 4 rows.*found 5: this row"):
        read_deepfashion_fine(small)


def test_class_index_outside_its_group(small: Path) -> None:
    edit_line(small / "split" / "train_attr.txt", 2, "0 7 1 3 2 2")
    with pytest.raises(DataError, match=r"train_attr\.txt:2: expected the sleeve class in 0\.\.2, found 7"):
        read_deepfashion_fine(small)


def test_bad_values(small: Path) -> None:
    edit_line(small / "split" / "train_attr.txt", 3, "5 2 2 3 2")
    with pytest.raises(DataError, match=r"train_attr\.txt:3: expected 6 values \(a class index per group\), found 5"):
        read_deepfashion_fine(small)
    edit_line(small / "split" / "train_attr.txt", 3, "5 2 2 x 2 2")
    with pytest.raises(DataError, match=r"train_attr\.txt:3: expected integers \(class indices\), found 'x'"):
        read_deepfashion_fine(small)
    edit_line(small / "split" / "train_attr.txt", 3, "5 2 2 3 2 2")
    edit_line(small / "split" / "train_bbox.txt", 2, "066 060 066 265")
    with pytest.raises(DataError, match=r"train_bbox\.txt:2: expected a box with x1 < x2"):
        read_deepfashion_fine(small)
    edit_line(small / "split" / "train_bbox.txt", 2, "066 060 198 302")  # the photo is 205x301
    with pytest.raises(DataError, match=r"train_bbox\.txt:2: expected a box inside the 205x301 photo img/00004\.jpg, found 66 60 198 302"):
        read_deepfashion_fine(small)


def test_landmark_outside_the_photo(small: Path) -> None:
    # Row 3 (img/00011.jpg, lower_body): slot 2 moved right of the photo.
    edit_line(small / "split" / "train_landmards.txt", 3, "078 011 155 012 996 288 140 289 0 0 0 0 0 0 0 0")
    with pytest.raises(DataError, match=r"train_landmards\.txt:3: expected landmark slot 2 \(left_hem\) inside the "
                                        r"\d+x300 photo img/00011\.jpg, found \(996, 288\)"):
        read_deepfashion_fine(small)


def test_missing_photo_and_unknown_split(small: Path) -> None:
    (small / "img" / "00004.jpg").unlink()
    with pytest.raises(DataError, match=r"00004\.jpg.*listed at .*train\.txt:2"):
        read_deepfashion_fine(small)
    assert len(read_deepfashion_fine(small, skip_bad=True)) == 3
    with pytest.raises(DataError, match=r"test\.txt: no split 'test' here: expected one of \['train'\]"):
        read_deepfashion_fine(small, "test")
    (small / "split" / "list_attr_cloth.txt").unlink()
    with pytest.raises(DataError, match=r"list_attr_cloth\.txt: file not found"):
        read_deepfashion_fine(small)

