"""Calibrate ML-GCN heads against a linear head on frozen features (Clothing Attribute Dataset).

Frozen, shipped EfficientNet-Lite0, global max pooling over the final feature map, images resized
straight to SIZE x SIZE (as ML-GCN evaluates). The 26 attributes of labels.csv become 37 binary
labels: 22 yes/no attributes (2 = yes, 1 = no), gender as male/female, one label per value of
sleeve length (3), neckline (3) and category (7). A blank cell (annotators disagreed) is unknown:
masked out of the loss, the graph counts and the AP.

Heads are trained on the cached features only (Adam, full batch, fixed number of steps; no early
stopping on the holdout), on one fixed 70/30 split, several seeds; mAP is the mean over labels of
the holdout AP (known entries only, labels with at least one holdout positive).

    python benchmarks/mlgcn_calibration.py [--size 224] [--steps 300] [--seeds 3]

Features are cached in /tmp/fashionlens_calib_<size>.npz.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from fashionlens.labels import (build_adjacency, cooccurrence_counts, identity_adjacency, label_embeddings,
                                load_glove, onehot_embeddings)
from fashionlens.losses import masked_bce_with_logits
from fashionlens.models.mlgcn import LinearHead, MLGCNHead

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-attributes"
BINARY = ["black", "blue", "brown", "collar", "cyan", "gray", "green", "many_colors", "necktie", "pattern_floral",
          "pattern_graphics", "pattern_plaid", "pattern_solid", "pattern_spot", "pattern_stripe", "placket",
          "purple", "red", "scarf", "skin_exposure", "white", "yellow"]
MULTI = {
    "gender": ["male", "female"],
    "sleevelength": ["sleeveless", "short sleeves", "long sleeves"],
    "neckline": ["v-neck", "round neckline", "other neckline"],
    "category": ["shirt", "sweater", "t-shirt", "outerwear", "suit", "tank top", "dress"],
}
# Words for GloVe, per binary attribute (the column names are not all words).
BINARY_WORDS = {"many_colors": "many colors", "pattern_floral": "floral pattern", "pattern_graphics": "graphics pattern",
                "pattern_plaid": "plaid pattern", "pattern_solid": "solid pattern", "pattern_spot": "spot pattern",
                "pattern_stripe": "stripe pattern", "skin_exposure": "skin exposure"}


def read_labels() -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    """(image file names, label names, label words, labels (N, 37), mask (N, 37))."""
    with open(DATA / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = BINARY + [f"{column}={value}" for column, values in MULTI.items() for value in values]
    words = [BINARY_WORDS.get(name, name) for name in BINARY] + [w for values in MULTI.values() for w in values]
    labels = np.zeros((len(rows), len(names)), dtype=np.float32)
    mask = np.zeros_like(labels)
    for n, row in enumerate(rows):
        k = 0
        for column in BINARY:
            if row[column].strip():
                labels[n, k] = float(int(row[column]) == 2)
                mask[n, k] = 1
            k += 1
        for column, values in MULTI.items():
            cell = row[column].strip()
            for value in range(1, len(values) + 1):
                if cell:
                    labels[n, k] = float(int(cell) == value)
                    mask[n, k] = 1
                k += 1
    return [row["image"] for row in rows], names, words, labels, mask


def extract_features(files: list[str], size: int) -> np.ndarray:
    cache = Path(f"/tmp/fashionlens_calib_{size}.npz")
    if cache.exists():
        data = np.load(cache)
        if list(data["files"]) == files:
            return data["features"]
    from PIL import Image

    from fashionlens.models.backbones import create_backbone

    torch.set_num_threads(2)
    backbone = create_backbone("tf_efficientnet_lite0", pretrained="shipped").eval()
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    features = []
    start = time.time()
    with torch.inference_mode():
        for first in range(0, len(files), 32):
            batch = []
            for name in files[first:first + 32]:
                image = Image.open(DATA / "images" / name).convert("RGB").resize((size, size), Image.BILINEAR)
                batch.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
            images = (torch.stack(batch).float() / 255 - mean) / std
            features.append(backbone(images).amax(dim=(2, 3)).numpy())
            print(f"features {first + len(batch)}/{len(files)} {time.time() - start:.0f}s", flush=True)
    features = np.concatenate(features)
    np.savez(cache, files=np.array(files), features=features)
    return features


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def mean_ap(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    aps = []
    for c in range(labels.shape[1]):
        known = mask[:, c] > 0
        if labels[known, c].sum() > 0:
            aps.append(average_precision(scores[known, c], labels[known, c]))
    return 100 * float(np.mean(aps))


def train_head(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, steps: int,
               lr: float, weight_decay: float) -> torch.nn.Module:
    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = masked_bce_with_logits(head(x), y, m)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 10.0)
        optimiser.step()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", default="", help="comma-separated substrings: only heads whose name matches")
    args = parser.parse_args()
    torch.set_num_threads(2)

    files, names, words, labels, mask = read_labels()
    features = extract_features(files, args.size)
    split = np.random.default_rng(0).permutation(len(files))
    cut = int(0.7 * len(files))
    train, test = split[:cut], split[cut:]
    x = torch.from_numpy(features)
    # Standardise with training statistics: max-pooled features have very different scales per channel.
    mu, sigma = x[train].mean(0), x[train].std(0) + 1e-6
    x = (x - mu) / sigma
    y, m = torch.from_numpy(labels), torch.from_numpy(mask)
    M, N = cooccurrence_counts(labels[train], mask[train])
    glove = label_embeddings(words, load_glove("glove50"))
    dim = features.shape[1]

    def graph(t: float, p: float = 0.2):
        return build_adjacency(M, N, t=t, p=p, label_names=names)

    heads = {
        "linear": lambda: LinearHead(dim, len(names)),
        "mlgcn glove t=0.4": lambda: MLGCNHead(glove, graph(0.4).adjacency, dim, hidden=args.hidden),
        "mlgcn glove t=0.4 residual": lambda: MLGCNHead(glove, graph(0.4).adjacency, dim, hidden=args.hidden,
                                                         residual=True),
        "mlgcn glove t=0.3": lambda: MLGCNHead(glove, graph(0.3).adjacency, dim, hidden=args.hidden),
        "mlgcn glove t=0.2": lambda: MLGCNHead(glove, graph(0.2).adjacency, dim, hidden=args.hidden),
        "mlgcn one-hot t=0.4": lambda: MLGCNHead(onehot_embeddings(len(names)), graph(0.4).adjacency, dim,
                                                 hidden=args.hidden),
        "mlgcn glove identity": lambda: MLGCNHead(glove, identity_adjacency(len(names)).adjacency, dim,
                                                  hidden=args.hidden),
    }
    for t in (0.2, 0.3, 0.4):
        print(f"t={t}: {graph(t).num_edges} edges")
    print(f"features {tuple(features.shape)}, train {len(train)}, holdout {len(test)}, steps {args.steps}, "
          f"lr {args.lr}, seeds {args.seeds}")
    for name, make in heads.items():
        if args.heads and not any(part in name for part in args.heads.split(",")):
            continue
        scores = []
        start = time.time()
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            head = train_head(make(), x[train], y[train], m[train], args.steps, args.lr, args.weight_decay)
            with torch.no_grad():
                scores.append(mean_ap(head(x[test]).numpy(), labels[test], mask[test]))
        print(f"{name:30s} mAP {np.mean(scores):5.1f} ± {np.std(scores):.1f}  ({time.time() - start:.0f}s)",
              flush=True)


if __name__ == "__main__":
    main()
