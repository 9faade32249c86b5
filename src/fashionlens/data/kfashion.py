"""K-Fashion (AI-Hub) style labels: one JSON per image, Korean keys, 23 styles.

The style sits at ``데이터셋 정보 → 데이터셋 상세설명 → 라벨링 → 스타일``, a list of
``{"스타일": ..., "서브스타일": ...}`` objects; style and sub-style both count as positives. An entry
of ``[{}]`` means nobody annotated a style: that image is all-unknown (masked), never 23 negatives,
and it is listed in the dataset's ``notes``.

The image is the JSON's stem with ``.jpg`` (or another image extension) beside it, or else the file
named by ``이미지 정보 → 이미지 파일명``. Files ending in ``_extracted.json`` are a derived summary
written by AI-Hub's example script; they are not annotations and are ignored (with a note).

K-Fashion has 1.2 M files. A folder of many of them is parsed by a pool of worker processes, the
image beside each JSON is looked up in the folder listing (no ``stat`` per candidate name), and
the parse is kept in the annotation cache (``fashionlens.data.cache``): it is used again while
every JSON file keeps its size, ``mtime`` and ``ctime`` (``stat``-ed by one forked process per core)
and a sample of them their content digest.
Measured in docs/benchmarks.md ("Readers at full size").
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import multiprocessing
import operator
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fashionlens.config import cpu_cores
from fashionlens.data.base import FashionDataset, Record, force_vocabulary
from fashionlens.data.cache import (
    AnnotationCache,
    LazyFashionDataset,
    LazyRecords,
    LazySequence,
    Strings,
    cache_dir,
    content_digest,
    worth_caching,
)
from fashionlens.errors import DataError
from fashionlens.vocabulary import IMAGE_EXTENSIONS

# K-Fashion's 23 styles, in the order the dataset documents them.
STYLES_KO_EN = {
    "클래식": "classic",
    "프레피": "preppy",
    "매니시": "mannish",
    "톰보이": "tomboy",
    "페미닌": "feminine",
    "로맨틱": "romantic",
    "섹시": "sexy",
    "히피": "hippie",
    "웨스턴": "western",
    "오리엔탈": "oriental",
    "모던": "modern",
    "소피스트케이티드": "sophisticated",
    "아방가르드": "avant-garde",
    "컨트리": "country",
    "리조트": "resort",
    "젠더리스": "genderless",
    "스포티": "sporty",
    "레트로": "retro",
    "키치": "kitsch",
    "힙합": "hip-hop",
    "펑크": "punk",
    "밀리터리": "military",
    "스트리트": "street",
}
STYLE_NAMES = tuple(STYLES_KO_EN.values())
GARMENT_KO_EN = {"아우터": "outer", "상의": "top", "하의": "bottom", "원피스": "onepiece"}
_EXTRACTED_SUFFIX = "_extracted.json"
_STYLE_INDEX = {korean: i for i, korean in enumerate(STYLES_KO_EN)}
# Folders with at least this many JSON files are parsed by a pool of processes.
PARALLEL_MIN_FILES = 10_000
# Bump when what the reader keeps in the cache changes: older cache files are then ignored.
CACHE_LAYOUT = 1
# How many JSON files (evenly spread) have their content digest in the cache key; see _fingerprint.
DIGESTED_FILES = 64
# The folder listing (JSON files and their images) is cached from this many JSON files on.
LISTING_CACHE_MIN_FILES = 1_000
LISTING_LAYOUT = 1
RACY_SECONDS = 2.0
# One garment's box: its English name and (x1, y1, x2, y2).
GarmentBox = tuple[str, tuple[float, float, float, float]]


def _get(node: Any, keys: Sequence[str], path: str | Path) -> Any:
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise DataError(f"expected the key path {' → '.join(keys[: depth + 1])}, it is missing", path=path)
        node = node[key]
    return node


def garment_boxes(document: dict[str, Any], path: str | Path) -> list[GarmentBox]:
    """Per-garment boxes (``렉트좌표``: X, Y, width, height) as ``(garment, xyxy)``; empty ``{}`` skipped."""
    rects = _get(document, ("데이터셋 정보", "데이터셋 상세설명", "렉트좌표"), path)
    boxes = []
    for garment, entries in rects.items():
        for entry in entries if isinstance(entries, list) else []:
            if not entry:
                continue
            try:
                x, y, w, h = (float(entry[k]) for k in ("X좌표", "Y좌표", "가로", "세로"))
            except (KeyError, TypeError, ValueError):
                raise DataError(f"expected X좌표, Y좌표, 가로, 세로 numbers in the {garment} box, found {entry!r}", path=path) from None
            boxes.append((GARMENT_KO_EN.get(garment, garment), (x, y, x + w, y + h)))
    return boxes


def _style_indices(document: Any, path: str | Path) -> list[int]:
    styles = _get(document, ("데이터셋 정보", "데이터셋 상세설명", "라벨링", "스타일"), path)
    if not isinstance(styles, list):
        raise DataError(f"expected 스타일 to be a list of objects, found {styles!r}", path=path)
    found = []
    for entry in styles:
        if not isinstance(entry, dict):
            raise DataError(f"expected each 스타일 entry to be an object, found {entry!r}", path=path)
        for key in ("스타일", "서브스타일"):
            value = entry.get(key)
            if value in (None, ""):
                continue
            if value not in STYLES_KO_EN:
                raise DataError(
                    f"unknown {key} value {value!r}: expected one of the 23 K-Fashion styles ({', '.join(STYLES_KO_EN)})",
                    path=path,
                )
            found.append(_STYLE_INDEX[value])
    return found


def _load_document(path: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"expected a JSON document, found invalid JSON ({exc.msg})", path=path, line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"expected UTF-8 JSON, found undecodable bytes ({exc})", path=path) from None
    except RecursionError:
        raise DataError("expected a K-Fashion JSON document, found JSON nested too deeply to parse", path=path) from None


@dataclass
class _Parsed:
    """What a run of JSON files says, as arrays (cheap to send back from a worker and to cache)."""

    labels: np.ndarray  # (m, 23) uint8
    labeled: np.ndarray  # (m,) bool: False where 스타일 is [{}]
    named_images: Sequence[str]  # 이미지 파일명, "" where absent
    box_counts: np.ndarray  # (m,) int64
    box_garments: np.ndarray  # (boxes,) int32: indices into garment_names
    garment_names: list[str]
    box_coords: np.ndarray  # (boxes, 4) float64, xyxy
    stats: np.ndarray  # (m, 3) int64: size, mtime_ns, ctime_ns when the file was read
    error: tuple[str, str | None, int | None] | None = None  # the first DataError, which ends the run


def _parse_files(root: str, names: Sequence[str]) -> _Parsed:
    """Parse ``names`` (relative to ``root``) in order, stopping at the first bad file."""
    prefix = "" if root in ("", ".") else os.path.join(root, "")
    rows, styles, named, counts, garments, coords, stats = [], [], [], [], [], [], []
    labeled = []
    error = None
    for row, name in enumerate(names):
        path = prefix + name  # a str: building a Path per file costs as much as reading it
        try:
            with open(path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read()
            document = _load_document(path, data)
            found = _style_indices(document, path)
            boxes = garment_boxes(document, path)
        except DataError as exc:
            error = (exc.reason, exc.path, exc.line)
            break
        stats.append((stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns))
        rows.extend([row] * len(found))
        styles.extend(found)
        labeled.append(bool(found))
        info = document.get("이미지 정보", {})
        image_name = info.get("이미지 파일명") if isinstance(info, dict) else None
        named.append(image_name if isinstance(image_name, str) else "")
        counts.append(len(boxes))
        for garment, box in boxes:
            garments.append(garment)
            coords.append(box)
    labels = np.zeros((len(stats), len(STYLE_NAMES)), dtype=np.uint8)
    labels[rows, styles] = 1
    names_of_garments = sorted(set(garments))
    code = {garment: i for i, garment in enumerate(names_of_garments)}
    return _Parsed(
        labels, np.array(labeled, dtype=bool), named, np.array(counts, dtype=np.int64),
        np.array([code[g] for g in garments], dtype=np.int32), names_of_garments,
        np.array(coords, dtype=np.float64).reshape(-1, 4), np.array(stats, dtype=np.int64).reshape(-1, 3), error,
    )


def _workers(workers: int | None, files: int) -> int:
    """How many processes share the work on ``files`` files: ``workers``, else one per core (at most
    8) from ``PARALLEL_MIN_FILES`` files on. More than one only where they can be forked (Linux):
    forked workers start at once with everything imported; elsewhere a worker would import torch
    again first, which costs more than it saves."""
    if workers is None:
        workers = min(8, cpu_cores()) if files >= PARALLEL_MIN_FILES else 1
    return max(1, workers) if sys.platform.startswith("linux") else 1


def _parse_all(root: Path, names: list[str], workers: int | None) -> _Parsed:
    """Every file parsed (in a pool of ``workers`` processes for large folders), or the first bad file's DataError."""
    workers = _workers(workers, len(names))
    if workers > 1:
        pieces = 4 * workers
        bounds = np.linspace(0, len(names), pieces + 1).astype(int)
        chunks = [names[a:b] for a, b in itertools.pairwise(bounds)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_parse_files, [str(root)] * len(chunks), chunks))
    else:
        parts = [_parse_files(str(root), names)]
    for part in parts:
        if part.error is not None:
            raise DataError(*part.error)
    garment_names = sorted({name for p in parts for name in p.garment_names})
    code = {name: i for i, name in enumerate(garment_names)}
    return _Parsed(
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.labeled for p in parts]),
        [name for p in parts for name in p.named_images],
        np.concatenate([p.box_counts for p in parts]),
        np.concatenate([np.array([code[n] for n in p.garment_names], dtype=np.int32)[p.box_garments] if len(p.box_garments)
                        else np.zeros(0, np.int32) for p in parts]),
        garment_names,
        np.concatenate([p.box_coords for p in parts]),
        np.concatenate([p.stats for p in parts]),
    )


