"""Similarity-search cost at catalogue sizes: FAISS exact inner product vs IVF vs HNSW.

Synthetic unit vectors (timing only: real catalogues are not this big here) of the released style
model's dimension (1280), clustered like embeddings are: ``--clusters`` random centres, each vector
a centre plus Gaussian noise of norm ``--noise``, normalised. For each size (10k, 100k, 1M by
default) and index kind, the build time, the latency of one query at a time (median and 95th
percentile over ``--queries`` queries, the server's case) and the time per query in one batch of
them (the ``search`` command's case), and recall@10 against the exact search (queries are noisy
copies of random catalogue vectors). Kinds are built and timed one after another in one run; the
index is freed before the next kind is built, and the vectors are made again for each in chunks, so
only the index holds them (1M x 1280 floats are 5.1 GB). The time to make them is measured apart and
taken off the build time.

    python benchmarks/search_scale.py [--sizes 10000 100000 1000000] [--dim 1280] [--hnsw-up-to N]
        [--threads N] [--json F]
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_results


CHUNK = 50_000


def synthetic_chunks(n: int, dim: int, clusters: int, noise: float, seed: int):
    """The ``n`` vectors in chunks of :data:`CHUNK` (the same ones on every call): a centre plus
    Gaussian noise, normalised. In chunks so that only the index holds all of them (1M x 1280 floats
    are 5.1 GB), and no float64 copy is ever made."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        block = centres[rng.integers(0, clusters, stop - start)]
        block += rng.standard_normal(block.shape, dtype=np.float32) * (noise / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        yield start, block


def build(kind: str, chunks, n: int, dim: int):
    """An index of ``kind`` filled from ``chunks``; IVF is trained on the first chunk (random cluster
    members, so an unbiased sample) with the library's lists, k-means iterations and probes."""
    import faiss

    from fashionlens.search import HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH, HNSW_M

    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":  # the parameters `fashionlens index` uses
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    else:  # the lists and probes `fashionlens index` uses (search.ivf_lists, ivf_probes)
        from fashionlens.search import IVF_KMEANS_ITERATIONS, ivf_lists, ivf_probes

        nlist = ivf_lists(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = IVF_KMEANS_ITERATIONS
        index.nprobe = ivf_probes(nlist)
        params = {"nlist": nlist, "nprobe": index.nprobe}
    for start, block in chunks:
        if kind == "ivf" and not index.is_trained:
            from fashionlens.search import IVF_TRAIN_PER_LIST

            index.train(block[:min(len(block), IVF_TRAIN_PER_LIST * index.nlist)])
        index.add(block)
    return index, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivf"])
    parser.add_argument("--hnsw-up-to", type=int, default=None,
                        help="build HNSW only up to this many vectors (its build is the slow part)")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: FAISS's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rows = []
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {platform.processor() or platform.machine()}",
          file=sys.stderr)
    for n in args.sizes:
        rng = np.random.default_rng(7)
        wanted = np.sort(rng.choice(n, args.queries, replace=False))
        queries = np.concatenate([block[wanted[(wanted >= start) & (wanted < start + len(block))] - start]
                                  for start, block in synthetic_chunks(n, args.dim, args.clusters, args.noise, n)])
        queries += rng.standard_normal(queries.shape, dtype=np.float32) * (0.5 * args.noise / np.sqrt(args.dim))
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        truth = None
        for kind in args.kinds:
            if kind == "hnsw" and args.hnsw_up_to is not None and n > args.hnsw_up_to:
                continue
            # Making the vectors is timed apart and taken off the build time.
            made = time.perf_counter()
            for _ in synthetic_chunks(n, args.dim, args.clusters, args.noise, n):
                pass
            making_s = time.perf_counter() - made
            started = time.perf_counter()
            index, params = build(kind, synthetic_chunks(n, args.dim, args.clusters, args.noise, n), n, args.dim)
            build_s = max(0.0, time.perf_counter() - started - making_s)
            single = []
            found = []
            for q in queries:
                t = time.perf_counter()
                _, ids = index.search(q[None], args.k)
                single.append(time.perf_counter() - t)
                found.append(ids[0])
            t = time.perf_counter()
            index.search(queries, args.k)
            batch_ms = 1000 * (time.perf_counter() - t) / len(queries)
            found = np.array(found)
            if kind == "flat":
                truth = found
            recall = (float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(truth, found)]))
                      if truth is not None else float("nan"))
            row = {"n": n, "kind": kind, "params": params, "build_s": build_s,
                   "query_ms_median": 1000 * float(np.median(single)), "query_ms_p95": 1000 * float(np.percentile(single, 95)),
                   "batch_ms_per_query": batch_ms, "recall_at_k": recall}
            rows.append(row)
            print(f"  n={n} {kind}: build {build_s:.1f} s, one query {row['query_ms_median']:.2f} ms "
                  f"(p95 {row['query_ms_p95']:.2f}), batched {batch_ms:.2f} ms/query, recall@{args.k} {recall:.3f}",
                  file=sys.stderr)
            del index
            gc.collect()

    print(f"\nSimilarity search, {args.dim}-d unit vectors ({args.clusters} clusters, noise {args.noise}), "
          f"{args.queries} queries, k={args.k}, {faiss.omp_get_max_threads()} threads\n")
    print("| vectors | index | build (s) | one query, median (ms) | one query, p95 (ms) | batched (ms/query) | "
          f"recall@{args.k} |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        name = row["kind"] + ("" if not row["params"] else " (" + ", ".join(f"{k} {v}" for k, v in row["params"].items())
                              + ")")
        print(f"| {row['n']:,} | {name} | {row['build_s']:.1f} | {row['query_ms_median']:.2f} | "
              f"{row['query_ms_p95']:.2f} | {row['batch_ms_per_query']:.2f} | {row['recall_at_k']:.3f} |")
    write_results({"dim": args.dim, "clusters": args.clusters, "noise": args.noise, "queries": args.queries,
                   "k": args.k, "rows": rows}, "search_scale.json", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
