"""IVF against the exact search on real embeddings: recall@10 and same-class precision@10.

``fashionlens index --kind auto`` builds an IVF index past ``config.EXACT_LIMIT`` vectors; its
recall was measured on clustered synthetic vectors (search_scale.py), which flatter IVF. This
measures it on real ones: every photo of clothing-dataset-small (CC0) embedded by a released model
(``Predictor.embed``, what ``fashionlens embed`` writes); the train and validation splits are the
gallery, the test split the queries. For the library's list count (``search.ivf_lists``) and for 4x
as many lists (fewer vectors per list: closer to a large catalogue's share of lists searched), and
for 1 to 16 lists searched per query, it prints recall@10 against the exact answer and the share of
the 10 results of the query's class (precision@10, the exact search's alongside).

    python benchmarks/ivf_recall.py [--model garment-category-mnv2] [--json F]

Vectors are cached in ``--cache`` (default runs/ivf_recall), so a rerun only searches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clothing-dataset-small"


def embedded(model: str, data: Path, cache: Path, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(vectors, class index, split) of every photo, from the cache when it is there."""
    target = cache / f"{Path(model).name}.npz"
    if target.is_file():
        saved = np.load(target)
        return saved["vectors"], saved["classes"], saved["splits"].tolist()
    from fashionlens.predictions import loader
    from fashionlens.inference import load
    from fashionlens.vocabulary import IMAGE_EXTENSIONS

    paths = sorted(p for split in ("train", "validation", "test") for p in (data / split).rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS)
    names = sorted({p.parent.name for p in paths})
    predictor = load(model, batch_size=batch_size)
    vectors = []
    started = time.perf_counter()
    for batch in loader(paths, predictor, batch_size, workers=2):
        if any(batch["error"]):
            raise SystemExit(f"cannot decode: {[e for e in batch['error'] if e][0]}")
        vectors.append(predictor.embed_preprocessed(batch["image"]))
    print(f"embedded {len(paths)} photos in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    vectors = np.concatenate(vectors)
    classes = np.array([names.index(p.parent.name) for p in paths])
    splits = [p.parents[1].name for p in paths]
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(target, vectors=vectors, classes=classes, splits=np.array(splits))
    return vectors, classes, splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="garment-category-mnv2")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "ivf_recall")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from fashionlens import search

    vectors, classes, splits = embedded(args.model, args.data, args.cache, args.batch_size)
    is_query = np.array([split == "test" for split in splits])
    gallery, queries = vectors[~is_query], vectors[is_query]
    gallery_classes, query_classes = classes[~is_query], classes[is_query]
    k = args.k

    def precision(ids: np.ndarray) -> float:
        return float(np.mean([(gallery_classes[row[row >= 0]] == c).sum() / k for row, c in zip(ids, query_classes)]))

    exact, _, _ = search.build_faiss_index(gallery, "flat")
    _, truth = exact.search(queries, k)
    rows = [{"index": "flat (exact)", "nlist": None, "nprobe": None, "recall_at_k": 1.0, "precision_at_k": precision(truth)}]
    lists = search.ivf_lists(len(gallery))
    for nlist in (lists, 4 * lists):
        index, _, _ = search.build_faiss_index(gallery, "ivf", nlist=nlist)
        for nprobe in (1, 2, 4, 8, 16):
            index.nprobe = nprobe
            _, found = index.search(queries, k)
            recall = float(np.mean([len(set(a) & set(b[b >= 0])) / k for a, b in zip(truth, found)]))
            rows.append({"index": "ivf", "nlist": int(nlist), "nprobe": nprobe, "recall_at_k": recall,
                         "precision_at_k": precision(found)})
    print(f"{args.model}: {len(gallery)} gallery photos (train + validation), {len(queries)} queries (test), "
          f"{gallery.shape[1]}-d\n")
    print(f"| index | lists | lists searched | share searched | recall@{k} vs exact | same-class P@{k} |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        share = f"{row['nprobe'] / row['nlist']:.1%}" if row["nlist"] else "all"
        print(f"| {row['index']} | {row['nlist'] or '-'} | {row['nprobe'] or '-'} | {share} | "
              f"{row['recall_at_k']:.3f} | {100 * row['precision_at_k']:.1f} |")
    write_results({"model": args.model, "gallery": int(len(gallery)), "queries": int(len(queries)), "k": k,
                   "rows": rows}, "ivf_recall.json", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
