"""Per-label activation maps: where in a photo a label's evidence is.

A label's map is that label's classifier applied at every place of the feature map before pooling
(the class activation map of Zhou et al., CVPR 2016, Eq. 2): for the ML-GCN head the GCN's
classifier vector, for the linear head its weight row, for the clothing network the attribute
head applied to the attribute branch's feature map before its pooling. It costs one matrix product
on top of the forward pass and needs no gradients (:func:`fashionlens.models.mlgcn.label_maps`). For
the label-query head (``--head query``) a label's map is its query's cross-attention over the places
(:mod:`fashionlens.models.query_head`): weights that sum to 1, not logits.

Coordinates. The model sees the whole photo squashed to its square input (the evaluation
transform is a square resize, no crop), so a map's grid covers the whole photo: grid cell ``(i, j)``
of an ``h x w`` grid covers photo columns ``[j * W / w, (j + 1) * W / w)`` and rows likewise.
:attr:`LabelMap.grid` is the map at that resolution, in logit units (the classifier's output at
that place, bias included; attention weights for the query head); :meth:`LabelMap.photo` is the same map upsampled bilinearly to the
photo's pixels; :meth:`LabelMap.resized` to any size (the input size, for the pointing game).
Points are in the pixel-centre convention the landmarks use (pixel ``k``'s centre is at ``k``).

The pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016,
Sec. 5.1) scores a map by whether its maximum falls on the object: within ``tolerance`` pixels
(15 at the input size, as there) of a pixel of the label's mask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from fashionlens.heatmaps import heatmap_to_image_coords
from fashionlens.progress import progress_bar

POINTING_TOLERANCE_PX = 15.0  # Zhang et al. 2016, at the network's input size
MIN_MASK_FRACTION = 0.01  # labels whose mask covers less of the image are not scored
COLORMAP = "turbo"


@dataclass
class LabelMap:
    """One label's activation map over one photo (see the module docstring for the coordinates)."""

    name: str
    display_name: str
    score: float  # the label's probability, as the prediction reports it
    logit: float
    grid: np.ndarray  # (h, w) float32, logit units; covers the whole photo
    width: int  # the photo's size (upright, in its own pixels)
    height: int

    @property
    def peak(self) -> tuple[float, float]:
        """(x, y) of the grid's highest cell centre, in photo pixels."""
        return self.peak_at(self.width, self.height)

    def peak_at(self, width: int, height: int) -> tuple[float, float]:
        """(x, y) of the highest cell centre in the pixels of an image of ``width`` x ``height``
        showing the whole photo (the photo itself, or the model's square input)."""
        return grid_peak(self.grid, width, height)

    def resized(self, width: int, height: int) -> np.ndarray:
        """The map at ``height`` x ``width`` pixels (bilinear between cell centres), float32."""
        return upsample(self.grid, width, height)

    def photo(self) -> np.ndarray:
        """The map in the photo's pixel coordinates, ``(height, width)`` float32."""
        return self.resized(self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        x, y = self.peak
        return {"name": self.name, "display_name": self.display_name, "score": self.score, "logit": self.logit,
                "grid": [[float(v) for v in row] for row in self.grid.tolist()],
                "grid_size": {"width": int(self.grid.shape[1]), "height": int(self.grid.shape[0])},
                "min": float(self.grid.min()), "max": float(self.grid.max()), "peak": {"x": x, "y": y}}


@dataclass
class Explanation:
    """A photo's prediction and the activation maps of the labels asked for."""

    source: str
    width: int
    height: int
    prediction: Any  # fashionlens.inference.StylePrediction or ClothingPrediction
    maps: list[LabelMap] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "image": {"width": self.width, "height": self.height},
                "prediction": self.prediction.to_dict(), "maps": [m.to_dict() for m in self.maps]}


# -------------------------------------------------------------------------------------------- geometry


def upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """A ``(h, w)`` grid to ``(height, width)`` by bilinear interpolation between cell centres
    (``align_corners=False``: the grid's cells tile the image exactly)."""
    tensor = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(tensor, size=(int(height), int(width)), mode="bilinear",
                                          align_corners=False)
    return out[0, 0].numpy()


