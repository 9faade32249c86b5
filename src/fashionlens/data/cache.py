"""Parsed annotations kept between runs, and records built from columns when they are asked for.

A reader that parses a large annotation set (DeepFashion's 878 MB ``list_attr_img.txt``, 100,000
K-Fashion JSON files, a million-row manifest) stores what it parsed as plain arrays in one cache
file per dataset; the next read maps that file instead of parsing again.

Where: ``$FASHIONLENS_ANNOTATION_CACHE`` if set (a folder, or ``off`` / ``0`` / ``false`` / ``no`` /
``none`` to turn the cache off), else ``annotations/`` in ``$FASHIONLENS_CACHE`` (the folder the model
hub caches in, ``fashionlens.hub``), else ``$XDG_CACHE_HOME/fashionlens/annotations``, else
``~/.cache/fashionlens/annotations``. Readers also take ``cache=False``. Annotation sets under ``MIN_CACHED_BYTES`` are not cached: parsing them is
cheaper than keeping a file for them.

When a cache file is used: only when the fingerprint stored in it equals the fingerprint of the
files now. Each file's fingerprint is its size, ``st_mtime_ns``, ``st_ctime_ns`` and a blake2b
digest of its content: of the whole file up to ``FULL_HASH_BYTES``, above that of
``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BLOCK_BYTES`` spread evenly over it (first and last included).
Hashing all of ``list_attr_img.txt`` costs about 1.2 s, more than a cached read may take in all
(docs/benchmarks.md), so large files are sampled; the sample is a second line of defence only:
size and the two nanosecond timestamps change on every write, and no ordinary tool can set
``ctime`` back (``cp -p``, ``rsync -t``, ``tar`` and ``touch -d`` restore ``mtime`` only). What the
fingerprint can miss is an edit that keeps the size, lands between the sampled blocks, and happens
on a file system without a real ``ctime`` (FAT, some network mounts) within its ``mtime``
resolution; read with ``cache=False`` there.

Writes are atomic (a temporary file in the cache folder, flushed to disk with ``fsync``, then
``os.replace``), so a crash or two processes writing at once leave either the old file or a complete
new one; a truncated or foreign file is ignored and rewritten. The reader waits for the write into
the page cache (where a full disk or a read-only folder shows); the flush to disk and the rename
finish in a background thread, because ``fsync`` is a wait for the disk alone (about half of a
million-row manifest's first read here, seconds for DeepFashion's 340 MB on a slow disk). The
process waits for that thread before it exits, and a later ``load`` of the same file waits for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from fashionlens.data.base import FashionDataset, Record

CACHE_ENV = "FASHIONLENS_CACHE"
ANNOTATION_CACHE_ENV = "FASHIONLENS_ANNOTATION_CACHE"
CACHE_OFF_VALUES = ("off", "0", "false", "no", "none")
MIN_CACHED_BYTES = 1 << 20
FULL_HASH_BYTES = 8 << 20
SAMPLE_BLOCKS = 64
SAMPLE_BLOCK_BYTES = 64 << 10
# Least recently used cache files go first once the folder holds more than this.
MAX_CACHE_BYTES = 32 << 30
MAX_CACHE_FILES = 200

_MAGIC = b"FLCACHE1"
# Cache files whose flush and rename are still under way in a background thread, by path.
_COMMITS: dict[Path, threading.Thread] = {}
_COMMITS_LOCK = threading.Lock()
_ALIGN = 64
_SUFFIX = ".arrays"

T = TypeVar("T")


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


def content_digest(path: Path, size: int) -> str:
    """blake2b of the whole file up to ``FULL_HASH_BYTES``, else of evenly spread sampled blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        if size <= FULL_HASH_BYTES:
            digest.update(handle.read())
        else:
            step = (size - SAMPLE_BLOCK_BYTES) / (SAMPLE_BLOCKS - 1)
            for k in range(SAMPLE_BLOCKS):
                handle.seek(int(k * step))
                digest.update(handle.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


def file_fingerprint(path: Path) -> list[Any] | None:
    """``[size, mtime_ns, ctime_ns, content digest]`` of ``path``, or None when it does not exist."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, content_digest(path, stat.st_size)]


def worth_caching(size: int) -> bool:
    """Whether annotations of ``size`` bytes are worth a cache file (``MIN_CACHED_BYTES``)."""
    return size >= MIN_CACHED_BYTES


def cache_for_files(kind: str, source: Path, files: dict[str, Path], options: Any, enabled: bool = True) -> AnnotationCache:
    """The cache of a dataset made of a few named files (absent ones allowed), keyed by their fingerprints.

    Nothing is hashed when the cache is off or the files are too small to be worth caching.
    """
    if not enabled or cache_dir() is None:
        return AnnotationCache(kind, source, None, enabled=False)
    total = 0
    for path in files.values():
        try:
            total += os.stat(path).st_size
        except OSError:
            pass
    if not worth_caching(total):
        return AnnotationCache(kind, source, None, enabled=False)
    fingerprint = {"options": options, "files": {name: file_fingerprint(path) for name, path in files.items()}}
    return AnnotationCache(kind, source, fingerprint)


class AnnotationCache:
    """One cache file: the arrays a reader parsed from one dataset, valid for one fingerprint.

    ``kind`` names the reader (and the layout of what it stores); ``source`` is the dataset's file
    or folder (one cache file per source, replaced when the source changes); ``fingerprint`` is any
    JSON value that must be equal for the cache to be used (file fingerprints, reader options).
    """

    def __init__(self, kind: str, source: Path, fingerprint: Any, enabled: bool = True) -> None:
        self.kind = kind
        self.fingerprint = json.loads(json.dumps(fingerprint))
        folder = cache_dir() if enabled else None
        self.path: Path | None = None
        if folder is not None:
            name = hashlib.blake2b(os.path.abspath(source).encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
            self.path = folder / f"{kind}-{name}{_SUFFIX}"

    def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """``(meta, arrays)`` when the cache file exists, is complete and matches; else None.

        Arrays are copy-on-write memory maps of the file: nothing is read until a row is used, and
        writing to one never changes the file.
        """
        if self.path is None:
            return None
        wait_for_writes(self.path)
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(16)
                if len(head) != 16 or head[:8] != _MAGIC:
                    return None
                header = json.loads(handle.read(int.from_bytes(head[8:], "little")))
                size = os.fstat(handle.fileno()).st_size
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict) or header.get("kind") != self.kind or header.get("fingerprint") != self.fingerprint:
            return None
        specs = header.get("arrays", {})
        try:
            ends = [spec["offset"] + np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"])) for spec in specs.values()]
        except (KeyError, TypeError, ValueError):
            return None
        if any(end > size for end in ends):
            return None
        # Plain ndarray views of the map (which they keep open): indexing a np.memmap is several times slower.
        mapped = np.asarray(np.memmap(self.path, dtype=np.uint8, mode="c")) if size else np.zeros(0, np.uint8)
        arrays = {}
        for name, spec in specs.items():
            dtype = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            nbytes = dtype.itemsize * int(np.prod(shape))
            arrays[name] = mapped[spec["offset"] : spec["offset"] + nbytes].view(dtype).reshape(shape)
        try:
            os.utime(self.path)  # least recently used goes first when the folder is pruned
        except OSError:
            pass
        return header.get("meta", {}), arrays

    def store(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str | None:
        """Write the cache file atomically; returns a note for the user when it could not be written.

        Returns once the file is written; its flush to disk and its rename into place finish in the
        background (``wait_for_writes``).
        """
        if self.path is None:
            return None
        folder = self.path.parent
        layout: dict[str, dict[str, Any]] = {}
        contiguous = {}
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            contiguous[name] = array
            layout[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": 0}
        # The arrays start after the header, whose length depends on their offsets: grow until it fits.
        start = _ALIGN
        while True:
            offset = start
            for name, array in contiguous.items():
                layout[name]["offset"] = offset
                offset = _aligned(offset + array.nbytes)
            header = json.dumps({"kind": self.kind, "fingerprint": self.fingerprint, "meta": meta, "arrays": layout}).encode()
            if 16 + len(header) <= start:
                break
            start = _aligned(16 + len(header) + 16 * len(layout))
        wait_for_writes(self.path)  # an earlier write of the same file lands first
        temporary = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{self.kind}-", suffix=".tmp")
            handle = os.fdopen(descriptor, "wb")
            try:
                handle.write(_MAGIC + len(header).to_bytes(8, "little") + header)
                for name, array in contiguous.items():
                    handle.seek(layout[name]["offset"])
                    handle.write(memoryview(array.reshape(-1).view(np.uint8)))
                handle.truncate(offset)
                handle.flush()
            except BaseException:
                handle.close()
                raise
        except BaseException as error:
            if temporary is not None:
                _unlink(Path(temporary))
            if isinstance(error, OSError):
                return _not_written(error)
            raise
        commit = threading.Thread(target=_commit, args=(handle, Path(temporary), self.path), name="fashionlens-cache-commit")
        with _COMMITS_LOCK:  # two threads storing the same file at once: either lands last, both are whole
            _COMMITS[self.path] = commit
        try:
            commit.start()
        except RuntimeError:  # no thread to be had (a thread limit, the interpreter shutting down): here
            with _COMMITS_LOCK:
                _COMMITS.pop(self.path, None)
            _commit(handle, Path(temporary), self.path)
        return None


def _not_written(error: OSError) -> str:
    return f"annotation cache not written ({error}); set {ANNOTATION_CACHE_ENV} to a writable folder, or to 'off'"


def _commit(handle: Any, temporary: Path, path: Path) -> None:
    """Flush a written cache file to disk, move it into place and prune the folder (a background
    thread of ``store``, which cannot return a note any more: a failure is a warning)."""
    try:
        try:
            with handle:
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as error:
            _unlink(temporary)
            warnings.warn(_not_written(error), RuntimeWarning, stacklevel=1)
        else:
            _prune(path.parent, keep=path)
    finally:
        with _COMMITS_LOCK:
            if _COMMITS.get(path) is threading.current_thread():
                del _COMMITS[path]


def wait_for_writes(path: Path | None = None) -> None:
    """Wait until the cache file ``path`` (every one when None) is on disk and in place."""
    with _COMMITS_LOCK:
        pending = list(_COMMITS.values()) if path is None else [_COMMITS[path]] if path in _COMMITS else []
    for commit in pending:
        if commit is not threading.current_thread():
            commit.join()


def _aligned(offset: int) -> int:
    return (offset + _ALIGN - 1) // _ALIGN * _ALIGN


def _prune(folder: Path, keep: Path) -> None:
    """Drop the least recently used cache files beyond the limits, and stale temporary files."""
    try:
        entries = [(entry.stat().st_mtime, entry.stat().st_size, Path(entry.path)) for entry in os.scandir(folder)]
    except OSError:
        return
    now = time.time()
    caches = []
    for mtime, size, path in entries:
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            if now - mtime > 24 * 3600:  # left by a process killed while writing
                _unlink(path)
        elif path.name.endswith(_SUFFIX):
            caches.append((mtime, size, path))
    caches.sort(reverse=True)
    total = 0
    for count, (_, size, path) in enumerate(caches, start=1):
        total += size
        if path != keep and (total > MAX_CACHE_BYTES or count > MAX_CACHE_FILES):
            _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class LazySequence(Sequence[T]):
    """A sequence whose items are made when they are asked for: subclasses give ``__len__`` and ``item``."""

    def item(self, index: int) -> T:
        """Item ``index`` (0 <= index < len)."""
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self.item(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.item(index)

    def __iter__(self) -> Iterator[T]:
        return (self.item(i) for i in range(len(self)))


class Strings(LazySequence[str]):
    """Many strings as one UTF-8 buffer plus offsets: compact, cacheable, decoded one at a time."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data = data
        self.offsets = offsets

    @classmethod
    def from_list(cls, items: Iterable[str | bytes]) -> Strings:
        encoded = [item if isinstance(item, bytes) else item.encode("utf-8", "surrogateescape") for item in items]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def item(self, index: int) -> str:
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.data[start:end].tobytes().decode("utf-8", "surrogateescape")

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The two arrays to store in a cache, named ``prefix`` + ``_data`` / ``_offsets``."""
        return {f"{prefix}_data": self.data, f"{prefix}_offsets": self.offsets}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> Strings:
        return cls(arrays[f"{prefix}_data"], arrays[f"{prefix}_offsets"])


class LazyRecords(LazySequence[Record]):
    """The records of some rows of a reader's columns, each built when it is asked for.

    Building 289,222 ``Record`` objects and ``Path`` objects takes seconds; a dataset read from the
    cache only builds the ones a DataLoader (or ``validate_images``) touches. ``build(row)`` makes the
    record of one row; ``rows`` says which rows, in order, this sequence shows.
    """

    def __init__(self, build: Callable[[int], Record], rows: np.ndarray) -> None:
        self.build = build
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, index: int) -> Record:
        return self.build(int(self.rows[index]))


class LazyFashionDataset(FashionDataset):
    """A FashionDataset over ``LazyRecords``: the same samples, without building every record first.

    ``FashionDataset.__init__`` copies its records into a list and scans them for boxes and
    landmarks; here the reader says whether there are any (``has_bbox``, ``has_landmarks``) and the
    records stay lazy. ``skip_bad`` still validates every image (and then holds a plain list).
    """

    def __init__(
        self,
        records: LazyRecords,
        label_names: Sequence[str],
        *,
        has_bbox: bool,
        has_landmarks: bool,
        skip_bad: bool = False,
        decode_on_validate: bool = True,
        **options: Any,
    ) -> None:
        super().__init__([], label_names, **options)
        self.records = records  # type: ignore[assignment]
        # The two flags FashionDataset.__init__ computes from its records (tests/test_data_deepfashion.py
        # compares the lazy samples with eager ones, so a change there shows).
        self._has_bbox = has_bbox
        self._has_landmarks = has_landmarks
        if skip_bad:
            self.validate_images(full_decode=decode_on_validate, drop=True)
