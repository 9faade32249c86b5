"""Merging datasets: Clothing Co-Parsing street photos with catalogue class folders, and the rules by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from fashionlens.data import FashionDataset, Record, read_class_folders
from fashionlens.data.clothing_co_parsing import read_clothing_co_parsing
from fashionlens.data.merge import load_aliases, MergedDataset, normalise_name
from fashionlens.data.transforms import build_transforms
from fashionlens.errors import DataError

ALIASES = {"outwear": "outerwear", "coat": "outerwear", "jacket": "outerwear"}
CATALOGUE_CLASSES = ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"]


@pytest.fixture(scope="module")
def parts(shared_data: Path):
    transform = build_transforms(64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=False)
    ccp = read_clothing_co_parsing(shared_data / "clothing-co-parsing", transform=transform, with_masks=True)
    catalogue = read_class_folders(shared_data / "clothing-dataset-small" / "train", transform=transform)
    return ccp, catalogue


@pytest.fixture(scope="module")
def merged(parts):
    return MergedDataset(list(parts), aliases=ALIASES, names=["ccp", "catalogue"])


def test_vocabulary_meets_through_the_aliases(parts, merged) -> None:
    ccp, catalogue = parts
    assert catalogue.label_names == CATALOGUE_CLASSES and len(catalogue) == 2463
    assert len(merged) == len(ccp) + len(catalogue) == 4141
    # CCP's 56 labels with coat and jacket as one, then the catalogue's only new class.
    assert len(merged.label_names) == 56 and merged.label_names[-1] == "longsleeve"
    assert merged.label_names[ccp.label_names.index("coat")] == "outerwear" and "jacket" not in merged.label_names
    assert merged.category_names == ["dress", "hat", "longsleeve", "outerwear", "pants", "shirt", "shoes", "shorts",
                                     "skirt", "t-shirt"]
    assert merged.display_names[merged.label_names.index("outerwear")] == "outerwear"
    assert merged.attribute_types is None and merged.sources == ["ccp", "catalogue"]
    assert merged.annotated_by[merged.label_names.index("skirt")] == ["ccp", "catalogue"]
    assert merged.annotated_by[merged.label_names.index("bag")] == ["ccp"]
    assert merged.annotated_by[merged.label_names.index("longsleeve")] == ["catalogue"]
    assert "ccp: labels ['coat', 'jacket'] merged into 'outerwear'" in merged.notes
    assert merged.skipped == [] and repr(merged) == "MergedDataset(4141 images, 56 labels, 10 categories)"


def test_catalogue_photo_knows_only_its_classes(parts, merged) -> None:
    ccp, catalogue = parts
    row = len(ccp) + next(i for i, r in enumerate(catalogue.records) if r.category == CATALOGUE_CLASSES.index("skirt"))
    assert merged.source_of(row) == "catalogue" and merged.rows[row][0] == 1
    record = merged.records[row]
    names = merged.label_names
    known = {names[j] for j in np.flatnonzero(record.label_mask)}
    assert known == {"dress", "hat", "longsleeve", "outerwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"}
    assert {names[j] for j in np.flatnonzero(record.labels)} == {"skirt"}  # the other classes stay negatives
    assert record.category == merged.category_names.index("skirt")
    sample = merged[row]
    assert sample["index"] == row and sample["category"].item() == merged.category_names.index("skirt")
    assert sample["labels"].tolist() == record.labels.astype(float).tolist()
    assert sample["label_mask"][names.index("bag")] == 0 and sample["label_mask"][names.index("dress")] == 1
    assert sample["mask"].shape == (64, 64) and (sample["mask"] == -1).all()
    outwear = len(ccp) + next(i for i, r in enumerate(catalogue.records) if r.category == CATALOGUE_CLASSES.index("outwear"))
    assert merged.records[outwear].labels[names.index("outerwear")] == 1
    assert merged.records[outwear].category == merged.category_names.index("outerwear")


def test_ccp_photo_keeps_its_annotation(parts, merged) -> None:
    ccp, _ = parts
    names = merged.label_names
    row = next(i for i, r in enumerate(ccp.records) if r.image.name == "0002.jpg")  # dress, jacket, pumps, socks
    record = merged.records[row]
    assert merged.source_of(row) == "ccp" and record.category == -1
    assert {names[j] for j in np.flatnonzero(record.labels)} == {"dress", "outerwear", "pumps", "socks"}
    assert {names[j] for j in np.flatnonzero(record.label_mask == 0)} == {"longsleeve"}  # CCP does not annotate it
    for j, name in enumerate(ccp.label_names):
        if name not in ("coat", "jacket"):
            assert merged.records[row].labels[names.index(name)] == ccp.records[row].labels[j]
    sample = merged[row]
    assert sample["category"].item() == -1 and sample["index"] == row
    in_mask = {names[int(v)] for v in sample["mask"].unique() if v >= 0}
    assert in_mask <= {"dress", "outerwear", "pumps", "socks"} and "outerwear" in in_mask
    batch = default_collate([sample, merged[len(ccp)]])
    assert batch["mask"].shape == (2, 64, 64) and batch["category"].tolist() == [-1, 0]
    assert batch["labels"].shape == batch["label_mask"].shape == (2, 56)


def test_label_statistics_from_records(parts, merged) -> None:
    ccp, catalogue = parts
    labels = np.stack([r.labels for r in merged.records]).astype(bool)
    known = np.stack([r.label_mask for r in merged.records]).astype(bool)
    names = merged.label_names
    ccp_labels = np.stack([r.labels for r in ccp.records]).astype(bool)
    coat_or_jacket = ccp_labels[:, ccp.label_names.index("coat")] | ccp_labels[:, ccp.label_names.index("jacket")]
    outwear = sum(r.category == CATALOGUE_CLASSES.index("outwear") for r in catalogue.records)
    assert labels[:, names.index("outerwear")].sum() == coat_or_jacket.sum() + outwear == 554 + 155
    assert known[:, names.index("bag")].sum() == len(ccp) and known[:, names.index("longsleeve")].sum() == len(catalogue)
    assert known[:, names.index("skirt")].all()
    assert not (labels & ~known).any()


def _dataset(label_names, rows, image, categories=None, category_names=None, types=None) -> FashionDataset:
    records = [Record(image=image, labels=np.array(l, np.uint8), label_mask=np.array(m, np.uint8),
                      category=None if categories is None else categories[i]) for i, (l, m) in enumerate(rows)]
    return FashionDataset(records, label_names, category_names=category_names, attribute_types=types)


def test_merge_rules_by_hand(shared_data: Path) -> None:
    image = shared_data / "clothing-attributes" / "images" / "000002.jpg"
    # Source a: coat and Jacket both become outerwear; T_Shirt meets b's "t-shirt" by normalisation.
    a = _dataset(["coat", "Jacket", "T_Shirt"], [([1, 0, 0], [1, 1, 1]),   # coat positive: outerwear positive
                                                  ([0, 0, 1], [1, 1, 1]),   # both known negative: negative
                                                  ([0, 0, 0], [1, 0, 1])],  # coat negative, jacket unknown: unknown
                 image, types=["shape", "shape", "style"])
    other = image.with_name("000003.jpg")  # another photo: the same one in two sources counts once
    b = _dataset(["t-shirt", "scarf"], [([1, 0], [1, 1])], other, categories=[1], category_names=["coat", "tee"],
                 types=["style", "part"])
    merged = MergedDataset([a, b], aliases={"COAT": "outerwear", "jacket": "outerwear"}, names=["a", "b"])
    assert merged.label_names == ["outerwear", "T_Shirt", "scarf"]
    assert merged.attribute_types == ["shape", "style", "part"]
    assert [r.labels.tolist() for r in merged.records] == [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]]
    assert [r.label_mask.tolist() for r in merged.records] == [[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert merged.category_names == ["outerwear", "tee"] and [r.category for r in merged.records] == [-1, -1, -1, 1]
    assert merged[3]["category"].item() == 1 and merged[2]["index"] == 2
    assert normalise_name(" Long_sleeve ") == normalise_name("long-sleeve") == normalise_name("LongSleeve") == "longsleeve"
    with pytest.raises(ValueError, match=r"alias chain 'coat' -> 'jacket' -> 'outerwear'"):
        MergedDataset([a, b], aliases={"coat": "jacket", "jacket": "outerwear"})
    with pytest.raises(ValueError, match="at least one dataset"):
        MergedDataset([])
    # Without names, sources are named by the folders their images share; one without types drops types.
    plain = MergedDataset([a, _dataset(["hat"], [([1], [1])], image)])
    assert plain.sources == ["clothing-attributes/images#0", "clothing-attributes/images#1"]
    assert plain.attribute_types is None and plain.category_names is None and "category" not in plain[0]


def test_one_transform_for_the_merged_samples(shared_data: Path) -> None:
    ccp = read_clothing_co_parsing(shared_data / "clothing-co-parsing", with_masks=True)
    catalogue = read_class_folders(shared_data / "clothing-dataset-small" / "validation")
    transform = build_transforms(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train=True)
    merged = MergedDataset([ccp, catalogue], aliases=ALIASES, transform=transform)
    torch.manual_seed(0)  # the multi-scale crop is random
    assert merged.sources == ["clothing-co-parsing/photos", "clothing-dataset-small/validation"]
    batch = default_collate([merged[0], merged[len(ccp)]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert (batch["mask"][1] == -1).all() and (batch["mask"][0] >= 0).any()
    assert batch["index"].tolist() == [0, len(ccp)]


def test_validate_images_keeps_rows_aligned(shared_data: Path, tmp_path: Path) -> None:
    image = shared_data / "clothing-attributes" / "images" / "000002.jpg"
    a = _dataset(["red"], [([1], [1]), ([0], [1])], image)
    a.records[0].image = tmp_path / "gone.jpg"
    b = _dataset(["blue"], [([1], [1])], image.with_name("000003.jpg"))
    merged = MergedDataset([a, b], names=["a", "b"])
    problems = merged.validate_images(drop=True)
    assert len(problems) == 1 and "gone.jpg" in str(problems[0]) and merged.skipped == problems
    assert merged.rows == [(0, 1), (1, 0)] and [merged.source_of(i) for i in range(2)] == ["a", "b"]
    assert merged[1]["labels"].tolist() == [0.0, 1.0] and merged[1]["label_mask"].tolist() == [0.0, 1.0]



def test_merged_photos_are_checked_and_remembered_as_training_checks_them(shared_data: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Training on several --data checks the merged photos with remember=True (a TypeError before)."""
    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(tmp_path / "cache"))
    image = shared_data / "clothing-attributes" / "images" / "000002.jpg"
    a = _dataset(["red"], [([1], [1]), ([0], [1])], image)
    a.records[0].image = tmp_path / "gone.jpg"
    b = _dataset(["blue"], [([1], [1])], image.with_name("000003.jpg"))
    merged = MergedDataset([a, b], names=["a", "b"])
    problems = merged.validate_images(drop=True, remember=True)
    assert len(problems) == 1 and merged.rows == [(0, 1), (1, 0)]
    assert len(list((tmp_path / "cache" / "photo-checks").iterdir())) == 1

