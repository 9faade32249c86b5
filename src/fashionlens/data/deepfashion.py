"""DeepFashion Category & Attribute Prediction benchmark, read in its own ``Anno/`` + ``Eval/`` layout.

Every list file starts with a row count (line 1) and a header (line 2). The count is checked, so a
file cut short by a failed copy is an error instead of a smaller dataset.

Layout under ``root``::

    Anno/list_category_cloth.txt   50 category names and their type (1 upper, 2 lower, 3 full body)
    Anno/list_attr_cloth.txt       1000 attribute names (may contain spaces) and their type 1-5
    Anno/list_category_img.txt     image_name category_label (1-based)       -- defines the images
    Anno/list_attr_img.txt         image_name then 1000 labels in {1, -1, 0} -- optional
    Anno/list_bbox.txt             image_name x_1 y_1 x_2 y_2                -- optional
    Anno/list_landmarks.txt        image_name [clothes_type] [variation_type] (v x y)*{4,6,8} -- optional
    Eval/list_eval_partition.txt   image_name evaluation_status              -- needed for ``split``

At the benchmark's size (289,222 images; ``list_attr_img.txt`` alone is 878 MB) the list files are
parsed with numpy over their bytes, never token by token in Python. A file in which that fast
parse finds anything unexpected (a bad value, an unknown or repeated image, a stray character, a
count that disagrees) is read again by the line-by-line checker, whose messages name the file and
the line. One parse serves all three splits (``parse_deepfashion``, ``read_deepfashion_splits``)
and is kept in the annotation cache (``fashionlens.data.cache``), so reading the same files again
maps the cache instead of parsing. Measured in docs/benchmarks.md ("Readers at full size").
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Self, Unpack

import numpy as np
from PIL import Image

from fashionlens.data.base import FashionDataset, ReaderOptions, Record, force_vocabulary, resolve_inside
from fashionlens.data.cache import LazyFashionDataset, LazyRecords, Strings, cache_for_files
from fashionlens.errors import DataError
from fashionlens.vocabulary import ATTRIBUTE_TYPE_IDS, CUT_OFF, NUM_LANDMARKS

CLOTHES_TYPE_NAMES = {1: "upper-body", 2: "lower-body", 3: "full-body"}
SPLITS = ("train", "val", "test")

# Which of the 8 contract slots (L/R collar, sleeve, waistline, hem) a clothes type's landmarks fill,
# in the order the benchmark lists them.
LANDMARK_SLOTS = {
    1: (0, 1, 2, 3, 6, 7),  # upper body: collar, sleeve, hem
    2: (4, 5, 6, 7),  # lower body: waistline, hem
    3: (0, 1, 2, 3, 4, 5, 6, 7),  # full body: all
}
TYPE_BY_LANDMARK_COUNT = {len(slots): t for t, slots in LANDMARK_SLOTS.items()}

LIST_FILES = (
    "Anno/list_category_cloth.txt",
    "Anno/list_attr_cloth.txt",
    "Anno/list_category_img.txt",
    "Anno/list_attr_img.txt",
    "Anno/list_bbox.txt",
    "Anno/list_landmarks.txt",
    "Eval/list_eval_partition.txt",
)
# Bump when what parse_deepfashion keeps in the cache changes: older cache files are then ignored.
CACHE_LAYOUT = 1
# Image names longer than this (bytes) send list_attr_img.txt to the line-by-line reader.
_NAME_WINDOW = 256


@dataclass
class ListFile:
    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (1-based line number, tokens)


def iter_list_file(path: Path, split_name_from_end: bool = False) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header and a lazy iterator of (1-based line number, tokens) over a benchmark list file.

    Streaming matters for ``list_attr_img.txt``: 289k rows x 1000 tokens would be ~15 GB as Python
    strings held at once. The iterator raises DataError at its end if line 1's count is wrong.
    ``split_name_from_end`` is for the vocabulary files, whose names contain spaces: only the last
    token (the type number) is split off.
    """
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file not found: expected a DeepFashion list file here", path=path) from None
    try:
        first, second = handle.readline(), handle.readline()
    except UnicodeDecodeError as exc:
        handle.close()
        raise DataError(f"expected UTF-8 text, found undecodable bytes ({exc})", path=path) from None
    if not second:
        handle.close()
        raise DataError("expected a count line and a header line, found fewer than 2 lines", path=path)
    try:
        count = int(first.strip())
    except ValueError:
        handle.close()
        raise DataError(f"expected the number of rows on line 1, found {first.strip()!r}", path=path, line=1) from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        found = 0
        with handle:
            try:
                for number, line in enumerate(handle, start=3):
                    stripped = line.strip()
                    if not stripped:
                        continue
                    found += 1
                    yield number, (stripped.rsplit(None, 1) if split_name_from_end else stripped.split())
            except UnicodeDecodeError as exc:
                raise DataError(f"expected UTF-8 text, found undecodable bytes ({exc})", path=path) from None
        if count != found:
            raise DataError(f"line 1 says {count} rows, but the file has {found} rows", path=path, line=1)

    return second.split(), rows()


def read_list_file(path: Path, split_name_from_end: bool = False) -> ListFile:
    """Parse a whole benchmark list file (count line, header line, rows), checking the count."""
    header, rows = iter_list_file(path, split_name_from_end)
    return ListFile(path, header, list(rows))


