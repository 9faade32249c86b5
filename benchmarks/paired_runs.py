"""Clothing runs scored on the same validation photos, side by side, with paired differences per photo.

One training run per variant (75 minutes each on the 2-core CPU) gives no seed spread; what it does
give is every validation photo scored by every variant. The difference to the first run is paired
photo by photo and its 95 % interval comes from resampling the photos (a bootstrap): it says how
much of the difference the choice of these 500 photos could explain, not how much another seed
would move it (the seed spread of docs/results.md's frozen table is the estimate of that).

    python benchmarks/paired_runs.py runs/release-dff10 runs/dff10-none runs/dff10-scratch [--draws 2000]

Each run directory needs its ``val_predictions.npz`` and ``model/labels.json`` (what ``train
clothing`` writes); the runs must have scored the same photos in the same order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fashionlens.metrics import group_columns


def per_photo(run: Path) -> dict[str, np.ndarray]:
    """Per validation photo: right (1) / wrong (0) / not counted (nan) in each group and the garment type,
    and the sum and count of its visible landmarks' normalised errors."""
    data = np.load(run / "val_predictions.npz")
    labels = json.loads((run / "model" / "labels.json").read_text())
    types = labels["attribute_types"]
    out = {"paths": data["paths"]}
    for group, columns in group_columns(types, list(dict.fromkeys(types))).items():
        truth, known = data["labels"][:, columns], data["mask"][:, columns].all(axis=1)
        known &= truth.sum(axis=1) == 1
        right = truth.argmax(axis=1) == data["attr_scores"][:, columns].argmax(axis=1)
        out[group] = np.where(known, right, np.nan)
        out[f"truth:{group}"] = np.where(known, truth.argmax(axis=1), -1)
    category = data["category"]
    out["garment type"] = np.where(category >= 0, data["category_logits"].argmax(axis=1) == category, np.nan)
    if "pred_xy" in data.files:
        size = data["sizes"][:, None, :]
        error = np.linalg.norm((data["pred_xy"] - data["true_xy"]) / size, axis=-1)
        visible = data["visibility"] == 0
        out["ne_sum"], out["ne_count"] = np.where(visible, error, 0).sum(axis=1), visible.sum(axis=1)
    return out


def figures(photos: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    """Percent right per group, the mean class accuracy (mean recall over the classes present) and NE."""
    result, recalls = {}, []
    groups = [key[6:] for key in photos if key.startswith("truth:")]
    for group in groups + ["garment type"]:
        right = photos[group][rows]
        result[group] = 100 * np.nanmean(right)
    for group in groups:
        truth, right = photos[f"truth:{group}"][rows], photos[group][rows]
        recalls += [100 * right[truth == k].mean() for k in np.unique(truth[truth >= 0])]
    result["mean class acc."] = float(np.mean(recalls))
    if "ne_sum" in photos:
        result["landmark NE"] = photos["ne_sum"][rows].sum() / photos["ne_count"][rows].sum()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories; the first is the reference")
    parser.add_argument("--draws", type=int, default=2000, help="bootstrap resamples of the photos")
    args = parser.parse_args(argv)
    photos = [per_photo(run) for run in args.runs]
    for run, other in zip(args.runs[1:], photos[1:]):
        if not np.array_equal(other["paths"], photos[0]["paths"]):
            raise SystemExit(f"{run}: scored other validation photos than {args.runs[0]} (or in another order)")
    n = len(photos[0]["paths"])
    everyone = np.arange(n)
    draws = np.random.default_rng(0).integers(0, n, size=(args.draws, n))
    whole = [figures(run, everyone) for run in photos]
    base = whole[0]
    resampled = [[figures(run, rows) for rows in draws] for run in photos]
    print(f"{n} validation photos; difference to {args.runs[0].name}, 95 % interval over resampled photos")
    print(f"{'figure':<16}" + "".join(f"{run.name:>34}" for run in args.runs))
    for key in base:
        cells = [f"{base[key]:34.3f}"]
        for other, other_resampled in zip(whole[1:], resampled[1:]):
            value = other.get(key)
            if value is None:
                cells.append(f"{'-':>34}")
                continue
            spread = [mine[key] - ref[key] for mine, ref in zip(other_resampled, resampled[0])]
            low, high = np.percentile(spread, [2.5, 97.5])
            cells.append(f"{value:8.3f} {value - base[key]:+7.3f} [{low:+.3f}, {high:+.3f}]".rjust(34))
        print(f"{key:<16}" + "".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
