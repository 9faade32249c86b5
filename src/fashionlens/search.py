"""Embeddings and "find similar" search over a catalogue of photos.

Three steps, one door each in the CLI (``embed``, ``index``, ``search``), the Python API and the
server (``serve --index``, ``POST /similar``)::

    fashionlens embed MODEL_DIR photos/ --out vectors.parquet   # one row per photo
    fashionlens index vectors.parquet --out catalogue.index
    fashionlens search catalogue.index photo.jpg --k 10

An embedding is the pooled feature the model's head sees (:meth:`Predictor.embed`), L2-normalised,
so the inner product is the cosine similarity. ``vectors.parquet`` is a folder of Parquet shards
written like ``predict --out`` (the same :class:`fashionlens.predictions.ShardWriter`, so a rerun skips
the photos already embedded; columns ``path``, ``file``, ``model``, ``model_sha256``, ``model_dir``,
``vector``). The commands themselves are in :mod:`fashionlens.cli_search`.

The index is FAISS: exact inner product (``IndexFlatIP``) up to :data:`EXACT_LIMIT` vectors,
inverted lists (IVF, about sqrt(N) k-means lists, 8 % of them searched per query) beyond; an HNSW graph on
request (``--kind hnsw``). docs/benchmarks.md, "Similarity search", has the measurements behind
these choices. An index folder holds ``index.faiss``, ``items.parquet`` (id, the path as
given to ``embed``, and the file it resolved to) and ``index.json`` (the model, its weights'
SHA-256, the dimension, the kind and its parameters), so a query is embedded by the same weights.

An index folder is trusted input: :meth:`SearchIndex.load` checks every ``index.json`` value against
its bounds and the arrays ``index.faiss`` declares against the bytes it has (FAISS allocates what a
file declares before reading it), and the IVF ids against the item count, but FAISS's reader is not
hardened against every crafted file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fashionlens.config import EXACT_LIMIT, KINDS, default_predict_workers
from fashionlens.errors import FashionlensError
from fashionlens.fileio import atomic_write_bytes, resolved_file, weights_sha256
from fashionlens.hub import resolve_model_dir
from fashionlens.progress import progress_bar

INDEX_FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.parquet"
META_FILE = "index.json"
# Lists searched per query: 8 % of them, at least 16. On real embeddings recall@10 follows the share
# searched (docs/benchmarks.md, "IVF on real embeddings": 0.57-0.79 at 2 %, 0.93-0.98 at 8 %), so a
# fixed 16 (1.6 % of the 1,000 lists at a million vectors) would lose results; 8 % keeps the same-class
# precision@10 of the exact search there.
IVF_SEARCHED_SHARE = 0.08
IVF_MIN_NPROBE = 16
IVF_TRAIN_PER_LIST = 64  # k-means sample: this many vectors per list (FAISS wants >= 39)
IVF_KMEANS_ITERATIONS = 10  # as measured (docs/benchmarks.md); FAISS's default is 25
IVF_SEED = 0
HNSW_M = 32  # neighbours per node
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
# What an index.json may say (index files are trusted input, but a wrong number there must be a clear
# error, not an allocation of gigabytes): an HNSW candidate list past this is no longer a graph search.
MAX_EF = 65_536
MAX_HNSW_M = 512
MAX_DIM = 65_536
MAX_COUNT = 2**31 - 1  # FAISS's HNSW graph holds its neighbours as int32


class SearchError(FashionlensError):
    """Vectors or an index that cannot be used as asked (the message names the file)."""


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - a dependency; say how to get it
        raise SearchError("similarity search needs FAISS: pip install faiss-cpu") from None
    return faiss


# --------------------------------------------------------------------------------------------- embed


@dataclass
class EmbedSummary:
    embedded: int  # this run
    already: int  # found in the output folder and skipped
    failed: list[str]  # one line per photo that could not be read


def embed_photos(predictor, paths: Sequence[str | Path], out: str | Path, model_name: str,
                 batch_size: int = 32, workers: int | None = None, progress: bool = True) -> EmbedSummary:
    """Embed ``paths`` with ``predictor`` into the Parquet folder ``out``, skipping photos already there.

    Photos are decoded and embedded in batches (the same loader and defaults as ``predict``); the
    shards are written whole, so a crash loses at most the shard being written.
    Refuses a folder that already holds another model's vectors.
    """
    # here: the embed/index/search parser reads this module's constants, and needs no torch
    from fashionlens.predictions import ShardWriter, loader

    out = Path(out)
    sha = weights_sha256(predictor.model_dir) if predictor.model_dir else ""
    model_dir = str(Path(predictor.model_dir).resolve()) if predictor.model_dir else ""
    writer = ShardWriter(out, {"kind": "vectors", "model": model_name, "model_sha256": sha}, schema=None)
    todo = [path for path in paths if resolved_file(path) not in writer.done]
    if workers is None:
        workers = default_predict_workers()
    failed: list[str] = []
    bar = progress_bar(total=len(todo), desc="embedding", unit="photo", disable=not progress or len(todo) <= 4)
    try:
        for batch in (loader(todo, predictor, batch_size, workers) if todo else []):
            good = [i for i, error in enumerate(batch["error"]) if not error]
            failed += [error for error in batch["error"] if error]
            if good:
                vectors = predictor.embed_preprocessed(batch["image"][good])
                for row, i in enumerate(good):
                    if not np.all(np.isfinite(vectors[row])):
                        failed.append(f"{batch['path'][i]}: the model gave a non-finite embedding; its weights "
                                      f"are broken")
                        continue
                    path = batch["path"][i]
                    writer.add({"path": path, "file": resolved_file(path), "model": model_name, "model_sha256": sha,
                                "model_dir": model_dir, "vector": vectors[row]})
            bar.update(len(batch["path"]))
        writer.flush()
    finally:
        bar.close()
        writer.close()
    return EmbedSummary(embedded=writer.written, already=len(paths) - len(todo), failed=failed)


@dataclass
class Vectors:
    """The rows of an embeddings folder."""

    paths: list[str]
    vectors: np.ndarray  # (N, D) float32, unit length
    model: str
    model_sha256: str
    model_dir: str  # where the model directory was when it embedded them (absolute)


def read_vectors(folder: str | Path) -> Vectors:
    """Every row of an ``embed`` output folder (or a single Parquet file), checked: one model, one
    dimension, finite unit vectors, each path once."""
    folder = Path(folder)
    shards = [folder] if folder.is_file() else sorted(folder.glob("part-*.parquet"))
    if not shards:
        raise SearchError(f"{folder}: no embeddings (expected the folder `fashionlens embed ... --out` wrote, "
                          f"holding part-*.parquet files)")
    tables = []
    for shard in shards:
        try:
            tables.append(pq.read_table(shard, columns=["path", "model", "model_sha256", "model_dir", "vector"]))
        except Exception as error:  # noqa: BLE001
            raise SearchError(f"{shard}: cannot read it as embeddings (columns path, model, model_sha256, "
                              f"model_dir, vector) ({type(error).__name__}: {error})") from None
    table = pa.concat_tables(tables)
    models = set(zip(table.column("model").to_pylist(), table.column("model_sha256").to_pylist()))
    if len(models) != 1:
        found = ", ".join(sorted(f"{name} ({digest[:12]})" for name, digest in models)) or "no rows"
        raise SearchError(f"{folder}: expected the vectors of one model, found {found}")
    (model, sha), = models
    paths = table.column("path").to_pylist()
    column = table.column("vector").combine_chunks()
    lengths = set(column.value_lengths().to_pylist())
    if len(lengths) != 1:
        raise SearchError(f"{folder}: vectors of several lengths {sorted(lengths)}")
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(paths), -1)
    if not np.all(np.isfinite(vectors)):
        bad = paths[int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])]
        raise SearchError(f"{folder}: the vector of {bad} is not finite")
    norms = np.linalg.norm(vectors, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-3):
        bad = paths[int(np.argmax(np.abs(norms - 1.0)))]
        raise SearchError(f"{folder}: the vector of {bad} is not unit length (norm {norms.max():.4f}); "
                          f"vectors come from `fashionlens embed`")
    if len(set(paths)) != len(paths):
        seen: set[str] = set()
        dupe = next(p for p in paths if p in seen or seen.add(p))
        raise SearchError(f"{folder}: {dupe} appears more than once")
    return Vectors(paths, vectors, model, sha, table.column("model_dir")[0].as_py())


# --------------------------------------------------------------------------------------------- index


def ivf_lists(count: int) -> int:
    """IVF lists for ``count`` vectors: about sqrt(count) (1,000 at a million), at least 16."""
    return max(16, int(round(np.sqrt(count))))


def ivf_probes(lists: int) -> int:
    """Lists searched per query out of ``lists``: :data:`IVF_SEARCHED_SHARE` of them, at least
    :data:`IVF_MIN_NPROBE` (all of them when there are fewer)."""
    return min(lists, max(IVF_MIN_NPROBE, int(np.ceil(IVF_SEARCHED_SHARE * lists))))


def build_faiss_index(vectors: np.ndarray, kind: str = "auto", hnsw_m: int = HNSW_M,
                      ef_construction: int = HNSW_EF_CONSTRUCTION, ef_search: int = HNSW_EF_SEARCH,
                      nlist: int | None = None, nprobe: int | None = None):
    """A FAISS inner-product index over unit ``vectors`` ``(N, D)``: ``"flat"`` (exact), ``"ivf"``
    (inverted lists over ``nlist`` k-means centres, default :func:`ivf_lists`; ``nprobe`` of them
    searched, default :func:`ivf_probes`),
    ``"hnsw"`` (a graph), or ``"auto"`` (flat up to :data:`EXACT_LIMIT` vectors, IVF past it).
    Returns (index, kind, parameters)."""
    faiss = _faiss()
    if kind not in KINDS:
        raise SearchError(f"index kind must be one of {KINDS}, got {kind!r}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if kind == "auto":
        kind = "flat" if n <= EXACT_LIMIT else "ivf"
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "ivf":
        nlist = min(ivf_lists(n) if nlist is None else int(nlist), n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.niter = IVF_SEED, IVF_KMEANS_ITERATIONS
        # A random sample, not the first rows: vectors usually come in folder (class) order.
        sample = np.random.default_rng(IVF_SEED).permutation(n)[:min(n, IVF_TRAIN_PER_LIST * nlist)]
        index.train(vectors[np.sort(sample)])
        index.nprobe = ivf_probes(nlist) if nprobe is None else min(int(nprobe), nlist)
        params = {"nlist": int(nlist), "nprobe": int(index.nprobe)}
    else:
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        index.hnsw.efSearch = int(ef_search)
        params = {"m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    index.add(vectors)
    return index, kind, params


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """Every value of an index.json that loading or searching uses, with its bounds: one line naming the file."""
    def refuse(key: str, expected: str, found: Any) -> SearchError:
        return SearchError(f"{path}: {key!r}: expected {expected}, found {json.dumps(found)[:60]}; rebuild the index "
                           f"with `fashionlens index`")

    def whole(value: Any, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    for key in ("model", "model_sha256"):
        if not isinstance(meta.get(key), str):
            raise refuse(key, "a string", meta.get(key))
    if meta.get("kind") not in KINDS[1:]:
        raise refuse("kind", " or ".join(repr(kind) for kind in KINDS[1:]), meta.get("kind"))
    for key, high in (("dim", MAX_DIM), ("count", MAX_COUNT)):
        if not whole(meta.get(key), 1, high):
            raise refuse(key, f"an integer from 1 to {high}", meta.get(key))
    params = meta.get("params", {})
    if not isinstance(params, dict):
        raise refuse("params", "an object of the index's parameters", params)
    bounds = {"flat": {}, "ivf": {"nlist": meta["count"], "nprobe": params.get("nlist")},
              "hnsw": {"m": MAX_HNSW_M, "ef_construction": MAX_EF, "ef_search": MAX_EF}}[meta["kind"]]
    for key, value in params.items():
        if key not in bounds:
            expected = f"one of {', '.join(sorted(bounds))}" if bounds else "no parameters"
            raise refuse(f"params.{key}", f"{expected} for a {meta['kind']} index", value)
        high = bounds[key] if whole(bounds[key], 1, MAX_COUNT) else meta["count"]
        if not whole(value, 1, high):
            raise refuse(f"params.{key}", f"an integer from 1 to {high}", value)
    meta["params"] = params


class _FaissLayout:
    """The arrays a FAISS file declares, checked against the bytes it has before FAISS reads it.

    FAISS allocates each array at the size the file declares and only then reads it, so 109 bytes
    declaring a billion floats allocate 4 GB before the read fails. This walks the three layouts
    ``fashionlens index`` writes (flat, HNSW-flat, IVF-flat; FAISS's ``write_index`` order) and
    checks the vector count and dimension against index.json and the IVF ids against the count.
    """

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.at = data, path, 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise SearchError(f"{self.path}: declares {what} of {size} bytes at byte {self.at}, but the file has "
                              f"{len(self.data)} bytes: a truncated or corrupt FAISS index; rebuild it with "
                              f"`fashionlens index`")
        self.at += size
        return self.data[self.at - size:self.at]

    def number(self, form: str, what: str) -> int:
        return struct.unpack(form, self.take(struct.calcsize(form), what))[0]

    def array(self, item_size: int, what: str) -> bytes:
        count = self.number("<Q", f"the length of {what}")
        return self.take(count * item_size, f"{what} ({count} items)")

    def header(self, count: int, dim: int) -> bytes:
        fourcc = self.take(4, "the index type")
        d, ntotal = self.number("<i", "the dimension"), self.number("<q", "the vector count")
        self.take(17, "the header")
        if self.number("<i", "the metric") > 1:
            self.take(4, "the metric argument")
        if (d, ntotal) != (dim, count):
            raise SearchError(f"{self.path}: holds {ntotal} vectors of {d} dimensions where {META_FILE} says {count} "
                              f"of {dim}; rebuild the index with `fashionlens index`")
        return fourcc

    def flat(self, count: int, dim: int) -> None:
        if self.header(count, dim) != b"IxFI":
            raise SearchError(f"{self.path}: not the flat inner-product index {META_FILE} describes")
        floats = self.number("<Q", "the length of the vectors")
        if floats != count * dim:
            raise SearchError(f"{self.path}: declares {floats} floats of vectors where {count} x {dim} are expected; "
                              f"rebuild the index with `fashionlens index`")
        self.take(floats * 4, "the vectors")

    def check(self, kind: str, count: int, dim: int) -> None:
        if kind == "flat":
            self.flat(count, dim)
        elif kind == "hnsw":
            if self.header(count, dim) != b"IHNf":
                raise SearchError(f"{self.path}: not the HNSW index {META_FILE} describes")
            for size, what in ((8, "the level probabilities"), (4, "the neighbour counts"), (4, "the levels"),
                               (8, "the offsets"), (4, "the neighbours")):
                self.array(size, what)
            self.take(20, "the graph's entry point and parameters")
            self.flat(count, dim)
        else:
            if self.header(count, dim) != b"IwFl":
                raise SearchError(f"{self.path}: not the IVF index {META_FILE} describes")
            nlist = self.number("<Q", "the number of lists")
            self.take(8, "nprobe")
            if not 1 <= nlist <= count:
                raise SearchError(f"{self.path}: {nlist} lists for {count} vectors")
            self.flat(nlist, dim)
            if self.number("<B", "the direct map type") not in (0, 1):
                raise SearchError(f"{self.path}: a direct map `fashionlens index` does not write")
            self.array(8, "the direct map")
            if self.take(4, "the inverted lists") != b"ilar" or self.number("<Q", "the number of lists") != nlist:
                raise SearchError(f"{self.path}: not the inverted lists of {nlist} lists `fashionlens index` writes")
            code_size = self.number("<Q", "the code size")
            layout = self.take(4, "the list layout")
            sizes = np.frombuffer(self.array(8, "the list sizes"), dtype="<u8")
            if layout == b"sprs":
                sizes = sizes[1::2]
            if layout not in (b"full", b"sprs") or int(sizes.sum(dtype=np.float64)) != count:
                raise SearchError(f"{self.path}: its inverted lists hold {int(sizes.sum(dtype=np.float64))} vectors "
                                  f"where {META_FILE} says {count}; rebuild the index with `fashionlens index`")
            for size in sizes.tolist():
                self.take(size * code_size, "a list's vectors")
                ids = np.frombuffer(self.take(size * 8, "a list's ids"), dtype="<i8")
                if ids.size and (ids.min() < 0 or ids.max() >= count):
                    bad = int(ids[(ids < 0) | (ids >= count)][0])
                    raise SearchError(f"{self.path}: holds the id {bad}, outside 0..{count - 1} (the items of "
                                      f"{ITEMS_FILE}); rebuild the index with `fashionlens index`")


@dataclass
class Match:
    rank: int
    id: int
    path: str
    score: float  # cosine similarity

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "path": self.path, "score": self.score}


class SearchIndex:
    """A saved index folder: FAISS index, the items' paths and what made the vectors."""

    def __init__(self, index, paths: Sequence[str], files: Sequence[str], meta: dict[str, Any],
                 folder: Path | None = None):
        self.index = index
        self.paths = list(paths)
        self.files = list(files)
        self.meta = dict(meta)
        self.folder = folder

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def model(self) -> str:
        return str(self.meta["model"])

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def build(cls, vectors: Vectors, kind: str = "auto", base: Path | None = None) -> SearchIndex:
        """Index ``vectors``; relative paths are resolved against ``base`` (the current folder)."""
        index, kind, params = build_faiss_index(vectors.vectors, kind)
        base = Path.cwd() if base is None else Path(base)
        files = [str(path if Path(path).is_absolute() else (base / path).resolve()) for path in vectors.paths]
        faiss = _faiss()
        meta = {"format_version": INDEX_FORMAT_VERSION, "model": vectors.model, "model_sha256": vectors.model_sha256,
                "model_dir": vectors.model_dir,
                "dim": int(vectors.vectors.shape[1]), "count": len(vectors.paths), "kind": kind, "params": params,
                "metric": "inner product of unit vectors (cosine)", "faiss": faiss.__version__,
                "built": datetime.now(UTC).isoformat(timespec="seconds")}
        return cls(index, vectors.paths, files, meta)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SearchError(f"{folder}: exists and is not a folder (an index is a folder)")
        folder.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        atomic_write_bytes(folder / INDEX_FILE, faiss.serialize_index(self.index).tobytes())
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"id": list(range(len(self.paths))), "path": self.paths, "file": self.files}), sink)
        atomic_write_bytes(folder / ITEMS_FILE, sink.getvalue().to_pybytes())
        # index.json last: a folder with it is complete.
        atomic_write_bytes(folder / META_FILE, (json.dumps(self.meta, indent=2) + "\n").encode())
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SearchIndex:
        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise SearchError(f"{folder}: not an index (no {META_FILE}); build one with "
                              f"`fashionlens index VECTORS --out {folder}`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SearchError(f"{meta_path}: not valid JSON ({error})") from None
        if not isinstance(meta, dict) or meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise SearchError(f"{meta_path}: expected format_version {INDEX_FORMAT_VERSION}, found "
                              f"{meta.get('format_version') if isinstance(meta, dict) else meta!r}")
        _check_meta(meta, meta_path)
        faiss = _faiss()
        try:
            data = (folder / INDEX_FILE).read_bytes()
        except OSError as error:
            raise SearchError(f"{folder / INDEX_FILE}: cannot read the FAISS index ({error.strerror})") from None
        _FaissLayout(data, folder / INDEX_FILE).check(meta["kind"], meta["count"], meta["dim"])
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as error:
            raise SearchError(f"{folder / INDEX_FILE}: cannot read the FAISS index ({error})") from None
        try:
            items = pq.read_table(folder / ITEMS_FILE, columns=["id", "path", "file"])
        except Exception as error:  # noqa: BLE001
            raise SearchError(f"{folder / ITEMS_FILE}: cannot read the items ({type(error).__name__}: "
                              f"{error})") from None
        if not (index.ntotal == items.num_rows == meta["count"]) or index.d != meta["dim"]:
            raise SearchError(f"{folder}: the parts disagree: {INDEX_FILE} holds {index.ntotal} vectors of "
                              f"{index.d}, {ITEMS_FILE} {items.num_rows} items, {META_FILE} says {meta['count']} "
                              f"of {meta['dim']}; rebuild it with `fashionlens index`")
        if items.column("id").to_pylist() != list(range(items.num_rows)):
            raise SearchError(f"{folder / ITEMS_FILE}: ids are not 0..{items.num_rows - 1} in order")
        return cls(index, items.column("path").to_pylist(), items.column("file").to_pylist(), meta, folder)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Match]]:
        """The ``k`` most similar items of each query vector ``(N, D)`` (or one ``(D,)``), best first."""
        queries = np.atleast_2d(np.ascontiguousarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise SearchError(f"query vectors have {queries.shape[1]} dimensions, the index {self.dim} "
                              f"(built from {self.model})")
        k = max(1, min(int(k), len(self.paths)))
        if self.meta["kind"] == "hnsw":
            # The graph search keeps efSearch candidates: never fewer than the k asked for.
            faiss = _faiss()
            ef = max(int(self.meta["params"].get("ef_search", HNSW_EF_SEARCH)), k)
            scores, ids = self.index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=ef))
        elif self.meta["kind"] == "ivf":
            faiss = _faiss()
            nprobe = int(self.meta["params"].get("nprobe", self.index.nprobe))
            scores, ids = self.index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        else:
            scores, ids = self.index.search(queries, k)
        return [[Match(rank, int(i), self.paths[int(i)], float(s))
                 for rank, (i, s) in enumerate(((i, s) for i, s in zip(row_ids, row_scores) if i >= 0), start=1)]
                for row_ids, row_scores in zip(ids, scores)]

    def check_model(self, predictor) -> None:
        """SearchError unless ``predictor`` holds the weights that made the index's vectors."""
        sha = weights_sha256(predictor.model_dir) if predictor.model_dir else None
        if sha != self.meta["model_sha256"]:
            name = Path(predictor.model_dir).name if predictor.model_dir else "this predictor"
            raise SearchError(f"{self.folder or 'the index'}: built from the vectors of {self.model} (weights "
                              f"{self.meta['model_sha256'][:12]}), but the model is {name} (weights "
                              f"{(sha or 'unknown')[:12]}): a query must be embedded by the same weights")

    def similar(self, predictor, images, k: int = 10) -> list[list[Match]]:
        """Embed photos with ``predictor`` (the index's model) and search: one list of matches each."""
        self.check_model(predictor)
        return self.search(predictor.embed(list(images)), k)


def model_dir_for(index: SearchIndex, model: str | Path | None = None) -> Path:
    """The model directory to embed queries with: ``model`` if given, else the one that embedded the
    catalogue if it is still where it was, else the index's model by name (a released model)."""
    if model is None:
        recorded = index.meta.get("model_dir")
        if isinstance(recorded, str) and recorded and (Path(recorded) / "model.safetensors").is_file():
            return Path(recorded)
        model = index.model
    return resolve_model_dir(model)
