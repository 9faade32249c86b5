"""The landmark-driven network's claim on DeepFashion-fine, on a frozen backbone's cached features.

Lee et al. (2020) say that landmark features lift the local attributes and can hurt the global
ones. This script trains the clothing network's heads three ways on the same frozen ImageNet
features (the landmark branch with GLEM, the same branch with plain convolutions, no landmark branch)
for several seeds, and scores each on the validation photos: landmark normalised error per name,
garment-type accuracy, per-group accuracy and the mean class accuracy. Two trivial references go
beside them: every landmark at its mean training position for its name and the photo's true garment
type, and the most common class of each group.

The backbone runs once per photo (box crop resized to the model's square input, and its mirror image
for the training photos, the flip swapping left and right landmarks); the features are cached in
``--cache`` so a second run starts at once. Nothing here is chosen on the validation photos: the
recipe is fixed before (``--holdout N`` scores on the last N training photos instead, for tuning).

    python benchmarks/deepfashion_fine_ablation.py --data ../shared/data/deepfashion-fine \\
        --seeds 0 1 2 --epochs 12 --json docs/data/deepfashion_fine_ablation.json

``--attr-heads`` trains each landmark variant with other attribute heads as well (issue 28): ML-GCN on
one-hot label vectors over the training labels' co-occurrence graph (t 0.4, p 0.2) or the identity
graph, and the label-query head started at random or at that GCN's classifiers. A variant is then
named ``glem+query-scratch``; the first variant is the reference of the paired differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from fashionlens.data import open_dataset
from fashionlens.data.transforms import MarkCutOffLandmarks, RandomHorizontalFlipLandmarks, build_transforms
from fashionlens.heatmaps import decode_heatmaps
from fashionlens.metrics import attribute_group_metrics, landmark_metrics
from fashionlens.models.backbones import create_backbone
from fashionlens.models.landmark_net import build_clothing_model, clothing_loss
from fashionlens.config import GraphConfig
from fashionlens.models.netconfig import ClothingNetConfig
from fashionlens.training import build_label_graph_inputs
from fashionlens.vocabulary import LANDMARK_NAMES, VISIBLE

VARIANTS = ("glem", "convs", "none")
# Attribute head -> (the network's fields, the label graph it needs: None, or GraphConfig.graph).
ATTRIBUTE_HEADS = {"linear": ({}, None), "mlgcn": ({"attr_head": "mlgcn"}, "cooccurrence"),
                   "mlgcn-identity": ({"attr_head": "mlgcn"}, "identity"),
                   "query-scratch": ({"attr_head": "query", "query_init": "scratch"}, None),
                   "query-gcn": ({"attr_head": "query", "query_init": "gcn"}, "cooccurrence")}


def extract(dataset, backbone, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """The frozen backbone's feature maps (float16) and every target of ``dataset``, in row order."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    keys = ("labels", "label_mask", "category", "landmarks", "landmark_visibility")
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("features", *keys)}
    with torch.inference_mode():
        for batch in loader:
            parts["features"].append(backbone(batch["image"]).half())
            for key in keys:
                parts[key].append(torch.as_tensor(batch[key]).as_subclass(torch.Tensor))
    return {key: torch.cat(values) for key, values in parts.items()}


def cached_features(args, image_size: int) -> tuple[dict, dict, dict]:
    if args.cache.is_file():
        return torch.load(args.cache, weights_only=False)
    backbone = create_backbone(args.backbone, pretrained="shipped", stage=args.stage).eval()
    mean, std = backbone.mean, backbone.std
    plain = build_transforms(image_size, mean, std, train=False)
    mirrored = v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True),
                           RandomHorizontalFlipLandmarks(1.0), MarkCutOffLandmarks(),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))])
    start = time.perf_counter()
    train = extract(open_dataset(args.data, "deepfashion-fine", split="train", transform=plain), backbone)
    flipped = extract(open_dataset(args.data, "deepfashion-fine", split="train", transform=mirrored), backbone)
    val = extract(open_dataset(args.data, "deepfashion-fine", split="val", transform=plain), backbone)
    print(f"features of {len(train['features'])} + {len(val['features'])} photos (and the mirrored training "
          f"photos) in {time.perf_counter() - start:.0f} s", flush=True)
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save((train, flipped, val), args.cache)
    return train, flipped, val


def groups_of(dataset) -> dict[str, list[int]]:
    return {group: [i for i, kind in enumerate(dataset.attribute_types) if kind == group]
            for group in dataset.exclusive_types}