def _int(value: str, path: Path, line: int, what: str, allowed: Iterable[int] | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DataError(f"expected an integer {what}, found {value!r}", path=path, line=line) from None
    if allowed is not None:
        allowed = tuple(allowed)
        if number not in allowed:
            raise DataError(f"expected {what} in {allowed}, found {number}", path=path, line=line)
    return number


def _float(value: str, path: Path, line: int, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"expected a number for {what}, found {value!r}", path=path, line=line) from None
    if not np.isfinite(number):
        raise DataError(f"expected a finite number for {what}, found {value!r}", path=path, line=line)
    return number


def _check_columns(tokens: list[str], expected: int, path: Path, line: int, layout: str) -> None:
    if len(tokens) != expected:
        raise DataError(f"expected {expected} columns ({layout}), found {len(tokens)}", path=path, line=line)


def read_vocabulary(path: Path, type_names: dict[int, str]) -> tuple[list[str], list[int]]:
    """Names and types from ``list_category_cloth.txt`` / ``list_attr_cloth.txt``."""
    listing = read_list_file(path, split_name_from_end=True)
    names: list[str] = []
    types: list[int] = []
    for line, tokens in listing.rows:
        if len(tokens) != 2:
            raise DataError(f"expected '<name> <type>', found {' '.join(tokens)!r}", path=path, line=line)
        names.append(tokens[0])
        types.append(_int(tokens[1], path, line, "type", type_names))
    seen: set[str] = set()
    for (line, _), name in zip(listing.rows, names):
        if name in seen:
            raise DataError(f"duplicate name {name!r}: expected each name once", path=path, line=line)
        seen.add(name)
    return names, types


class _ImageTable:
    """Maps image names (as written in list_category_img.txt) to rows, refusing duplicates.

    The line-by-line reader fills it with ``add``; the fast one sets every name at once
    (``set_names``), and the name list and index are then only built if something asks for them.
    """

    def __init__(self, root: Path, source: Path) -> None:
        self.root = root
        self.source = source
        self.lines: list[int] | np.ndarray = []
        self._names: list[str] | None = []
        self._index: dict[str, int] | None = {}
        self._names_bytes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lines)

    def set_names(self, names: np.ndarray, lines: np.ndarray) -> None:
        self._names_bytes, self.lines = names, lines
        self._names = self._index = None

    @property
    def names(self) -> list[str]:
        if self._names is None:
            self._names = np.char.decode(self.names_bytes, "ascii").tolist()
        return self._names

    @property
    def names_bytes(self) -> np.ndarray:
        if self._names_bytes is None:
            self._names_bytes = np.array([name.encode("utf-8", "surrogateescape") for name in self.names], dtype=bytes)
        return self._names_bytes

    def strings(self) -> Strings:
        """The names, compactly (what the cache keeps)."""
        return Strings.from_list(self.names_bytes.tolist() if self._names is None else self._names)

    @property
    def index(self) -> dict[str, int]:
        if self._index is None:
            self._index = dict(zip(self.names, range(len(self))))
        return self._index

    def add(self, name: str, line: int) -> int:
        if name in self.index:
            first = self.lines[self.index[name]]
            raise DataError(f"duplicate row for image {name!r}: first listed at {self.source}:{first}", path=self.source, line=line)
        resolve_inside(self.root, name, self.source, line)
        self.index[name] = len(self.names)
        self.names.append(name)
        self.lines.append(line)  # type: ignore[union-attr]
        return self.index[name]

    def lookup(self, name: str, path: Path, line: int, seen: set[str]) -> int:
        if name in seen:
            raise DataError(f"duplicate row for image {name!r} in this file", path=path, line=line)
        seen.add(name)
        if name not in self.index:
            resolve_inside(self.root, name, path, line)
            raise DataError(
                f"image {name!r} is not listed in list_category_img.txt: expected every annotated image there",
                path=path,
                line=line,
            )
        return self.index[name]


# --------------------------------------------------------------------------------------------------
# The fast parsers: numpy over a list file's bytes, in blocks of whole lines (small enough to stay in
# the CPU cache, and to keep list_attr_img.txt's 878 MB out of memory). Each raises _Unexpected at
# anything out of the ordinary, and the caller then runs the line-by-line checker instead.


class _Unexpected(Exception):
    """The fast parser met something it leaves to the line-by-line checker (which names the line)."""


_BLOCK_BYTES = 1 << 20


def _fast(parse: Callable[..., Any], *args: Any) -> Any:
    try:
        return parse(*args)
    except _Unexpected:
        return None


def _plain_text(a: np.ndarray) -> None:
    """ASCII with no control bytes but newlines, tabs and CRLF carriage returns, or _Unexpected.

    Other control bytes are whitespace to ``str.split`` (\\x0b, \\x0c, \\x1c-\\x1f) or not, a lone
    carriage return ends a line in Python's text mode, and non-ASCII bytes need decoding: all that
    is left to the line-by-line reader.
    """
    controls = np.count_nonzero(a.view(np.int8) < 32)  # bytes >= 128 are negative as int8
    newlines = np.count_nonzero(a == 10)
    if controls == newlines:
        return
    returns = np.flatnonzero(a == 13)
    if controls != newlines + len(returns) + np.count_nonzero(a == 9):
        raise _Unexpected
    if len(returns) and not (returns[-1] + 1 < len(a) and (a[returns + 1] == 10).all()):
        raise _Unexpected


