"""build_transforms: landmarks and boxes stay on the image content through crop, flip and resize."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from fashionlens.data.transforms import FLIP_PERMUTATION, MultiScaleCrop, build_transforms

RED, GREEN = (255, 0, 0), (0, 255, 0)
H, W = 64, 96
LEFT, RIGHT = (30, 20), (66, 44)  # (x, y) centres of a red and a green 7x7 marker


def _sample() -> dict:
    pixels = torch.zeros(3, H, W, dtype=torch.uint8)
    for (x, y), colour in ((LEFT, RED), (RIGHT, GREEN)):
        pixels[:, y - 3 : y + 4, x - 3 : x + 4] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    points = torch.zeros(8, 2)
    points[0] = torch.tensor(LEFT, dtype=torch.float32)  # left collar on the red marker
    points[1] = torch.tensor(RIGHT, dtype=torch.float32)  # right collar on the green marker
    visibility = torch.tensor([0, 1, 2, 2, 2, 2, 2, 2])
    return {
        "image": tv_tensors.Image(pixels),
        "labels": torch.tensor([1.0, 0.0]),
        "label_mask": torch.ones(2),
        "bbox": tv_tensors.BoundingBoxes(torch.tensor([[24.0, 14.0, 73.0, 51.0]]), format="XYXY", canvas_size=(H, W)),
        "landmarks": tv_tensors.KeyPoints(points, canvas_size=(H, W)),
        "landmark_visibility": visibility,
        "path": "x.png",
        "index": 7,
    }


def _colour_at(image: torch.Tensor, point: torch.Tensor) -> str:
    x, y = (int(round(float(v))) for v in point)
    pixel = image[:, y, x] * 0.5 + 0.5  # undo Normalize(0.5, 0.5)
    if pixel[0] > 0.5 and pixel[1] < 0.5:
        return "red"
    if pixel[1] > 0.5 and pixel[0] < 0.5:
        return "green"
    return "other"


def test_eval_resizes_straight_to_a_square_and_scales_points() -> None:
    out = build_transforms(32, [0.5] * 3, [0.5] * 3, train=False)(_sample())
    assert tuple(out["image"].shape) == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["landmarks"][0].tolist() == pytest.approx([30 * 32 / 96, 20 * 32 / 64])
    assert out["bbox"].tolist() == [[pytest.approx(24 / 3), pytest.approx(7.0), pytest.approx(73 / 3), pytest.approx(25.5)]]
    assert _colour_at(out["image"], out["landmarks"][0]) == "red"
    assert _colour_at(out["image"], out["landmarks"][1]) == "green"
    assert out["landmark_visibility"].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]
    assert out["labels"].tolist() == [1.0, 0.0] and out["path"] == "x.png" and out["index"] == 7
    # Normalize(0.5, 0.5) maps black to -1 and the marker's full red channel to +1.
    assert out["image"].min().item() == pytest.approx(-1.0) and out["image"].max().item() == pytest.approx(1.0, abs=1e-6)


def test_train_landmarks_stay_on_their_markers_and_flip_swaps_left_right() -> None:
    transform = build_transforms(32, [0.5] * 3, [0.5] * 3, train=True)
    torch.manual_seed(0)
    flipped = unflipped = on_marker = 0
    for _ in range(60):
        out = transform(_sample())
        assert tuple(out["image"].shape) == (3, 32, 32)
        vis = out["landmark_visibility"].tolist()
        # A flip swaps the slots: slot 0 (left collar) then holds the green marker, with slot 1's visibility.
        for slot in (0, 1):
            point = out["landmarks"][slot]
            inside = -0.5 <= point[0] <= 31.5 and -0.5 <= point[1] <= 31.5
            if not inside:
                assert vis[slot] == 2, "a landmark pushed off the image must be cut off"
                continue
            colour = _colour_at(out["image"], point)
            assert colour in ("red", "green")
            on_marker += 1
            is_flipped = (slot == 0) == (colour == "green")
            assert vis[slot] == (1 if (slot == 0) == is_flipped else 0)
            flipped += is_flipped
            unflipped += not is_flipped
        assert vis[2:] == [2] * 6
    assert on_marker > 60  # most crops keep the markers
    assert flipped > 10 and unflipped > 10  # p = 0.5 both ways over 60 draws


def test_flip_permutation_swaps_each_left_right_pair() -> None:
    assert FLIP_PERMUTATION == (1, 0, 3, 2, 5, 4, 7, 6)


def test_multiscale_crop_sides_come_from_the_scales() -> None:
    crop = MultiScaleCrop(32, scales=(1.0, 0.5), max_distort=0)
    torch.manual_seed(1)
    seen = set()
    for _ in range(40):
        params = crop.make_params([tv_tensors.Image(torch.zeros(3, H, W, dtype=torch.uint8))])
        seen.add((params["width"], params["height"]))
        assert 0 <= params["left"] <= W - params["width"] and 0 <= params["top"] <= H - params["height"]
    # Side = scale x short side (64); max_distort=0 keeps width == height.
    assert seen == {(64, 64), (32, 32)}
    with pytest.raises(ValueError, match="scales must be in"):
        MultiScaleCrop(32, scales=(1.5,))


def test_transform_accepts_a_sample_without_landmarks() -> None:
    sample = _sample()
    for key in ("landmarks", "landmark_visibility", "bbox"):
        del sample[key]
    out = build_transforms(16, [0.0] * 3, [1.0] * 3, train=True)(sample)
    assert tuple(out["image"].shape) == (3, 16, 16)
    assert 0.0 <= out["image"].min().item() and out["image"].max().item() <= 1.0  # mean 0, std 1: just [0, 1]
    assert sorted(out) == ["image", "index", "label_mask", "labels", "path"]


# ------------------------------------------------------------------ ImagePreprocess (predict's loader)


def _real_photos(shared_data, count: int) -> list[torch.Tensor]:
    from fashionlens.inference import to_uint8_chw

    folder = shared_data / "clothing-dataset-small" / "test"
    paths = sorted(folder.rglob("*.jpg"))[::40][:count]
    assert len(paths) == count, f"expected {count} photos under {folder}"
    return [to_uint8_chw(path)[0] for path in paths]


@pytest.mark.parametrize("size", [224, 64, 400])  # down, far down, up
def test_image_preprocess_gives_the_eval_transforms_floats_bit_for_bit(shared_data, size) -> None:
    from fashionlens.data.transforms import ImagePreprocess

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = build_transforms(size, mean, std, train=False)
    preprocess = ImagePreprocess(size, mean, std)
    photos = _real_photos(shared_data, 6)
    # The decoder hands over the HWC pixels permuted (channels-last memory); a contiguous copy too.
    width = photos[0].shape[-1]
    assert photos[0].stride() == (1, 3 * width, 3)
    expected = torch.stack([reference(photo).as_subclass(torch.Tensor) for photo in photos])
    for layout in (lambda photo: photo, lambda photo: photo.contiguous()):
        resized = torch.stack([preprocess.resize(layout(photo)) for photo in photos])
        assert resized.dtype == torch.uint8 and tuple(resized.shape) == (6, 3, size, size)
        assert torch.equal(preprocess.normalise(resized), expected)
        assert torch.equal(torch.stack([preprocess(layout(photo)) for photo in photos]), expected)


def test_image_preprocess_of_a_photo_already_at_size_normalises_a_copy() -> None:
    from fashionlens.data.transforms import ImagePreprocess

    photo = torch.zeros(3, 32, 32, dtype=torch.uint8)
    photo[:, :16] = 255
    before = photo.clone()
    out = ImagePreprocess(32, [0.5] * 3, [0.25] * 3)(photo)
    assert torch.equal(photo, before)  # no resize at size; normalising works on a copy
    # Hand-worked: white (1 - 0.5) / 0.25 = 2, black (0 - 0.5) / 0.25 = -2.
    assert out[:, :16].unique().tolist() == pytest.approx([2.0])
    assert out[:, 16:].unique().tolist() == pytest.approx([-2.0])
    assert torch.equal(out, build_transforms(32, [0.5] * 3, [0.25] * 3, train=False)(photo).as_subclass(torch.Tensor))


def test_image_preprocess_refuses_a_zero_std_and_anything_but_uint8_rgb() -> None:
    from fashionlens.data.transforms import ImagePreprocess

    with pytest.raises(ValueError, match="std .* has a zero"):
        ImagePreprocess(32, [0.5] * 3, [0.25, 0.0, 0.25])
    preprocess = ImagePreprocess(32, [0.5] * 3, [0.25] * 3)
    floats = torch.full((3, 32, 32), 0.5)
    with pytest.raises(TypeError, match=r"expected uint8 RGB pixels .* got torch.float32 of shape \(3, 32, 32\)"):
        preprocess(floats)
    assert torch.equal(floats, torch.full((3, 32, 32), 0.5))  # not scaled in place on the way
    with pytest.raises(TypeError, match=r"got torch.uint8 of shape \(1, 40, 40\)"):
        preprocess.resize(torch.zeros(1, 40, 40, dtype=torch.uint8))


def test_image_preprocess_output_is_contiguous_whatever_the_input_layout() -> None:
    from fashionlens.data.transforms import ImagePreprocess

    channels_last = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).permute(2, 0, 1)
    out = ImagePreprocess(32, [0.5] * 3, [0.25] * 3)(channels_last)
    assert out.is_contiguous() and out.dtype == torch.float32
