"""Parsed annotations kept between runs: one Arrow IPC file per dataset, and records built lazily.

A reader that parses a large annotation set (DeepFashion's 878 MB ``list_attr_img.txt``, a folder of
K-Fashion JSON files, a million-row manifest) keeps its columns in one cache file; the next read
maps that file instead of parsing again.

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
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import pyarrow as pa

from fashionlens.data.base import ANNOTATION_CACHE_ENV, FashionDataset, Record, cache_dir

MIN_CACHED_BYTES = 1 << 20
SUFFIX = ".arrow"

T = TypeVar("T")
Columns = dict[str, Any]  # name -> numpy array (first axis: rows) or pyarrow array (strings, lists)


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
        temporary = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Not modeldir.atomic_write_bytes: that wants the whole file as bytes in memory (340 MB more
            # for DeepFashion) and syncs it to disk, which a cache does not need.
            descriptor, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            os.close(descriptor)
            with pa.OSFile(temporary, "wb") as handle, pa.ipc.new_file(handle, table.schema) as writer:
                writer.write_table(table)
            os.replace(temporary, self.path)
        except OSError as error:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
            return f"annotation cache not written ({error}); set {ANNOTATION_CACHE_ENV} to a writable folder, or to 'off'"
        return None


def _view(data: np.ndarray, array: pa.Array) -> np.ndarray:
    """The numbers of ``array``, read from ``data`` (the mapped file), as a numpy view of ``data``."""
    dtype = np.dtype(array.type.to_pandas_dtype())
    start = array.buffers()[1].address - data.ctypes.data + array.offset * dtype.itemsize
    return data[start : start + len(array) * dtype.itemsize].view(dtype)


class LazyRows(Sequence[T]):
    """The items of some rows of a reader's columns, each built when it is asked for.

    Building 289,222 ``Record`` and ``Path`` objects takes seconds; a dataset read from the cache
    only builds the ones a DataLoader (or ``validate_images``) touches. ``build(row)`` makes the
    item of one row; ``rows`` says which rows, in order, this sequence shows.
    """

    def __init__(self, build: Callable[[int], T], rows: np.ndarray) -> None:
        self.build = build
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self.build(int(row)) for row in self.rows[index]]
        return self.build(int(self.rows[index]))  # numpy raises the IndexError

    def __iter__(self) -> Iterator[T]:
        return (self.build(int(row)) for row in self.rows)


class LazyFashionDataset(FashionDataset):
    """A FashionDataset over ``LazyRows`` of records: the same samples, without building every record first.

    The reader says whether there are boxes and landmarks (what ``FashionDataset.__init__`` would
    scan every record for); ``skip_bad`` still validates every image (and then holds a plain list).
    """

    def __init__(self, records: LazyRows[Record], label_names: Sequence[str], *, has_bbox: bool, has_landmarks: bool,
                 skip_bad: bool = False, decode_on_validate: bool = True, **options: Any) -> None:
        super().__init__([], label_names, **options)
        self.records = records  # type: ignore[assignment]
        self._has_bbox = has_bbox
        self._has_landmarks = has_landmarks
        if skip_bad:
            self.validate_images(full_decode=decode_on_validate, drop=True)
