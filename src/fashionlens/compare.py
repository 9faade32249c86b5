"""Side-by-side comparison of the style heads on one fixed split: baselines vs ML-GCN and label-query variants.

Every variant trains with the same data, split, seed, backbone, image size and recipe (one
StyleConfig); a variant is a set of overrides of that config (``fashionlens.config.override``, so
a misspelt key is an error), changing only the head (and, for the scratch runs, the initial
weights). One table comes out, also written to RUN_DIR/compare.json and RUN_DIR/compare.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fashionlens.config import StyleConfig, override
from fashionlens.rundir import RunDir
from fashionlens.training import train_style

# From scratch the backbone has nothing to preserve: it trains at the heads' learning rate (lrp 1).
_SCRATCH = {"backbone.pretrained": "none", "recipe.freeze_epochs": 0, "recipe.lrp": 1.0}

VARIANTS: dict[str, dict[str, Any]] = {
    "linear-avg": {"head.kind": "linear", "head.pool": "avg"},
    "linear-max": {"head.kind": "linear", "head.pool": "max"},
    "mlgcn-glove": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "glove50"},
    "mlgcn-glove-nobias": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "glove50",
                           "head.bias": False},
    "mlgcn-onehot-identity": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "onehot",
                              "graph.graph": "identity"},
    "mlgcn-glove-residual": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "glove50",
                             "head.residual": True},
    "mlgcn-onehot": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "onehot"},
    "mlgcn-glove-onehot": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "glove50+onehot"},
    "mlgcn-minilm": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "minilm"},
    "mlgcn-minilm-identity": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "minilm",
                              "graph.graph": "identity"},
    # Edges only where the source makes the target at least 1.25x more likely than its base rate.
    "mlgcn-onehot-lift": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "onehot",
                          "graph.min_lift": 1.25},
    "mlgcn-glove-avg": {"head.kind": "mlgcn", "head.pool": "avg", "graph.embeddings": "glove50"},
    "mlgcn-onehot-avg": {"head.kind": "mlgcn", "head.pool": "avg", "graph.embeddings": "onehot"},
    "mlgcn-onehot-identity-avg": {"head.kind": "mlgcn", "head.pool": "avg", "graph.embeddings": "onehot",
                                  "graph.graph": "identity"},
    "mlgcn-identity": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "glove50",
                       "graph.graph": "identity"},
    "linear-max-scratch": {"head.kind": "linear", "head.pool": "max", **_SCRATCH},
    "mlgcn-glove-scratch": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "glove50", **_SCRATCH},
    "mlgcn-onehot-scratch": {"head.kind": "mlgcn", "head.pool": "max", "graph.embeddings": "onehot", **_SCRATCH},
    # Label queries cross-attending the feature map (models/query_head.py), from random or GCN-started queries.
    "query-scratch": {"head.kind": "query", "head.query_init": "scratch"},
    "query-gcn": {"head.kind": "query", "head.query_init": "gcn", "graph.embeddings": "onehot"},
    "query-scratch-selfattn": {"head.kind": "query", "head.query_init": "scratch", "head.query_self_attention": True},
}
DEFAULT_VARIANTS = ("linear-avg", "linear-max", "mlgcn-glove", "mlgcn-onehot", "mlgcn-identity", "linear-max-scratch")


def variant_config(base: StyleConfig, name: str) -> StyleConfig:
    """``base`` with variant ``name``'s overrides, training into ``base.out / name``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(sorted(VARIANTS))}")
    return override(base, {**VARIANTS[name], "out": Path(base.out) / name}, where=f"variant {name}: ")


def epochs_to_reach(history: list[dict], target: float, key: str = "mAP") -> int | None:
    """1-based number of epochs after which `key` first reached `target` (None if it never did)."""
    for row in history:
        if row.get(key, float("-inf")) >= target:
            return int(row["epoch"]) + 1
    return None


def train_variants(base: StyleConfig, variants: list[str], progress: bool = True) -> dict[str, dict]:
    """Train each variant into base.out/<variant>/ and return {variant: {"metrics": ..., "history": ...}}."""
    configs = {name: variant_config(base, name) for name in variants}  # every name checked before training
    results = {}
    for name, config in configs.items():
        if progress:
            print(f"\n=== {name} ===", flush=True)
        run = RunDir(train_style(config))
        results[name] = {"metrics": run.metrics(), "history": run.history()}
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


def run_compare(base: StyleConfig, variants: list[str] | None = None) -> int:
    out = Path(base.out)
    results = train_variants(base, list(variants or DEFAULT_VARIANTS))
    table = comparison_table(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(results, indent=2))
    (out / "compare.md").write_text(table + "\n")
    print("\n" + table)
    return 0
