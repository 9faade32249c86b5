"""Similar-item retrieval on real catalogue photos: precision@10 of same-class results.

clothing-dataset-small (A. Grigorev, CC0; 10 garment classes): the test split's photos are the
queries, the train split is the gallery (the validation split is not used: nothing is chosen).
For each feature extractor, every photo is embedded (L2-normalised), the
gallery indexed exactly (``fashionlens.search.build_faiss_index(..., "flat")``), and for each query
the share of its 10 nearest gallery photos of the query's class is averaged (precision@10; also
precision@1). Extractors:

- the released models through ``Predictor.embed`` (what ``fashionlens embed`` writes):
  ``garment-attributes-lite0`` (EfficientNet-Lite0 fine-tuned on the Clothing Attribute Dataset,
  global max pooling, 1280-d) and ``garment-category-mnv2`` (MobileNetV2 to stride 16, the category
  and attribute branches' pooled features, 2 x 256-d); for the latter also each branch's half alone
  (the halves of the same vectors, normalised again: no second forward pass);
- the same backbones with their ImageNet weights and no fine-tuning (shipped weights): Lite0's final
  map max-pooled as the released model pools it (1280-d); MobileNetV2's stride-16 map (what the
  released network's branches see, 96-d), average-pooled.

Photos are decoded and resized once (224 px square, the models' input) and normalised per model.
Vectors are cached in ``--cache`` (default runs/retrieval), so a rerun only prints.

    python benchmarks/retrieval.py [--data ../shared/data/clothing-dataset-small] [--json F]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clothing-dataset-small"
SPLITS = ("train", "test")  # gallery, queries (validation is not used)
SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def photos(root: Path, split: str) -> tuple[list[Path], np.ndarray, list[str]]:
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    paths, labels = [], []
    for c, name in enumerate(classes):
        found = sorted((root / split / name).glob("*.jpg"))
        paths += found
        labels += [c] * len(found)
    return paths, np.array(labels), classes


def decoded(paths: list[Path]) -> torch.Tensor:
    """uint8 (N, 3, SIZE, SIZE): the project's decoder and its evaluation resize (square, antialiased)."""
    from torchvision.transforms.v2 import functional as F

    from fashionlens.inference import to_uint8_chw

    out = torch.empty(len(paths), 3, SIZE, SIZE, dtype=torch.uint8)
    for i, path in enumerate(paths):
        image, _ = to_uint8_chw(path)
        out[i] = F.resize(image, [SIZE, SIZE], antialias=True)
    return out


def normalised(batch: torch.Tensor, mean, std) -> torch.Tensor:
    x = batch.float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


RELEASED_STYLE = "garment-attributes-lite0"
RELEASED_CLOTHING = "garment-category-mnv2"
CLOTHING_NAME = f"released {RELEASED_CLOTHING} (Predictor.embed)"


def extractors():
    """name -> function from a uint8 batch to (B, D) features."""
    from fashionlens.inference import load
    from fashionlens.models.backbones import create_backbone

    def predictor_embed(predictor):
        mean, std = predictor.preprocessing["mean"], predictor.preprocessing["std"]
        return lambda batch: predictor.embed_preprocessed(normalised(batch, mean, std))

    def imagenet(name, stage, pool, mean, std):
        backbone = create_backbone(name, pretrained="shipped", stage=stage).eval()

        def run(batch):
            with torch.inference_mode():
                fmap = backbone(normalised(batch, mean, std))
                return (fmap.amax(dim=(2, 3)) if pool == "max" else fmap.mean(dim=(2, 3))).numpy()
        return run

    # Lazily built, cheapest pair first: --cached-only prints what a cut-short run finished.
    return {
        CLOTHING_NAME: lambda: predictor_embed(load(RELEASED_CLOTHING)),
        "ImageNet mobilenet_v2, stride 16, avg pool": lambda: imagenet("mobilenet_v2", "stride16", "avg",
                                                                      IMAGENET_MEAN, IMAGENET_STD),
        f"released {RELEASED_STYLE} (Predictor.embed)": lambda: predictor_embed(load(RELEASED_STYLE)),
        "ImageNet tf_efficientnet_lite0, final, max pool": lambda: imagenet("tf_efficientnet_lite0", "final", "max",
                                                                           (0.5,) * 3, (0.5,) * 3),
    }


