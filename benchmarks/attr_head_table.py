"""Per-type table of clothing runs: the plain attribute head against the ML-GCN one, over seeds.

Reads each run directory's held-out predictions (``val_predictions.npz``) and its model's attribute
types, recomputes the clothing metrics (so older runs get every key), groups the runs by attribute
head and label vectors, and prints one markdown table: mean over seeds, with the per-seed values.

    python benchmarks/attr_head_table.py runs/ca-clothing-plain runs/ca-clothing-plain-seed1 \\
        runs/ca-clothing-mlgcn runs/ca-clothing-mlgcn-seed1 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results

COLUMNS = ("attr_mAP", "attr_top3", "attr_top5", "texture_top3", "part_top3", "part_top5", "style_top3",
           "style_top5", "attr_top3_mean_per_attribute", "category_top3")


def run_metrics(run_dir: Path) -> tuple[str, int, dict]:
    from fashionlens.rundir import RunDir
    from fashionlens.training import clothing_metrics

    files = RunDir(run_dir)
    config = json.loads((files.model_dir / "config.json").read_text())
    labels = json.loads((files.model_dir / "labels.json").read_text())
    run = files.run_info()
    saved = files.predictions()
    outputs = {key: torch.as_tensor(saved[key]) for key in ("category_logits", "category", "attr_scores", "labels",
                                                            "mask")}
    head = config.get("attr_head", "linear")
    graph = "" if config.get("graph", "cooccurrence") == "cooccurrence" else f", {config['graph']} graph"
    variant = {"linear": "linear", "query": f"query ({config.get('query_init', 'scratch')} start)"}.get(
        head, f"mlgcn ({config.get('embeddings', 'glove50')}{graph})")
    return variant, int(run.get("seed", 0)), clothing_metrics(outputs, labels["attribute_types"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    by_variant: dict[str, dict[int, dict]] = {}
    for run_dir in args.runs:
        variant, seed, metrics = run_metrics(run_dir)
        if seed in by_variant.setdefault(variant, {}):
            raise SystemExit(f"{run_dir}: a second {variant} run with seed {seed}")
        by_variant[variant][seed] = metrics

    print("| attribute head | seeds | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    summary: dict = {}
    for variant, runs in by_variant.items():
        seeds = sorted(runs)
        cells = []
        for key in COLUMNS:
            values = [runs[s][key] for s in seeds]
            cells.append(f"{statistics.mean(values):.2f}" + (f" ({', '.join(f'{v:.1f}' for v in values)})"
                                                             if len(values) > 1 else ""))
        print(f"| {variant} | {', '.join(map(str, seeds))} | " + " | ".join(cells) + " |")
        summary[variant] = {str(s): {k: runs[s][k] for k in COLUMNS} for s in seeds}
    write_results(summary, "attr_head_table.json", args.json)
    return summary


if __name__ == "__main__":
    main()
