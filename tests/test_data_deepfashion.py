"""DeepFashion Category & Attribute reader: the real vocabulary, the real images, every malformation."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashionlens.data import (
    open_dataset,
    read_deepfashion,
    weak_label_rows,
    write_deepfashion_lists,
)
from fashionlens.data import deepfashion
from fashionlens.data.deepfashion import CLOTHES_TYPE_NAMES, read_vocabulary
from fashionlens.errors import DataError
from fashionlens.vocabulary import ATTRIBUTE_TYPE_IDS as ATTRIBUTE_TYPE_NAMES

DRESS = 40  # "Dress" is line 43 of list_category_cloth.txt: id 41, 0-based 40
FLORAL_EMBROIDERED, STRAPPY, V_NECK = 388, 880, 956  # lines 391, 883, 959 of list_attr_cloth.txt
FIRST = "img/Strappy_Floral-Embroidered_Dress/img_00000001.jpg"  # 300 x 200
SECOND = "img/Strappy_Floral-Embroidered_Dress/img_00000002.jpg"  # 300 x 300
THIRD = "img/V-Neck_Shift_Dress/img_00000001.jpg"


@pytest.fixture()
def df_root(tmp_path: Path, shared_data: Path) -> Path:
    """A benchmark root: real vocabulary copied, real images linked, lists for 3 real images."""
    root = tmp_path / "deepfashion"
    (root / "Anno").mkdir(parents=True)
    source = shared_data / "deepfashion"
    for name in ("list_category_cloth.txt", "list_attr_cloth.txt"):
        shutil.copyfile(source / "Anno" / name, root / "Anno" / name)
    os.symlink(source / "img", root / "img")
    rows = {r.image_name: r for r in weak_label_rows(source, with_bbox=False)}
    chosen = [rows[FIRST], rows[SECOND], rows[THIRD]]
    chosen[0].bbox = (50.0, 40.0, 250.0, 160.0)
    write_deepfashion_lists(root, chosen)
    return root


def _write(path: Path, header: str, lines: list[str], count: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{len(lines) if count is None else count}\n{header}\n" + "".join(line + "\n" for line in lines))


def test_real_vocabulary_files(shared_data: Path) -> None:
    anno = shared_data / "deepfashion" / "Anno"
    names, types = read_vocabulary(anno / "list_category_cloth.txt", CLOTHES_TYPE_NAMES)
    assert len(names) == 50 and names[0] == "Anorak" and names[DRESS] == "Dress" and names[-1] == "Sundress"
    assert [types.count(t) for t in (1, 2, 3)] == [20, 16, 14]
    names, types = read_vocabulary(anno / "list_attr_cloth.txt", ATTRIBUTE_TYPE_NAMES)
    assert len(names) == 1000
    assert [types.count(t) for t in (1, 2, 3, 4, 5)] == [156, 218, 180, 216, 230]
    # Names with spaces keep them; the trailing type number is split off the end.
    assert names[2] == "abstract chevron" and names[V_NECK] == "v-neck" and names[-1] == "zippered"


def test_all_1083_real_images_with_weak_labels(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "df"
    os.makedirs(root)
    os.symlink(shared_data / "deepfashion" / "img", root / "img")
    write_deepfashion_lists(root, weak_label_rows(shared_data / "deepfashion"), vocabulary_root=shared_data / "deepfashion")
    everything = read_deepfashion(root)
    assert len(everything) == 1083
    assert [len(read_deepfashion(root, split)) for split in ("train", "val", "test")] == [781, 152, 150]
    assert len(everything.label_names) == 1000 and len(everything.category_names) == 50
    assert everything.attribute_types[V_NECK] == "part"  # v-neck is type 4 in list_attr_cloth.txt
    labels = np.stack([r.labels for r in everything.records])
    assert labels[:, V_NECK].sum() == 319 and labels[:, STRAPPY].sum() == 132
    assert {r.category for r in everything.records} == {DRESS}
    assert everything.validate_images() == []
    sample = everything[0]
    assert sample["path"].endswith(FIRST)
    # Box = whole 300 x 200 image, so the 10% margin is clipped away and nothing is cut.
    assert tuple(sample["image"].shape) == (3, 200, 300)
    assert sample["bbox"].tolist() == [[0.0, 0.0, 300.0, 200.0]]
    assert sample["category"].item() == DRESS
    assert sample["labels"][[FLORAL_EMBROIDERED, STRAPPY, V_NECK]].tolist() == [1.0, 1.0, 0.0]
    assert sample["labels"].sum().item() == 2.0 and sample["label_mask"].sum().item() == 1000.0
    assert "landmarks" not in sample  # weak labels have no landmark file


def test_crop_to_bbox_with_margin_on_a_real_image(df_root: Path) -> None:
    sample = read_deepfashion(df_root)[0]
    # Box (50, 40)-(250, 160) is 200 x 120; 10% margin = 20 x 12 -> crop (30, 28)-(270, 172).
    assert tuple(sample["image"].shape) == (3, 144, 240)
    assert sample["bbox"].tolist() == [[20.0, 12.0, 220.0, 132.0]]
    uncropped = read_deepfashion(df_root, crop_to_bbox=False)[0]
    assert tuple(uncropped["image"].shape) == (3, 200, 300)
    assert uncropped["bbox"].tolist() == [[50.0, 40.0, 250.0, 160.0]]
    # Images without a bbox row get the whole image as their box.
    assert read_deepfashion(df_root)[1]["bbox"].tolist() == [[0.0, 0.0, 300.0, 300.0]]


def _categories(root: Path, upper: str = "Blouse", lower: str = "Skirt", full: str = "Dress") -> None:
    ids = {"Blouse": 3, "Skirt": 33, "Dress": 41, "Tee": 18}
    _write(
        root / "Anno" / "list_category_img.txt",
        "image_name  category_label",
        [f"{FIRST} {ids[upper]}", f"{SECOND} {ids[lower]}", f"{THIRD} {ids[full]}"],
    )


UPPER = "0 10 20 1 30 40 0 50 60 2 0 0 0 90 100 1 110 120"  # collar L/R, sleeve L/R, hem L/R
LOWER = "0 11 21 0 31 41 1 51 61 0 71 81"  # waistline L/R, hem L/R
FULL = "0 1 2 0 3 4 0 5 6 0 7 8 0 9 10 0 11 12 0 13 14 1 15 16"


@pytest.mark.parametrize(
    "header, lead",
    [
        ("image_name  clothes_type  variation_type  landmark_visibility_1  landmark_location_x_1  landmark_location_y_1", ["{t}", "1"]),
        ("image_name  clothes_type  landmark_visibility_1  landmark_location_x_1  landmark_location_y_1", ["{t}"]),
        ("image_name  landmark_visibility_1  landmark_location_x_1  landmark_location_y_1", []),
    ],
    ids=["type+variation", "type-only", "neither"],
)
def test_landmark_layouts_map_into_the_eight_slots(df_root: Path, header: str, lead: list[str]) -> None:
    _categories(df_root)
    lines = []
    for name, clothes_type, values in ((FIRST, 1, UPPER), (SECOND, 2, LOWER), (THIRD, 3, FULL)):
        lines.append(" ".join([name, *(x.format(t=clothes_type) for x in lead), values]))
    _write(df_root / "Anno" / "list_landmarks.txt", header, lines)
    dataset = read_deepfashion(df_root, crop_to_bbox=False)
    upper, lower, full = dataset.records
    assert upper.landmark_visibility.tolist() == [0, 1, 0, 2, 2, 2, 0, 1]
    assert upper.landmarks[:, 0].tolist() == [10, 30, 50, 0, 0, 0, 90, 110]
    assert upper.landmarks[7].tolist() == [110, 120]
    assert lower.landmark_visibility.tolist() == [2, 2, 2, 2, 0, 0, 1, 0]
    assert lower.landmarks[4:].tolist() == [[11, 21], [31, 41], [51, 61], [71, 81]]
    assert full.landmark_visibility.tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert full.landmarks[:, 1].tolist() == [2, 4, 6, 8, 10, 12, 14, 16]
    sample = dataset[0]
    assert sample["landmarks"].shape == (8, 2) and sample["landmark_visibility"].tolist() == [0, 1, 0, 2, 2, 2, 0, 1]
    assert sample["landmarks"][1].tolist() == [30.0, 40.0]


def test_landmarks_follow_the_bbox_crop(df_root: Path) -> None:
    _categories(df_root)
    _write(df_root / "Anno" / "list_landmarks.txt", "image_name  clothes_type  landmark_visibility_1", [f"{FIRST} 1 {UPPER}"])
    sample = read_deepfashion(df_root)[0]  # crop origin (30, 28)
    assert sample["landmarks"][6].tolist() == [60.0, 72.0]  # left hem (90, 100)
    # Left collar (10, 20) lies left of the crop: it is now cut off.
    assert sample["landmark_visibility"].tolist() == [2, 1, 0, 2, 2, 2, 0, 1]
    # The other two images have no landmark row: every slot is cut off.
    assert read_deepfashion(df_root)[1]["landmark_visibility"].tolist() == [2] * 8


def test_landmark_count_must_match_the_category_type_without_a_type_column(df_root: Path) -> None:
    _categories(df_root)
    path = df_root / "Anno" / "list_landmarks.txt"
    _write(path, "image_name  landmark_visibility_1", [f"{FIRST} {UPPER}", f"{SECOND} {UPPER}"])
    with pytest.raises(DataError, match=r"list_landmarks.txt:4: 6 landmarks mean a upper-body garment, but the image's category is lower-body"):
        read_deepfashion(df_root)


def test_landmark_clothes_type_must_match_the_triple_count(df_root: Path) -> None:
    _categories(df_root)
    path = df_root / "Anno" / "list_landmarks.txt"
    _write(path, "image_name  clothes_type  variation_type", [f"{FIRST} 2 1 {UPPER}"])
    with pytest.raises(DataError, match=r"list_landmarks.txt:3: clothes_type 2 \(lower-body\) needs 4 landmarks, found 6"):
        read_deepfashion(df_root)


def test_landmark_row_with_wrong_column_count(df_root: Path) -> None:
    _categories(df_root)
    _write(df_root / "Anno" / "list_landmarks.txt", "image_name  clothes_type  variation_type", [f"{FIRST} 1 1 {UPPER} 5"])
    with pytest.raises(DataError, match=r"list_landmarks.txt:3: expected 3 leading column\(s\) .* found 22"):
        read_deepfashion(df_root)


def test_landmark_visibility_out_of_range(df_root: Path) -> None:
    _categories(df_root)
    _write(df_root / "Anno" / "list_landmarks.txt", "image_name  clothes_type", [f"{FIRST} 1 3{UPPER[1:]}"])
    with pytest.raises(DataError, match=r"list_landmarks.txt:3: expected landmark_visibility_1 in \(0, 1, 2\), found 3"):
        read_deepfashion(df_root)


def test_count_line_disagreeing_with_rows(df_root: Path) -> None:
    path = df_root / "Anno" / "list_category_img.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["5", *lines[1:]]) + "\n")
    with pytest.raises(DataError) as info:
        read_deepfashion(df_root)
    assert str(info.value) == f"{path}:1: line 1 says 5 rows, but the file has 3 rows"


def test_wrong_column_count(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", [f"{FIRST} 1 2 3 4", f"{SECOND} 1 2 3"])
    with pytest.raises(DataError, match=r"list_bbox.txt:4: expected 5 columns \(image_name x_1 y_1 x_2 y_2\), found 4"):
        read_deepfashion(df_root)


def test_non_numeric_value(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", [f"{FIRST} 1 2 3 4", f"{SECOND} 1 two 3 4"])
    with pytest.raises(DataError, match=r"list_bbox.txt:4: expected a number for y_1, found 'two'"):
        read_deepfashion(df_root)


def test_non_numeric_and_out_of_range_attribute_labels(df_root: Path) -> None:
    path = df_root / "Anno" / "list_attr_img.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], lines[3].replace(" -1", " x", 1), *lines[4:]]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_img.txt:4: expected attribute labels 1, -1 or 0, found 'x'"):
        read_deepfashion(df_root)
    path.write_text("\n".join([*lines[:4], lines[4].replace(" -1", " 2", 1)]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_img.txt:5: expected attribute labels 1, -1 or 0, found 2"):
        read_deepfashion(df_root)


def test_unknown_attributes_are_masked(df_root: Path) -> None:
    path = df_root / "Anno" / "list_attr_img.txt"
    lines = path.read_text().splitlines()
    values = lines[2].split()
    values[1 + 0] = "0"  # a-line unknown
    values[1 + STRAPPY] = "0"  # a positive made unknown
    path.write_text("\n".join([*lines[:2], " ".join(values), *lines[3:]]) + "\n")
    sample = read_deepfashion(df_root)[0]
    assert sample["label_mask"].sum().item() == 998.0
    assert sample["label_mask"][[0, STRAPPY]].tolist() == [0.0, 0.0]
    assert sample["labels"].sum().item() == 1.0  # only floral-embroidered remains positive


def test_category_id_out_of_range(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_category_img.txt", "image_name  category_label", [f"{FIRST} 51", f"{SECOND} 1", f"{THIRD} 1"])
    with pytest.raises(DataError, match=r"list_category_img.txt:3: expected category_label in \(1, 2, .* 50\), found 51"):
        read_deepfashion(df_root)


def test_duplicate_image_rows(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_category_img.txt", "image_name  category_label", [f"{FIRST} 41", f"{SECOND} 41", f"{FIRST} 41"])
    with pytest.raises(DataError) as info:
        read_deepfashion(df_root)
    message = str(info.value)
    assert "list_category_img.txt:5: duplicate row for image" in message and "first listed at" in message and ":3" in message


def test_duplicate_rows_in_an_auxiliary_file(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", [f"{FIRST} 1 2 3 4", f"{FIRST} 1 2 3 4"])
    with pytest.raises(DataError, match=r"list_bbox.txt:4: duplicate row for image"):
        read_deepfashion(df_root)


def test_path_escaping_the_root(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_category_img.txt", "image_name  category_label", ["img/../../secret.jpg 41"])
    with pytest.raises(DataError, match=r"list_category_img.txt:3: image path 'img/../../secret.jpg' leaves the dataset root"):
        read_deepfashion(df_root)


def test_auxiliary_row_for_an_unlisted_image(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", ["img/other.jpg 1 2 3 4"])
    with pytest.raises(DataError, match=r"list_bbox.txt:3: image 'img/other.jpg' is not listed in list_category_img.txt"):
        read_deepfashion(df_root)


def test_split_filters_and_requires_every_image(df_root: Path) -> None:
    partition = df_root / "Eval" / "list_eval_partition.txt"
    _write(partition, "image_name  evaluation_status", [f"{FIRST} train", f"{SECOND} test", f"{THIRD} test"])
    assert [Path(s.image).name for s in read_deepfashion(df_root, "test").records] == ["img_00000002.jpg", "img_00000001.jpg"]
    assert len(open_dataset(df_root, "deepfashion", split="train")) == 1
    _write(partition, "image_name  evaluation_status", [f"{FIRST} train", f"{SECOND} test"])
    with pytest.raises(DataError, match=r"list_eval_partition.txt: expected every image .* 1 are missing"):
        read_deepfashion(df_root, "train")
    _write(partition, "image_name  evaluation_status", [f"{FIRST} train", f"{SECOND} dev", f"{THIRD} test"])
    with pytest.raises(DataError, match=r"list_eval_partition.txt:4: expected evaluation_status in .*, found 'dev'"):
        read_deepfashion(df_root, "train")


def test_missing_image_names_its_annotation_line(df_root: Path) -> None:
    _write(df_root / "Anno" / "list_category_img.txt", "image_name  category_label", [f"{FIRST} 41", "img/Nope/img_1.jpg 41"])
    (df_root / "Anno" / "list_attr_img.txt").unlink()
    dataset = read_deepfashion(df_root)
    assert f"{df_root / 'Anno' / 'list_attr_img.txt'} not found: every attribute is unknown" in dataset.notes
    with pytest.raises(DataError) as info:
        dataset[1]
    assert "img/Nope/img_1.jpg: image file not found" in str(info.value)
    assert "list_category_img.txt:4)" in str(info.value)
    kept = read_deepfashion(df_root, skip_bad=True)
    assert len(kept) == 1 and kept.skipped_summary().startswith("skipped 1 of 2 images:")


def test_forced_vocabulary_reorders_and_rejects_unknown_positives(df_root: Path) -> None:
    forced = ["strappy", "floral-embroidered", "not-an-attribute", "v-neck", "shift"]
    dataset = read_deepfashion(df_root, label_names=forced)
    assert dataset.label_names == forced
    assert dataset.attribute_types == ["part", "texture", "unknown", "part", "shape"]
    sample = dataset[0]
    assert sample["labels"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert sample["label_mask"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]  # not in list_attr_cloth -> unknown
    assert dataset[2]["labels"].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]  # V-Neck_Shift_Dress
    with pytest.raises(DataError, match=r"labels not in the forced vocabulary of 1 labels: expected only those, found floral-embroidered, shift, v-neck$"):
        read_deepfashion(df_root, label_names=["strappy"])


def test_batches_collate_with_landmarks(df_root: Path) -> None:
    import torch

    from fashionlens.data import build_transforms

    _categories(df_root)
    _write(df_root / "Anno" / "list_landmarks.txt", "image_name  clothes_type", [f"{FIRST} 1 {UPPER}", f"{SECOND} 2 {LOWER}", f"{THIRD} 3 {FULL}"])
    dataset = read_deepfashion(df_root, transform=build_transforms(64, [0.5] * 3, [0.5] * 3, train=True))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert tuple(batch["image"].shape) == (3, 3, 64, 64)
    assert tuple(batch["landmarks"].shape) == (3, 8, 2) and tuple(batch["landmark_visibility"].shape) == (3, 8)
    assert tuple(batch["bbox"].shape) == (3, 1, 4) and batch["category"].tolist() == [2, 32, 40]
    assert tuple(batch["labels"].shape) == (3, 1000) and batch["index"].tolist() == [0, 1, 2]


def test_count_line_checked_on_the_streamed_attribute_file(df_root: Path) -> None:
    path = df_root / "Anno" / "list_attr_img.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["2", *lines[1:]]) + "\n")
    with pytest.raises(DataError) as info:
        read_deepfashion(df_root)
    assert str(info.value) == f"{path}:1: line 1 says 2 rows, but the file has 3 rows"


# --------------------------------------------------------------------------------------------------
# At full size: numpy over the bytes, one parse for all splits, the cache (issues 17 and 31).


def _annotations_summary(annotations) -> dict:
    return {
        "names": annotations.image_names.to_pylist(),
        "lines": annotations.lines.tolist(),
        "categories": annotations.categories.tolist(),
        "values": annotations.attribute_values.tolist(),
        "bboxes": None if annotations.bboxes is None else np.nan_to_num(annotations.bboxes, nan=-7.0).tolist(),
        "landmarks": None if annotations.landmarks is None else annotations.landmarks.tolist(),
        "visibility": None if annotations.landmark_visibility is None else annotations.landmark_visibility.tolist(),
        "splits": None if annotations.splits is None else annotations.splits.tolist(),
        "notes": annotations.notes,
    }


def _odd_but_valid_lists(root: Path) -> None:
    """Every list file rewritten the ways a real one may look: tabs, CRLF, runs of spaces, blank lines, other orders."""
    _categories(root)
    lines = (root / "Anno" / "list_attr_img.txt").read_text().splitlines()
    rows = [line.split() for line in lines[2:]]
    rows[1][1:4] = ["0", "1", "-1"]
    body = [f"{r[0]}\t\t{'  '.join(r[1:])}" for r in (rows[2], rows[0], rows[1])]
    (root / "Anno" / "list_attr_img.txt").write_bytes(("3\r\nimage_name  attribute_labels\r\n" + "\r\n".join(body) + "\r\n\r\n").encode())
    _write(root / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", [f"{THIRD}   1.5 2 30.25 40", "", f"{FIRST} 50 40 250 160"], count=2)
    _write(root / "Anno" / "list_landmarks.txt", "image_name  clothes_type  variation_type  landmark_visibility_1",
           [f"{SECOND} 2 3 {LOWER}", f"{FIRST} 1 1 {UPPER}"])
    _write(root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
           [f"{THIRD} test", f"{FIRST}\ttrain", f"{SECOND} val"])


def test_odd_but_valid_list_files_read_as_the_plain_ones(df_root: Path, tmp_path: Path) -> None:
    """Tabs, CRLF, runs of spaces, blank lines and other orders change nothing but the line numbers."""
    plain = tmp_path / "plain"
    shutil.copytree(df_root, plain, symlinks=True)
    _categories(plain)
    lines = (plain / "Anno" / "list_attr_img.txt").read_text().splitlines()
    rows = [line.split() for line in lines[2:]]
    rows[1][1:4] = ["0", "1", "-1"]
    _write(plain / "Anno" / "list_attr_img.txt", "image_name  attribute_labels", [" ".join(r) for r in rows])
    _write(plain / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", [f"{FIRST} 50 40 250 160", f"{THIRD} 1.5 2 30.25 40"])
    _write(plain / "Anno" / "list_landmarks.txt", "image_name  clothes_type  variation_type  landmark_visibility_1",
           [f"{FIRST} 1 1 {UPPER}", f"{SECOND} 2 3 {LOWER}"])
    _write(plain / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
           [f"{FIRST} train", f"{SECOND} val", f"{THIRD} test"])
    _odd_but_valid_lists(df_root)
    odd = _annotations_summary(deepfashion.parse_deepfashion(df_root, cache=False))
    expected = _annotations_summary(deepfashion.parse_deepfashion(plain, cache=False))
    assert odd == expected
    assert odd["values"][1][:3] == [0, 1, -1] and odd["bboxes"][2] == [1.5, 2, 30.25, 40]
    assert odd["splits"] == [0, 1, 2] and "1 image(s) have no row in list_landmarks.txt" in " ".join(odd["notes"])


def test_lazy_records_give_the_samples_of_an_eager_dataset(df_root: Path) -> None:
    from fashionlens.data import FashionDataset

    _categories(df_root)
    _write(df_root / "Anno" / "list_landmarks.txt", "image_name  clothes_type", [f"{FIRST} 1 {UPPER}", f"{THIRD} 3 {FULL}"])
    lazy = read_deepfashion(df_root)
    eager = FashionDataset(list(lazy.records), lazy.label_names, category_names=lazy.category_names,
                           attribute_types=lazy.attribute_types, crop_to_bbox=True, bbox_margin=0.1)
    for i in range(len(lazy)):
        a, b = lazy[i], eager[i]
        assert a.keys() == b.keys()
        for key in a:
            assert (a[key] == b[key]).all() if hasattr(a[key], "shape") else a[key] == b[key], key


def test_all_three_splits_come_from_one_parse(df_root: Path, monkeypatch) -> None:
    from fashionlens.data import deepfashion

    _write(df_root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status", [f"{FIRST} train", f"{SECOND} test", f"{THIRD} test"])
    parses = []
    parse = deepfashion._parse
    monkeypatch.setattr(deepfashion, "_parse", lambda root: parses.append(root) or parse(root))
    annotations = deepfashion.parse_deepfashion(df_root, cache=False)
    splits = {split: annotations.dataset(split) for split in deepfashion.SPLITS}
    assert len(parses) == 1 and list(splits) == ["train", "val", "test"]
    for split, dataset in splits.items():
        assert [r.image for r in dataset.records] == [r.image for r in read_deepfashion(df_root, split, cache=False).records]
    assert [len(d) for d in splits.values()] == [1, 0, 2]


def test_the_cache_is_used_until_a_list_file_changes(df_root: Path, tmp_path: Path, monkeypatch) -> None:
    from fashionlens.data import cache, deepfashion

    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    first = read_deepfashion(df_root)
    (cached,) = (tmp_path / "cache").glob("deepfashion-*.arrow")
    parse = deepfashion._parse

    def no_parse(root):
        raise AssertionError("parsed again")

    monkeypatch.setattr(deepfashion, "_parse", no_parse)
    again = read_deepfashion(df_root)
    assert [(r.image, r.labels.tolist(), r.bbox, r.line) for r in again.records] == [
        (r.image, r.labels.tolist(), r.bbox, r.line) for r in first.records]
    assert again[0]["labels"][[FLORAL_EMBROIDERED, STRAPPY, V_NECK]].tolist() == [1.0, 1.0, 0.0]
    # Columns are copy-on-write views of the cache file: writable (torch warns on read-only arrays),
    # and writing to one leaves the file as it was.
    mapped = deepfashion.parse_deepfashion(df_root)
    assert mapped.attribute_values.flags.writeable and mapped.bboxes.flags.writeable
    mapped.attribute_values[0, V_NECK] = 1
    assert deepfashion.parse_deepfashion(df_root).attribute_values[0, V_NECK] == -1

    # Same size, new mtime: the key sees it.
    path = df_root / "Anno" / "list_attr_img.txt"
    stat = path.stat()
    lines = path.read_text().splitlines()
    tokens = lines[2].split(" ")
    assert tokens[1 + V_NECK] == "-1"
    tokens[1 + V_NECK] = " 1"  # two characters for two: the file keeps its size
    edited = "\n".join([*lines[:2], " ".join(tokens), *lines[3:]]) + "\n"
    assert len(edited) == stat.st_size
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    monkeypatch.setattr(deepfashion, "_parse", parse)
    assert read_deepfashion(df_root)[0]["labels"][V_NECK].item() == 1.0

    # A truncated cache file is ignored and written again; 'off' writes nothing.
    cached.write_bytes(cached.read_bytes()[:100])
    assert read_deepfashion(df_root)[0]["labels"][V_NECK].item() == 1.0
    assert cached.stat().st_size > 100
    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", "off")
    cached.unlink()
    read_deepfashion(df_root)
    assert not list((tmp_path / "cache").glob("*.arrow"))