@dataclass
class _Folder:
    """One folder of the listing: its entry names, which of them are symbolic links, its JSON files."""

    relative: str  # "" for the root, else "a/b/"
    names: set[str]
    links: set[str]
    json_files: list[str] = field(default_factory=list)  # names, in sorted order


@dataclass
class _Listing:
    """The JSON files under a folder (in ``sorted(rglob("*.json"))`` order) and every folder's entries."""

    root: Path
    json_files: list[str]  # relative to root
    folders: dict[str, _Folder] = field(default_factory=dict)

    def exists(self, relative: str) -> bool:
        """Whether ``root/relative`` exists, answered from the listing where it can be."""
        cut = relative.rfind("/") + 1
        folder = self.folders.get(relative[:cut])
        name = relative[cut:]
        if folder is None or name in ("", ".", ".."):
            return os.path.exists(os.path.join(self.root, relative))
        return name in folder.names and (name not in folder.links or os.path.exists(os.path.join(self.root, relative)))


def _list_folder(root: Path, recursive: bool = True) -> _Listing:
    """Every folder's entries by ``os.scandir`` (no ``stat``); JSON files in ``sorted(Path.rglob)`` order."""
    listing = _Listing(root, [])

    def walk(relative: str) -> None:
        try:
            with os.scandir(os.path.join(root, relative) if relative else root) as scan:
                entries = list(scan)
        except OSError as exc:
            raise DataError(f"cannot list the folder ({exc.strerror})", path=Path(root, relative)) from None
        folder = _Folder(relative, {e.name for e in entries}, {e.name for e in entries if e.is_symlink()})
        listing.folders[relative] = folder
        # Like Path.rglob: symbolic links to folders are not followed, and the order is that of the
        # sorted path parts, which is a walk of every folder in name order.
        folders = [e.name for e in entries if e.is_dir(follow_symlinks=False)] if recursive else []
        files = [e.name for e in entries if e.name.endswith(".json") and not e.is_dir()]
        if not folders:
            folder.json_files = sorted(files)
            listing.json_files.extend([relative + name for name in folder.json_files])
            return
        for name, is_folder in sorted([(name, False) for name in files] + [(name, True) for name in folders]):
            if is_folder:
                walk(relative + name + "/")
            else:
                folder.json_files.append(name)
                listing.json_files.append(relative + name)
    walk("")
    return listing


