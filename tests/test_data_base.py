"""FashionDataset: image loading errors, skip_bad, EXIF, bomb check, bbox crop moving landmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from fashionlens.data import read_manifest_csv
from fashionlens.data.base import FashionDataset, Record
from fashionlens.errors import DataError

REAL_JPEG = "clothing-attributes/images/000002.jpg"


def _manifest(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("image,labels\n" + "".join(f"{n},a\n" for n in names))
    return path


@pytest.fixture()
def bad_images(tmp_path: Path, shared_data: Path) -> Path:
    """A folder with one good real JPEG and four bad files, named in a manifest (lines 2-6)."""
    real = shared_data / REAL_JPEG
    shutil.copyfile(real, tmp_path / "good.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = real.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    return _manifest(tmp_path, ["good.jpg", "missing.jpg", "empty.jpg", "truncated.jpg", "text.jpg"])


@pytest.mark.parametrize(
    "index, name, line, reason",
    [
        (1, "missing.jpg", 3, "not found"),
        (2, "empty.jpg", 4, "0 bytes"),
        (3, "truncated.jpg", 5, "truncated"),
        (4, "text.jpg", 6, "not an image"),
    ],
)
def test_bad_image_raises_naming_file_and_annotation_line(bad_images: Path, index: int, name: str, line: int, reason: str) -> None:
    dataset = read_manifest_csv(bad_images)
    with pytest.raises(DataError) as info:
        dataset[index]
    message = str(info.value)
    assert message.startswith(str(bad_images.parent / name) + ": ")
    assert f"manifest.csv:{line}" in message
    assert reason in message


def test_good_real_image_loads_as_uint8_rgb(bad_images: Path) -> None:
    sample = read_manifest_csv(bad_images)[0]
    assert isinstance(sample["image"], tv_tensors.Image)
    assert sample["image"].dtype == torch.uint8
    assert tuple(sample["image"].shape) == (3, 320, 213)  # 000002.jpg is 213x320
    assert sample["labels"].tolist() == [1.0] and sample["label_mask"].tolist() == [1.0]
    assert sample["index"] == 0 and sample["path"].endswith("good.jpg")


def test_skip_bad_moves_the_four_bad_files_to_skipped(bad_images: Path) -> None:
    dataset = read_manifest_csv(bad_images, skip_bad=True)
    assert len(dataset) == 1
    assert [Path(e.path).name for e in dataset.skipped] == ["missing.jpg", "empty.jpg", "truncated.jpg", "text.jpg"]
    summary = dataset.skipped_summary()
    assert summary.splitlines()[0] == "skipped 4 of 5 images:"
    for name, line in [("missing.jpg", 3), ("empty.jpg", 4), ("truncated.jpg", 5), ("text.jpg", 6)]:
        assert name in summary and f"manifest.csv:{line})" in summary
    assert dataset[0]["path"].endswith("good.jpg")


def test_header_only_validation_misses_truncation_but_full_decode_catches_it(bad_images: Path) -> None:
    dataset = read_manifest_csv(bad_images)
    quick = {Path(e.path).name for e in dataset.validate_images(full_decode=False)}
    full = {Path(e.path).name for e in dataset.validate_images(full_decode=True)}
    assert quick == {"missing.jpg", "empty.jpg", "text.jpg"}
    assert full == quick | {"truncated.jpg"}
    assert len(dataset) == 5  # validate_images without drop changes nothing


def test_no_skips_summary(tmp_path: Path, shared_data: Path) -> None:
    shutil.copyfile(shared_data / REAL_JPEG, tmp_path / "a.jpg")
    dataset = read_manifest_csv(_manifest(tmp_path, ["a.jpg"]), skip_bad=True)
    assert dataset.skipped_summary() == "no images skipped (1 checked)"


def test_decompression_bomb_limit_is_a_data_error(bad_images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = read_manifest_csv(bad_images)
    # A lower Pillow limit is respected: between 1x and 2x Pillow only warns; we refuse.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50000)
    with pytest.raises(DataError, match=r"good.jpg: image too large to decode safely: the header says 213x320 = "
                                        r"68160 pixels, more than the limit of 50000 \(possible decompression bomb\)"):
        dataset[0]
    # Above 2x PIL itself refuses while opening; still a DataError naming the file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"good.jpg: image too large to decode safely \(.*68160 pixels"):
        dataset[0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high with orientation 6 ("rotate 90 CW to display"): shown 20 wide x 40 high.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    sample = read_manifest_csv(_manifest(tmp_path, ["rot.jpg"]))[0]
    image = sample["image"]
    assert tuple(image.shape) == (3, 40, 20)
    # After a 90 degree clockwise turn the stored left half is on top.
    assert image[:, :15].float().mean() > 240 and image[:, 25:].float().mean() < 15


def test_crop_to_bbox_moves_box_and_landmarks(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "a.png")
    landmarks = np.zeros((8, 2), np.float32)
    landmarks[0] = (60, 40)  # inside the crop
    landmarks[1] = (5, 5)  # outside the crop -> cut off
    visibility = np.zeros(8, np.int64)
    record = Record(
        image=tmp_path / "a.png",
        labels=np.array([1], np.uint8),
        label_mask=np.array([1], np.uint8),
        category=3,
        bbox=(50.0, 30.0, 150.0, 80.0),
        landmarks=landmarks,
        landmark_visibility=visibility,
    )
    dataset = FashionDataset([record], ["a"], category_names=list("abcd"), crop_to_bbox=True, bbox_margin=0.1)
    sample = dataset[0]
    # Margin 10% of 100 x 50 = 10 x 5: crop (40, 25, 160, 85) -> 120 x 60.
    assert tuple(sample["image"].shape) == (3, 60, 120)
    assert sample["bbox"].tolist() == [[10.0, 5.0, 110.0, 55.0]]
    assert sample["landmarks"][0].tolist() == [20.0, 15.0]
    assert sample["landmark_visibility"][:2].tolist() == [0, 2]
    assert sample["category"].item() == 3 and sample["category"].dtype == torch.int64
    # Clipped at the image border: a box touching the right edge cannot grow past it.
    record.bbox = (150.0, 0.0, 200.0, 100.0)
    assert tuple(dataset[0]["image"].shape) == (3, 100, 55)


def test_records_keep_compact_labels_but_samples_are_float32(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    record = Record(image=tmp_path / "a.png", labels=np.array([1, 1, 0], np.uint8), label_mask=np.array([1, 0, 1], np.uint8))
    sample = FashionDataset([record], ["x", "y", "z"])[0]
    # y is positive in the record but unknown: the contract says labels are 0 where unknown.
    assert sample["labels"].tolist() == [1.0, 0.0, 0.0]
    assert sample["label_mask"].tolist() == [1.0, 0.0, 1.0]
    assert sample["labels"].dtype == torch.float32
