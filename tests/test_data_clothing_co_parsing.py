"""The Clothing Co-Parsing reader on the real files, and on copies of them broken one way at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import default_collate

from fashionlens.data import FORMATS, open_dataset
from fashionlens.data.check import check_dataset
from fashionlens.data.clothing_co_parsing import read_clothing_co_parsing, read_label_list
from fashionlens.data.transforms import build_transforms
from fashionlens.errors import DataError
from fashionlens.vocabulary import STYLE_FORMATS

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def ccp_root(shared_data: Path) -> Path:
    return shared_data / "clothing-co-parsing"


@pytest.fixture(scope="module")
def ccp(ccp_root: Path):
    return read_clothing_co_parsing(ccp_root)


@pytest.fixture()
def small_ccp(tmp_path: Path, ccp_root: Path) -> Path:
    """A copy of 2 pixel-level (0002, 0003) and 2 image-level (1005, 1006) photos with their annotations."""
    shutil.copyfile(ccp_root / "label_list.mat", tmp_path / "label_list.mat")
    for kind, stems in (("pixel-level", ("0002", "0003")), ("image-level", ("1005", "1006"))):
        (tmp_path / "annotations" / kind).mkdir(parents=True)
        for stem in stems:
            shutil.copyfile(ccp_root / "annotations" / kind / f"{stem}.mat", tmp_path / "annotations" / kind / f"{stem}.mat")
            (tmp_path / "photos").mkdir(exist_ok=True)
            shutil.copyfile(ccp_root / "photos" / f"{stem}.jpg", tmp_path / "photos" / f"{stem}.jpg")
    return tmp_path


def test_real_counts_and_vocabulary(ccp, ccp_root: Path) -> None:
    names = read_label_list(ccp_root / "label_list.mat")
    assert len(names) == 59 and names[0] == "null" and names[19] == "hair" and names[41] == "skin"
    assert len(ccp) == 1678
    assert sum(ccp.has_mask(i) for i in range(len(ccp))) == 803
    assert len(ccp.label_names) == 56 and not {"null", "skin", "hair"} & set(ccp.label_names)
    assert ccp.label_names[:3] == ["accessories", "bag", "belt"] and ccp.label_names[-1] == "wedges"
    assert ccp.id_names == names and ccp.label_ids[0] == 1 and ccp.id_to_label[0] == -1
    labels = np.stack([r.labels for r in ccp.records])
    assert np.stack([r.label_mask for r in ccp.records]).all()  # exhaustive tags: absent = negative
    per_photo = labels.sum(1)
    assert per_photo.max() == 12 and (per_photo == 0).sum() == 2  # 0536 (all null) and 1838 (null, hair, skin)
    assert ccp.notes[1] == "2 photo(s) with no tag besides ['null', 'skin', 'hair'], e.g. ['0536', '1838']"
    counts = dict(zip(ccp.label_names, labels.sum(0).tolist()))
    top = sorted(counts, key=lambda n: -counts[n])[:10]
    assert top == ["shoes", "bag", "pants", "sunglasses", "skirt", "dress", "coat", "shirt", "belt", "t-shirt"]
    assert [counts[n] for n in top] == [836, 825, 532, 513, 388, 364, 357, 310, 299, 280]
    assert {n for n, c in counts.items() if c == 0} == {"intimate", "panties", "swimwear"}
    assert ccp.label_words[ccp.label_names.index("intimate")] == "lingerie"
    assert ccp.label_words[ccp.label_names.index("t-shirt")] == "t-shirt"


def test_tags_of_a_pixel_level_photo_are_the_ids_in_its_mask(ccp, ccp_root: Path) -> None:
    first = next(i for i, r in enumerate(ccp.records) if r.image.name == "0002.jpg")
    ids = np.unique(scipy.io.loadmat(ccp_root / "annotations/pixel-level/0002.mat")["groundtruth"])
    assert ids.tolist() == [0, 14, 19, 24, 32, 41, 44]  # null, dress, hair, jacket, pumps, skin, socks
    assert [ccp.label_names[j] for j in np.flatnonzero(ccp.records[first].labels)] == ["dress", "jacket", "pumps", "socks"]
    tagged = next(i for i, r in enumerate(ccp.records) if r.image.name == "1005.jpg")
    tags = scipy.io.loadmat(ccp_root / "annotations/image-level/1005.mat")["tags"].ravel()
    expected = sorted(ccp.id_names[k] for k in tags if ccp.id_names[k] not in ("null", "skin", "hair"))
    assert [ccp.label_names[j] for j in np.flatnonzero(ccp.records[tagged].labels)] == expected


@pytest.mark.slow  # 1.2 s of real photos through the transforms (the fast suite stays under a minute)
def test_samples_through_the_transform_carry_masks(ccp_root: Path) -> None:
    transform = build_transforms(64, MEAN, STD, train=False)
    dataset = open_dataset(ccp_root, "clothing-co-parsing", transform=transform, with_masks=True)
    with_mask = next(i for i in range(len(dataset)) if dataset.has_mask(i))
    without = next(i for i in range(len(dataset)) if not dataset.has_mask(i))
    sample = dataset[with_mask]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.int64
    in_mask = {int(v) for v in sample["mask"].unique() if v >= 0}
    assert in_mask and in_mask <= set(torch.nonzero(sample["labels"]).ravel().tolist())
    assert (sample["mask"] == -1).any()  # background, skin and hair
    raw = dataset.load_sample(with_mask)
    assert raw["mask"].shape == raw["image"].shape[-2:] == (400, 265)
    assert {int(v) for v in raw["mask"].unique() if v >= 0} == set(torch.nonzero(raw["labels"]).ravel().tolist())
    other = dataset[without]
    assert other["mask"].shape == (64, 64) and (other["mask"] == -1).all()
    batch = default_collate([sample, other])
    assert batch["mask"].shape == (2, 64, 64) and batch["labels"].shape == (2, 56)
    plain = open_dataset(ccp_root, "clothing-co-parsing", transform=transform)
    assert "mask" not in plain[with_mask] and plain[with_mask]["labels"].tolist() == sample["labels"].tolist()
    train = build_transforms(64, MEAN, STD, train=True)(dataset.load_sample(with_mask))
    assert train["mask"].shape == (64, 64) and train["mask"].dtype == torch.int64


def test_format_is_registered(small_ccp: Path) -> None:
    assert "clothing-co-parsing" in STYLE_FORMATS and "clothing-dataset" in STYLE_FORMATS
    assert FORMATS[:6] == ("deepfashion", "manifest", "jsonl", "kfashion", "clothing-attributes", "folders")
    dataset = open_dataset(small_ccp, "clothing-co-parsing")
    assert [r.image.name for r in dataset.records] == ["0002.jpg", "0003.jpg", "1005.jpg", "1006.jpg"]


def test_exclude_and_forced_vocabulary(small_ccp: Path) -> None:
    everything = read_clothing_co_parsing(small_ccp, exclude=())
    assert len(everything.label_names) == 59 and everything.label_names[0] == "null"
    assert everything.records[0].labels[everything.label_names.index("skin")] == 1
    with pytest.raises(ValueError, match=r"exclude names \['hairs'\] are not tags"):
        read_clothing_co_parsing(small_ccp, exclude=("hairs",))
    plain = read_clothing_co_parsing(small_ccp)
    used = [n for j, n in enumerate(plain.label_names) if any(r.labels[j] for r in plain.records)]
    first = ["socks", "dress", "kimono", "jacket", "pumps"]
    forced = read_clothing_co_parsing(small_ccp, label_names=first + [n for n in used if n not in first], with_masks=True)
    assert forced.records[0].labels[:5].tolist() == [1, 1, 0, 1, 1]
    assert forced.records[0].label_mask[:5].tolist() == [1, 1, 0, 1, 1]  # CCP does not annotate kimono
    mask = forced.load_sample(0)["mask"]
    assert {int(v) for v in mask.unique()} == {-1, 0, 1, 3, 4}  # socks, dress, jacket, pumps; kimono never
    with pytest.raises(DataError, match="labels not in the forced vocabulary"):
        read_clothing_co_parsing(small_ccp, label_names=["dress"])


def test_tags_from_both_kinds_are_merged(small_ccp: Path) -> None:
    shutil.copyfile(small_ccp / "annotations/image-level/1005.mat", small_ccp / "annotations/image-level/0002.mat")
    dataset = read_clothing_co_parsing(small_ccp)
    assert len(dataset) == 4 and dataset.has_mask(0)
    names = {dataset.label_names[j] for j in np.flatnonzero(dataset.records[0].labels)}
    assert names == {"dress", "jacket", "pumps", "socks"} | {dataset.label_names[j] for j in np.flatnonzero(dataset.records[2].labels)}


def test_missing_photo(small_ccp: Path) -> None:
    (small_ccp / "photos" / "1005.jpg").unlink()
    with pytest.raises(DataError, match=r"image-level/1005\.mat: annotation has no photo: expected .*photos/1005\.jpg, found nothing"):
        read_clothing_co_parsing(small_ccp)
    dataset = read_clothing_co_parsing(small_ccp, skip_bad=True)
    assert len(dataset) == 3 and len(dataset.skipped) == 1 and "1005.mat" in str(dataset.skipped[0])


def test_mask_of_the_wrong_size(small_ccp: Path) -> None:
    scipy.io.savemat(small_ccp / "annotations/pixel-level/0003.mat", {"groundtruth": np.zeros((10, 12), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"pixel-level/0003\.mat: mask is 10 x 12 \(H x W\) but its photo .*0003\.jpg is 400 x 265"):
        read_clothing_co_parsing(small_ccp)
    assert [r.image.name for r in read_clothing_co_parsing(small_ccp, skip_bad=True).records] == ["0002.jpg", "1005.jpg", "1006.jpg"]


def test_photo_replaced_after_reading(small_ccp: Path) -> None:
    dataset = read_clothing_co_parsing(small_ccp, with_masks=True)
    Image.new("RGB", (20, 30)).save(small_ccp / "photos" / "0002.jpg")
    with pytest.raises(DataError, match=r"0002\.mat: mask is 400 x 265 .* is 30 x 20: expected the same size"):
        dataset[0]


def test_tag_id_outside_the_vocabulary(small_ccp: Path) -> None:
    scipy.io.savemat(small_ccp / "annotations/image-level/1006.mat", {"tags": np.array([[1, 99]], dtype=np.uint8)})
    with pytest.raises(DataError, match=r"image-level/1006\.mat: tags holds label id 99, outside the vocabulary of label_list\.mat \(expected 0\.\.58\)"):
        read_clothing_co_parsing(small_ccp)
    mask = scipy.io.loadmat(small_ccp / "annotations/pixel-level/0002.mat")["groundtruth"]
    mask[0, 0] = 59
    scipy.io.savemat(small_ccp / "annotations/pixel-level/0002.mat", {"groundtruth": mask})
    dataset = read_clothing_co_parsing(small_ccp, skip_bad=True)
    assert len(dataset) == 2 and ["59" in str(e) or "99" in str(e) for e in dataset.skipped] == [True, True]


def test_mat_without_the_variable_or_unreadable(small_ccp: Path) -> None:
    scipy.io.savemat(small_ccp / "annotations/image-level/1005.mat", {"labels": np.array([[1, 2]])})
    with pytest.raises(DataError, match=r"1005\.mat: expected the variable 'tags', found \['labels'\]"):
        read_clothing_co_parsing(small_ccp)
    (small_ccp / "annotations/pixel-level/0003.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    dataset = read_clothing_co_parsing(small_ccp, skip_bad=True)
    assert len(dataset) == 2
    assert "cannot read as a MATLAB .mat file" in str(dataset.skipped[0]) and "0003.mat" in str(dataset.skipped[0])
    scipy.io.savemat(small_ccp / "label_list.mat", {"names": np.array([1])})
    with pytest.raises(DataError, match=r"label_list\.mat: expected the variable 'label_list', found \['names'\]"):
        read_clothing_co_parsing(small_ccp)


def test_skip_bad_also_drops_unreadable_photos(small_ccp: Path) -> None:
    (small_ccp / "photos" / "1006.jpg").write_bytes(b"")
    (small_ccp / "photos" / "1005.jpg").unlink()
    dataset = read_clothing_co_parsing(small_ccp, skip_bad=True)
    assert len(dataset) == 2 and len(dataset.skipped) == 2
    assert "annotation has no photo" in str(dataset.skipped[0])
    assert "1006.jpg" in str(dataset.skipped[1]) and "0 bytes" in str(dataset.skipped[1])


def test_data_check(small_ccp: Path, ccp_root: Path) -> None:
    report = check_dataset(ccp_root, "clothing-co-parsing", full_decode=False)
    assert report.ok and report.num_images == 1678 and len(report.label_names) == 56
    assert report.positives[report.label_names.index("shoes")] == 836 and sum(report.unknown) == 0
    from fashionlens.cli import main

    assert main(["data", "check", str(small_ccp), "--format", "clothing-co-parsing"]) == 0
    scipy.io.savemat(small_ccp / "annotations/image-level/1006.mat", {"tags": np.array([[99]])})
    broken = check_dataset(small_ccp, "clothing-co-parsing")
    assert not broken.ok and "1006.mat" in broken.problems[0] and "label id 99" in broken.problems[0]
