"""Transforms on the whole sample dict, so that boxes and landmarks move with the image.

torchvision.transforms.v2 already moves ``BoundingBoxes`` and ``KeyPoints`` with every geometric
op. Two things it cannot know: which landmark is "left" (a horizontal flip turns the left sleeve
into the right one, so slots and visibilities must be swapped), and that a landmark pushed out of
the picture by a crop is now "cut off" (visibility 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fashionlens.data.base import mark_outside_landmarks
from fashionlens.vocabulary import FLIP_PERMUTATION

ML_GCN_SCALES = (1.0, 0.875, 0.75, 0.66, 0.5)
# Photos already cropped to the garment's box (the DeepFashion benchmarks, Liu & Lu's protocol: box crop
# resized to 224): a crop of half the side would cut the garment, and most of its landmarks, away.
BOX_CROP_SCALES = (1.0, 0.875)


def _image_size(sample: dict[str, Any]) -> tuple[int, int]:
    image = sample["image"]
    if isinstance(image, torch.Tensor):
        return int(image.shape[-2]), int(image.shape[-1])
    return image.height, image.width  # PIL


class MultiScaleCrop(v2.Transform):
    """ML-GCN's multi-scale crop: a crop of side ``scale x short side`` then a resize to a square.

    Width and height scales are drawn from ``scales`` independently but at most ``max_distort``
    steps apart in the list (as the reference does), so the aspect ratio changes only a little.
    The crop position is uniform over the image (the reference picks from a fixed grid of
    corners/centre; uniform covers those positions and everything between).
    """

    def __init__(
        self,
        size: int,
        scales: Sequence[float] = ML_GCN_SCALES,
        max_distort: int = 1,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {tuple(scales)}")
        self.size = (int(size), int(size))
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)
        self.antialias = antialias
        self._pairs = [
            (i, j)
            for i in range(len(self.scales))
            for j in range(len(self.scales))
            if abs(i - j) <= self.max_distort
        ]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        from torchvision.transforms.v2._utils import query_size

        height, width = query_size(flat_inputs)
        short = min(height, width)
        i, j = self._pairs[int(torch.randint(len(self._pairs), ()))]
        crop_w = max(1, min(width, round(self.scales[i] * short)))
        crop_h = max(1, min(height, round(self.scales[j] * short)))
        top = int(torch.randint(height - crop_h + 1, ()))
        left = int(torch.randint(width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resized_crop, inpt, **params, size=self.size, antialias=self.antialias)


class RandomHorizontalFlipLandmarks(v2.Transform):
    """Horizontal flip that also swaps left/right landmark slots and their visibilities."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p
        self._flip = v2.RandomHorizontalFlip(p=1.0)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        if torch.rand(()) >= self.p:
            return sample
        out = self._flip(sample)
        if isinstance(out, dict):
            swap = list(FLIP_PERMUTATION)
            if "landmarks" in out and out["landmarks"].shape[-2] == len(swap):
                out["landmarks"] = tv_tensors.wrap(out["landmarks"][..., swap, :], like=out["landmarks"])
            if "landmark_visibility" in out and out["landmark_visibility"].shape[-1] == len(swap):
                out["landmark_visibility"] = out["landmark_visibility"][..., swap]
        return out


class MarkCutOffLandmarks(v2.Transform):
    """Set visibility 2 (cut off) for landmarks the geometric transforms pushed off the image."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        if isinstance(sample, dict) and "landmarks" in sample and "landmark_visibility" in sample:
            height, width = _image_size(sample)
            sample["landmark_visibility"] = mark_outside_landmarks(
                sample["landmarks"], sample["landmark_visibility"], height, width
            )
        return sample


def build_transforms(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    scales: Sequence[float] = ML_GCN_SCALES,
) -> v2.Compose:
    """The ML-GCN recipe on the sample dict.

    train: multi-scale crop (side = scale x short side, ``scales`` as in the reference) resized to
    ``image_size`` square, then a horizontal flip that swaps left/right landmarks.
    eval: resize straight to ``image_size`` x ``image_size`` (no centre crop, as the reference).
    Both end with float conversion to [0, 1] and ``Normalize(mean, std)``.
    """
    geometric: list[v2.Transform]
    if train:
        geometric = [MultiScaleCrop(image_size, scales), RandomHorizontalFlipLandmarks(0.5)]
    else:
        geometric = [v2.Resize((int(image_size), int(image_size)), antialias=True)]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometric,
            MarkCutOffLandmarks(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


class ImagePreprocess:
    """The evaluation transform for an image alone: ``resize`` one photo (uint8 in and out), then
    ``normalise`` one or a batch of them (uint8 to float, mean and std).

    The floats are the same, bit for bit, as ``build_transforms(image_size, mean, std,
    train=False)`` gives for the same image (the same resize kernel, the same element-wise
    operations in the same order), at about half the cost: none of the sample-dict pipeline's
    per-photo dispatch, and the resize fastest on a channels-last image (an ``HWC`` array permuted
    to ``(3, H, W)``, as :func:`fashionlens.inference.to_uint8_chw` gives; any layout gives the
    same pixels). Splitting the two steps lets a loader resize per photo and normalise per batch.
    Picklable, for DataLoader workers.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.size = [int(image_size), int(image_size)]
        self.mean = torch.tensor([float(value) for value in mean], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor([float(value) for value in std], dtype=torch.float32).view(3, 1, 1)
        if not bool(torch.all(self.std != 0)):
            raise ValueError(f"std {list(std)} has a zero: cannot normalise")

    @staticmethod
    def _check(images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim < 3 or images.shape[-3] != 3:
            raise TypeError(f"expected uint8 RGB pixels (..., 3, H, W), got {images.dtype} of shape "
                            f"{tuple(images.shape)} (fashionlens.inference.to_uint8_chw makes them from any input)")

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``(3, H, W)`` -> uint8 ``(3, S, S)`` (the input itself when it is already that size)."""
        self._check(image)
        return F.resize_image(image, self.size, antialias=True)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., 3, S, S)`` -> contiguous float32 in the model's mean/std; the input is not changed."""
        self._check(images)
        out = images.to(torch.float32, memory_format=torch.contiguous_format).mul_(1.0 / 255)  # ToDtype(scale=True)
        return out.sub_(self.mean.to(out.device)).div_(self.std.to(out.device))  # Normalize(mean, std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One uint8 ``(3, H, W)`` photo -> float32 ``(3, S, S)``."""
        return self.normalise(self.resize(image))
