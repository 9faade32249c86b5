"""Street-photo tables (Clothing Co-Parsing): style heads over seeds, paired, by label frequency, and the graph.

Reads ``fashionlens compare`` folders (``DIR/<variant>/{config.yaml,val_predictions.npz,model/}``), one or
more per seed (a seed's variants may come from several compare runs: every variant of a seed must have
held out exactly the same photos, which is checked). Prints Markdown:

1. mean ± std over seeds (sample std) of mAP, CF1 and OF1 per variant, with the per-seed mAP;
2. paired mAP differences per seed (``--reference`` minus each ``--against``) and their mean;
3. per-label AP grouped by the label's positive count in that seed's TRAINING split (terciles of the
   labels evaluated: rare / medium / frequent), mean over seeds, and the same paired differences per group;
4. the label graph of each seed's training split at t (default 0.4): edges, share of edges pointing
   into the 5 most frequent labels, lift P(j|i)/P(j) of the edges, edges with lift < 1, how many labels
   of each tercile receive at least one edge (a label that receives none is classified exactly as on the
   identity graph: its row of the adjacency is the identity's);
5. with ``--curves``: held-out mAP after each epoch (history.json), mean over seeds.

Metrics are recomputed from the saved held-out scores with ``fashionlens.metrics.multilabel_metrics``
on the labels every variant of a seed has (the linear head keeps labels without training positives that
``--drop-empty-labels`` removes from the ML-GCN head; they have no held-out positives either, so this only
guards against a split where they would).

    python benchmarks/ccp_table.py runs/ccp/ft96-seed0 runs/ccp/ft96-seed1 runs/ccp/ft96-seed2 \\
        [--reference mlgcn-onehot] [--against linear-avg linear-max mlgcn-onehot-identity] [--curves] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results

GROUPS = ("rare", "medium", "frequent")


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def _std(values: list[float]) -> float:
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def read_run(run_dir: Path) -> dict:
    from fashionlens.config import StyleConfig, load_yaml

    config = load_yaml(StyleConfig, run_dir / "config.yaml")
    saved = np.load(run_dir / "val_predictions.npz")
    labels = json.loads((run_dir / "model" / "labels.json").read_text())["label_names"]
    graph_file = run_dir / "model" / "graph.json"
    return {"dir": run_dir, "config": config, "seed": int(config.recipe.seed), "labels": list(labels),
            "scores": saved["scores"], "targets": saved["labels"], "mask": saved["mask"],
            "index": saved["index"], "history": json.loads((run_dir / "history.json").read_text()),
            "metrics_file": json.loads((run_dir / "metrics.json").read_text()),
            "graph": json.loads(graph_file.read_text()) if graph_file.is_file() else None}


def collect(folders: list[Path]) -> dict[int, dict[str, dict]]:
    """{seed: {variant: run}}, checking that the variants of a seed share their held-out photos."""
    runs: dict[int, dict[str, dict]] = {}
    for folder in folders:
        subdirs = sorted(p for p in folder.iterdir() if (p / "val_predictions.npz").is_file())
        if not subdirs:
            raise SystemExit(f"{folder}: no <variant>/val_predictions.npz (not a finished compare folder)")
        for sub in subdirs:
            run = read_run(sub)
            seed_runs = runs.setdefault(run["seed"], {})
            if sub.name in seed_runs:
                raise SystemExit(f"{sub}: a second {sub.name} run with seed {run['seed']} "
                                 f"(first: {seed_runs[sub.name]['dir']})")
            seed_runs[sub.name] = run
    for seed, seed_runs in runs.items():
        first = next(iter(seed_runs.values()))
        for name, run in seed_runs.items():
            if not np.array_equal(np.sort(run["index"]), np.sort(first["index"])):
                raise SystemExit(f"seed {seed}: {name} held out other photos than {next(iter(seed_runs))}: not paired")
    return runs


def training_labels(run: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, mask, names) of the run's training split, re-read from its data and split rule."""
    from fashionlens.training.data import open_sources, split_indices

    config = run["config"]
    dataset = open_sources(config.data, None)
    if config.data.val is not None or config.data.limit:
        raise SystemExit(f"{run['dir']}: a separate --val or --limit run; this table needs the --val-split rule")
    train_idx, val_idx = split_indices(len(dataset), config.data.val_split, int(config.recipe.seed))
    if sorted(val_idx) != sorted(run["index"].tolist()):
        raise SystemExit(f"{run['dir']}: its held-out photos are not split_indices(...)'s: cannot rebuild the split")
    labels, mask = dataset.label_matrix(train_idx)
    return labels, mask, list(dataset.label_names)


