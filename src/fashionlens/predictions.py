"""Predictions at catalogue size: photos in batches, one Parquet row per photo, and a folder that keeps them.

The service behind ``fashionlens predict`` and ``embed`` (the doors collect the paths and print), and
the callable class a Ray Data pipeline maps over its batches::

    import ray
    from fashionlens.predictions import PredictPhotos
    rows = ray.data.from_items([{"path": p} for p in paths]).map_batches(
        PredictPhotos, fn_constructor_kwargs={"model": "garment-tagger-lite0"}, concurrency=4, batch_size=16)

A path is a local file or an fsspec URI (``s3://...``, ``gs://...``, ``https://...``, ``memory://...``)
read through fsspec with the backend the user installed. A photo that cannot be read is an error
(its path and why), never the end of the run.

An output folder (``predict --out preds.parquet``) holds ``part-RRR-NNNNN.parquet`` shards, each
written whole under a temporary name and renamed, and ``_fashionlens.json``: which model (name and
weights' SHA-256) and options wrote it. A rerun of the same model skips the photos already there
(matched by resolved path); another model, other options, a file fashionlens did not write, or a
second run writing the same rank at the same time are refused. Names starting with ``_`` or ``.``
are skipped by Parquet readers (pyarrow, Spark), so ``pq.read_table(folder)`` reads the rows only.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from fashionlens.errors import DataError, FashionlensError
from fashionlens.inference import (
    ClothingPrediction,
    Prediction,
    Predictor,
    StylePrediction,
    _pil_to_chw,
    load,
    read_image_bytes,
    to_uint8_chw,
)
from fashionlens.fileio import atomic_write_bytes, atomic_write_json, is_uri, resolved_file

if TYPE_CHECKING:
    from fashionlens.data.transforms import ImagePreprocess

ROWS_PER_SHARD = 10_000
RECORD_FILE = "_fashionlens.json"
SHARD_NAME = re.compile(r"part-(\d{3})-(\d{5})\.parquet")
# Left behind by a crash: a shard or the record being written (atomic_write_bytes), a rank's lock.
OWN_LEFTOVERS = re.compile(r"\.(part-\d{3}-\d{5}\.parquet|_fashionlens\.json)\.[^/]+\.tmp|\.lock-\d{3}")
# A photo read through fsspec is read whole; no photo fashionlens can decode (40 MP) is larger.
MAX_URI_BYTES = 512 << 20

# The columns of a `predict --out` row, the same in every shard whatever its rows hold.
PREDICTION_SCHEMA = pa.schema([
    ("path", pa.string()), ("file", pa.string()), ("model", pa.string()), ("task", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("labels", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float64())), ("predicted", pa.list_(pa.string())), ("category", pa.string()),
    ("category_score", pa.float64()), ("attributes", pa.string()), ("attribute_groups", pa.string()),
    ("landmarks", pa.string()),
])


class OutputError(FashionlensError):
    """An output folder that cannot be written as asked; the message names it and says what to do."""


# ------------------------------------------------------------------------------------------ the photos


def read_uri(uri: str) -> bytes:
    """The bytes at an fsspec URI; DataError naming it (no backend, no such file, too large)."""
    try:
        import fsspec
    except ImportError:
        raise DataError("reading a URI needs fsspec: pip install fsspec (and its backend, e.g. s3fs)",
                        path=uri) from None
    try:
        with fsspec.open(uri, "rb") as stream:
            data = stream.read(MAX_URI_BYTES + 1)
    except ImportError as error:  # fsspec knows the protocol, its backend package is not installed
        raise DataError(f"no fsspec backend for it ({error})", path=uri) from None
    except FileNotFoundError:
        raise DataError("image file not found (no such file)", path=uri) from None
    except (OSError, ValueError) as error:  # fsspec backends raise both, and unknown protocols ValueError
        raise DataError(f"cannot read it ({type(error).__name__}: {error})", path=uri) from None
    if len(data) > MAX_URI_BYTES:
        raise DataError(f"larger than {MAX_URI_BYTES >> 20} MiB: not a photo fashionlens can decode", path=uri)
    return data


def read_photo(path: str | Path) -> torch.Tensor:
    """An upright uint8 ``(3, H, W)`` photo from a local path or a URI; DataError naming it otherwise."""
    if is_uri(path):
        return _pil_to_chw(read_image_bytes(read_uri(path), path))
    image, _ = to_uint8_chw(path)
    return image


class PhotoDataset(Dataset):
    """Photos decoded (the project's one decoder) and resized, still uint8; a bad file becomes an error
    row. :class:`NormaliseBatch` finishes the evaluation transform once per batch."""

    def __init__(self, paths: Sequence[str | Path], preprocess: ImagePreprocess):
        self.paths = [str(path) for path in paths]
        self.preprocess = preprocess
        self.size = preprocess.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.read(self.paths[index])

    def read(self, path: str) -> dict[str, Any]:
        try:
            image = read_photo(path)
        except FashionlensError as error:
            return {"image": torch.zeros(3, *self.size, dtype=torch.uint8), "width": 0, "height": 0, "path": path,
                    "error": str(error)}
        return {"image": self.preprocess.resize(image), "width": int(image.shape[-1]),
                "height": int(image.shape[-2]), "path": path, "error": ""}


class NormaliseBatch:
    """The DataLoader's ``collate_fn``: the default collation, then the batch's uint8 photos to the
    model's normalised floats (where the batch is collated: a worker, or the main process)."""

    def __init__(self, preprocess: ImagePreprocess):
        self.preprocess = preprocess

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(rows)
        batch["image"] = self.preprocess.normalise(batch["image"])
        return batch


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel after
    every batch: no ``mmap`` for large blocks (``M_MMAP_MAX`` 0: they come from the heap too) and
    no trimming of the heap.

    A forward pass allocates and frees the same activation tensors batch after batch. By default
    each large one is a fresh ``mmap`` whose pages the kernel faults in and zeroes again; a mmap
    threshold raised to its maximum (32 MiB) is not enough, MobileNetV2's widest activations at
    batch 16 are 77 MB. On the 2-core CPU this made ``fashionlens predict`` about 1.7x faster, and
    the model inside it as fast as the model alone (docs/benchmarks.md, "predict"). Called by the
    batch commands (``predict``, ``embed``), which own their process: the memory of their largest
    batch stays with the process until it ends. A no-op where the C library is not glibc. Returns
    whether it took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1


def loader(paths: Sequence[str | Path], predictor: Predictor, batch_size: int, workers: int) -> DataLoader:
    """Batches of ``paths`` through the predictor's evaluation transform: ``image`` (B, 3, S, S) float,
    ``width``/``height`` (the photo's own size), ``path`` and ``error`` ("" or why it could not be read)."""
    preprocess = predictor.image_preprocess
    return DataLoader(PhotoDataset(paths, preprocess), batch_size=batch_size, num_workers=workers,
                      collate_fn=NormaliseBatch(preprocess), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def predict_batch(predictor: Predictor, batch: dict[str, Any], top_k: int, threshold,
                  explain: Sequence[str] | None = None) -> tuple[list, list, list[str]]:
    """(predictions, explanations, errors) of one collated batch; with ``explain`` (label names or
    "top") the maps of those labels come from the same forward pass, else no explanations."""
    good = [i for i, error in enumerate(batch["error"]) if not error]
    errors = [error for error in batch["error"] if error]
    if not good:
        return [], [], errors
    sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in good]
    images, paths = batch["image"][good], [batch["path"][i] for i in good]
    if not explain:
        return predictor.predict_preprocessed(images, sizes, paths, top_k=top_k, threshold=threshold), [], errors
    explanations = predictor.explain_preprocessed(images, sizes, paths, labels=explain, top_k=top_k, threshold=threshold)
    return [explanation.prediction for explanation in explanations], explanations, errors


def finite(result: Prediction) -> bool:
    """False when the model gave a NaN or infinite score (broken weights): such a row is never written."""
    if isinstance(result, StylePrediction):
        labels = result.labels
    else:
        labels = result.category_top_k + [label for group in result.attributes_by_type.values() for label in group]
    return all(np.isfinite(label.score) for label in labels)


# --------------------------------------------------------------------------------------- output rows


def parquet_row(result: Prediction, model: str) -> dict[str, Any]:
    """One photo's Parquet row: flat columns for the common questions, JSON for the nested rest."""
    row: dict[str, Any] = {"path": result.source, "file": resolved_file(result.source), "model": model,
                           "task": result.task, "width": result.width, "height": result.height}
    if isinstance(result, StylePrediction):
        category = result.category  # a garment tagger's garment; None for a style model
        row.update(labels=[label.name for label in result.labels], scores=[label.score for label in result.labels],
                   predicted=[label.name for label in result.predicted],
                   category=category.name if category else None, category_score=category.score if category else None,
                   attributes=None, attribute_groups=None, landmarks=None)
    else:
        assert isinstance(result, ClothingPrediction)
        top = result.category_top_k[0] if result.category_top_k else None
        row.update(labels=[label.name for labels in result.attributes_by_type.values() for label in labels],
                   scores=[label.score for labels in result.attributes_by_type.values() for label in labels],
                   predicted=[label.name for labels in result.attributes_by_type.values() for label in labels
                              if label.predicted],
                   category=top.name if top else None, category_score=top.score if top else None,
                   attributes=json.dumps({kind: [label.to_dict() for label in labels]
                                          for kind, labels in result.attributes_by_type.items()}),
                   attribute_groups=json.dumps(result.to_dict()["attribute_groups"]) if result.attribute_groups
                   else None,
                   landmarks=json.dumps([landmark.to_dict() for landmark in result.landmarks]))
    return row


# ------------------------------------------------------------------------------------ the output folder


def _describe(record: dict[str, Any]) -> str:
    text = f"{record.get('model')} (weights {str(record.get('model_sha256'))[:12]}"
    options = ", ".join(f"{key} {value}" for key, value in record.items()
                        if key not in ("kind", "model", "model_sha256", "format"))
    return text + (f", {options})" if options else ")")


def check_output_folder(folder: Path, record: dict[str, Any]) -> None:
    """Refuse a folder that holds anything fashionlens did not write, or rows of another model or other
    options (``record``); write ``_fashionlens.json`` into a new one. Never renames or deletes."""
    names = sorted(entry.name for entry in os.scandir(folder))
    foreign = [name for name in names if name != RECORD_FILE and not SHARD_NAME.fullmatch(name)
               and not OWN_LEFTOVERS.fullmatch(name)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputError(f"{folder}: holds {shown}, which fashionlens did not write (an output folder holds only "
                          f"{RECORD_FILE} and part-RRR-NNNNN.parquet shards): give --out a new folder")
    path = folder / RECORD_FILE
    if not path.exists():
        if any(SHARD_NAME.fullmatch(name) for name in names):
            raise OutputError(f"{folder}: holds shards but no {RECORD_FILE} saying which model wrote them: give "
                              f"--out a new folder")
        atomic_write_json(path, record)
        return
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OutputError(f"{path}: cannot read it ({error}): give --out a new folder") from None
    if found != record:
        raise OutputError(f"{folder}: holds the {record.get('kind', 'rows')} of {_describe(found)}, not of "
                          f"{_describe(record)}: give each model and option its own --out folder")


def written_files(folder: str | Path) -> set[str]:
    """The resolved files of the rows in a folder's shards. OutputError naming a shard that cannot be
    read: fashionlens writes shards whole, so another program wrote or changed it."""
    done: set[str] = set()
    for shard in sorted(p for p in Path(folder).glob("part-*.parquet") if SHARD_NAME.fullmatch(p.name)):
        try:
            done.update(pq.read_table(shard, columns=["file"]).column("file").to_pylist())
        except (pa.ArrowException, OSError, KeyError) as error:
            raise OutputError(f"{shard}: cannot read it as a fashionlens shard ({type(error).__name__}: {error}); "
                              f"fashionlens writes shards whole, so something else wrote or changed it: move it out "
                              f"of {Path(folder)} and rerun") from None
    return done


class ShardWriter:
    """The Parquet shards of one rank in an output folder, written whole: ``part-RRR-NNNNN.parquet`` via a
    temporary file.

    Opening one locks the rank (a second run writing the same folder and rank is refused while the
    first runs), checks the folder (:func:`check_output_folder`) and reads ``done``, the resolved files
    already written. A write that fails (a full disk) raises OutputError saying what is kept and
    which photo the lost rows start at.
    """

    def __init__(self, folder: str | Path, record: dict[str, Any], rank: int = 0,
                 rows_per_shard: int | None = None, schema: pa.Schema | None = PREDICTION_SCHEMA):
        self.folder = Path(folder)
        self.rank = rank
        self.rows_per_shard = rows_per_shard or ROWS_PER_SHARD
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"{self.folder}: cannot create the output folder ({error.strerror})") from None
        self._lock: int | None = os.open(self.folder / f".lock-{rank:03d}", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise OutputError(f"{self.folder}: another fashionlens run is writing there (rank {rank}); wait for it "
                              f"to finish (a rerun then skips what it wrote) or give another --out") from None
        try:
            check_output_folder(self.folder, record)
            self.done = written_files(self.folder)
        except BaseException:
            self.close()
            raise
        taken = [int(SHARD_NAME.fullmatch(p.name).group(2)) for p in self.folder.glob(f"part-{rank:03d}-*.parquet")
                 if SHARD_NAME.fullmatch(p.name)]
        self.next_index = max(taken, default=-1) + 1
        self.written = 0  # rows this run

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self.rows, schema=self.schema), sink)
        name = f"part-{self.rank:03d}-{self.next_index:05d}.parquet"
        try:
            atomic_write_bytes(self.folder / name, sink.getvalue().to_pybytes())
        except OSError as error:
            lost, first = len(self.rows), self.rows[0]["path"]
            self.rows = []
            why = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error)
            raise OutputError(f"{self.folder / name}: cannot write it ({why}); stopped at {first}: the {self.written} "
                              f"rows written before it are kept, its {lost} rows are not; free space and rerun the "
                              f"same command to predict the rest") from None
        self.next_index += 1
        self.written += len(self.rows)
        self.rows = []

    def close(self) -> None:
        """Release the rank's lock (rows not flushed are dropped: call :meth:`flush` first)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


# ----------------------------------------------------------------------------------------- Ray Data


class PredictPhotos:
    """A callable class for ``ray.data.Dataset.map_batches``: one model per actor, on the GPU when the
    actor has one (ask for it with ``num_gpus=1``), else the CPU.

    Takes batches with a ``path`` column (local paths the actors can read, or fsspec URIs) and returns a
    pyarrow table: the columns of ``predict --out`` (:data:`PREDICTION_SCHEMA`, the same values) and
    ``error``, null for a photo predicted and why for one that could not be (its other columns null),
    so every input comes out exactly once.

    ``decode_threads``: photos of a batch decoded at once (Pillow and the resize release the GIL). On a
    CPU actor the model needs the cores too, so 1; on a GPU actor give it the CPUs you reserve for it
    (``num_cpus``), or decoding in one thread bounds the GPU.
    """

    def __init__(self, model: str | Path, top_k: int = 5, threshold: float | str = "auto",
                 runtime: str = "torch", device: str | None = None, model_name: str | None = None,
                 decode_threads: int = 1, balanced_groups: bool = False):
        device = device or ("cuda" if torch.cuda.is_available() and runtime == "torch" else "cpu")
        self.predictor = load(model, runtime=runtime, device=device, balanced_groups=balanced_groups)
        self.photos = PhotoDataset([], self.predictor.image_preprocess)
        self.collate = NormaliseBatch(self.predictor.image_preprocess)
        self.top_k, self.threshold = top_k, threshold
        self.model_name = model_name or Path(model).name
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        paths = [str(path) for path in batch["path"]]
        rows = list(self.pool.map(self.photos.read, paths)) if self.pool else [self.photos.read(p) for p in paths]
        results, _, _ = predict_batch(self.predictor, self.collate(rows), self.top_k, self.threshold)
        by_path = {result.source: result for result in results}
        out = []
        for row in rows:
            result = by_path.get(row["path"])
            if result is None:
                out.append({"path": row["path"], "error": row["error"]})
            elif not finite(result):
                out.append({"path": row["path"], "error": f"{row['path']}: the model gave non-finite scores (NaN or "
                                                          f"inf); its weights are broken"})
            else:
                out.append({**parquet_row(result, self.model_name), "error": None})
        return pa.Table.from_pylist(out, schema=PREDICTION_SCHEMA.append(pa.field("error", pa.string())))