@dataclass
class _Tokens:
    """The rows of a block of whole lines as the byte offsets of their whitespace-separated tokens."""

    data: np.ndarray  # uint8, ending in a newline
    starts: np.ndarray  # offset of each token
    ends: np.ndarray  # offset just past each token
    first: np.ndarray  # index of each row's first token
    counts: np.ndarray  # tokens per row
    lines: np.ndarray  # 1-based line number of each row

    def column(self, k: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Token ``k`` of every row (or of ``rows``) as a fixed-width bytes array."""
        index = self.first + k if rows is None else self.first[rows] + k
        starts, widths = self.starts[index], self.ends[index] - self.starts[index]
        width = int(widths.max(initial=1))
        columns = np.arange(width)
        chars = self.data[np.minimum(starts[:, None] + columns, len(self.data) - 1)]
        chars[columns >= widths[:, None]] = 0
        return chars.view(f"S{width}").reshape(-1)


def _tokenise(data: bytes, first_line: int) -> _Tokens:
    a = np.frombuffer(data, dtype=np.uint8)
    _plain_text(a)
    space = a <= 32
    # Tokens begin and end where whitespace starts or stops; the block ends in a newline, so with a
    # virtual space before it the changes alternate: start, end, start, end, ...
    change = np.flatnonzero(space[1:] != space[:-1]) + 1
    if len(a) and not space[0]:
        change = np.concatenate(([0], change))
    starts, ends = change[0::2], change[1::2]
    newlines = np.flatnonzero(a == 10)
    before = np.searchsorted(starts, newlines)  # tokens that start before each newline
    per_line = np.diff(before, prepend=0)
    rows = np.flatnonzero(per_line)
    counts = per_line[rows]
    return _Tokens(a, starts, ends, before[rows] - counts, counts, first_line + rows)


class _ListBlocks:
    """A list file's row count, header and rows in blocks of whole lines, for the fast parsers."""

    def __init__(self, path: Path) -> None:
        try:
            self.handle = path.open("rb")
        except OSError:
            raise _Unexpected from None
        first, second = self.handle.readline(), self.handle.readline()
        try:
            if not second.endswith(b"\n") or not (first + second).isascii():
                raise ValueError
            self.count = int(first)
        except ValueError:
            self.handle.close()
            raise _Unexpected from None
        self.header = second.decode("ascii").split()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *error: object) -> None:
        self.handle.close()

    def raw(self, count_lines: bool = True) -> Iterator[tuple[bytes, int]]:
        """``(bytes of whole lines, line number of the first)``; the last block ends in a newline too.

        Without ``count_lines`` the line numbers are not counted (and all 0).
        """
        carry = b""
        line = 3 if count_lines else 0
        while True:
            block = self.handle.read(_BLOCK_BYTES)
            if not block:
                if carry:
                    yield carry + b"\n", line
                return
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: read on
                carry = data
                continue
            yield data[:cut], line
            if count_lines:
                line += data.count(b"\n", 0, cut)
            carry = data[cut:]

    def __iter__(self) -> Iterator[_Tokens]:
        """The tokenised blocks; _Unexpected at the end if line 1's count is not the number of rows."""
        found = 0
        for data, line in self.raw():
            tokens = _tokenise(data, line)
            found += len(tokens.lines)
            yield tokens
        if found != self.count:
            raise _Unexpected


class _RowMapper:
    """Rows of the images an auxiliary file names, block by block; _Unexpected at an unknown or repeated one."""

    def __init__(self, table: _ImageTable) -> None:
        self.table = table
        self.seen = np.zeros(len(table), dtype=bool)
        self.found = 0

    def rows(self, names: np.ndarray) -> np.ndarray:
        m = len(names)
        cursor = self.found
        # The benchmark's files list the images in one order: then a block is the next rows.
        if cursor + m <= len(self.table) and np.array_equal(names, self.table.names_bytes[cursor : cursor + m]):
            rows = np.arange(cursor, cursor + m)
        else:
            index = self.table.index
            rows = np.fromiter((index.get(name, -1) for name in np.char.decode(names, "ascii").tolist()), dtype=np.int64, count=m)
            if m and rows.min() < 0:
                raise _Unexpected
        self.seen[rows] = True
        self.found += m
        if np.count_nonzero(self.seen) != self.found:  # listed twice
            raise _Unexpected
        return rows


def _integers(column: np.ndarray) -> np.ndarray:
    # numpy parses bytes to numbers as int() and float() do ("01", "1_0", "1e3"), so exactly what
    # the line-by-line reader accepts is accepted here.
    try:
        return column.astype(np.int64)
    except (ValueError, OverflowError):
        raise _Unexpected from None


def _finite_floats(column: np.ndarray) -> np.ndarray:
    try:
        values = column.astype(np.float64)
    except (ValueError, OverflowError):
        raise _Unexpected from None
    if not np.isfinite(values).all():
        raise _Unexpected
    return values


