"""Per-label activation maps against the truth: the pointing game on Clothing Co-Parsing's pixel masks.

For every held-out photo with a pixel-level annotation and every true label whose mask covers at
least 1 % of the image, a trial: does the maximum of that label's map (``Predictor.explain``) fall
within 15 px of the label's mask at the model's input size (Zhang et al., ECCV 2016)? The baseline
points at the centre of the image. Prints the hit rates per label and overall (Markdown).

    # a model trained on CCP: held-out photos are those of the run's validation split
    python benchmarks/pointing_game.py --model runs/ccp-explain/model --run runs/ccp-explain
    # a model of another vocabulary: name which of its labels stands for which CCP labels (all photos)
    python benchmarks/pointing_game.py --model models/clothing-attributes-lite0 \\
        --alias scarf=scarf --alias necktie=tie --alias category_tshirt=t-shirt

Options: ``--data`` (default ../shared/data/clothing-co-parsing), ``--limit N`` photos,
``--min-trials`` (labels with fewer trials are listed but left out of the per-label mean),
``--json PATH``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clothing-co-parsing"


def held_out_paths(run_dir: Path) -> set[str]:
    from fashionlens.rundir import RunDir

    return {str(Path(p).resolve()) for p in RunDir(run_dir).predictions()["paths"].tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--run", type=Path, default=None,
                        help="the training run: only its validation photos are scored")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--alias", action="append", default=[], metavar="MODEL_LABEL=CCP_LABEL[+CCP_LABEL]",
                        help="score MODEL_LABEL's map against the union of these CCP labels' masks")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--min-trials", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from fashionlens.data import open_dataset
    from fashionlens.explain import (
        MIN_MASK_FRACTION,
        POINTING_TOLERANCE_PX,
        play_pointing_game,
    )
    from fashionlens.inference import load
    from fashionlens.modeldir import eval_transform

    predictor = load(args.model, batch_size=args.batch_size)
    size = predictor.image_size
    dataset = open_dataset(args.data, "clothing-co-parsing", with_masks=True, transform=eval_transform(predictor.preprocessing))
    # Which CCP labels each scored model label stands for.
    if args.alias:
        targets = {}
        for item in args.alias:
            model_label, _, ccp = item.partition("=")
            predictor.label_index(model_label)
            names = [name for name in ccp.split("+") if name]
            unknown = [name for name in names if name not in dataset.label_names]
            if unknown or not names:
                raise SystemExit(f"--alias {item}: {unknown or 'no'} CCP label(s); CCP has {dataset.label_names}")
            targets[model_label] = names
    else:
        targets = {name: [name] for name in predictor.label_names if name in dataset.label_names}
    rows = [i for i in range(len(dataset)) if dataset.has_mask(i)]
    if args.run is not None:
        held = held_out_paths(args.run)
        rows = [i for i in rows if str(Path(dataset.records[i].image).resolve()) in held]
        print(f"{len(held)} held-out photos in {args.run}, {len(rows)} of them with a pixel mask", file=sys.stderr)
    if args.limit:
        rows = rows[:args.limit]
    if not rows:
        raise SystemExit("no photos to score")

    started = time.perf_counter()
    result = play_pointing_game(predictor, dataset, rows, targets, batch_size=args.batch_size, progress=True)
    print(f"{len(rows)} photos in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    map_rate, centre_rate = result.overall()
    mean_map, mean_centre = result.mean_per_label(args.min_trials)
    print(f"Pointing game, {args.model} on {len(rows)} photos ({'held out by ' + str(args.run) if args.run else 'all'}"
          f"), input {size} px, tolerance {POINTING_TOLERANCE_PX:g} px, masks >= {MIN_MASK_FRACTION:.0%}\n")
    print("| label | trials | map hits | centre hits |")
    print("|---|---:|---:|---:|")
    for name, trials, hit, centre in result.rows():
        mark = "" if trials >= args.min_trials else " (few)"
        print(f"| {name}{mark} | {trials} | {100 * hit:.1f} | {100 * centre:.1f} |")
    print(f"| **all trials** | {result.trials} | **{100 * map_rate:.1f}** | **{100 * centre_rate:.1f}** |")
    print(f"| **mean over labels with >= {args.min_trials} trials** | "
          f"{sum(1 for _, n, _, _ in result.rows() if n >= args.min_trials)} labels | **{100 * mean_map:.1f}** | "
          f"**{100 * mean_centre:.1f}** |")
    write_results({
        "model": str(args.model), "run": str(args.run) if args.run else None, "photos": len(rows),
        "image_size": size, "tolerance_px": POINTING_TOLERANCE_PX, "min_mask_fraction": MIN_MASK_FRACTION,
        "overall": {"map": map_rate, "centre": centre_rate, "trials": result.trials},
        "mean_per_label": {"map": mean_map, "centre": mean_centre, "min_trials": args.min_trials},
        "per_label": [{"label": n, "trials": t, "map": h, "centre": c} for n, t, h, c in result.rows()],
    }, "pointing_game.json", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