def grid_peak(grid: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """(x, y) of the centre of ``grid``'s highest cell in the pixels of a ``width`` x ``height`` image."""
    h, w = grid.shape
    row, col = divmod(int(np.argmax(grid)), w)
    xy = heatmap_to_image_coords(torch.tensor([float(col), float(row)]), (int(height), int(width)), (h, w))
    return float(xy[0]), float(xy[1])


# -------------------------------------------------------------------------------------------- pictures


def colourise(values: np.ndarray) -> np.ndarray:
    """A map scaled to its own range, through the colormap: ``(H, W)`` -> ``(H, W, 3)`` uint8, and the
    scaled values ``(H, W)`` in [0, 1] (a flat map is all 0)."""
    from matplotlib import colormaps  # here: matplotlib is slow to import and only overlays need it

    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    rgb = colormaps[COLORMAP](scaled)[..., :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8), scaled.astype(np.float32)


def overlay(photo: np.ndarray | Image.Image, label_map: LabelMap, alpha: float = 0.6) -> Image.Image:
    """The map over the photo, with the label's name and score: an RGB PIL image of the photo's size.

    The colour is blended in by the map's own strength (``alpha`` where the map is highest, none where
    it is lowest), so the photo stays visible where the label has no evidence; the peak is ringed.
    """
    base = np.asarray(photo.convert("RGB") if isinstance(photo, Image.Image) else photo, dtype=np.uint8)
    if base.ndim != 3 or base.shape[2] != 3:
        raise ValueError(f"photo must be (H, W, 3) RGB, got shape {base.shape}")
    height, width = base.shape[:2]
    colour, strength = colourise(label_map.resized(width, height))
    weight = (alpha * strength)[..., None]
    blended = (base.astype(np.float32) * (1.0 - weight) + colour.astype(np.float32) * weight)
    image = Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x, y = label_map.peak_at(width, height)
    radius = max(4, round(min(width, height) / 40))
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=(255, 255, 255), width=2)
    size = max(12, round(min(width, height) / 22))
    font = ImageFont.load_default(size=size)
    text = f"{label_map.display_name}  {label_map.score:.2f}"
    box = draw.textbbox((0, 0), text, font=font)
    pad = max(3, size // 4)
    draw.rectangle((0, 0, box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - box[0], pad - box[1]), text, fill=(255, 255, 255), font=font)
    return image


# Landmark colours, one per name in the order of the model's landmark names.
LANDMARK_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
                    (240, 50, 230), (128, 128, 0))


def draw_landmarks(photo: np.ndarray | Image.Image, landmarks: Sequence[Any]) -> Image.Image:
    """The photo with its predicted landmarks (``inference.Landmark``, in the photo's pixels): a dot and
    the name for each visible one, nothing for the others; an RGB PIL image of the photo's size."""
    image = (photo.convert("RGB") if isinstance(photo, Image.Image) else Image.fromarray(np.asarray(photo))).copy()
    draw = ImageDraw.Draw(image)
    width, height = image.size
    radius = max(3, round(min(width, height) / 60))
    font = ImageFont.load_default(size=max(10, round(min(width, height) / 30)))
    for index, landmark in enumerate(landmarks):
        if not landmark.visible:
            continue
        colour = LANDMARK_COLOURS[index % len(LANDMARK_COLOURS)]
        x, y = landmark.x, landmark.y
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255), width=2)
        draw.text((x + radius + 2, y - radius), landmark.name.replace("_", " "), fill=colour, font=font,
                  stroke_width=2, stroke_fill=(255, 255, 255))
    return image


# -------------------------------------------------------------------------------------- pointing game