def _fast_categories(path: Path, table: _ImageTable, num_categories: int) -> np.ndarray:
    names, labels, lines = [np.zeros(0, dtype="S1")], [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    with _ListBlocks(path) as blocks:
        for tokens in blocks:
            if (tokens.counts != 2).any():
                raise _Unexpected
            names.append(tokens.column(0))
            labels.append(_integers(tokens.column(1)))
            lines.append(tokens.lines)
    all_names, all_labels = np.concatenate(names), np.concatenate(labels)
    if ((all_labels < 1) | (all_labels > num_categories)).any():
        raise _Unexpected
    # Only absolute names and names with '..' (or a drive's ':') can leave the root: check those exactly.
    risky = np.char.find(all_names, b"..") >= 0
    for mark in (b"/", b"\\"):
        risky |= np.char.startswith(all_names, mark)
    risky |= np.char.find(all_names, b":") >= 0
    all_lines = np.concatenate(lines)
    for i in np.flatnonzero(risky):
        try:
            resolve_inside(table.root, all_names[i].decode(), path, int(all_lines[i]))
        except DataError:
            raise _Unexpected from None
    if len(set(all_names.tolist())) != len(all_names):
        raise _Unexpected
    table.set_names(all_names, all_lines)
    return all_labels - 1


def _attribute_block(data: bytes, num_attrs: int) -> tuple[np.ndarray, np.ndarray]:
    """Image names (bytes) and the ``(rows, num_attrs)`` values of whole lines of list_attr_img.txt.

    Values come back as bytes: ``0`` unknown, ``1`` positive, ``2`` negative (written -1).
    """
    a = np.frombuffer(bytearray(data), dtype=np.uint8)  # a writable copy: the names are blanked below
    _plain_text(a)
    newlines = np.flatnonzero(a == 10)
    starts = np.zeros_like(newlines)
    starts[1:] = newlines[:-1] + 1
    # Empty lines (CRLF ones too) are skipped, as the line-by-line reader does.
    blank = (newlines == starts) | ((newlines == starts + 1) & (a[starts] == 13))
    starts = starts[~blank]
    if (a[starts] <= 32).any():  # a line starting with whitespace: left to the line-by-line reader
        raise _Unexpected
    window = np.minimum(starts[:, None] + np.arange(_NAME_WINDOW), len(a) - 1)
    chars = a[window]
    space = chars <= 32
    name_lengths = space.argmax(axis=1)
    if not space[np.arange(len(starts)), name_lengths].all():  # no whitespace in the window
        raise _Unexpected
    width = int(name_lengths.max(initial=1))
    inside = np.arange(width) < name_lengths[:, None]
    names = np.where(inside, chars[:, :width], 0).astype(np.uint8).view(f"S{width}").reshape(-1)
    a[window[:, :width][inside]] = 32
    # Only whitespace, 0, 1 and - may be left. Every token is then 0, 1 or -1 exactly when each digit
    # ends its token and each minus sign is followed by a 1.
    space = a <= 32
    digit = (a & 0xFE) == 48
    minus = a == 45
    if np.count_nonzero(space) + np.count_nonzero(digit) + np.count_nonzero(minus) != len(a):
        raise _Unexpected
    if (digit[:-1] > space[1:]).any() or (minus[:-1] > (a[1:] == 49)).any():
        raise _Unexpected
    # "-1" becomes " 2"; with the whitespace deleted each value is then one byte: 0, 1 or 2.
    np.add(a[1:], minus[:-1], out=a[1:], casting="unsafe")
    np.putmask(a, minus, 32)
    stream = a.tobytes().translate(None, b" \t\r")
    if blank.any():
        stream = b"".join(line + b"\n" for line in stream.split(b"\n") if line)
    values = np.frombuffer(stream, dtype=np.uint8)
    if len(values) != len(starts) * (num_attrs + 1):
        raise _Unexpected
    values = values.reshape(len(starts), num_attrs + 1)
    if (values[:, -1] != 10).any():  # a row with more or fewer values than attributes
        raise _Unexpected
    return names, values[:, :-1]


def _fast_attributes(path: Path, table: _ImageTable, num_attrs: int) -> tuple[np.ndarray, int]:
    values = np.zeros((len(table), num_attrs), dtype=np.int8)
    mapper = _RowMapper(table)
    with _ListBlocks(path) as blocks:
        for data, _ in blocks.raw(count_lines=False):
            names, coded = _attribute_block(data, num_attrs)
            rows = mapper.rows(names)
            if len(rows) and (np.diff(rows) == 1).all():  # the next rows, in order: decode in place
                target = values[rows[0] : rows[-1] + 1]
                np.subtract(coded, ord("0"), out=target.view(np.uint8), casting="unsafe")
                target[target == 2] = -1
            else:
                decoded = coded.view(np.int8) - ord("0")
                decoded[decoded == 2] = -1
                values[rows] = decoded
        if mapper.found != blocks.count:
            raise _Unexpected
    return values, mapper.found


def _fast_bboxes(path: Path, table: _ImageTable) -> tuple[np.ndarray, int]:
    boxes = np.full((len(table), 4), np.nan)
    mapper = _RowMapper(table)
    with _ListBlocks(path) as blocks:
        for tokens in blocks:
            if (tokens.counts != 5).any():
                raise _Unexpected
            x1, y1, x2, y2 = values = [_finite_floats(tokens.column(k)) for k in range(1, 5)]
            if ((x2 <= x1) | (y2 <= y1)).any():
                raise _Unexpected
            boxes[mapper.rows(tokens.column(0))] = np.stack(values, axis=1)
    return boxes, mapper.found


def _landmark_layout(header: list[str], path: Path) -> tuple[bool, bool, int, str]:
    lowered = [h.lower() for h in header]
    if not lowered or lowered[0] != "image_name":
        raise DataError(f"expected a header starting with 'image_name', found {' '.join(header)!r}", path=path, line=2)
    has_type = "clothes_type" in lowered
    has_variation = "variation_type" in lowered
    layout = "image_name" + (" clothes_type" if has_type else "") + (" variation_type" if has_variation else "")
    return has_type, has_variation, 1 + int(has_type) + int(has_variation), layout


def _fast_landmarks(
    path: Path, table: _ImageTable, categories: np.ndarray, category_types: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(table)
    points = np.zeros((n, NUM_LANDMARKS, 2), dtype=np.float32)
    visibility = np.full((n, NUM_LANDMARKS), CUT_OFF, dtype=np.int64)
    present = np.zeros(n, dtype=bool)
    types_of_categories = np.asarray(category_types, dtype=np.int64)
    mapper = _RowMapper(table)
    with _ListBlocks(path) as blocks:
        try:
            has_type, has_variation, lead, _ = _landmark_layout(blocks.header, path)
        except DataError:
            raise _Unexpected from None
        for tokens in blocks:
            rest = tokens.counts - lead
            triples = rest // 3
            if ((rest < 0) | (rest % 3 != 0) | ~np.isin(triples, list(TYPE_BY_LANDMARK_COUNT))).any():
                raise _Unexpected
            rows = mapper.rows(tokens.column(0))
            for count, clothes_type in TYPE_BY_LANDMARK_COUNT.items():
                group = np.flatnonzero(triples == count)
                if not len(group):
                    continue
                target = rows[group]
                if has_type:
                    if (_integers(tokens.column(1, group)) != clothes_type).any():
                        raise _Unexpected
                elif (types_of_categories[categories[target][categories[target] >= 0]] != clothes_type).any():
                    raise _Unexpected
                if has_variation:
                    _integers(tokens.column(1 + int(has_type), group))
                for k, slot in enumerate(LANDMARK_SLOTS[clothes_type]):
                    v = _integers(tokens.column(lead + 3 * k, group))
                    if ((v < 0) | (v > 2)).any():
                        raise _Unexpected
                    visibility[target, slot] = v
                    points[target, slot, 0] = _finite_floats(tokens.column(lead + 3 * k + 1, group))
                    points[target, slot, 1] = _finite_floats(tokens.column(lead + 3 * k + 2, group))
                present[target] = True
    return points, visibility, present


def _fast_partition(path: Path, table: _ImageTable) -> np.ndarray:
    splits = np.full(len(table), -1, dtype=np.int8)
    mapper = _RowMapper(table)
    with _ListBlocks(path) as blocks:
        for tokens in blocks:
            if (tokens.counts != 2).any():
                raise _Unexpected
            status = tokens.column(1)
            codes = np.full(len(status), -1, dtype=np.int8)
            for k, split in enumerate(SPLITS):
                codes[status == split.encode()] = k
            if (codes < 0).any():
                raise _Unexpected
            splits[mapper.rows(tokens.column(0))] = codes
    return splits


# --------------------------------------------------------------------------------------------------
# The line-by-line checkers: slow, exact, and the source of every message about a bad line.


def _slow_categories(path: Path, table: _ImageTable, num_categories: int) -> np.ndarray:
    categories = []
    for line, tokens in read_list_file(path).rows:
        _check_columns(tokens, 2, path, line, "image_name category_label")
        table.add(tokens[0], line)
        categories.append(_int(tokens[1], path, line, "category_label", range(1, num_categories + 1)) - 1)
    return np.asarray(categories, dtype=np.int64)


def _slow_attributes(path: Path, table: _ImageTable, num_attrs: int) -> tuple[np.ndarray, int]:
    values = np.zeros((len(table), num_attrs), dtype=np.int8)
    _, rows = iter_list_file(path)
    seen: set[str] = set()
    for line, tokens in rows:
        _check_columns(tokens, 1 + num_attrs, path, line, f"image_name then {num_attrs} attribute labels")
        i = table.lookup(tokens[0], path, line, seen)
        try:
            row = np.array(tokens[1:], dtype=np.int64)
        except ValueError:
            bad = next(t for t in tokens[1:] if not t.lstrip("-").isdigit())
            raise DataError(f"expected attribute labels 1, -1 or 0, found {bad!r}", path=path, line=line) from None
        if not np.isin(row, (-1, 0, 1)).all():
            bad_value = row[~np.isin(row, (-1, 0, 1))][0]
            raise DataError(f"expected attribute labels 1, -1 or 0, found {bad_value}", path=path, line=line)
        values[i] = row
    return values, len(seen)


def _slow_bboxes(path: Path, table: _ImageTable) -> tuple[np.ndarray, int]:
    boxes = np.full((len(table), 4), np.nan)
    seen: set[str] = set()
    for line, tokens in read_list_file(path).rows:
        _check_columns(tokens, 5, path, line, "image_name x_1 y_1 x_2 y_2")
        i = table.lookup(tokens[0], path, line, seen)
        x1, y1, x2, y2 = (_float(t, path, line, name) for t, name in zip(tokens[1:], ("x_1", "y_1", "x_2", "y_2")))
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"expected x_1 < x_2 and y_1 < y_2, found {x1:g} {y1:g} {x2:g} {y2:g}", path=path, line=line)
        boxes[i] = (x1, y1, x2, y2)
    return boxes, len(seen)


def _slow_landmarks(
    path: Path,
    table: _ImageTable,
    categories: np.ndarray,
    category_types: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks into the fixed 8 slots; the column layout is read from the header line."""
    listing = read_list_file(path)
    has_type, has_variation, lead, layout = _landmark_layout(listing.header, path)
    n = len(table)
    points = np.zeros((n, NUM_LANDMARKS, 2), dtype=np.float32)
    visibility = np.full((n, NUM_LANDMARKS), CUT_OFF, dtype=np.int64)
    present = np.zeros(n, dtype=bool)
    seen: set[str] = set()
    for line, tokens in listing.rows:
        rest = len(tokens) - lead
        if rest < 0 or rest % 3 or rest // 3 not in TYPE_BY_LANDMARK_COUNT:
            raise DataError(
                f"expected {lead} leading column(s) ({layout}) then 4, 6 or 8 (visibility x y) triples "
                f"= {lead + 12}, {lead + 18} or {lead + 24} columns, found {len(tokens)}",
                path=path,
                line=line,
            )
        i = table.lookup(tokens[0], path, line, seen)
        count = rest // 3
        type_by_count = TYPE_BY_LANDMARK_COUNT[count]
        if has_type:
            clothes_type = _int(tokens[1], path, line, "clothes_type", CLOTHES_TYPE_NAMES)
            if clothes_type != type_by_count:
                raise DataError(
                    f"clothes_type {clothes_type} ({CLOTHES_TYPE_NAMES[clothes_type]}) needs "
                    f"{len(LANDMARK_SLOTS[clothes_type])} landmarks, found {count}",
                    path=path,
                    line=line,
                )
        else:
            # No clothes_type column: the triple count says it, and the category's type must agree.
            clothes_type = type_by_count
            if categories[i] >= 0:
                category_type = category_types[categories[i]]
                if category_type != clothes_type:
                    raise DataError(
                        f"{count} landmarks mean a {CLOTHES_TYPE_NAMES[clothes_type]} garment, but the image's "
                        f"category is {CLOTHES_TYPE_NAMES[category_type]} (type {category_type})",
                        path=path,
                        line=line,
                    )
        if has_variation:
            _int(tokens[1 + int(has_type)], path, line, "variation_type")
        for k, slot in enumerate(LANDMARK_SLOTS[clothes_type]):
            v, x, y = tokens[lead + 3 * k : lead + 3 * k + 3]
            visibility[i, slot] = _int(v, path, line, f"landmark_visibility_{k + 1}", (0, 1, 2))
            points[i, slot] = (_float(x, path, line, f"landmark_location_x_{k + 1}"), _float(y, path, line, f"landmark_location_y_{k + 1}"))
        present[i] = True
    return points, visibility, present


def _slow_partition(path: Path, table: _ImageTable) -> np.ndarray:
    splits = np.full(len(table), -1, dtype=np.int8)
    seen: set[str] = set()
    for line, tokens in read_list_file(path).rows:
        _check_columns(tokens, 2, path, line, "image_name evaluation_status")
        if tokens[1] not in SPLITS:
            raise DataError(f"expected evaluation_status in {SPLITS}, found {tokens[1]!r}", path=path, line=line)
        splits[table.lookup(tokens[0], path, line, seen)] = SPLITS.index(tokens[1])
    return splits


# --------------------------------------------------------------------------------------------------
# All splits in one parse, cached; the datasets are views of it.


@dataclass
class DeepFashionAnnotations:
    """Every list file under one DeepFashion root, parsed once for all three splits.

    Row ``i`` is line ``lines[i]`` of ``list_category_img.txt``. ``attribute_values`` holds the
    attribute labels as written (1, -1, 0 = unknown; one int8 array, half the memory of labels plus
    mask, which each record gets as its own small arrays). ``bboxes`` is NaN where an image has no box row; ``splits`` holds indices into ``SPLITS`` (-1: not in the partition) and is None
    without a partition file. A bad partition file is only an error when a split is asked for
    (``partition_error``), as it was when the partition was read per split.
    """

    root: Path
    category_names: list[str]
    category_types: list[int]
    attribute_names: list[str]
    attribute_type_ids: list[int]
    image_names: Strings
    lines: np.ndarray
    categories: np.ndarray
    attribute_values: np.ndarray
    bboxes: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    landmark_visibility: np.ndarray | None = None
    splits: np.ndarray | None = None
    partition_error: list[Any] | None = None  # [reason, path, line] of the DataError to raise
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.lines)

    @property
    def category_path(self) -> Path:
        return self.root / "Anno" / "list_category_img.txt"

    def split_rows(self, split: str | None) -> np.ndarray:
        """Rows of ``split`` (every row for None), in the order of list_category_img.txt."""
        if split is None:
            return np.arange(len(self), dtype=np.int64)
        partition_path = self.root / "Eval" / "list_eval_partition.txt"
        if self.partition_error is not None:
            raise DataError(*self.partition_error)
        if self.splits is None:
            raise DataError("file not found: expected a DeepFashion list file here", path=partition_path)
        unlisted = np.flatnonzero(self.splits < 0)
        if len(unlisted):
            raise DataError(
                f"expected every image of list_category_img.txt in the partition, {len(unlisted)} are missing "
                f"(first: {self.image_names[int(unlisted[0])]!r})",
                path=partition_path,
            )
        return np.flatnonzero(self.splits == SPLITS.index(split))

    def record(self, row: int, values: np.ndarray) -> Record:
        """The record of ``row``, with its attribute values taken from ``values`` (forced or not)."""
        box = None if self.bboxes is None or np.isnan(self.bboxes[row, 0]) else tuple(self.bboxes[row].tolist())
        return Record(
            image=Path(os.path.normpath(os.path.join(self.root, self.image_names[row]))),
            labels=(values[row] == 1).view(np.uint8),
            label_mask=(values[row] != 0).view(np.uint8),
            category=int(self.categories[row]),
            bbox=box,
            landmarks=None if self.landmarks is None else self.landmarks[row],
            landmark_visibility=None if self.landmark_visibility is None else self.landmark_visibility[row],
            source=self.category_path,
            line=int(self.lines[row]),
        )

    def dataset(
        self,
        split: str | None = None,
        *,
        skip_bad: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        label_names: Sequence[str] | None = None,
        crop_to_bbox: bool = True,
        bbox_margin: float = 0.1,
        decode_on_validate: bool = True,
    ) -> FashionDataset:
        """The images of ``split`` (all for None) as a dataset; see ``read_deepfashion``."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        rows = self.split_rows(split)
        values, vocabulary = self.attribute_values, list(self.attribute_names)
        if label_names is not None:
            # force_vocabulary checks the forced names against the attributes that have positives; one
            # row saying which do is all it needs. The columns are then reordered here, in int8.
            positives = (self.attribute_values == 1).any(axis=0)[None].astype(np.uint8)
            _, _, vocabulary = force_vocabulary(
                positives, np.ones_like(positives), self.attribute_names, label_names,
                self.root / "Anno" / "list_attr_img.txt", absent_is_unknown=True,
            )
            index = {name: i for i, name in enumerate(self.attribute_names)}
            columns = np.array([index.get(name, -1) for name in vocabulary], dtype=np.int64)
            values = self.attribute_values[:, np.maximum(columns, 0)]
            values[:, columns < 0] = 0  # not a DeepFashion attribute: unknown
        type_by_name = dict(zip(self.attribute_names, self.attribute_type_ids))
        attribute_types = [ATTRIBUTE_TYPE_IDS[type_by_name[name]] if name in type_by_name else "unknown" for name in vocabulary]
        return LazyFashionDataset(
            LazyRecords(partial(self.record, values=values), rows),
            vocabulary,
            has_bbox=self.bboxes is not None and bool((~np.isnan(self.bboxes[rows, 0])).any()),
            has_landmarks=self.landmarks is not None and len(rows) > 0,
            skip_bad=skip_bad,
            decode_on_validate=decode_on_validate,
            category_names=self.category_names,
            attribute_types=attribute_types,
            transform=transform,
            crop_to_bbox=crop_to_bbox,
            bbox_margin=bbox_margin,
            notes=list(self.notes),
        )

    # What the cache keeps: the JSON-able fields in its header, the arrays (None ones left out) as arrays.
    _META_FIELDS = ("category_names", "category_types", "attribute_names", "attribute_type_ids", "partition_error", "notes")
    _ARRAY_FIELDS = ("lines", "categories", "attribute_values", "bboxes", "landmarks", "landmark_visibility", "splits")

    def _cache_contents(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {name: getattr(self, name) for name in self._META_FIELDS}
        arrays = {name: getattr(self, name) for name in self._ARRAY_FIELDS if getattr(self, name) is not None}
        return meta, {**self.image_names.arrays("image_names"), **arrays}

    @classmethod
    def _from_cache(cls, root: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> DeepFashionAnnotations:
        return cls(
            root=root,
            image_names=Strings.from_arrays(arrays, "image_names"),
            **{name: meta[name] for name in cls._META_FIELDS},
            **{name: arrays.get(name) for name in cls._ARRAY_FIELDS},
        )


def _parse(root: Path) -> DeepFashionAnnotations:
    anno = root / "Anno"
    category_names, category_types = read_vocabulary(anno / "list_category_cloth.txt", CLOTHES_TYPE_NAMES)
    attribute_names, attribute_type_ids = read_vocabulary(anno / "list_attr_cloth.txt", ATTRIBUTE_TYPE_IDS)
    num_attrs = len(attribute_names)
    notes: list[str] = []

    category_path = anno / "list_category_img.txt"
    table = _ImageTable(root, category_path)
    categories = _fast(_fast_categories, category_path, table, len(category_names))
    if categories is None:
        table = _ImageTable(root, category_path)
        categories = _slow_categories(category_path, table, len(category_names))
    n = len(table)

    attr_path = anno / "list_attr_img.txt"
    if attr_path.exists():
        values, found = _fast(_fast_attributes, attr_path, table, num_attrs) or _slow_attributes(attr_path, table, num_attrs)
        if n - found:
            notes.append(f"{n - found} image(s) have no row in {attr_path.name}: all their attributes are unknown")
    else:
        values = np.zeros((n, num_attrs), dtype=np.int8)
        notes.append(f"{attr_path} not found: every attribute is unknown")

    bboxes = None
    bbox_path = anno / "list_bbox.txt"
    if bbox_path.exists():
        bboxes, found = _fast(_fast_bboxes, bbox_path, table) or _slow_bboxes(bbox_path, table)
        if n - found:
            notes.append(f"{n - found} image(s) have no row in {bbox_path.name}: the whole image is their box")

    points = visibility = None
    landmark_path = anno / "list_landmarks.txt"
    if landmark_path.exists():
        points, visibility, present = (_fast(_fast_landmarks, landmark_path, table, categories, category_types)
                                       or _slow_landmarks(landmark_path, table, categories, category_types))
        if (~present).any():
            notes.append(f"{int((~present).sum())} image(s) have no row in {landmark_path.name}: all landmarks are cut off (2)")

    splits = partition_error = None
    partition_path = root / "Eval" / "list_eval_partition.txt"
    if partition_path.exists():
        try:
            splits = _fast(_fast_partition, partition_path, table)
            if splits is None:
                splits = _slow_partition(partition_path, table)
        except DataError as error:
            partition_error = [error.reason, error.path, error.line]

    return DeepFashionAnnotations(
        root=root,
        category_names=category_names,
        category_types=category_types,
        attribute_names=attribute_names,
        attribute_type_ids=attribute_type_ids,
        image_names=table.strings(),
        lines=np.asarray(table.lines, dtype=np.int64),
        categories=categories,
        attribute_values=values,
        bboxes=bboxes,
        landmarks=points,
        landmark_visibility=visibility,
        splits=splits,
        partition_error=partition_error,
        notes=notes,
    )


def parse_deepfashion(root: str | Path, *, cache: bool = True) -> DeepFashionAnnotations:
    """Parse every list file under ``root`` once, for all three splits, or map the cached parse.

    The cache (``fashionlens.data.cache``) is used when every list file still has the size, times
    and content digest it had when the cache was written; ``cache=False`` (or
    ``FASHIONLENS_ANNOTATION_CACHE=off``) parses and writes nothing.
    """
    root = Path(root)
    store = cache_for_files("deepfashion", root, {name: root / name for name in LIST_FILES}, {"layout": CACHE_LAYOUT}, enabled=cache)
    cached = store.load()
    if cached is not None:
        return DeepFashionAnnotations._from_cache(root, *cached)
    annotations = _parse(root)
    note = store.store(*annotations._cache_contents())
    if note:
        annotations.notes.append(note)
    return annotations


class DatasetOptions(ReaderOptions, total=False):
    """What ``DeepFashionAnnotations.dataset`` takes besides the split (its defaults apply)."""

    crop_to_bbox: bool
    bbox_margin: float
    decode_on_validate: bool


def read_deepfashion(
    root: str | Path, split: str | None = None, *, cache: bool = True, **options: Unpack[DatasetOptions]
) -> FashionDataset:
    """Read the DeepFashion Category & Attribute benchmark under ``root`` (see the module docstring).

    ``split`` keeps only the images whose ``evaluation_status`` is that split (every image must then
    be in the partition file). ``label_names`` forces the attribute order (e.g. a saved model's).
    Category ids are stored 0-based; the labels are the attributes (1 positive, -1 negative,
    0 unknown -> masked). ``cache=False`` neither reads nor writes the annotation cache. The other
    options (``skip_bad``, ``transform``, ``crop_to_bbox``, ``bbox_margin``, ``decode_on_validate``)
    are those of ``DeepFashionAnnotations.dataset``.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return parse_deepfashion(root, cache=cache).dataset(split, **options)


def read_deepfashion_splits(
    root: str | Path, *, cache: bool = True, **options: Unpack[DatasetOptions]
) -> dict[str, FashionDataset]:
    """``{"train": ..., "val": ..., "test": ...}`` from one parse of the list files (options as ``read_deepfashion``)."""
    annotations = parse_deepfashion(root, cache=cache)
    return {split: annotations.dataset(split, **options) for split in SPLITS}


# --------------------------------------------------------------------------------------------------
# Writing list files in the benchmark's own format (for the real images that ship with weak labels).


@dataclass
class DeepFashionRow:
    """One image to write: names are the vocabulary's own strings, the path is relative to root."""

    image_name: str
    category: str
    attributes: list[str] = field(default_factory=list)  # positives; every other attribute is -1
    unknown_attributes: list[str] = field(default_factory=list)  # written as 0
    bbox: tuple[float, float, float, float] | None = None
    split: str | None = None


def _write_list(path: Path, header: str, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{len(lines)}\n{header}\n" + "".join(line + "\n" for line in lines), encoding="utf-8")


def write_deepfashion_lists(
    root: str | Path,
    rows: Sequence[DeepFashionRow],
    vocabulary_root: str | Path | None = None,
) -> None:
    """Write ``Anno/list_{category,attr,bbox}_img.txt`` and ``Eval/list_eval_partition.txt`` under ``root``.

    The vocabulary files are copied from ``vocabulary_root/Anno`` unless ``root/Anno`` already has
    them. ``list_bbox.txt`` is written when any row has a box, the partition when any has a split.
    No landmark file is written: weak labels have no landmarks.
    """
    root = Path(root)
    anno = root / "Anno"
    anno.mkdir(parents=True, exist_ok=True)
    for name in ("list_category_cloth.txt", "list_attr_cloth.txt"):
        if not (anno / name).exists():
            if vocabulary_root is None:
                raise FileNotFoundError(f"{anno / name} is missing and no vocabulary_root was given to copy it from")
            shutil.copyfile(Path(vocabulary_root) / "Anno" / name, anno / name)
    category_names, _ = read_vocabulary(anno / "list_category_cloth.txt", CLOTHES_TYPE_NAMES)
    attribute_names, _ = read_vocabulary(anno / "list_attr_cloth.txt", ATTRIBUTE_TYPE_IDS)
    category_index = {name: i + 1 for i, name in enumerate(category_names)}
    attribute_index = {name: i for i, name in enumerate(attribute_names)}

    category_lines, attr_lines, bbox_lines, split_lines = [], [], [], []
    for row in rows:
        if row.category not in category_index:
            raise ValueError(f"{row.image_name}: category {row.category!r} is not in list_category_cloth.txt")
        values = ["-1"] * len(attribute_names)
        for names, value in ((row.unknown_attributes, "0"), (row.attributes, "1")):
            for attribute in names:
                if attribute not in attribute_index:
                    raise ValueError(f"{row.image_name}: attribute {attribute!r} is not in list_attr_cloth.txt")
                values[attribute_index[attribute]] = value
        category_lines.append(f"{row.image_name} {category_index[row.category]}")
        attr_lines.append(f"{row.image_name} " + " ".join(values))
        if row.bbox is not None:
            bbox_lines.append(f"{row.image_name} " + " ".join(f"{v:g}" for v in row.bbox))
        if row.split is not None:
            split_lines.append(f"{row.image_name} {row.split}")
    _write_list(anno / "list_category_img.txt", "image_name  category_label", category_lines)
    _write_list(anno / "list_attr_img.txt", "image_name  attribute_labels", attr_lines)
    if bbox_lines:
        _write_list(anno / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", bbox_lines)
    if split_lines:
        if len(split_lines) != len(rows):
            raise ValueError("either every row or no row must have a split")
        _write_list(root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status", split_lines)


def weak_label_rows(deepfashion_dir: str | Path, with_bbox: bool = True, with_split: bool = True) -> list[DeepFashionRow]:
    """Rows for the real images that ship with ``weak_labels_from_product_names.csv``.

    Box = the whole image (the weak labels have none). Split by product, never within one, because
    the photos of one product are near-duplicates: products in sorted order, every 8th from the 7th
    is val and every 8th from the 8th is test (16 products: 12 train, 2 val, 2 test).
    """
    deepfashion_dir = Path(deepfashion_dir)
    csv_path = deepfashion_dir / "weak_labels_from_product_names.csv"
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        entries = [(reader.line_num, row) for row in reader if row]
    products = sorted({row[0].split("/")[1] for _, row in entries if row[0].count("/") >= 2})
    split_of = {p: ("val" if i % 8 == 6 else "test" if i % 8 == 7 else "train") for i, p in enumerate(products)}
    rows = []
    for line, row in entries:
        if len(row) != 3:
            raise DataError(f"expected 3 columns (image_name, category, attributes), found {len(row)}", path=csv_path, line=line)
        name, category, attributes = row
        bbox = None
        if with_bbox:
            with Image.open(deepfashion_dir / name) as img:
                bbox = (0.0, 0.0, float(img.width), float(img.height))
        rows.append(
            DeepFashionRow(
                image_name=name,
                category=category,
                attributes=[a for a in attributes.split(";") if a],
                bbox=bbox,
                split=split_of[name.split("/")[1]] if with_split else None,
            )
        )
    return rows
