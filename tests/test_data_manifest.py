"""CSV and JSON Lines manifests on real images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fashionlens.data import open_dataset, read_manifest_csv, read_manifest_jsonl
from fashionlens.errors import DataError


@pytest.fixture()
def folder(tmp_path: Path, shared_data: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in ("000002.jpg", "000003.jpg", "000005.jpg"):
        shutil.copyfile(shared_data / "clothing-attributes" / "images" / name, tmp_path / "img" / name)
    return tmp_path


def test_csv_labels_unknowns_and_sorted_vocabulary(folder: Path) -> None:
    path = folder / "train.csv"
    path.write_text("image,labels\nimg/000002.jpg,street;casual\nimg/000003.jpg,\nimg/000005.jpg,romantic;?street\n")
    dataset = read_manifest_csv(path)
    assert dataset.label_names == ["casual", "romantic", "street"]
    assert [s["labels"].tolist() for s in (dataset[0], dataset[1], dataset[2])] == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert dataset[2]["label_mask"].tolist() == [1.0, 1.0, 0.0]
    assert dataset[1]["label_mask"].tolist() == [1.0, 1.0, 1.0]  # empty cell: known negatives
    assert dataset[0]["path"] == str(folder / "img" / "000002.jpg")  # relative to the manifest's folder
    assert tuple(dataset[0]["image"].shape) == (3, 320, 213)


def test_csv_images_root_and_forced_vocabulary(folder: Path) -> None:
    (folder / "lists").mkdir()
    path = folder / "lists" / "val.csv"
    path.write_text("image,labels\n000003.jpg,street\n")
    dataset = read_manifest_csv(path, images_root=folder / "img", label_names=["street", "retro"])
    assert dataset.label_names == ["street", "retro"]
    assert dataset[0]["labels"].tolist() == [1.0, 0.0] and dataset[0]["label_mask"].tolist() == [1.0, 1.0]


def test_csv_label_outside_forced_vocabulary(folder: Path) -> None:
    path = folder / "m.csv"
    path.write_text("image,labels\nimg/000002.jpg,street\nimg/000003.jpg,punk;?goth\n")
    with pytest.raises(DataError) as info:
        read_manifest_csv(path, label_names=["street", "retro"])
    assert str(info.value).startswith(f"{path}:3: label(s) 'punk', 'goth' not in the forced vocabulary of 2 labels")


@pytest.mark.parametrize(
    "content, message",
    [
        ("img,labels\na.jpg,x\n", r"m.csv:1: expected the header 'image,labels', found 'img,labels'"),
        ("image,labels\nimg/000002.jpg,x,y\n", r"m.csv:2: expected 2 columns \(image,labels\), found 3"),
        ("image,labels\nimg/000002.jpg,x\nimg/000002.jpg,y\n", r"m.csv:3: duplicate row for image .* first listed on line 2"),
        ("image,labels\nimg/000002.jpg,x;?x\n", r"m.csv:2: label\(s\) \['x'\] are both positive and unknown"),
        ("image,labels\n,x\n", r"m.csv:2: expected an image path, found an empty value"),
    ],
)
def test_csv_malformed(folder: Path, content: str, message: str) -> None:
    path = folder / "m.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest_csv(path)


def test_jsonl(folder: Path) -> None:
    path = folder / "m.jsonl"
    rows = [
        {"image": "img/000002.jpg", "labels": ["street"], "unknown": ["retro"]},
        {"image": str(folder / "img" / "000005.jpg"), "labels": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    dataset = open_dataset(path, "jsonl")
    assert dataset.label_names == ["retro", "street"]
    assert dataset[0]["labels"].tolist() == [0.0, 1.0] and dataset[0]["label_mask"].tolist() == [0.0, 1.0]
    assert dataset[1]["labels"].tolist() == [0.0, 0.0] and dataset[1]["label_mask"].tolist() == [1.0, 1.0]
    assert dataset[1]["path"] == str(folder / "img" / "000005.jpg")


@pytest.mark.parametrize(
    "line2, message",
    [
        ('{"image": "b.jpg", "labels": ["x"]', r"m.jsonl:2: expected one JSON object per line, found invalid JSON"),
        ('{"labels": ["x"]}', r"m.jsonl:2: expected an object with a string 'image'"),
        ('{"image": "b.jpg", "labels": "x"}', r"m.jsonl:2: expected 'labels' to be a list of non-empty strings, found 'x'"),
        ('{"image": "b.jpg", "label": ["x"]}', r"m.jsonl:2: expected only the keys image, labels, unknown, found also \['label'\]"),
        ('{"image": "b.jpg", "labels": ["punk"]}', r"m.jsonl:2: label\(s\) 'punk' not in the forced vocabulary"),
    ],
)
def test_jsonl_malformed(folder: Path, line2: str, message: str) -> None:
    path = folder / "m.jsonl"
    path.write_text('{"image": "a.jpg", "labels": ["x"]}\n' + line2 + "\n")
    with pytest.raises(DataError, match=message):
        read_manifest_jsonl(path, label_names=["x"])
