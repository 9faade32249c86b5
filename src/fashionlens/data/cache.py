"""What is kept between runs: parsed annotations (one Arrow IPC file per dataset) and the photos that passed the check.

A reader that parses a large annotation set (DeepFashion's 878 MB ``list_attr_img.txt``, a folder of
K-Fashion JSON files, a million-row manifest) keeps its columns in one cache file; the next read
maps that file instead of parsing again. ``FashionDataset.validate_images(remember=True)`` keeps
the photos that passed (by path, size and mtime) in ``photo-checks/``, so a second check decodes none.

Where: ``$FASHIONLENS_ANNOTATION_CACHE`` if set (a folder, or ``off`` / ``0`` / ``false`` / ``no`` /
``none`` to turn the cache off), else ``annotations/`` in ``$FASHIONLENS_CACHE`` (the folder the model
hub caches in, ``fashionlens.hub``), else ``$XDG_CACHE_HOME/fashionlens/annotations``, else
``~/.cache/fashionlens/annotations``. Readers also take ``cache=False``. Annotation sets under
``MIN_CACHED_BYTES`` are not cached: parsing them is cheaper than keeping a file for them.

A cache file is used only when its key equals the key of the files now: the reader, its version
and options, and each source file's path, size and ``st_mtime_ns``. An edit that keeps both the
size and the nanosecond mtime (or a copy that puts the mtime back) is not seen: read with
``cache=False`` then. The file is written to a temporary name and renamed, so a crash or two
processes writing at once leave the old file or a whole new one; an unreadable file is parsed
again and replaced. A cache can always be rebuilt, so it is neither synced to disk nor pruned.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from fashionlens.fileio import atomic_write

# The annotation cache and the photos that passed the check share its folder.
CACHE_ENV = "FASHIONLENS_CACHE"
ANNOTATION_CACHE_ENV = "FASHIONLENS_ANNOTATION_CACHE"
CACHE_OFF_VALUES = ("off", "0", "false", "no", "none")
MIN_CACHED_BYTES = 1 << 20
SUFFIX = ".arrow"

Columns = dict[str, Any]  # name -> numpy array (first axis: rows) or pyarrow array (strings, lists)


def cache_dir() -> Path | None:
    """The annotation cache folder, or None when ``$FASHIONLENS_ANNOTATION_CACHE`` turns it off."""
    value = os.environ.get(ANNOTATION_CACHE_ENV, "").strip()
    if value.lower() in CACHE_OFF_VALUES:
        return None
    if value:
        return Path(value).expanduser()
    root = os.environ.get(CACHE_ENV, "").strip()
    if root:
        return Path(root).expanduser() / "annotations"
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "fashionlens" / "annotations"


class AnnotationCache:
    """The cache file of one dataset (``source``, read by reader ``kind``) and the key it must carry.

    ``path`` is None when the cache is off, or the ``files`` (absent ones allowed) are too small to
    be worth it; ``load`` then gives None and ``store`` does nothing.
    """

    def __init__(self, kind: str, source: Path, files: Sequence[str | Path], options: Any, enabled: bool = True) -> None:
        self.path: Path | None = None
        folder = cache_dir() if enabled else None
        if folder is None:
            return
        stats = []
        for file in files:
            try:
                stat = os.stat(file)
                stats.append([os.path.abspath(file), stat.st_size, stat.st_mtime_ns])
            except OSError:
                stats.append([os.path.abspath(file), None, None])
        if sum(size or 0 for _, size, _ in stats) < MIN_CACHED_BYTES:
            return
        key = json.dumps([kind, options, stats], sort_keys=True).encode("utf-8", "surrogateescape")
        self.key = hashlib.blake2b(key, digest_size=16).hexdigest()
        name = hashlib.blake2b(os.path.abspath(source).encode("utf-8", "surrogateescape"), digest_size=10).hexdigest()
        self.path = folder / f"{kind}-{name}{SUFFIX}"

    def load(self) -> tuple[dict[str, Any], Columns] | None:
        """``(meta, columns)`` when the cache file exists, reads and carries the key; else None.

        Numeric columns are copy-on-write views of the memory-mapped file (as numpy arrays always
        are writable): nothing is read until a row is used, and writing to one never changes the file.
        """
        if self.path is None:
            return None
        try:
            data = np.asarray(np.memmap(self.path, dtype=np.uint8, mode="c"))
            table = pa.ipc.open_file(pa.py_buffer(data)).read_all()
            header = json.loads(table.schema.metadata[b"fashionlens"])
            if header["key"] != self.key:
                return None
            columns = {}
            for name in table.column_names:
                column = table[name].chunk(0) if table[name].num_chunks == 1 else table[name].combine_chunks()
                if pa.types.is_fixed_size_list(column.type):
                    column = _view(data, column.values).reshape(-1, *header["shapes"][name])
                elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
                    column = _view(data, column)
                columns[name] = column
        except (OSError, KeyError, TypeError, ValueError, pa.ArrowException):
            return None
        return header["meta"], columns

    def store(self, meta: dict[str, Any], columns: Columns) -> str | None:
        """Write the cache file (to a temporary name, then renamed); a note for the user when it cannot be."""
        if self.path is None:
            return None
        arrays, shapes = {}, {}
        for name, column in columns.items():
            if isinstance(column, np.ndarray) and column.ndim > 1:
                shapes[name] = list(column.shape[1:])
                flat = pa.array(np.ascontiguousarray(column).reshape(-1))
                column = pa.FixedSizeListArray.from_arrays(flat, int(np.prod(column.shape[1:])))
            arrays[name] = column if isinstance(column, pa.Array) else pa.array(column)
        header = {"key": self.key, "meta": meta, "shapes": shapes}
        table = pa.table(arrays).replace_schema_metadata({"fashionlens": json.dumps(header)})

        def write(stream: BinaryIO) -> None:
            with pa.ipc.new_file(stream, table.schema) as writer:
                writer.write_table(table)

        try:
            atomic_write(self.path, write, sync=False)
        except OSError as error:
            return f"annotation cache not written ({error}); set {ANNOTATION_CACHE_ENV} to a writable folder, or to 'off'"
        return None


def _view(data: np.ndarray, array: pa.Array) -> np.ndarray:
    """The numbers of ``array``, read from ``data`` (the mapped file), as a numpy view of ``data``."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    start = array.buffers()[1].address - data.ctypes.data + array.offset * dtype.itemsize
    return data[start : start + len(array) * dtype.itemsize].view(dtype)


def photo_check_file(images: Iterable[Path], full_decode: bool) -> Path | None:
    """The file of the photos that passed the check, one per set of photos (None: the cache is off)."""
    folder = cache_dir()
    if folder is None:
        return None
    digest = hashlib.blake2b(b"decoded" if full_decode else b"header", digest_size=16)
    for image in images:
        digest.update(os.fsencode(str(image)) + b"\0")
    return folder / "photo-checks" / f"{digest.hexdigest()}.txt"


def photo_stamp(path: Path) -> str | None:
    """``size mtime_ns path``: what a photo that passed the check is remembered by (None: no such file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{stat.st_size} {stat.st_mtime_ns} {path}"


def read_passed(path: Path) -> set[str]:
    try:
        return set(path.read_text(encoding="utf-8", errors="replace").splitlines())
    except OSError:
        return set()


def write_passed(path: Path, stamps: set[str]) -> None:
    """A cache that cannot be written is only slower."""
    text = "\n".join(sorted(stamps))
    try:
        atomic_write(path, lambda stream: stream.write(text.encode("utf-8", "surrogateescape")), sync=False)
    except OSError:
        pass