def seed_tables(seed_runs: dict[str, dict], t: float) -> dict:
    """Recomputed metrics per variant, per-label AP and training counts, the graph's statistics (one seed)."""
    from fashionlens import labels as label_tools
    from fashionlens.metrics import multilabel_metrics

    any_run = next(iter(seed_runs.values()))
    train, train_mask, names = training_labels(any_run)
    counts = (train * train_mask).sum(axis=0)
    known = train_mask.sum(axis=0)
    count_of = dict(zip(names, counts.tolist()))

    common = [name for name in names if all(name in run["labels"] for run in seed_runs.values())]
    metrics, per_label = {}, {}
    for variant, run in seed_runs.items():
        cols = [run["labels"].index(name) for name in common]
        m = multilabel_metrics(run["scores"][:, cols], run["targets"][:, cols], run["mask"][:, cols],
                               label_names=common)
        metrics[variant] = m
        per_label[variant] = {k: v for k, v in m["per_class_AP"].items() if v is not None}
        metrics[variant]["saved_mAP"] = run["metrics_file"]["mAP"]
    evaluated = [name for name in common if all(name in per_label[v] for v in per_label)]
    order = sorted(evaluated, key=lambda name: (count_of[name], name))
    groups = {group: [str(x) for x in part] for group, part in zip(GROUPS, np.array_split(np.array(order), 3))}

    # The graph the ML-GCN heads of this seed were built from (cross-checked against a saved graph.json).
    M, N = label_tools.cooccurrence_counts(train, train_mask)
    base = np.divide(N, known, out=np.zeros(len(names)), where=known > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # labels without training positives: dropped, as in training
        graph = label_tools.build_adjacency(M, N, t=t, p=0.2, label_names=names, on_empty="drop")
        lifted = label_tools.build_adjacency(M, N, t=t, p=0.2, label_names=names, on_empty="drop", min_lift=1.25,
                                             base_rates=base)
    kept = graph.kept
    edges = graph.edges
    saved_edges = None
    for run in seed_runs.values():
        g = run["graph"]
        if g and g.get("p") is not None and g.get("t") == t and run["config"].graph.min_lift is None:
            saved_edges = len(g["edges"])
            break
    if saved_edges is not None and saved_edges != int(edges.sum()):
        raise SystemExit(f"seed {any_run['seed']}: rebuilt graph has {int(edges.sum())} edges, graph.json "
                         f"{saved_edges}: the split was not rebuilt correctly")
    kept_counts = N[kept].astype(float)
    top5 = set(np.argsort(-kept_counts, kind="stable")[:5].tolist())
    src, dst = np.nonzero(edges)
    lift = graph.conditional[src, dst] / base[np.array(kept)][dst]
    receives = edges.sum(axis=0) > 0  # column j: some label sends to j
    kept_names = graph.label_names
    receiving = {group: sum(bool(receives[kept_names.index(name)]) for name in groups[group]) for group in GROUPS}
    stats = {
        "labels": len(kept), "edges": int(edges.sum()),
        "into_top5": float(np.mean([d in top5 for d in dst])) * 100 if len(dst) else 0.0,
        "top5": [kept_names[k] for k in sorted(top5, key=lambda k: -kept_counts[k])],
        "median_lift": float(np.median(lift)) if len(lift) else float("nan"),
        "lift_below_1": int((lift < 1).sum()), "edges_min_lift_1.25": int(lifted.edges.sum()),
        "receiving": receiving, "group_sizes": {g: len(groups[g]) for g in GROUPS},
        "receiving_labels": int(receives.sum()),
        "n_train": int(train.shape[0]), "saved_graph_edges": saved_edges,
    }
    ranges = {g: (int(min(count_of[n] for n in groups[g])), int(max(count_of[n] for n in groups[g])))
              for g in GROUPS}
    return {"metrics": metrics, "per_label": per_label, "groups": groups, "ranges": ranges, "graph": stats,
            "counts": count_of, "evaluated": evaluated}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="compare output folders (any number per seed)")
    parser.add_argument("--reference", default="mlgcn-onehot", help="the variant the differences start from")
    parser.add_argument("--against", nargs="+", default=["linear-avg", "linear-max", "mlgcn-onehot-identity"])
    parser.add_argument("--t", type=float, default=0.4, help="graph threshold for the statistics (default 0.4)")
    parser.add_argument("--curves", action="store_true", help="also print held-out mAP after each epoch")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    runs = collect(args.folders)
    seeds = sorted(runs)
    per_seed = {seed: seed_tables(runs[seed], args.t) for seed in seeds}
    variants: list[str] = []
    for seed in seeds:
        variants += [v for v in runs[seed] if v not in variants]

    def values(variant: str, key: str) -> list[float]:
        return [per_seed[s]["metrics"][variant][key] for s in seeds if variant in per_seed[s]["metrics"]]

    print(f"Seeds {', '.join(map(str, seeds))}; held-out photos per seed: "
          f"{', '.join(str(next(iter(runs[s].values()))['index'].size) for s in seeds)}; mean ± sample std over seeds.\n")
    print("| variant | seeds | mAP per seed | mAP | CF1 | OF1 |")
    print("|---|---|---|---|---|---|")
    summary: dict = {"seeds": seeds, "variants": {}}
    for variant in variants:
        maps, cf1, of1 = values(variant, "mAP"), values(variant, "CF1"), values(variant, "OF1")
        have = [s for s in seeds if variant in per_seed[s]["metrics"]]
        print(f"| {variant} | {len(have)} | {' / '.join(f'{v:.2f}' for v in maps)} | {_mean(maps):.2f} ± {_std(maps):.2f} "
              f"| {_mean(cf1):.2f} ± {_std(cf1):.2f} | {_mean(of1):.2f} ± {_std(of1):.2f} |")
        summary["variants"][variant] = {"seeds": have, "mAP": maps, "CF1": cf1, "OF1": of1}
    drift = max(abs(per_seed[s]["metrics"][v]["mAP"] - per_seed[s]["metrics"][v]["saved_mAP"])
                for s in seeds for v in per_seed[s]["metrics"])
    print(f"\n(largest difference between the recomputed mAP and the run's metrics.json: {drift:.3f})")

    ref = args.reference
    pairs = [other for other in args.against if any(ref in runs[s] and other in runs[s] for s in seeds)]
    if pairs:
        print(f"\nPaired mAP differences, {ref} minus each, seeds {' / '.join(map(str, seeds))}:\n")
        print("| difference | per seed | mean | seeds ahead |")
        print("|---|---|---|---|")
        summary["differences"] = {}
        for other in pairs:
            diffs = [per_seed[s]["metrics"][ref]["mAP"] - per_seed[s]["metrics"][other]["mAP"]
                     for s in seeds if ref in runs[s] and other in runs[s]]
            ahead = sum(d > 0 for d in diffs)
            print(f"| {ref} − {other} | {' / '.join(_signed(d) for d in diffs)} | **{_signed(_mean(diffs))}** | "
                  f"{ahead} of {len(diffs)} |")
            summary["differences"][other] = diffs

    # Per-label AP by training frequency.
    print("\nPer-label AP by the label's positive count in the seed's training split (terciles of the labels "
          "evaluated; mean over the labels of a group, then over seeds):\n")
    ranges = " / ".join(f"{g} {per_seed[seeds[0]]['ranges'][g][0]}-{per_seed[seeds[0]]['ranges'][g][1]}"
                        for g in GROUPS)
    sizes = " / ".join(str(len(per_seed[seeds[0]]["groups"][g])) for g in GROUPS)
    print(f"(seed {seeds[0]}: training positives {ranges}; labels per group {sizes})\n")
    print("| variant | " + " | ".join(f"AP {g}" for g in GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))

    def group_ap(seed: int, variant: str, group: str) -> float:
        ap = per_seed[seed]["per_label"][variant]
        return _mean([ap[name] for name in per_seed[seed]["groups"][group]])

    summary["groups"] = {}
    for variant in variants:
        have = [s for s in seeds if variant in runs[s]]
        cells = [_mean([group_ap(s, variant, g) for s in have]) for g in GROUPS]
        print(f"| {variant} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        summary["groups"][variant] = dict(zip(GROUPS, cells))
    if pairs:
        print(f"\nPaired per-group differences ({ref} minus each; per seed, then the mean):\n")
        print("| difference | " + " | ".join(GROUPS) + " |")
        print("|---|" + "---|" * len(GROUPS))
        for other in pairs:
            have = [s for s in seeds if ref in runs[s] and other in runs[s]]
            cells = []
            for g in GROUPS:
                diffs = [group_ap(s, ref, g) - group_ap(s, other, g) for s in have]
                cells.append(f"{' / '.join(_signed(d) for d in diffs)} (**{_signed(_mean(diffs))}**)")
            print(f"| {ref} − {other} | " + " | ".join(cells) + " |")

    print(f"\nThe label graph of each training split (t = {args.t}, p = 0.2; lift = P(j|i) / P(j) of an edge i → j):\n")
    print("| seed | training photos | labels | edges | into the 5 most frequent | median lift | edges with lift < 1 "
          "| edges with --min-lift 1.25 | labels receiving ≥ 1 edge: rare / medium / frequent |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary["graph"] = {}
    for s in seeds:
        g = per_seed[s]["graph"]
        rec = " / ".join(f"{g['receiving'][k]} of {g['group_sizes'][k]}" for k in GROUPS)
        print(f"| {s} | {g['n_train']} | {g['labels']} | {g['edges']} | {g['into_top5']:.0f} % | {g['median_lift']:.2f} "
              f"| {g['lift_below_1']} | {g['edges_min_lift_1.25']} | {rec} |")
        summary["graph"][s] = g
    print(f"\n(5 most frequent labels, seed {seeds[0]}: {', '.join(per_seed[seeds[0]]['graph']['top5'])})")

    if args.curves:
        print("\nHeld-out mAP after each epoch (history.json), mean over seeds:\n")
        epochs = max(len(runs[s][v]["history"]) for s in seeds for v in runs[s])
        print("| variant | " + " | ".join(f"epoch {e + 1}" for e in range(epochs)) + " |")
        print("|---|" + "---|" * epochs)
        for variant in variants:
            rows = [runs[s][variant]["history"] for s in seeds if variant in runs[s]]
            cells = [_mean([r[e]["mAP"] for r in rows if len(r) > e]) for e in range(epochs)]
            print(f"| {variant} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")

    summary["per_label_AP"] = {s: per_seed[s]["per_label"] for s in seeds}
    summary["train_counts"] = {s: per_seed[s]["counts"] for s in seeds}
    write_results(summary, "ccp_table.json", args.json)
    return summary


if __name__ == "__main__":
    main()
