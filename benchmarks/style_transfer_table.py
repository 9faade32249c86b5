"""Transfer learning on real styles: top-1 after each epoch, ImageNet-pretrained vs from scratch, over seeds.

Reads ``fashionlens compare`` folders (one or more per seed) trained with ``--loss softmax``, each holding
a pretrained variant and its scratch twin (default ``linear-max`` and ``linear-max-scratch``: the same
linear head; scratch = ``--pretrained none --freeze-epochs 0 --lrp 1``). The variants of one seed must
have held out the same photos (checked), so the differences are paired. Prints Markdown: held-out top-1
after each epoch (``history.json``), per seed and the mean over seeds, and the final (saved, last-epoch)
paired difference per seed with its mean.

    python benchmarks/style_transfer_table.py runs/fa/seed0 runs/fa/seed1 runs/fa/seed2 \\
        [--pretrained linear-max] [--scratch linear-max-scratch] [--json F]
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


def read_run(run_dir: Path) -> dict:
    from fashionlens.config import StyleConfig, load_yaml

    config = load_yaml(StyleConfig, run_dir / "config.yaml")
    if config.recipe.loss != "softmax":
        raise SystemExit(f"{run_dir}: trained with --loss {config.recipe.loss}; this table is for --loss softmax")
    history = json.loads((run_dir / "history.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    index = np.load(run_dir / "val_predictions.npz")["index"]
    return {"dir": run_dir, "seed": int(config.recipe.seed), "config": config, "history": history,
            "metrics": metrics, "index": np.sort(index)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="compare output folders")
    parser.add_argument("--pretrained", default="linear-max")
    parser.add_argument("--scratch", default="linear-max-scratch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    runs: dict[int, dict[str, dict]] = {}
    for folder in args.folders:
        for name in (args.pretrained, args.scratch):
            if (folder / name / "history.json").is_file():
                run = read_run(folder / name)
                if name in runs.setdefault(run["seed"], {}):
                    raise SystemExit(f"{folder / name}: a second {name} run with seed {run['seed']}")
                runs[run["seed"]][name] = run
    seeds = sorted(s for s in runs if len(runs[s]) == 2)
    if not seeds:
        raise SystemExit(f"no seed has both {args.pretrained} and {args.scratch}")
    for s in seeds:
        a, b = runs[s][args.pretrained], runs[s][args.scratch]
        if not np.array_equal(a["index"], b["index"]):
            raise SystemExit(f"seed {s}: the two variants held out different photos: not paired")
        if a["config"].backbone.image_size != b["config"].backbone.image_size or \
                a["config"].recipe.epochs != b["config"].recipe.epochs:
            raise SystemExit(f"seed {s}: the two variants differ in image size or epochs")
    epochs = min(len(runs[s][v]["history"]) for s in seeds for v in runs[s])
    first = runs[seeds[0]][args.pretrained]
    print(f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {first['index'].size} held-out images each, "
          f"{first['config'].backbone.image_size} px, {epochs} epochs; top-1 in percent, per seed "
          f"{' / '.join(map(str, seeds))} and (mean).\n")
    print(f"| after epoch | {args.pretrained} (pretrained) | {args.scratch} | pretrained − scratch |")
    print("|---|---|---|---|")

    def top1(seed: int, name: str, epoch: int) -> float:
        return float(runs[seed][name]["history"][epoch]["top1"])

    table = []
    for e in range(epochs):
        pre = [top1(s, args.pretrained, e) for s in seeds]
        scr = [top1(s, args.scratch, e) for s in seeds]
        diff = [p - q for p, q in zip(pre, scr)]
        table.append({"epoch": e + 1, "pretrained": pre, "scratch": scr, "difference": diff})
        print(f"| {e + 1} | {' / '.join(f'{v:.1f}' for v in pre)} (**{statistics.fmean(pre):.1f}**) "
              f"| {' / '.join(f'{v:.1f}' for v in scr)} (**{statistics.fmean(scr):.1f}**) "
              f"| {' / '.join(f'{v:+.1f}' for v in diff)} (**{statistics.fmean(diff):+.1f}**) |")

    final_pre = [float(runs[s][args.pretrained]["metrics"]["top1"]) for s in seeds]
    final_scr = [float(runs[s][args.scratch]["metrics"]["top1"]) for s in seeds]
    final_diff = [p - q for p, q in zip(final_pre, final_scr)]
    spread = statistics.stdev(final_diff) if len(final_diff) > 1 else 0.0
    print(f"\nFinal (saved last-epoch weights, metrics.json) top-1: pretrained {statistics.fmean(final_pre):.1f}, "
          f"scratch {statistics.fmean(final_scr):.1f}; paired difference per seed "
          f"{' / '.join(f'{d:+.1f}' for d in final_diff)}, mean **{statistics.fmean(final_diff):+.1f}** "
          f"(sample std {spread:.1f}); pretrained ahead on {sum(d > 0 for d in final_diff)} of {len(seeds)} seeds.")
    print(f"(chance: {100 / len(first['metrics']['per_class_AP']):.1f} % for {len(first['metrics']['per_class_AP'])} "
          f"classes; mAP pretrained {statistics.fmean(float(runs[s][args.pretrained]['metrics']['mAP']) for s in seeds):.1f}, "
          f"scratch {statistics.fmean(float(runs[s][args.scratch]['metrics']['mAP']) for s in seeds):.1f})")
    summary = {"seeds": seeds, "by_epoch": table, "final": {"pretrained": final_pre, "scratch": final_scr,
                                                            "difference": final_diff}}
    write_results(summary, "style_transfer_table.json", args.json)
    return summary


if __name__ == "__main__":
    main()
