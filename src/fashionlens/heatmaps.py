"""Landmark heatmaps: encode landmarks as target maps, the masked heatmap loss, and decoding.

Coordinate convention (used by every function here and by ``landmarks`` in the sample dict):
a landmark ``(x, y)`` is in input-image pixels where the centre of pixel ``(i, j)`` (column ``i``,
row ``j``) is at ``(i, j)``, so the image spans ``[-0.5, W - 0.5]``. This is the convention of
DeepFashion's annotations (integer pixel indices) and of bilinear resizing with
``align_corners=False``. A heatmap of size ``(h, w)`` covers the same extent, so heatmap cell ``u``
has its centre at image ``x = (u + 0.5) * W / w - 0.5`` and image ``x`` maps to heatmap
``u = (x + 0.5) * w / W - 0.5`` (likewise for ``y`` with ``H / h``).

Visibility follows DeepFashion: 0 visible, 1 occluded, 2 cut off / not present for this clothes type.
"""

from __future__ import annotations

from typing import Literal

import torch

from fashionlens.vocabulary import CUT_OFF as ABSENT
from fashionlens.vocabulary import OCCLUDED, VISIBLE  # noqa: F401

HeatmapKind = Literal["gaussian", "liu"]


def image_to_heatmap_coords(xy: torch.Tensor, image_size: tuple[int, int],
                            heatmap_size: tuple[int, int]) -> torch.Tensor:
    """Map ``(..., 2)`` x,y image-pixel coordinates to heatmap-cell coordinates (see module docstring)."""
    (height, width), (h, w) = image_size, heatmap_size
    scale = xy.new_tensor([w / width, h / height])
    return (xy + 0.5) * scale - 0.5


