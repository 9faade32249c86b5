"""Heatmap encoding, the visibility-masked loss and decoding (fashionlens.heatmaps)."""

from __future__ import annotations

import math

import pytest
import torch

from fashionlens.heatmaps import (
    decode_heatmaps,
    gaussian_heatmaps,
    heatmap_loss,
    heatmap_to_image_coords,
    image_to_heatmap_coords,
)


def _points(image: int, cell: float, n: int = 16, seed: int = 0) -> torch.Tensor:
    """Random landmarks at least two heatmap cells from the border, in float64."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, n, 2, generator=g, dtype=torch.float64) * (image - 1 - 4 * cell) + 2 * cell)


def test_coordinate_convention_pixel_centres():
    # 224 px -> 56 cells (4 px each): cell 0 spans image [-0.5, 3.5], its centre is x = 1.5.
    uv = image_to_heatmap_coords(torch.tensor([[1.5, -0.5], [221.5, 223.5]]), (224, 224), (56, 56))
    assert torch.allclose(uv, torch.tensor([[0.0, -0.5], [55.0, 55.5]]))
    back = heatmap_to_image_coords(uv, (224, 224), (56, 56))
    assert torch.allclose(back, torch.tensor([[1.5, -0.5], [221.5, 223.5]]))


def test_gaussian_values_and_kinds():
    # Landmark exactly on the centre of heatmap cell (10, 20) of a 56 map at 224 px: image (41.5, 81.5).
    xy = torch.tensor([[[41.5, 81.5]]])
    vis = torch.zeros(1, 1, dtype=torch.long)
    g = gaussian_heatmaps(xy, vis, (224, 224), (56, 56), sigma=8.0)
    assert g.shape == (1, 1, 56, 56)
    assert g[0, 0, 20, 10].item() == pytest.approx(1.0)
    # One cell right = 4 image px: exp(-16 / 128).
    assert g[0, 0, 20, 11].item() == pytest.approx(math.exp(-16 / 128), rel=1e-6)
    liu = gaussian_heatmaps(xy, vis, (224, 224), (56, 56), sigma=8.0, kind="liu")
    # Liu & Lu: exp(-0.5 * d / R) with d not squared: d = 4 px -> exp(-0.25); (3, 4) cells away -> d = 20 px.
    assert liu[0, 0, 20, 11].item() == pytest.approx(math.exp(-0.25), rel=1e-6)
    assert liu[0, 0, 24, 13].item() == pytest.approx(math.exp(-0.5 * 20 / 8), rel=1e-6)
    with pytest.raises(ValueError):
        gaussian_heatmaps(xy, vis, (224, 224), (56, 56), kind="cauchy")


def test_absent_landmarks_give_zero_maps_occluded_keep_a_peak():
    xy = torch.tensor([[[50.0, 60.0], [50.0, 60.0], [50.0, 60.0]]])
    vis = torch.tensor([[0, 1, 2]])
    g = gaussian_heatmaps(xy, vis, (128, 128), (32, 32), sigma=4.0)
    assert g[0, 0].max().item() > 0.9
    assert torch.equal(g[0, 0], g[0, 1])
    assert g[0, 2].abs().sum().item() == 0.0


@pytest.mark.parametrize("kind", ["gaussian", "liu"])
@pytest.mark.parametrize("image,heatmap", [(224, 56), (128, 32), (96, 24), (64, 64), (100, 37)])
def test_round_trip_within_half_a_cell(kind, image, heatmap):
    cell = image / heatmap
    xy = _points(image, cell)
    vis = torch.zeros(xy.shape[:2], dtype=torch.long)
    maps = gaussian_heatmaps(xy, vis, (image, image), (heatmap, heatmap), sigma=8 * image / 224, kind=kind)
    plain, conf = decode_heatmaps(maps, (image, image))
    fine, _ = decode_heatmaps(maps, (image, image), subpixel=True)
    plain_err = (plain - xy).abs()
    fine_err = (fine - xy).abs()
    # Argmax: each axis within half a heatmap cell (in image pixels).
    assert plain_err.max().item() <= cell / 2 + 1e-6
    assert conf.min().item() > 0.5
    # Sub-pixel: better on average, and never worse than the half-cell bound.
    assert fine_err.max().item() <= cell / 2 + 1e-6
    assert fine_err.mean().item() < 0.5 * plain_err.mean().item()
    if kind == "gaussian":
        # The log of a Gaussian is a parabola, so the 3-point log fit is exact.
        assert fine_err.max().item() < 1e-6


def test_subpixel_reduces_error_between_pixels():
    # A Gaussian centred between cells: heatmap (10.3, 7.75) on a 32 map of a 128 px image.
    uv = torch.tensor([[[10.3, 7.75]]], dtype=torch.float64)
    xy = heatmap_to_image_coords(uv, (128, 128), (32, 32))
    maps = gaussian_heatmaps(xy, torch.zeros(1, 1, dtype=torch.long), (128, 128), (32, 32), sigma=6.0)
    plain, _ = decode_heatmaps(maps, (128, 128))
    fine, _ = decode_heatmaps(maps, (128, 128), subpixel=True)
    assert torch.allclose(plain, heatmap_to_image_coords(torch.tensor([[[10.0, 8.0]]], dtype=torch.float64),
                                                         (128, 128), (32, 32)))
    assert (plain - xy).norm().item() == pytest.approx(4 * math.hypot(0.3, 0.25), rel=1e-6)
    assert (fine - xy).norm().item() < 1e-6


def test_subpixel_on_noisy_nonpositive_maps_stays_within_a_cell():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(2, 8, 24, 24, generator=g)
    plain, _ = decode_heatmaps(maps, (96, 96))
    fine, _ = decode_heatmaps(maps, (96, 96), subpixel=True)
    assert torch.isfinite(fine).all()
    assert (fine - plain).abs().max().item() <= 2.0 + 1e-6  # half a 4-px cell


def test_heatmap_loss_counts_visible_only():
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    pred[0, 0] = 1.0  # visible: MSE 1
    pred[0, 1] = 5.0  # occluded: ignored
    pred[0, 2] = 7.0  # absent: ignored
    vis = torch.tensor([[0, 1, 2]])
    assert heatmap_loss(pred, target, vis).item() == pytest.approx(1.0)
    pred[0, 0, 0, 0] = 3.0  # (15 * 1 + 9) / 16
    assert heatmap_loss(pred, target, vis).item() == pytest.approx(24 / 16)
    # Two visible maps with MSE 1.5 and 0.5 average to 1.0.
    pred2 = torch.zeros(1, 2, 2, 2)
    pred2[0, 0] = math.sqrt(1.5)
    pred2[0, 1] = math.sqrt(0.5)
    assert heatmap_loss(pred2, torch.zeros_like(pred2), torch.tensor([[0, 0]])).item() == pytest.approx(1.0)
    # None visible: 0, and still differentiable.
    p = torch.ones(1, 2, 2, 2, requires_grad=True)
    loss = heatmap_loss(p, torch.zeros_like(p), torch.tensor([[1, 2]]))
    loss.backward()
    assert loss.item() == 0.0
    assert p.grad.abs().sum().item() == 0.0
