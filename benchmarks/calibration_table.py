"""Per-label calibrated thresholds vs the single 0.5 cut-off, on photos the thresholds never saw (issue 14).

Thresholds are chosen on validation photos, so scoring them on the same photos flatters them. This
script reads finished runs (``fashionlens train style`` or ``compare`` folders: ``val_predictions.npz``
and ``model/labels.json``) and, for each, splits the held-out photos in two random halves, chooses the
thresholds on one half with :func:`fashionlens.calibration.choose_thresholds` (the code that writes
``thresholds.json``) and scores the other half, then the other way round; ``--repeats`` random halvings.
The 0.5 cut-off is scored on the same halves. Train the runs with ``--final-weights last`` so that the
held-out photos do not pick the epoch either.

Per run it reports, averaged over the 2 x repeats scored halves: CF1 and OF1 (ML-GCN's formulas,
:func:`fashionlens.metrics.multilabel_metrics`), the same thresholds scored on the half that chose them
(what a validation-split report would say: optimistic), the number of distinct predicted label sets on a half
(and of distinct true sets), and how many labels are predicted for at least one photo. Then, per dataset
and head, mean ± std over the training seeds and the paired difference (calibrated - 0.5) per seed.

    python benchmarks/calibration_table.py runs/calib/clothing-attributes-seed0 runs/calib/clothing-co-parsing-seed0 \\
        [--methods f1 precision@0.9] [--repeats 20] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results

COLUMNS = ("CF1", "OF1", "CP", "CR", "OP", "OR", "sets", "labels_predicted")


def read_run(run_dir: Path) -> dict:
    from fashionlens.config import StyleConfig, load_yaml

    config = load_yaml(StyleConfig, run_dir / "config.yaml")
    saved = np.load(run_dir / "val_predictions.npz")
    names = json.loads((run_dir / "model" / "labels.json").read_text())["label_names"]
    return {"dir": str(run_dir), "dataset": config.data.sources[0].format, "variant": run_dir.name,
            "seed": int(config.recipe.seed), "final_weights": config.recipe.final_weights,
            "cached": bool(config.recipe.cache_features), "image_size": config.backbone.image_size,
            "backbone": config.backbone.name, "names": list(names), "logits": saved["scores"].astype(np.float64),
            "labels": saved["labels"], "mask": saved["mask"]}


def scored(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """CF1/OF1 family, distinct predicted label sets and labels ever predicted at per-label probability
    thresholds (a label is predicted when sigmoid(score) >= its threshold, as the Predictor does)."""
    from fashionlens.metrics import multilabel_metrics

    clipped = np.clip(thresholds, 1e-9, 1 - 1e-9)
    shifted = scores - np.log(clipped / (1 - clipped))  # sigmoid(s) >= t  <=>  s - logit(t) >= 0
    metrics = multilabel_metrics(shifted, labels, mask, threshold=0.0)
    predicted = shifted >= 0
    return {**{key: float(metrics[key]) for key in COLUMNS[:6]},
            "sets": float(len({row.tobytes() for row in np.packbits(predicted, axis=1)})),
            "labels_predicted": float(predicted.any(axis=0).sum())}


def split_half_scores(run: dict, method: str, repeats: int) -> dict[str, dict[str, float]]:
    """Mean over the scored halves of {"0.5": ..., method: ..., "truth_sets": ...}."""
    from fashionlens.calibration import GLOBAL_THRESHOLD, choose_thresholds, sigmoid

    scores, labels, mask, names = run["logits"], run["labels"], run["mask"], run["names"]
    count = len(scores)
    rows: dict[str, list[dict[str, float]]] = {"0.5": [], method: [], "in_sample": []}
    truth_sets, wins = [], []
    for repeat in range(repeats):
        order = np.random.default_rng(repeat).permutation(count)
        halves = (order[: count // 2], order[count // 2:])
        for fit, test in (halves, halves[::-1]):
            chosen = choose_thresholds(sigmoid(scores[fit]), labels[fit], mask[fit], names, method)
            flat = scored(scores[test], labels[test], mask[test], np.full(len(names), GLOBAL_THRESHOLD))
            calibrated = scored(scores[test], labels[test], mask[test], np.asarray(chosen.values))
            rows["0.5"].append(flat)
            rows[method].append(calibrated)
            # The same thresholds on the photos that chose them: what scoring on the validation split reports.
            rows["in_sample"].append(scored(scores[fit], labels[fit], mask[fit], np.asarray(chosen.values)))
            wins.append(calibrated["CF1"] > flat["CF1"])
            known_positive = (labels[test] > 0.5) & (mask[test] > 0.5)
            truth_sets.append(len({row.tobytes() for row in np.packbits(known_positive, axis=1)}))
    out = {key: {column: float(np.mean([r[column] for r in value])) for column in COLUMNS}
           for key, value in rows.items()}
    out["truth_sets"] = float(np.mean(truth_sets))
    out["cf1_wins"] = float(np.mean(wins))
    out["half_size"] = count // 2
    return out


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(results: list[dict], method: str) -> str:
    groups: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        groups.setdefault((result["dataset"], result["variant"]), []).append(result)
    lines = [f"Thresholds `{method}` chosen on one half of the held-out photos, scored on the other "
             f"(mean over halvings, then mean ± sample std over training seeds):", "",
             "| data | head | seeds | half | CF1 @0.5 | CF1 calibrated | Δ CF1 (per seed) | OF1 @0.5 | OF1 calibrated "
             "| Δ OF1 | CF1 / OF1 on the choosing half | label sets @0.5 | label sets calibrated | true sets | labels predicted @0.5 / cal. / all |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (dataset, variant), runs in sorted(groups.items()):
        runs = sorted(runs, key=lambda r: r["seed"])
        flat = [r["scores"]["0.5"] for r in runs]
        cal = [r["scores"][method] for r in runs]
        d_cf1 = [c["CF1"] - f["CF1"] for c, f in zip(cal, flat)]
        d_of1 = [c["OF1"] - f["OF1"] for c, f in zip(cal, flat)]
        lines.append(
            f"| {dataset} | {variant} | {','.join(str(r['seed']) for r in runs)} | {runs[0]['scores']['half_size']} "
            f"| {_mean_std([f['CF1'] for f in flat])} | {_mean_std([c['CF1'] for c in cal])} "
            f"| {statistics.fmean(d_cf1):+.2f} ({', '.join(f'{d:+.1f}' for d in d_cf1)}) "
            f"| {_mean_std([f['OF1'] for f in flat])} | {_mean_std([c['OF1'] for c in cal])} "
            f"| {statistics.fmean(d_of1):+.2f} ({', '.join(f'{d:+.1f}' for d in d_of1)}) "
            f"| {statistics.fmean([r['scores'][method + '_in_sample']['CF1'] for r in runs]):.2f} / "
            f"{statistics.fmean([r['scores'][method + '_in_sample']['OF1'] for r in runs]):.2f} "
            f"| {_mean_std([f['sets'] for f in flat])} | {_mean_std([c['sets'] for c in cal])} "
            f"| {_mean_std([r['scores']['truth_sets'] for r in runs])} "
            f"| {statistics.fmean([f['labels_predicted'] for f in flat]):.1f} / "
            f"{statistics.fmean([c['labels_predicted'] for c in cal]):.1f} / {len(runs[0]['names'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run directories or compare folders")
    parser.add_argument("--methods", nargs="+", default=["f1"], help="calibration methods (f1, precision@P)")
    parser.add_argument("--repeats", type=int, default=20, help="random halvings per run (each scored both ways)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    run_dirs = []
    for folder in args.folders:
        if (folder / "val_predictions.npz").is_file():
            run_dirs.append(folder)
        else:
            run_dirs.extend(sorted(p for p in folder.iterdir() if (p / "val_predictions.npz").is_file()))
    if not run_dirs:
        raise SystemExit("no run directory with val_predictions.npz among the folders given")
    results = []
    for run_dir in run_dirs:
        run = read_run(run_dir)
        if run["final_weights"] != "last":
            print(f"warning: {run_dir} kept its best epoch on these photos (--final-weights best): "
                  f"both columns are slightly optimistic", file=sys.stderr)
        run["scores"] = {}
        for method in args.methods:
            halves = split_half_scores(run, method, args.repeats)
            run["scores"].update({"0.5": halves["0.5"], method: halves[method], "truth_sets": halves["truth_sets"],
                                  "half_size": halves["half_size"], f"{method}_cf1_wins": halves["cf1_wins"],
                                  f"{method}_in_sample": halves["in_sample"]})
        results.append(run)
    for method in args.methods:
        print(table(results, method))
        print()
    keep = ("dir", "dataset", "variant", "seed", "final_weights", "cached", "image_size", "backbone", "scores")
    write_results({"repeats": args.repeats, "runs": [{k: r[k] for k in keep} | {"num_labels": len(r["names"])}
                                                     for r in results]},
                  "calibration_table.json", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