def heatmap_to_image_coords(uv: torch.Tensor, image_size: tuple[int, int],
                            heatmap_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`image_to_heatmap_coords`."""
    (height, width), (h, w) = image_size, heatmap_size
    scale = uv.new_tensor([width / w, height / h])
    return (uv + 0.5) * scale - 0.5


def gaussian_heatmaps(landmarks_xy: torch.Tensor, visibility: torch.Tensor, image_size: tuple[int, int],
                      heatmap_size: tuple[int, int], sigma: float = 8.0,
                      kind: HeatmapKind = "gaussian") -> torch.Tensor:
    """Target heatmaps ``(B, K, h, w)`` with a peak of 1 at each landmark.

    ``landmarks_xy`` is ``(B, K, 2)`` in input-image pixels, ``visibility`` ``(B, K)``.
    ``sigma`` is in input-image pixels, so the same value fits every heatmap resolution
    (8 at 224 px is Liu & Lu's R; at a 56 x 56 heatmap that is 2 cells).

    - ``kind="gaussian"``: ``exp(-d² / (2 sigma²))``, d the Euclidean distance in image pixels.
    - ``kind="liu"``: ``exp(-0.5 d / sigma)`` with d *not* squared, the target of Liu & Lu,
      "Deep fashion analysis with feature map upsampling and landmark-driven attention",
      ECCV 2018 workshops (Sec. 3.2): a cone-like peak with heavier tails.

    Both kinds are evaluated at heatmap cell centres. Occluded landmarks (visibility 1) still get a
    peak (the loss decides whether to count them); absent ones (visibility 2) get an all-zero map.
    """
    if landmarks_xy.ndim != 3 or landmarks_xy.shape[-1] != 2:
        raise ValueError(f"landmarks_xy must be (B, K, 2), got {tuple(landmarks_xy.shape)}")
    if visibility.shape != landmarks_xy.shape[:2]:
        raise ValueError(f"visibility must be (B, K) = {tuple(landmarks_xy.shape[:2])}, "
                         f"got {tuple(visibility.shape)}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    h, w = heatmap_size
    height, width = image_size
    dtype = landmarks_xy.dtype if landmarks_xy.is_floating_point() else torch.float32
    xy = landmarks_xy.to(dtype)
    # Cell centres in image pixels, so distances (and sigma) are in image pixels.
    xs = heatmap_to_image_coords(torch.stack([torch.arange(w, dtype=dtype, device=xy.device),
                                              torch.zeros(w, dtype=dtype, device=xy.device)], -1),
                                 image_size, heatmap_size)[:, 0]
    ys = heatmap_to_image_coords(torch.stack([torch.zeros(h, dtype=dtype, device=xy.device),
                                              torch.arange(h, dtype=dtype, device=xy.device)], -1),
                                 image_size, heatmap_size)[:, 1]
    dx2 = (xs.view(1, 1, 1, w) - xy[..., 0, None, None]) ** 2
    dy2 = (ys.view(1, 1, h, 1) - xy[..., 1, None, None]) ** 2
    squared = dx2 + dy2
    if kind == "gaussian":
        maps = torch.exp(-squared / (2.0 * sigma ** 2))
    elif kind == "liu":
        maps = torch.exp(-0.5 * squared.sqrt() / sigma)
    else:
        raise ValueError(f"kind must be 'gaussian' or 'liu', got {kind!r}")
    present = (visibility != ABSENT).to(dtype)[..., None, None]
    return maps * present


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, visibility: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the heatmaps of visible landmarks only (visibility 0).

    Each visible landmark contributes the mean over its ``h * w`` cells of ``(pred - target)²``;
    the result is the average over visible landmarks in the batch, and 0 (with a gradient path) when
    none is visible. Liu & Lu (ECCV 2018 workshops, Sec. 3.2) mask their L2 heatmap loss the same way.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    visible = (visibility == VISIBLE).to(pred.dtype)
    per_map = ((pred - target) ** 2).mean(dim=(-2, -1))
    return (per_map * visible).sum() / visible.sum().clamp(min=1.0)


def decode_heatmaps(heatmaps: torch.Tensor, image_size: tuple[int, int],
                    subpixel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Landmark positions ``(B, K, 2)`` in image pixels and confidences ``(B, K)`` (the peak value).

    Without ``subpixel`` the position is the centre of the argmax cell: within half a heatmap cell
    of the truth for an unblurred target. With ``subpixel`` each axis is refined by a 3-point
    quadratic fit through the argmax and its two neighbours, on the *log* of the heatmap when the
    three values are positive (exact for a Gaussian, whose log is a parabola: the same idea as the
    Taylor-expansion decoding of Zhang et al., "Distribution-aware coordinate representation", CVPR
    2020, Eq. 4, taken per axis) and on the raw values otherwise. The offset is clamped to half a
    cell; at the border, or when the fit is not a maximum, the argmax cell centre is kept.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (B, K, h, w), got {tuple(heatmaps.shape)}")
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    confidence, index = flat.max(dim=-1)
    row = torch.div(index, w, rounding_mode="floor")
    col = index - row * w
    uv = torch.stack([col, row], dim=-1).to(heatmaps.dtype if heatmaps.is_floating_point() else torch.float32)
    if subpixel:
        uv = uv + torch.stack([_axis_offset(flat, row, col, w, along="x", size=w),
                               _axis_offset(flat, row, col, w, along="y", size=h)], dim=-1)
    return heatmap_to_image_coords(uv, image_size, (h, w)), confidence


def _axis_offset(flat: torch.Tensor, row: torch.Tensor, col: torch.Tensor, w: int, along: str,
                 size: int) -> torch.Tensor:
    pos = col if along == "x" else row
    step = 1 if along == "x" else w
    centre = row * w + col
    inside = (pos > 0) & (pos < size - 1)
    lo_idx = torch.where(inside, centre - step, centre)
    hi_idx = torch.where(inside, centre + step, centre)
    lo = flat.gather(-1, lo_idx[..., None])[..., 0]
    mid = flat.gather(-1, centre[..., None])[..., 0]
    hi = flat.gather(-1, hi_idx[..., None])[..., 0]
    positive = (lo > 0) & (mid > 0) & (hi > 0)
    tiny = torch.finfo(flat.dtype).tiny
    lo_l, mid_l, hi_l = (torch.where(positive, v.clamp(min=tiny).log(), v) for v in (lo, mid, hi))
    # Vertex of the parabola through (-1, lo), (0, mid), (1, hi).
    curvature = lo_l - 2.0 * mid_l + hi_l
    valid = inside & (curvature < 0)
    offset = 0.5 * (lo_l - hi_l) / torch.where(valid, curvature, torch.ones_like(curvature))
    return torch.where(valid, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
