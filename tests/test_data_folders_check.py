"""Class folders, open_dataset dispatch and the data check report."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fashionlens.data import FORMATS, open_dataset, read_class_folders, weak_label_rows, write_deepfashion_lists
from fashionlens.data.check import check_dataset
from fashionlens.errors import DataError


@pytest.fixture()
def folders(tmp_path: Path, shared_data: Path) -> Path:
    images = shared_data / "clothing-attributes" / "images"
    for label, names in (("street", ["000002.jpg", "000003.jpg"]), ("retro", ["000005.jpg"])):
        (tmp_path / label).mkdir()
        for name in names:
            shutil.copyfile(images / name, tmp_path / label / name)
    (tmp_path / "street" / "notes.txt").write_text("not an image")
    return tmp_path


def test_class_folders(folders: Path) -> None:
    dataset = read_class_folders(folders)
    assert dataset.label_names == ["retro", "street"] and dataset.category_names == ["retro", "street"]
    assert [(Path(r.image).name, r.category) for r in dataset.records] == [("000005.jpg", 0), ("000002.jpg", 1), ("000003.jpg", 1)]
    sample = dataset[1]
    assert sample["labels"].tolist() == [0.0, 1.0] and sample["label_mask"].tolist() == [1.0, 1.0]
    assert sample["category"].item() == 1
    assert dataset.notes == ["passed over 1 non-image file(s), e.g. ['street/notes.txt']"]
    forced = read_class_folders(folders, label_names=["street", "punk", "retro"])
    assert forced[0]["category"].item() == 2 and forced[0]["labels"].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(DataError, match=r"label folder\(s\) \['street'\] not in the forced vocabulary"):
        read_class_folders(folders, label_names=["retro"])


def test_open_dataset_dispatch(folders: Path) -> None:
    assert FORMATS == ("deepfashion", "manifest", "jsonl", "kfashion", "clothing-attributes", "folders",
                       "clothing-co-parsing", "deepfashion-fine", "clothing-dataset")
    assert len(open_dataset(folders, "folders")) == 3
    with pytest.raises(ValueError, match="unknown dataset format 'coco': expected one of deepfashion, manifest, jsonl, kfashion, clothing-attributes, folders"):
        open_dataset(folders, "coco")
    with pytest.raises(ValueError, match="has no built-in splits"):
        open_dataset(folders, "folders", split="train")


def test_check_reports_labels_and_bad_images(folders: Path) -> None:
    (folders / "retro" / "broken.jpg").write_bytes(b"")
    report = check_dataset(folders, "folders")
    assert (report.num_images, report.num_skipped) == (3, 1)
    assert report.positives == [1, 2] and report.negatives == [2, 1] and report.unknown == [0, 0]
    assert report.category_counts == {"street": 2, "retro": 1}
    assert len(report.problems) == 1 and "broken.jpg: empty file (0 bytes): expected image data" in report.problems[0]
    text = report.to_text()
    assert "images: 3 readable, 1 unreadable" in text
    assert [line.split() for line in text.splitlines() if line.strip().startswith(("retro ", "street "))][:2] == [
        ["retro", "1", "2", "0"],
        ["street", "2", "1", "0"],
    ]
    assert "problems: 1" in text


def test_check_turns_annotation_errors_into_problems(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("image,labels\na.jpg,x,y\n")
    report = check_dataset(tmp_path / "m.csv", "manifest")
    assert not report.ok and report.problems == [f"{tmp_path / 'm.csv'}:2: expected 2 columns (image,labels), found 3: ['a.jpg', 'x', 'y']"]


def test_check_real_kfashion_and_deepfashion(tmp_path: Path, shared_data: Path) -> None:
    report = check_dataset(shared_data / "kfashion", "kfashion")
    assert report.num_images == 3 and report.images_all_unknown == 2 and report.ok
    assert report.positives[report.label_names.index("romantic")] == 1
    assert sum(report.unknown) == 46  # 2 images x 23 styles
    root = tmp_path / "df"
    root.mkdir()
    os.symlink(shared_data / "deepfashion" / "img", root / "img")
    write_deepfashion_lists(root, weak_label_rows(shared_data / "deepfashion", with_bbox=False), shared_data / "deepfashion")
    report = check_dataset(root, "deepfashion", split="val")
    assert report.num_images == 152 and report.ok
    assert report.category_counts == {"Dress": 152}
    assert report.positives[report.label_names.index("v-neck")] == 73  # V-Neck_Striped_Dress is in val
    # 1000 labels: only those with positives get a table row, the rest are summarised in one line.
    text = report.to_text()
    present = [name for name, p in zip(report.label_names, report.positives) if p]
    assert present == ["striped", "v-neck", "y-back"]  # val: V-Neck_Striped_Dress (73) + Y-Back_Halter_Dress (79)
    assert "  997 label(s) have no positive image: a-line, abstract," in text
    assert [line.split()[-3:] for line in text.splitlines() if line.startswith("  y-back ")] == [["79", "73", "0"]]
