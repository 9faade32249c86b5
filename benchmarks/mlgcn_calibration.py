"""Calibrate ML-GCN heads against a linear head on frozen features (Clothing Attribute Dataset).

Frozen, shipped EfficientNet-Lite0, global max pooling, images resized straight to SIZE x SIZE,
the project's own reader (37 binarised labels, blanks unknown and masked), heads and metrics. Heads
train full-batch with Adam on the cached features for a fixed number of steps, on a fixed 70/30
split, several seeds; the table gives the holdout mAP after each of STEPS.

    python benchmarks/mlgcn_calibration.py [--size 224] [--steps 100,300,1000] [--seeds 5] [--heads linear,onehot]

Features are cached in /tmp/fashionlens_calib_<size>.pt. Results: docs/results.md, section 1a.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fashionlens.data import build_transforms, read_clothing_attributes
from fashionlens.labels import build_adjacency, cooccurrence_counts, label_embeddings, load_glove, onehot_embeddings
from fashionlens.losses import masked_bce_with_logits
from fashionlens.metrics import multilabel_metrics
from fashionlens.models.backbones import create_backbone
from fashionlens.models.mlgcn import LinearHead, MLGCNHead

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-attributes"


def cached_features(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]:
    """(features (N, 1280), labels, mask, label names, label words), features computed once per size."""
    backbone = create_backbone("tf_efficientnet_lite0", pretrained="shipped").eval()
    dataset = read_clothing_attributes(DATA, transform=build_transforms(size, backbone.mean, backbone.std, train=False))
    cache = Path(f"/tmp/fashionlens_calib_{size}.pt")
    if cache.exists():
        features = torch.load(cache)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=2)
        with torch.inference_mode():
            features = torch.cat([backbone(batch["image"]).amax(dim=(2, 3)) for batch in loader])
        torch.save(features, cache)
    labels = torch.tensor(np.stack([r.labels for r in dataset.records]))
    mask = torch.tensor(np.stack([r.label_mask for r in dataset.records]))
    return features, labels, mask, list(dataset.label_names), list(dataset.label_words)


class WithBias(nn.Module):
    """A per-label bias added to a head's logits (ML-GCN's head has none)."""

    def __init__(self, head: nn.Module, num_labels: int):
        super().__init__()
        self.head = head
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) + self.bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", default="100,300,1000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--heads", default="", help="comma-separated substrings: only heads whose name matches")
    args = parser.parse_args()
    torch.set_num_threads(2)
    checkpoints = sorted(int(s) for s in args.steps.split(","))

    x, y, m, names, words = cached_features(args.size)
    count, dim = len(names), x.shape[1]
    glove = label_embeddings(words, load_glove("glove50"))
    onehot = onehot_embeddings(count)
    identity = np.eye(count, dtype=np.float32)

    def graph(train: np.ndarray, t: float = 0.4) -> np.ndarray:
        pair_counts, label_counts = cooccurrence_counts(y[train].numpy(), m[train].numpy())
        return build_adjacency(pair_counts, label_counts, t=t, p=0.2, label_names=names).adjacency

    heads = {
        "linear": lambda train: LinearHead(dim, count),
        "mlgcn glove (reference: no bias)": lambda train: MLGCNHead(glove, graph(train), dim),
        "mlgcn glove + bias": lambda train: WithBias(MLGCNHead(glove, graph(train), dim), count),
        "mlgcn glove t=0.3 + bias": lambda train: WithBias(MLGCNHead(glove, graph(train, 0.3), dim), count),
        "mlgcn glove residual + bias": lambda train: WithBias(MLGCNHead(glove, graph(train), dim, residual=True),
                                                              count),
        "mlgcn glove identity + bias": lambda train: WithBias(MLGCNHead(glove, identity, dim), count),
        "mlgcn onehot + bias": lambda train: WithBias(MLGCNHead(onehot, graph(train), dim), count),
        "mlgcn onehot identity + bias": lambda train: WithBias(MLGCNHead(onehot, identity, dim), count),
    }
    print(f"features {tuple(x.shape)}, seeds {args.seeds}, Adam lr {args.lr}, holdout mAP after {checkpoints} steps")
    for name, make in heads.items():
        if args.heads and not any(part in name for part in args.heads.split(",")):
            continue
        start = time.time()
        results = {step: [] for step in checkpoints}
        for seed in range(args.seeds):
            order = np.random.default_rng(seed).permutation(len(x))
            train, test = order[: int(0.7 * len(x))], order[int(0.7 * len(x)):]
            torch.manual_seed(seed)
            head = make(train)
            optimiser = torch.optim.Adam(head.parameters(), lr=args.lr, weight_decay=1e-4)
            for step in range(1, checkpoints[-1] + 1):
                optimiser.zero_grad()
                masked_bce_with_logits(head(x[train]), y[train], m[train]).backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), 10.0)
                optimiser.step()
                if step in results:
                    with torch.no_grad():
                        results[step].append(multilabel_metrics(head(x[test]), y[test], m[test])["mAP"])
        row = "  ".join(f"{step}: {np.mean(v):5.1f} ± {np.std(v):.1f}" for step, v in results.items())
        print(f"{name:34s} {row}  ({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