def pointing_hit(point: tuple[float, float], mask: np.ndarray, tolerance: float = POINTING_TOLERANCE_PX) -> bool:
    """Whether ``point`` (x, y) lies within ``tolerance`` pixels of a True pixel of ``mask`` ``(H, W)``."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return False
    x, y = point
    return bool(np.min((cols - x) ** 2 + (rows - y) ** 2) <= tolerance ** 2)


@dataclass
class PointingResult:
    """Hits of the maps' maxima and of the centre point, per label: ``{label: [hits, trials]}``."""

    map_hits: dict[str, list[int]] = field(default_factory=dict)
    centre_hits: dict[str, list[int]] = field(default_factory=dict)

    def add(self, label: str, map_hit: bool, centre_hit: bool) -> None:
        for table, hit in ((self.map_hits, map_hit), (self.centre_hits, centre_hit)):
            counts = table.setdefault(label, [0, 0])
            counts[0] += int(hit)
            counts[1] += 1

    @property
    def trials(self) -> int:
        return sum(trials for _, trials in self.map_hits.values())

    def overall(self) -> tuple[float, float]:
        """(map hit rate, centre hit rate) over every trial."""
        total = max(1, self.trials)
        return (sum(h for h, _ in self.map_hits.values()) / total,
                sum(h for h, _ in self.centre_hits.values()) / total)

    def mean_per_label(self, min_trials: int = 1) -> tuple[float, float]:
        """(map, centre) hit rates averaged over labels with at least ``min_trials`` trials."""
        labels = [name for name, (_, n) in self.map_hits.items() if n >= min_trials]
        if not labels:
            return float("nan"), float("nan")
        return (float(np.mean([self.map_hits[n][0] / self.map_hits[n][1] for n in labels])),
                float(np.mean([self.centre_hits[n][0] / self.centre_hits[n][1] for n in labels])))

    def rows(self) -> list[tuple[str, int, float, float]]:
        """(label, trials, map hit rate, centre hit rate), most trials first."""
        out = [(name, n, hits / n, self.centre_hits[name][0] / n) for name, (hits, n) in self.map_hits.items()]
        return sorted(out, key=lambda row: (-row[1], row[0]))


def score_pointing(grids: Mapping[str, np.ndarray], regions: Mapping[str, np.ndarray], result: PointingResult,
                   tolerance: float = POINTING_TOLERANCE_PX, min_fraction: float = MIN_MASK_FRACTION) -> None:
    """Play the pointing game on one photo at the input size, adding its trials to ``result``.

    ``regions``: the photo's true labels, each with its mask at the input size (``(S, S)`` bool);
    ``grids``: the maps by the same names. Each label whose mask covers at least ``min_fraction`` of
    the image is a trial of its map's maximum and of the centre point (the baseline).
    """
    for name, region in regions.items():
        if region.mean() < min_fraction:
            continue
        height, width = region.shape
        centre = ((width - 1) / 2.0, (height - 1) / 2.0)
        peak = grid_peak(grids[name], width, height)
        result.add(name, pointing_hit(peak, region, tolerance), pointing_hit(centre, region, tolerance))


def play_pointing_game(predictor, dataset, rows: Sequence[int], targets: Mapping[str, Sequence[str]],
                       result: PointingResult | None = None, batch_size: int = 16,
                       tolerance: float = POINTING_TOLERANCE_PX, min_fraction: float = MIN_MASK_FRACTION,
                       progress: bool = False) -> PointingResult:
    """The pointing game of ``predictor``'s maps on the photos ``rows`` of a Clothing Co-Parsing
    dataset opened with masks and the predictor's evaluation transform (square, at the input size).

    ``targets`` maps each scored model label to the dataset labels whose masks it stands for (the
    same name for a model trained on the dataset; the union of several names is its mask). A photo
    is a trial of a model label when one of those labels is in its mask (:func:`score_pointing`).
    """
    result = PointingResult() if result is None else result
    names = list(dataset.label_names)
    ids = {label: [names.index(name) for name in wanted] for label, wanted in targets.items()}
    size = predictor.image_size
    bar = progress_bar(total=len(rows), desc="pointing game", unit="photo", disable=not progress)
    try:
        for start in range(0, len(rows), batch_size):
            samples = [dataset[i] for i in rows[start:start + batch_size]]
            batch = torch.stack([sample["image"].as_subclass(torch.Tensor) for sample in samples])
            explanations = predictor.explain_preprocessed(
                batch, [(size, size)] * len(samples), [str(sample.get("path", "")) for sample in samples],
                labels=[f"label:{label}" for label in targets])
            for sample, explanation in zip(samples, explanations):
                mask = sample["mask"].as_subclass(torch.Tensor).numpy()
                present = set(np.unique(mask).tolist())
                regions = {label: np.isin(mask, wanted) for label, wanted in ids.items() if present & set(wanted)}
                grids = {label: label_map.grid for label, label_map in zip(targets, explanation.maps)}
                score_pointing(grids, regions, result, tolerance, min_fraction)
            bar.update(len(samples))
    finally:
        bar.close()
    return result