def _stem_images(listing: _Listing, files: list[str]) -> list[str]:
    """Each JSON file's image found by its stem (relative to the root), from the listing alone; ""
    where no image of that stem exists (then 이미지 파일명 decides, after the parse)."""
    usual = IMAGE_EXTENSIONS[0]
    images = []
    folder = listing.folders.get("")
    for name in files:
        cut = name.rfind("/") + 1
        if folder is None or folder.relative != name[:cut]:
            folder = listing.folders.get(name[:cut])
        candidate = name[cut:-5] + usual
        if folder is not None and candidate in folder.names and candidate not in folder.links:
            images.append(name[:-5] + usual)  # the usual case
            continue
        stem = name[:-5]
        images.append(next((candidate for extension in IMAGE_EXTENSIONS
                            for candidate in (stem + extension, stem + extension.upper())
                            if listing.exists(candidate)), ""))
    return images


def _resolve_images(root: Path, files: list[str], stem_images: Sequence[str], named: Sequence[str]) -> list[str]:
    """The stem's image, else the file named by 이미지 파일명 beside the JSON, else (neither exists)
    the stem's .jpg, so that the image error names the expected file."""
    if "" not in stem_images:  # the usual case: every JSON has its image beside it
        return list(stem_images)
    images = list(stem_images)
    for row in [row for row, image in enumerate(images) if not image]:
        name = files[row]
        folder = name[: name.rfind("/") + 1]
        if named[row] and os.path.exists(os.path.join(root, folder + named[row])):
            images[row] = folder + named[row]
        else:
            images[row] = name[:-5] + ".jpg"
    return images


