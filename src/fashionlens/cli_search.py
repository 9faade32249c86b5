"""`fashionlens embed`, `index` and `search` (part of the CLI): parse, call :mod:`fashionlens.search`, print."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fashionlens.cli_paths import add_input_arguments, photos_of
from fashionlens.config import EXACT_LIMIT, KINDS, whole_number
from fashionlens.errors import FashionlensError



def add_search_commands(commands) -> None:
    """The ``embed``, ``index`` and ``search`` subcommands."""
    embed = commands.add_parser("embed", help="embed photos (L2-normalised pooled features) into Parquet",
                                description="Write one row per photo (path, model, model_sha256, vector: the "
                                            "L2-normalised pooled feature the model's head sees) to a folder of "
                                            "Parquet shards; a rerun skips the photos already there.")
    embed.add_argument("model_dir", type=Path)
    add_input_arguments(embed)
    embed.add_argument("--out", type=Path, required=True, help="output folder, e.g. vectors.parquet")
    embed.add_argument("--batch-size", type=whole_number(1), default=32)
    embed.add_argument("--workers", type=whole_number(0), default=None,
                       help="decoding worker processes (default: as predict's)")

    index = commands.add_parser("index", help="build a FAISS similarity index from embeddings",
                                description=f"Index the vectors `fashionlens embed` wrote: exact inner product up "
                                            f"to {EXACT_LIMIT:,} vectors, inverted lists (IVF) beyond (--kind).")
    index.add_argument("vectors", type=Path, help="the folder `embed --out` wrote")
    index.add_argument("--out", type=Path, required=True, help="index folder")
    index.add_argument("--kind", choices=KINDS, default="auto",
                       help=f"auto (default: flat up to {EXACT_LIMIT:,} vectors, else ivf) | flat (exact) | ivf | hnsw")

    search = commands.add_parser("search", help="find the catalogue photos most similar to a photo",
                                 description="Embed each photo with the index's model and print its k most similar "
                                             "items (cosine similarity).")
    search.add_argument("index", type=Path, help="the folder `fashionlens index --out` wrote")
    search.add_argument("photos", nargs="+", help="query photos")
    search.add_argument("--k", type=whole_number(1), default=10)
    search.add_argument("--model", type=Path, default=None,
                        help="the model directory that embedded the catalogue (default: the index's model by name)")
    search.add_argument("--json", action="store_true", help="print JSON lines")


def run_search_command(args: argparse.Namespace) -> int:
    if args.command == "embed":
        return _embed_command(args)
    if args.command == "index":
        return _index_command(args)
    return _search_command(args)


# Each command imports its services when it runs: building the parser (and `--help`) imports no torch.


def _embed_command(args: argparse.Namespace) -> int:
    from fashionlens.inference import load
    from fashionlens.predictions import OutputError, reuse_freed_memory
    from fashionlens.search import embed_photos

    reuse_freed_memory()

    photos = photos_of(args)
    if photos is None:
        return 2
    paths, problems = photos
    predictor = load(args.model_dir, batch_size=args.batch_size)
    try:
        summary = embed_photos(predictor, paths, args.out, Path(args.model_dir).name, args.batch_size, args.workers)
    except OutputError as error:
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 2
    for line in summary.failed:
        print(f"fashionlens: skipped {line}", file=sys.stderr)
    if summary.already:
        print(f"fashionlens: {args.out}: {summary.already} photos already embedded", file=sys.stderr)
    print(f"wrote {summary.embedded} vectors of {predictor.embedding_dim} to {args.out}", file=sys.stderr)
    lost = sum(1 for problem in problems if getattr(problem, "failed", True))
    return 1 if summary.failed or lost else 0


def _index_command(args: argparse.Namespace) -> int:
    from fashionlens.search import SearchIndex, read_vectors

    import time

    vectors = read_vectors(args.vectors)
    started = time.perf_counter()
    index = SearchIndex.build(vectors, args.kind)
    index.save(args.out)
    print(f"wrote {args.out}: {len(index)} vectors of {index.dim} from {index.model}, {index.meta['kind']} index, "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _search_command(args: argparse.Namespace) -> int:
    from fashionlens.inference import load
    from fashionlens.search import SearchError, SearchIndex, model_dir_for

    index = SearchIndex.load(args.index)
    predictor = load(model_dir_for(index, args.model))
    failed = 0
    for photo in args.photos:
        try:
            matches = index.similar(predictor, [photo], args.k)[0]
        except SearchError:
            raise
        except FashionlensError as error:
            print(f"fashionlens: skipped {error}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"query": str(photo), "matches": [m.to_dict() for m in matches]}, ensure_ascii=False))
        else:
            print(photo)
            for match in matches:
                print(f"  {match.rank:3d}  {match.score:6.3f}  {match.path}")
    return 1 if failed else 0