def test_load_aliases(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text("outwear: outerwear\nouterwear: [coat, jacket]\n")
    assert load_aliases(path) == {"outwear": "outerwear", "coat": "outerwear", "jacket": "outerwear"}
    (tmp_path / "aliases.json").write_text(json.dumps({"tee": "t-shirt"}))
    assert load_aliases(tmp_path / "aliases.json") == {"tee": "t-shirt"}
    cases = {
        "yes: shoes\n": r"aliases\.yaml: key True: expected a label name \(quote it",
        "coat: 3\n": r"aliases\.yaml: key 'coat': expected a target name or a list of alias names, found 3",
        "coat: jacket\njacket: outerwear\n": r"aliases\.yaml: alias chain 'coat' -> 'jacket' -> 'outerwear'",
        "coat: jacket\nblazer: [coat]\n": r"aliases\.yaml: key 'blazer': alias 'coat' maps to both 'jacket' and 'blazer'",
        "- coat\n": r"aliases\.yaml: expected a mapping of name -> name, found a list",
        "coat: [jacket\n": r"aliases\.yaml:\d+: not valid YAML",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_aliases(path)
    (tmp_path / "bad.json").write_text('{"a": "b",\n}')
    with pytest.raises(DataError, match=r"bad\.json:2: not valid JSON"):
        load_aliases(tmp_path / "bad.json")
    with pytest.raises(DataError, match=r"missing\.yaml: expected an alias file"):
        load_aliases(tmp_path / "missing.yaml")
    path.write_text("")
    assert load_aliases(path) == {}
