"""Side-by-side comparison of the style heads on one fixed split: baselines vs ML-GCN variants.

Every variant trains with the same data, split, seed, backbone, image size and schedule; only the
head (and, for the scratch run, the initial weights) changes. One table comes out, also written to
RUN_DIR/compare.json and RUN_DIR/compare.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VARIANTS: dict[str, dict[str, Any]] = {
    "linear-avg": {"head": "linear", "pool": "avg"},
    "linear-max": {"head": "linear", "pool": "max"},
    "mlgcn-glove": {"head": "mlgcn", "pool": "max", "embeddings": "glove50"},
    "mlgcn-glove-nobias": {"head": "mlgcn", "pool": "max", "embeddings": "glove50", "bias": False},
    "mlgcn-onehot-identity": {"head": "mlgcn", "pool": "max", "embeddings": "onehot", "graph": "identity"},
    "mlgcn-glove-residual": {"head": "mlgcn", "pool": "max", "embeddings": "glove50", "residual": True},
    "mlgcn-onehot": {"head": "mlgcn", "pool": "max", "embeddings": "onehot"},
    "mlgcn-glove-onehot": {"head": "mlgcn", "pool": "max", "embeddings": "glove50+onehot"},
    # Edges only where the source makes the target at least 1.25x more likely than its base rate.
    "mlgcn-onehot-lift": {"head": "mlgcn", "pool": "max", "embeddings": "onehot", "min_lift": 1.25},
    "mlgcn-glove-avg": {"head": "mlgcn", "pool": "avg", "embeddings": "glove50"},
    "mlgcn-onehot-avg": {"head": "mlgcn", "pool": "avg", "embeddings": "onehot"},
    "mlgcn-onehot-identity-avg": {"head": "mlgcn", "pool": "avg", "embeddings": "onehot", "graph": "identity"},
    "mlgcn-identity": {"head": "mlgcn", "pool": "max", "embeddings": "glove50", "graph": "identity"},
    # From scratch the backbone has nothing to preserve: it trains at the heads' learning rate (lrp 1).
    "linear-max-scratch": {"head": "linear", "pool": "max", "pretrained": "none", "freeze_epochs": 0, "lrp": 1.0},
    "mlgcn-glove-scratch": {"head": "mlgcn", "pool": "max", "embeddings": "glove50", "pretrained": "none",
                            "freeze_epochs": 0, "lrp": 1.0},
}
DEFAULT_VARIANTS = ("linear-avg", "linear-max", "mlgcn-glove", "mlgcn-onehot", "mlgcn-identity", "linear-max-scratch")


def epochs_to_reach(history: list[dict], target: float, key: str = "mAP") -> int | None:
    """1-based number of epochs after which `key` first reached `target` (None if it never did)."""
    for row in history:
        if row.get(key, float("-inf")) >= target:
            return int(row["epoch"]) + 1
    return None


def train_variants(base_options: dict, variants: list[str], out: Path) -> dict[str, dict]:
    """Train each variant into out/<variant>/ and return {variant: {"metrics": ..., "history": ...}}."""
    from fashionlens.training import train_style

    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    results = {}
    for name in variants:
        options = {**base_options, **VARIANTS[name], "out": out / name}
        print(f"\n=== {name} ===", flush=True)
        run_dir = train_style(options)
        results[name] = {"metrics": json.loads((run_dir / "metrics.json").read_text()),
                         "history": json.loads((run_dir / "history.json").read_text())}
    return results


def comparison_table(results: dict[str, dict], target: float | None = None) -> str:
    """A Markdown table: one row per variant (mAP, F1s, best epoch, epochs to reach `target` mAP).

    The default target is 90 % of the best pretrained variant's mAP; with no pretrained variant in
    ``results`` and no ``target`` there is nothing to reach, and the column is left out.
    """
    if target is None:
        pretrained = [r["metrics"]["mAP"] for name, r in results.items() if "scratch" not in name]
        target = 0.9 * max(pretrained) if pretrained else None
    header = "| variant | mAP | CF1 | OF1 | CF1 top-3 | OF1 top-3 | best epoch |"
    rule = "|---|---|---|---|---|---|---|"
    if target is not None:
        header, rule = header + f" epochs to mAP {target:.1f} |", rule + "---|"
    lines = [header, rule]
    for name, result in results.items():
        m, history = result["metrics"], result["history"]
        best = max(history, key=lambda row: row.get("mAP", -1))["epoch"] + 1 if history else "-"
        row = (f"| {name} | {m['mAP']:.2f} | {m['CF1']:.2f} | {m['OF1']:.2f} | {m['CF1_top3']:.2f} | "
               f"{m['OF1_top3']:.2f} | {best} |")
        if target is not None:
            reach = epochs_to_reach(history, target)
            row += f" {reach if reach is not None else 'never'} |"
        lines.append(row)
    return "\n".join(lines)


def run_compare(args: dict) -> int:
    out = Path(args["out"])
    variants = list(args.get("variants") or DEFAULT_VARIANTS)
    base = {"data": args["data"], "format": args["format"], "backbone": args.get("backbone", "tf_efficientnet_lite0"),
            "pretrained": "shipped", "image_size": args.get("image_size", 224), "epochs": args.get("epochs", 10),
            "batch_size": args.get("batch_size", 32), "seed": args.get("seed", 0),
            "freeze_epochs": args.get("freeze_epochs", 1), "val_split": 0.2,
            "optimizer": args.get("optimizer", "sgd"), "lr": args.get("lr"),
            "cache_features": args.get("cache_features", False), "final_weights": "last",
            "lrp": 0.1, "t": 0.4, "p": 0.2, "embeddings": "glove50", "graph": "cooccurrence", "loss": "bce"}
    results = train_variants(base, variants, out)
    table = comparison_table(results)
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    (out / "compare.md").write_text(table + "\n")
    print("\n" + table)
    return 0