def branch_halves(vectors: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The clothing network's embedding is [category branch, attribute branch]: each half on its own."""
    half = vectors["train"].shape[1] // 2
    return {"  its category branch only": {split: unit(v[:, :half]) for split, v in vectors.items()},
            "  its attribute branch only": {split: unit(v[:, half:]) for split, v in vectors.items()}}


def precision_at(gallery: np.ndarray, gallery_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                 k: int) -> tuple[float, np.ndarray]:
    from fashionlens.search import build_faiss_index

    index, _, _ = build_faiss_index(gallery, "flat")
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    hits = gallery_labels[ids] == query_labels[:, None]
    return float(hits.mean()), hits


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "retrieval")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cached-only", action="store_true",
                        help="report only the extractors whose vectors are in --cache (a cut-short run)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)

    split_photos = {split: photos(args.data, split) for split in SPLITS}
    classes = split_photos["train"][2]
    assert all(split_photos[s][2] == classes for s in SPLITS), "the splits have different classes"
    pixels = None
    embedded: dict[str, dict[str, np.ndarray]] = {}
    for name, make in extractors().items():
        cache = args.cache / ("".join(ch if ch.isalnum() else "_" for ch in name.strip()) + ".npz")
        if cache.is_file():
            vectors = {split: array for split, array in np.load(cache).items() if split in SPLITS}
        elif args.cached_only:
            print(f"{name}: not embedded yet (no {cache}), left out", file=sys.stderr)
            continue
        else:
            run = make()
            if pixels is None:
                started = time.perf_counter()
                pixels = {split: decoded(split_photos[split][0]) for split in SPLITS}
                print(f"decoded {sum(len(p) for p in pixels.values())} photos in "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
            started = time.perf_counter()
            vectors = {}
            for split in SPLITS:
                parts = []
                for i in range(0, len(pixels[split]), args.batch_size):
                    parts.append(run(pixels[split][i:i + args.batch_size]))
                    print(f"  {name.strip()}: {split} {i + len(parts[-1])}/{len(pixels[split])}, "
                          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
                vectors[split] = unit(np.concatenate(parts))
            np.savez(cache, **vectors)
            print(f"{name}: embedded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        embedded[name] = vectors
        if name == CLOTHING_NAME:
            embedded.update(branch_halves(vectors))
    labels = {split: split_photos[split][1] for split in SPLITS}
    results = {}
    for name, vectors in embedded.items():
        row = {"dim": int(vectors["train"].shape[1])}
        p10, hits = precision_at(vectors["train"], labels["train"], vectors["test"], labels["test"], 10)
        row["test_p@10"], row["test_p@1"] = p10, float(hits[:, 0].mean())
        row["test_p@10_per_class"] = {classes[c]: float(hits[labels["test"] == c].mean())
                                      for c in range(len(classes))}
        results[name] = row

    sizes = {split: len(split_photos[split][0]) for split in SPLITS}
    print(f"Retrieval on clothing-dataset-small: {sizes['test']} test queries, {sizes['train']} train gallery "
          f"photos, {len(classes)} classes, {SIZE} px\n")
    print("| features | dim | test P@10 | test P@1 |")
    print("|---|---:|---:|---:|")
    for name, row in results.items():
        print(f"| {name} | {row['dim']} | {100 * row['test_p@10']:.1f} | {100 * row['test_p@1']:.1f} |")
    print("\nTest P@10 per class:\n")
    print("| features | " + " | ".join(classes) + " |")
    print("|---|" + "---:|" * len(classes))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{100 * row['test_p@10_per_class'][c]:.0f}" for c in classes) + " |")
    write_results({"sizes": sizes, "classes": classes, "results": results}, "retrieval.json", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
