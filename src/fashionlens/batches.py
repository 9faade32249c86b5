"""Photos in batches for the batch commands (``predict``, ``embed``): the loader that decodes and
preprocesses them, and the resumable Parquet shards their rows go to."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from fashionlens.data.transforms import ImagePreprocess
from fashionlens.errors import FashionlensError
from fashionlens.fileio import atomic_write_bytes
from fashionlens.inference import Predictor, to_uint8_chw

ROWS_PER_SHARD = 10_000


class PhotoDataset(Dataset):
    """Photos decoded (the project's one decoder) and resized, still uint8; a bad file becomes an error
    row. :class:`NormaliseBatch` finishes the evaluation transform once per batch."""

    def __init__(self, paths: Sequence[Path], preprocess: ImagePreprocess):
        self.paths = [str(path) for path in paths]
        self.preprocess = preprocess
        self.size = preprocess.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        try:
            image, _ = to_uint8_chw(path)
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


def loader(paths: Sequence[Path], predictor: Predictor, batch_size: int, workers: int) -> DataLoader:
    """Batches of ``paths`` through the predictor's evaluation transform: ``image`` (B, 3, S, S) float,
    ``width``/``height`` (the photo's own size), ``path`` and ``error`` ("" or why it could not be read)."""
    preprocess = predictor.image_preprocess
    return DataLoader(PhotoDataset(paths, preprocess), batch_size=batch_size, num_workers=workers,
                      collate_fn=NormaliseBatch(preprocess), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


class ShardWriter:
    """Parquet shards of one rank, written whole: ``part-RRR-NNNNN.parquet`` via a temporary file."""

    def __init__(self, folder: Path, rank: int = 0, rows_per_shard: int = ROWS_PER_SHARD):
        self.folder = Path(folder)
        self.rank = rank
        self.rows_per_shard = rows_per_shard
        self.rows: list[dict[str, Any]] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        taken = [int(p.stem.split("-")[2]) for p in self.folder.glob(f"part-{rank:03d}-*.parquet")]
        self.next_index = max(taken, default=-1) + 1
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self.rows), sink)
        name = f"part-{self.rank:03d}-{self.next_index:05d}.parquet"
        atomic_write_bytes(self.folder / name, sink.getvalue().to_pybytes())
        self.next_index += 1
        self.written += len(self.rows)
        self.rows = []


def already_written(folder: Path) -> set[str]:
    """Paths of the photos in a Parquet output folder's complete shards (temporary files are ignored)."""
    done: set[str] = set()
    for shard in sorted(Path(folder).glob("part-*.parquet")):
        try:
            done.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
        except Exception as error:  # noqa: BLE001 - an unreadable shard is redone, loudly
            print(f"fashionlens: {shard} is unreadable ({type(error).__name__}); its photos are predicted again",
                  file=sys.stderr)
            shard.rename(shard.with_suffix(".parquet.bad"))
    return done