def scores(model, data: dict, image_size: int, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Category and attribute logits and decoded landmark positions (input pixels) of every row."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"category_logits": [], "attribute_logits": [], "pred_xy": []}
    with torch.inference_mode():
        for start in range(0, len(data["features"]), batch_size):
            feats = model.features_from_conv4(data["features"][start:start + batch_size].float(),
                                              (image_size, image_size))
            result = model.forward_head(feats["features"])
            out["category_logits"].append(result["category_logits"])
            out["attribute_logits"].append(result["attribute_logits"])
            if "heatmaps" in feats:
                out["pred_xy"].append(decode_heatmaps(feats["heatmaps"], (image_size, image_size), subpixel=True)[0])
    return {key: torch.cat(value) for key, value in out.items() if value}


def evaluate(predicted: dict, data: dict, groups: dict, label_names: list[str], image_size: int) -> dict:
    result = attribute_group_metrics(predicted["attribute_logits"], data["labels"], data["label_mask"], groups,
                                     label_names)
    result["garment_type_accuracy"] = 100.0 * float(
        (predicted["category_logits"].argmax(1) == data["category"]).float().mean())
    if "pred_xy" in predicted:
        sizes = torch.tensor([[image_size, image_size]]).expand(len(data["features"]), 2)
        result.update(landmark_metrics(predicted["pred_xy"], data["landmarks"], data["landmark_visibility"], sizes))
    return result


def train_variant(variant: str, seed: int, train: dict, flipped: dict, groups: dict, args, image_size: int,
                  num_categories: int, attr_head: str = "linear"):
    """The heads on the cached features; each epoch sees every training photo once, as itself or
    mirrored (a coin toss per photo), as a flip in the data pipeline would."""
    torch.manual_seed(seed)
    fields, graph = ATTRIBUTE_HEADS[attr_head]
    config = {"backbone": args.backbone, "pretrained": "none", "stage": args.stage, "landmarks": variant,
              "num_categories": num_categories, "num_attributes": len(train["labels"][0]),
              "num_landmarks": len(LANDMARK_NAMES), "image_size": image_size, "head_width": args.head_width,
              "upsample_width": args.upsample_width, **fields}
    inputs = {}
    if graph is not None:
        names = [str(k) for k in range(config["num_attributes"])]
        embeddings, adjacency, _, _ = build_label_graph_inputs(train["labels"].numpy(), train["label_mask"].numpy(),
                                                               names, names, GraphConfig(graph=graph), on_empty="isolate")
        inputs = {"attr_embeddings": torch.as_tensor(embeddings), "attr_adjacency": torch.as_tensor(adjacency)}
    model = build_clothing_model(ClothingNetConfig(**config), **inputs)
    model.backbone.requires_grad_(False)
    head = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(head, lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(train["features"]) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    group_columns = [torch.tensor(columns) for columns in groups.values()]
    generator = torch.Generator().manual_seed(seed)
    image = torch.zeros(()).expand(args.batch_size, 3, image_size, image_size)  # the loss reads its size only
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(len(train["features"]), generator=generator)
        mirror = torch.rand(len(order), generator=generator) < 0.5
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            rows, flip = order[start:start + args.batch_size], mirror[start:start + args.batch_size]
            batch = {key: torch.where(flip.view(-1, *[1] * (value.dim() - 1)), flipped[key][rows], value[rows])
                     for key, value in train.items()}
            feats = model.features_from_conv4(batch.pop("features").float(), (image_size, image_size))
            outputs = model.forward_head(feats["features"])
            if "heatmaps" in feats:
                outputs["heatmaps"] = feats["heatmaps"]
            batch["image"] = image
            loss, _ = clothing_loss(outputs, batch, lambdas=tuple(args.lambdas), attribute_groups=group_columns)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model


def mean_shape(train: dict, val: dict, num_categories: int) -> torch.Tensor:
    """Every landmark at its mean visible training position for its name and the photo's true type."""
    means = torch.zeros(num_categories, len(LANDMARK_NAMES), 2)
    for kind in range(num_categories):
        for j in range(len(LANDMARK_NAMES)):
            visible = (train["category"] == kind) & (train["landmark_visibility"][:, j] == VISIBLE)
            if visible.any():
                means[kind, j] = train["landmarks"][visible, j].float().mean(0)
    return means[val["category"]]


def majority(train: dict, val: dict, groups: dict) -> torch.Tensor:
    counts = train["labels"].float().sum(0)
    logits = torch.zeros_like(counts)
    for columns in groups.values():
        logits[columns[int(counts[columns].argmax())]] = 1.0
    return logits.expand(len(val["labels"]), -1)


def summary(rows: list[dict], keys: list[str]) -> list[str]:
    """Markdown: each variant's mean (and per-seed values) and the paired differences of the first
    variant (after the trivial reference) against each other one."""
    by = {}
    for row in rows:
        by.setdefault(row["variant"], {})[row["seed"]] = row
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for variant, seeds in by.items():
        cells = []
        for key in keys:
            values = [seeds[s].get(key) for s in sorted(seeds)]
            if any(v is None for v in values):
                cells.append("-")
            else:
                cells.append(f"{np.mean(values):.4g}" + (f" ({', '.join(f'{v:.4g}' for v in values)})"
                                                                  if len(values) > 1 else ""))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    trained = [variant for variant in by if variant != "trivial"]
    for other in trained[1:]:
        first = trained[0]
        cells = []
        for key in keys:
            seeds = sorted(set(by[first]) & set(by[other]))
            diffs = [by[first][s].get(key) - by[other][s].get(key) for s in seeds
                     if by[first][s].get(key) is not None and by[other][s].get(key) is not None]
            cells.append(f"{np.mean(diffs):+.3g} ({', '.join(f'{d:+.3g}' for d in diffs)})" if diffs else "-")
        lines.append(f"| {first} - {other} (paired) | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/deepfashion-fine"))
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--stage", default="stride16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cache", type=Path, default=None,
                        help="default runs/deepfashion_fine_<backbone>_<stage>_<size>.pt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--attr-heads", nargs="+", default=["linear"], choices=list(ATTRIBUTE_HEADS),
                        help="the attribute heads to train with each variant (default linear)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lambdas", type=float, nargs=3, default=(1.0, 20.0, 100.0))
    parser.add_argument("--head-width", type=int, default=128)
    parser.add_argument("--upsample-width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--holdout", type=int, default=0,
                        help="score on the last N training photos (and train on the rest) instead of val: for tuning")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.cache is None:
        args.cache = Path(f"runs/deepfashion_fine_{args.backbone}_{args.stage}_{args.image_size}.pt")
    if args.threads:
        torch.set_num_threads(args.threads)

    reference = open_dataset(args.data, "deepfashion-fine", split="val")
    groups, label_names = groups_of(reference), list(reference.label_names)
    num_categories = len(reference.category_names)
    train, flipped, val = cached_features(args, args.image_size)
    if args.holdout:
        rows = len(train["features"]) - args.holdout
        val = {key: value[rows:] for key, value in train.items()}
        train = {key: value[:rows] for key, value in train.items()}
        flipped = {key: value[:rows] for key, value in flipped.items()}

    results: list[dict] = []
    reference_xy = mean_shape(train, val, num_categories)
    sizes = torch.tensor([[args.image_size, args.image_size]]).expand(len(reference_xy), 2)
    trivial = {"variant": "trivial", "seed": 0, **attribute_group_metrics(majority(train, val, groups), val["labels"],
                                                                         val["label_mask"], groups, label_names),
               **landmark_metrics(reference_xy, val["landmarks"], val["landmark_visibility"], sizes)}
    results.append(trivial)
    for seed in args.seeds:
        for variant, attr_head in [(v, h) for v in args.variants for h in args.attr_heads]:
            start = time.perf_counter()
            model = train_variant(variant, seed, train, flipped, groups, args, args.image_size, num_categories,
                                  attr_head)
            name = variant if attr_head == "linear" else f"{variant}+{attr_head}"
            row = {"variant": name, "seed": seed,
                   **evaluate(scores(model, val, args.image_size), val, groups, label_names, args.image_size),
                   "train_seconds": time.perf_counter() - start}
            results.append(row)
            print(f"{name:5s} seed {seed}: NE {row.get('normalized_error', float('nan')):.4f}  "
                  f"mean class acc {row['mean_class_accuracy']:.1f}  type acc {row['garment_type_accuracy']:.1f}  "
                  f"({row['train_seconds']:.0f} s)", flush=True)
    keys = ["normalized_error", *[f"normalized_error_{name}" for name in LANDMARK_NAMES]]
    print("\n".join(summary(results, keys)))
    keys = ["mean_class_accuracy", *[f"{group}_accuracy" for group in groups], "garment_type_accuracy"]
    print("\n".join(summary(results, keys)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