def _joined(names: Sequence[str]) -> np.ndarray:
    """File names as one NUL-separated byte array (no file name holds a NUL): cached in one piece."""
    return np.frombuffer("\0".join(names).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _split(array: np.ndarray, count: int) -> list[str] | None:
    """:func:`_joined` back to ``count`` names (100,000 in milliseconds), or None if it does not fit."""
    names = array.tobytes().decode("utf-8", "surrogateescape").split("\0") if count else []
    return names if len(names) == count else None


def _folder_stats(root: Path, relatives: Sequence[str]) -> np.ndarray | None:
    """``(mtime_ns, ctime_ns)`` of each folder (adding, removing or renaming an entry changes them),
    or None when one is gone."""
    try:
        return np.array([(s.st_mtime_ns, s.st_ctime_ns) for s in (os.stat(os.path.join(root, r)) for r in relatives)],
                        dtype=np.int64).reshape(-1, 2)
    except OSError:
        return None


def _listing_or_cached(root: Path, cache: bool) -> tuple[list[str], list[str]]:
    """The JSON files under ``root`` and each one's stem image (see :func:`_stem_images`).

    Kept in the annotation cache while every folder's ``mtime_ns`` and ``ctime_ns`` are unchanged, so
    that a second read lists nothing. Folders with symbolic links are listed every time (a link's
    target can go without its folder changing), and so is a folder changed in the last
    ``RACY_SECONDS`` (file systems stamp times with a coarse clock: an entry added within the same
    tick as the listing would leave the time unchanged).
    """
    store = None
    if cache and cache_dir() is not None:
        store = AnnotationCache("kfashion-listing", root, {"layout": LISTING_LAYOUT})
        loaded = store.load()
        if loaded is not None:
            meta, arrays = loaded
            folders = _split(arrays["folders"], len(arrays["folder_stats"]))
            stats = _folder_stats(root, folders) if folders is not None else None
            if stats is not None and np.array_equal(stats, arrays["folder_stats"]):
                json_files = _split(arrays["json_files"], meta.get("files", -1))
                stem_images = _split(arrays["stem_images"], meta.get("files", -1))
                if json_files is not None and stem_images is not None:
                    return json_files, stem_images
    listing = _list_folder(root)
    stem_images = _stem_images(listing, listing.json_files)
    if store is not None and len(listing.json_files) >= LISTING_CACHE_MIN_FILES \
            and not any(folder.links for folder in listing.folders.values()):
        folders = list(listing.folders)
        stats = _folder_stats(root, folders)
        if stats is not None and int(stats[:, 0].max()) < time.time_ns() - int(RACY_SECONDS * 1e9):
            store.store({"files": len(listing.json_files)},
                        {"folders": _joined(folders), "folder_stats": stats,
                         "json_files": _joined(listing.json_files), "stem_images": _joined(stem_images)})
    return listing.json_files, stem_images


def _fingerprint(root: Path, names: list[str]) -> dict[str, Any]:
    """What must be equal for a cache file to be used, besides every file's size, mtime and ctime.

    Hashing all 100,000 files would read them all, which costs more than the cached read may take
    (docs/benchmarks.md); their sizes and nanosecond mtime and ctime (compared for every file)
    catch each write, and the content digests of ``DIGESTED_FILES`` files spread over the folder
    catch what a copy that keeps ``mtime`` might carry where ``ctime`` is not kept.
    """
    listed = hashlib.blake2b("\n".join(names).encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
    picks = sorted({int(i) for i in np.linspace(0, len(names) - 1, min(DIGESTED_FILES, len(names)))})
    digests = []
    for i in picks:
        path = root / names[i]
        try:
            digests.append(content_digest(path, os.path.getsize(path)))
        except OSError:
            digests.append(None)
    return {"layout": CACHE_LAYOUT, "files": listed, "digests": digests}


def _stats(root: Path, names: Sequence[str], workers: int | None = None) -> np.ndarray | None:
    """``(size, mtime_ns, ctime_ns)`` of every file, or None if one is gone.

    The ``stat`` calls are the whole cost of a cached read (100,000 take 0.25-0.6 s here, nearly
    all in the kernel), so ``workers - 1`` forked children (``_workers``) take their share of the
    names while this process does its own. A child has the names already and sends back only its
    rows; threads would not help, since each call takes the interpreter's lock back. A share whose
    child could not be forked or failed is done here.
    """
    workers = min(_workers(workers, len(names)), max(len(names), 1))
    shares = list(itertools.pairwise(np.linspace(0, len(names), workers + 1).astype(int).tolist()))
    children: list[tuple[int, int] | None] = []
    results: list[tuple[bool, np.ndarray | None]] = []
    try:
        for a, b in shares[1:]:
            children.append(_fork_stats(root, names[a:b]))
        results.append((True, _stats_here(root, names[: shares[0][1]])))
    finally:  # every child is waited for, also when this process's share (or a fork) was interrupted
        interrupted = None
        for child, (a, b) in zip(children, shares[1:]):
            try:
                results.append((False, None) if child is None else _collect_stats(child, b - a))
            except BaseException as error:  # noqa: BLE001 - reap the other children first, then raise it
                interrupted = interrupted or error
        if interrupted is not None:
            raise interrupted
    parts = []
    for (a, b), (done, rows) in zip(shares, results):
        if not done:
            rows = _stats_here(root, names[a:b])
        if rows is None:
            return None
        parts.append(rows)
    return np.concatenate(parts)


_ROWS_SENT, _FILE_GONE = b"\0", b"\3"  # the last byte a stat child sends


def _fork_stats(root: Path, names: Sequence[str]) -> tuple[int, int] | None:
    """A forked child that writes :func:`_stats_here` of ``names`` to a pipe, then one byte saying
    whether it did (rows, then ``_ROWS_SENT``) or a file is gone (``_FILE_GONE`` alone): ``(pid,
    read end)``, or None when no child could be forked."""
    try:
        read, write = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return None
    if pid == 0:  # the child: it only stats, writes and leaves (no cleanup of the parent's state)
        try:
            os.close(read)
            rows = _stats_here(root, names)
            message = _FILE_GONE if rows is None else np.ascontiguousarray(rows).tobytes() + _ROWS_SENT
            view = memoryview(message)
            while view:
                view = view[os.write(write, view) :]
        finally:
            os._exit(0)
    os.close(write)
    return pid, read


def _collect_stats(child: tuple[int, int], count: int) -> tuple[bool, np.ndarray | None]:
    """A stat child's ``count`` rows: ``(True, rows)``, ``(True, None)`` when a file is gone,
    ``(False, None)`` when it failed (its message is cut short)."""
    pid, read = child
    try:
        with os.fdopen(read, "rb") as pipe:
            data = pipe.read()
    finally:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped already (a program that ignores SIGCHLD)
            pass
    if data == _FILE_GONE:
        return True, None
    if len(data) != count * 24 + 1 or data[-1:] != _ROWS_SENT:
        return False, None
    return True, np.frombuffer(data, dtype=np.int64, count=count * 3).reshape(-1, 3)


def _stats_here(root: Path, names: Sequence[str]) -> np.ndarray | None:
    """:func:`_stats` in this process.

    Each folder's files are ``stat``-ed relative to the folder's descriptor (``dir_fd``): the kernel
    then resolves one name per file, not the whole path. The three numbers of each go straight into
    the array (``np.fromiter``): a list of 100,000 tuples of large integers would make the process
    take fresh memory from the kernel, which doubled the first call's time here.
    """
    fields = operator.attrgetter("st_size", "st_mtime_ns", "st_ctime_ns")
    by_folder = os.stat in os.supports_dir_fd  # not on Windows: whole paths there
    groups = [(folder, list(map(operator.itemgetter(2), group))) for folder, group
              in itertools.groupby(map(str.rpartition, names, itertools.repeat("/")), key=operator.itemgetter(0))] \
        if by_folder else [("", [os.path.join(root, n) for n in names])]
    parts = [np.zeros(0, dtype=np.int64)]
    try:
        for folder, group in groups:
            descriptor = os.open(os.path.join(root, folder) if folder else root, os.O_RDONLY | os.O_DIRECTORY) \
                if by_folder else None
            try:
                stat = os.stat if descriptor is None else functools.partial(os.stat, dir_fd=descriptor)
                parts.append(np.fromiter(itertools.chain.from_iterable(map(fields, map(stat, group))), dtype=np.int64,
                                         count=3 * len(group)))
            finally:
                if descriptor is not None:
                    os.close(descriptor)
    except OSError:
        return None
    return np.concatenate(parts).reshape(-1, 3)


def _parse_or_cached(root: Path, names: list[str], cache: bool, workers: int | None) -> tuple[_Parsed, str | None]:
    """The parse of ``names``: from the cache when every file is unchanged, else parsed (and cached)."""
    store = None
    if cache and cache_dir() is not None:
        store = AnnotationCache("kfashion", root, _fingerprint(root, names))
        loaded = store.load()
        if loaded is not None:
            meta, arrays = loaded
            stats = _stats(root, names, workers)
            if stats is not None and np.array_equal(stats, arrays["stats"]):
                return _Parsed(
                    arrays["labels"], arrays["labeled"], Strings.from_arrays(arrays, "named_images"), arrays["box_counts"],
                    arrays["box_garments"], meta["garments"], arrays["box_coords"], arrays["stats"],
                ), None
    parsed = _parse_all(root, names, workers)
    if store is None or not worth_caching(int(parsed.stats[:, 0].sum())):
        return parsed, None
    arrays = {
        "labels": parsed.labels,
        "labeled": parsed.labeled,
        **Strings.from_list(parsed.named_images).arrays("named_images"),
        "box_counts": parsed.box_counts,
        "box_garments": parsed.box_garments,
        "box_coords": parsed.box_coords,
        "stats": parsed.stats,
    }
    return parsed, store.store({"garments": parsed.garment_names}, arrays)


class GarmentBoxes(LazySequence[list[GarmentBox]]):
    """``boxes[i]``: record i's ``(garment, xyxy)`` boxes, built when asked for."""

    def __init__(self, parsed: _Parsed, rows: np.ndarray) -> None:
        self.codes = parsed.box_garments
        self.names = parsed.garment_names
        self.coords = parsed.box_coords
        self.offsets = np.concatenate(([0], np.cumsum(parsed.box_counts)))
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, index: int) -> list[GarmentBox]:
        row = int(self.rows[index])
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return [(self.names[code], tuple(box)) for code, box in zip(self.codes[start:end].tolist(), self.coords[start:end].tolist())]


@dataclass
class _Records:
    """Builds record ``row`` from the parsed arrays (what LazyRecords calls)."""

    root: Path
    json_files: list[str]
    images: list[str]
    labels: np.ndarray
    mask: np.ndarray

    def __call__(self, row: int) -> Record:
        return Record(
            image=self.root / self.images[row],
            labels=self.labels[row],
            label_mask=self.mask[row],
            source=self.root / self.json_files[row],
        )


def read_kfashion(
    path_or_folder: str | Path,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    cache: bool = True,
    workers: int | None = None,
) -> FashionDataset:
    """Read one K-Fashion JSON or every ``*.json`` under a folder (recursively).

    Labels: the 23 styles (always all 23, in ``STYLE_NAMES`` order unless ``label_names`` forces
    one). ``dataset.garment_boxes[i]`` holds record i's per-garment boxes. ``workers`` processes
    parse a folder of ``PARALLEL_MIN_FILES`` files or more, and ``stat`` its files when it is read
    from the cache (default: one per core, at most 8; 1 does both in this process).
    ``cache=False`` neither reads nor writes the annotation cache.
    """
    path_or_folder = Path(path_or_folder)
    if path_or_folder.is_dir():
        root = path_or_folder
        json_files, stem_images = _listing_or_cached(root, cache)
    elif path_or_folder.exists():
        root = path_or_folder.parent
        listing = _list_folder(root, recursive=False)
        json_files = listing.json_files = listing.folders[""].json_files = [path_or_folder.name]
        stem_images = _stem_images(listing, json_files)
    else:
        raise DataError("expected a K-Fashion JSON file or a folder of them, found nothing", path=path_or_folder)
    notes: list[str] = []
    files = json_files
    if any(map(operator.methodcaller("endswith", _EXTRACTED_SUFFIX), json_files)):
        kept = [i for i, f in enumerate(json_files) if not f.endswith(_EXTRACTED_SUFFIX)]
        files, stem_images = [json_files[i] for i in kept], [stem_images[i] for i in kept]
        notes.append(f"ignored {len(json_files) - len(files)} derived *{_EXTRACTED_SUFFIX} file(s) (not annotations)")
    if not files:
        raise DataError("expected K-Fashion *.json annotation files, found none", path=path_or_folder)

    parsed, cache_note = _parse_or_cached(root, files, cache, workers)
    if cache_note:
        notes.append(cache_note)
    mask = np.repeat(parsed.labeled[:, None], len(STYLE_NAMES), axis=1).astype(np.uint8)
    unlabeled = np.flatnonzero(~parsed.labeled)
    if len(unlabeled):
        shown = ", ".join(files[i].rpartition("/")[2] for i in unlabeled[:10].tolist()) + (" ..." if len(unlabeled) > 10 else "")
        notes.append(f"{len(unlabeled)} of {len(files)} image(s) have no style annotated (all 23 labels unknown): {shown}")

    labels, mask, vocabulary = force_vocabulary(parsed.labels, mask, STYLE_NAMES, label_names, path_or_folder, absent_is_unknown=True)
    images = _resolve_images(root, files, stem_images, parsed.named_images)
    rows = np.arange(len(files))
    build = _Records(root, files, images, labels, mask)
    dataset = LazyFashionDataset(
        LazyRecords(build, rows),
        vocabulary,
        has_bbox=False,
        has_landmarks=False,
        # The English style names are single GloVe tokens already ("hip-hop", "avant-garde" included).
        label_words=vocabulary,
        transform=transform,
        skip_bad=skip_bad,
        notes=notes,
    )
    if dataset.skipped:
        # Keep boxes aligned with the records that survived validation.
        kept = {record.source for record in dataset.records}
        rows = np.array([row for row in rows if build.root / files[row] in kept], dtype=np.int64)
    dataset.garment_boxes = GarmentBoxes(parsed, rows)
    return dataset
