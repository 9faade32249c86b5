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
parsed with numpy over their bytes, in blocks of whole lines, never token by token in Python. A
row that a vectorised check refuses is read again on its own in Python (``_rescan``), which names
the file, the line and what is wrong. One parse serves all three splits
(``parse_deepfashion(root).dataset(split)``) and is kept in the annotation cache
(``fashionlens.data.cache``), so reading the same files again maps the cache instead of parsing.
Measured in docs/benchmarks.md ("Readers at full size").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Unpack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.lib.stride_tricks import sliding_window_view

from fashionlens.data.base import (FashionDataset, LazyRows, ReaderOptions, Record, force_vocabulary,
                                   resolve_inside, take_columns)
from fashionlens.data.cache import AnnotationCache
from fashionlens.errors import DataError
from fashionlens.images import release_memory
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
READER_VERSION = 2
# Image names longer than this (bytes) send a block of list_attr_img.txt to the rescan.
_NAME_WINDOW = 256


def _text(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"expected UTF-8 text, found undecodable bytes ({exc})", path=path) from None


def _open_list(path: Path) -> tuple[BinaryIO, int, list[str]]:
    """A list file opened after its first two lines, with line 1's row count and line 2's header."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found: expected a DeepFashion list file here", path=path) from None
    try:
        first, second = _text(handle.readline(), path), _text(handle.readline(), path)
        if not second:
            raise DataError("expected a count line and a header line, found fewer than 2 lines", path=path)
        try:
            count = int(first.strip())
        except ValueError:
            raise DataError(f"expected the number of rows on line 1, found {first.strip()!r}", path=path, line=1) from None
    except DataError:
        handle.close()
        raise
    return handle, count, second.split()


def _check_count(path: Path, count: int, found: int) -> None:
    if found != count:
        raise DataError(f"line 1 says {count} rows, but the file has {found} rows", path=path, line=1)


def _rows(path: Path, split_name_from_end: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(line number, tokens) of every non-blank row, in Python: for the vocabulary files and the rescan.

    ``split_name_from_end`` is for the vocabulary files, whose names contain spaces: only the last
    token (the type) is split off.
    """
    handle, count, _ = _open_list(path)
    found = 0
    with handle:
        for number, line in enumerate(handle, start=3):
            text = _text(line, path).strip()
            if text:
                found += 1
                yield number, (text.rsplit(None, 1) if split_name_from_end else text.split())
    _check_count(path, count, found)


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


def _columns(tokens: list[str], expected: int, path: Path, line: int, layout: str) -> None:
    if len(tokens) != expected:
        raise DataError(f"expected {expected} columns ({layout}), found {len(tokens)}", path=path, line=line)


def read_vocabulary(path: Path, type_names: dict[int, str]) -> tuple[list[str], list[int]]:
    """Names and types from ``list_category_cloth.txt`` / ``list_attr_cloth.txt``."""
    names: list[str] = []
    types: list[int] = []
    for line, tokens in _rows(path, split_name_from_end=True):
        if len(tokens) != 2:
            raise DataError(f"expected '<name> <type>', found {' '.join(tokens)!r}", path=path, line=line)
        if tokens[0] in names:
            raise DataError(f"duplicate name {tokens[0]!r}: expected each name once", path=path, line=line)
        names.append(tokens[0])
        types.append(_int(tokens[1], path, line, "type", type_names))
    return names, types


def _rescan(path: Path, check: Callable[[list[str], int], Any], lines: Iterable[int]) -> NoReturn:
    """Read ``lines`` of ``path`` again, one by one, with ``check`` (which raises what is wrong with a row)."""
    wanted = {int(line) for line in lines}
    last = max(wanted)
    for line, tokens in _rows(path):
        if line in wanted:
            check(tokens, line)
        if line >= last:
            break
    raise DataError(f"cannot read line {min(wanted)} (and the lines after it) as a DeepFashion list row",
                    path=path, line=min(wanted))


# --------------------------------------------------------------------------------------------------
# numpy over a list file's bytes, in blocks of whole lines (list_attr_img.txt is 878 MB). Anything a
# vectorised check refuses is read again by _rescan with the row's own check, which names the line.

_BLOCK_BYTES = 1 << 22


def _blocks(handle: BinaryIO, path: Path) -> Iterator[tuple[bytes, int]]:
    """The rest of ``handle`` as ``(bytes of whole lines, ending in a newline; line of the first)``."""
    line, carry = 3, b""
    with handle:
        while True:
            block = handle.read(_BLOCK_BYTES)
            data = carry + block
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if cut:
                if not data.isascii():  # ASCII is UTF-8; isascii is many times faster than a decode
                    _text(data[:cut], path)
                yield data[:cut] if data[cut - 1] == 10 else data[:cut] + b"\n", line
                line += data.count(b"\n", 0, cut)
            carry = data[cut:]
            if not block:
                return


@dataclass
class _Tokens:
    """The rows of a block of whole lines as the byte offsets of their whitespace-separated tokens."""

    data: np.ndarray  # uint8, followed by as many zeros as the longest token has bytes
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
        # Rows of a strided view of the block, one starting at each token: a gather of bytes without
        # an index per byte (that was 62 MB of int64 for a block of image names).
        chars = sliding_window_view(self.data, width)[starts]
        chars[np.arange(width) >= widths[:, None]] = 0
        return chars.view(f"S{width}").reshape(-1)


def _tokenise(data: bytes, first_line: int) -> _Tokens:
    a = np.frombuffer(data, dtype=np.uint8)
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
    padded = np.concatenate([a, np.zeros(int((ends - starts).max(initial=1)), np.uint8)])
    return _Tokens(padded, starts, ends, before[rows] - counts, counts, first_line + rows)


def _numbers(column: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A column as numbers (numpy parses bytes as int() and float() do) and where it holds no finite one.

    A column numpy cannot convert marks every row: the rescan finds the row (and says what is wrong).
    """
    try:
        values = column.astype(dtype)
    except (ValueError, OverflowError):
        return np.zeros(len(column), dtype), np.ones(len(column), dtype=bool)
    return values, ~np.isfinite(values)


class _Lookup:
    """The rows of list_category_img.txt that an auxiliary file's image names are, refusing unknown and repeated ones."""

    def __init__(self, root: Path, names: np.ndarray) -> None:
        self.root, self.names = root, names

    def rows(self, path: Path, names: np.ndarray, lines: np.ndarray) -> np.ndarray:
        if len(names) == len(self.names) and np.array_equal(names, self.names):  # the benchmark's own order
            return np.arange(len(names))
        value_set = pa.array(self.names, type=pa.binary())
        rows = pc.fill_null(pc.index_in(pa.array(names, type=pa.binary()), value_set=value_set), -1)
        rows = rows.to_numpy(zero_copy_only=False).astype(np.int64)
        seen = np.zeros(len(rows), dtype=bool)
        seen[np.unique(rows, return_index=True)[1]] = True
        bad = np.flatnonzero((rows < 0) | ~seen)
        if len(bad):
            name, line = names[bad[0]].decode("utf-8", "surrogateescape"), int(lines[bad[0]])
            if rows[bad[0]] >= 0:
                raise DataError(f"duplicate row for image {name!r} in this file", path=path, line=line)
            resolve_inside(self.root, name, path, line)
            raise DataError(f"image {name!r} is not listed in list_category_img.txt: expected every annotated image there",
                            path=path, line=line)
        return rows

    def row(self, name: str) -> int:
        found = np.flatnonzero(self.names == name.encode("utf-8", "surrogateescape"))
        return int(found[0]) if len(found) else -1


# What a block parser returns: its rows' image names (bytes) and lines, the lines to read again (rows
# a vectorised check refused) and what the block says.
Block = tuple[np.ndarray, np.ndarray, np.ndarray, Any]


def _read_list(path: Path, check: Callable[[list[str], int], Any], parse: Callable[[bytes, int, int], Block],
               lookup: _Lookup | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    """Every block of ``path`` through ``parse(data, line of its first row, rows before it)``.

    Rows it refuses are read again with ``check``, which names the line. Returns the image names,
    their lines, their rows in list_category_img.txt (with ``lookup``) and what each block said.
    """
    handle, count, _ = _open_list(path)
    names, lines, parts, found = [np.zeros(0, "S1")], [np.zeros(0, np.int64)], [], 0
    for data, first in _blocks(handle, path):
        block_names, block_lines, refused, part = parse(data, first, found)
        if len(refused):
            _rescan(path, check, refused)
        names.append(block_names)
        lines.append(block_lines)
        parts.append(part)
        found += len(block_lines)
    all_names, all_lines = np.concatenate(names), np.concatenate(lines)
    rows = None if lookup is None else lookup.rows(path, all_names, all_lines)
    _check_count(path, count, found)
    # glibc keeps the freed blocks in its heap (100 MB after list_attr_img.txt, 2026-12-07), where
    # the next file's blocks do not fit: handed back, they no longer add to the first read's peak.
    release_memory()
    return all_names, all_lines, rows, parts


def _tokenised(parse: Callable[[_Tokens], tuple[np.ndarray, Any]]) -> Callable[[bytes, int, int], Block]:
    """A block parser from ``parse(tokens)``, which gives the rows it refuses and what the block says."""

    def parse_block(data: bytes, first: int, _: int) -> Block:
        tokens = _tokenise(data, first)
        refused, part = parse(tokens)
        return tokens.column(0), tokens.lines, tokens.lines[refused], part

    return parse_block


def _category_rows(path: Path, root: Path, num_categories: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image names (bytes), 0-based categories and line numbers of list_category_img.txt."""

    def check(tokens: list[str], line: int) -> None:
        _columns(tokens, 2, path, line, "image_name category_label")
        resolve_inside(root, tokens[0], path, line)
        _int(tokens[1], path, line, "category_label", range(1, num_categories + 1))

    def parse(tokens: _Tokens) -> tuple[np.ndarray, Any]:
        if (tokens.counts != 2).any():
            return tokens.counts != 2, None
        labels, bad = _numbers(tokens.column(1), int)
        return bad | (labels < 1) | (labels > num_categories), labels - 1

    names, lines, _, parts = _read_list(path, check, _tokenised(parse), None)
    # Only absolute names and names with '..' (or a drive's ':') can leave the root: check those exactly.
    risky = (np.char.find(names, b"..") >= 0) | (np.char.find(names, b":") >= 0)
    risky |= np.char.startswith(names, b"/") | np.char.startswith(names, b"\\")
    for i in np.flatnonzero(risky):
        resolve_inside(root, names[i].decode(), path, int(lines[i]))
    _, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    repeated = np.flatnonzero(first[inverse] != np.arange(len(names)))
    if len(repeated):
        i = repeated[0]
        raise DataError(f"duplicate row for image {names[i].decode()!r}: first listed at {path}:{lines[first[inverse[i]]]}",
                        path=path, line=int(lines[i]))
    return names, np.concatenate([np.zeros(0, np.int64), *parts]).astype(np.int64), lines


def _attribute_block(data: bytes, num_attrs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Image names (bytes) and the ``(rows, num_attrs)`` int8 values of whole lines of list_attr_img.txt,
    or None where a line is not ``name`` then ``num_attrs`` of 1, -1 and 0 (the rescan says how).

    Not tokenised: twice as fast as ``_tokenise`` and a check of its token widths (0.03 against
    0.06 s a 4 MB block, 2026-12-07), about 6 s less over the 878 MB file, whose whole first read
    must stay under one bare split pass (11-16 s on the shared 2-core box)."""
    a = np.frombuffer(bytearray(data), dtype=np.uint8)  # a writable copy: the names are blanked below
    if np.count_nonzero(a < 32) != np.count_nonzero((a == 10) | (a == 13) | (a == 9)):
        return None
    newlines = np.flatnonzero(a == 10)
    starts = np.zeros_like(newlines)
    starts[1:] = newlines[:-1] + 1
    blank = (newlines == starts) | ((newlines == starts + 1) & (a[starts] == 13))
    starts = starts[~blank]
    if (a[starts] <= 32).any():  # a line starting with whitespace
        return None
    window = np.minimum(starts[:, None] + np.arange(_NAME_WINDOW), len(a) - 1)
    chars = a[window]
    space = chars <= 32
    name_lengths = space.argmax(axis=1)
    if not space[np.arange(len(starts)), name_lengths].all():  # no whitespace in the window
        return None
    width = int(name_lengths.max(initial=1))
    inside = np.arange(width) < name_lengths[:, None]
    names = np.where(inside, chars[:, :width], 0).astype(np.uint8).view(f"S{width}").reshape(-1)
    a[window[:, :width][inside]] = 32
    # Only whitespace, 0, 1 and - may be left. Every token is then 0, 1 or -1 exactly when each digit
    # ends its token and each minus sign is followed by a 1.
    space, digit, minus = a <= 32, (a & 0xFE) == 48, a == 45
    if np.count_nonzero(space) + np.count_nonzero(digit) + np.count_nonzero(minus) != len(a):
        return None
    if (digit[:-1] > space[1:]).any() or (minus[:-1] > (a[1:] == 49)).any():
        return None
    # "-1" becomes " 2"; with the whitespace deleted each value is then one byte: 0, 1 or 2.
    np.add(a[1:], minus[:-1], out=a[1:], casting="unsafe")
    np.putmask(a, minus, 32)
    stream = a.tobytes().translate(None, b" \t\r")
    if blank.any():
        stream = b"".join(line + b"\n" for line in stream.split(b"\n") if line)
    values = np.frombuffer(stream, dtype=np.uint8)
    if len(values) != len(starts) * (num_attrs + 1):
        return None
    values = values.reshape(len(starts), num_attrs + 1)
    if (values[:, -1] != 10).any():  # a row with more or fewer values than attributes
        return None
    decoded = values[:, :-1].view(np.int8) - ord("0")
    decoded[decoded == 2] = -1
    return names, decoded


def _attributes(path: Path, lookup: _Lookup, num_attrs: int) -> tuple[np.ndarray, int]:
    """``(images, num_attrs)`` int8 values, and how many rows the file has."""

    def check(tokens: list[str], line: int) -> None:
        _columns(tokens, 1 + num_attrs, path, line, f"image_name then {num_attrs} attribute labels")
        for token in tokens[1:]:
            value = int(token) if token.lstrip("-").isdigit() else None
            if value not in (1, -1, 0):
                found = repr(token) if value is None else value
                raise DataError(f"expected attribute labels 1, -1 or 0, found {found}", path=path, line=line)

    n = len(lookup.names)
    # Filled in place, in the file's order while there is room: a list of blocks joined at the end
    # would hold the 289 MB twice.
    values = np.zeros((n, num_attrs), dtype=np.int8)

    def parse(data: bytes, first: int, before: int) -> Block:
        lines_in_block = data.count(b"\n")
        block = _attribute_block(data, num_attrs)
        if block is None:
            return np.zeros(0, "S1"), np.zeros(0, np.int64), np.arange(first, first + lines_in_block), None
        names, block_values = block
        values[before : before + len(names)] = block_values[: max(0, n - before)]
        lines = _tokenise(data, first).lines if len(names) < lines_in_block else first + np.arange(len(names))
        return names, lines, lines[:0], None

    _, _, rows, _ = _read_list(path, check, parse, lookup)
    if not np.array_equal(rows, np.arange(n)):
        ordered = np.zeros_like(values)
        ordered[rows] = values[: len(rows)]
        values = ordered
    return values, len(rows)


def _bboxes(path: Path, lookup: _Lookup) -> tuple[np.ndarray, int]:
    def check(tokens: list[str], line: int) -> None:
        _columns(tokens, 5, path, line, "image_name x_1 y_1 x_2 y_2")
        x1, y1, x2, y2 = (_float(t, path, line, name) for t, name in zip(tokens[1:], ("x_1", "y_1", "x_2", "y_2")))
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"expected x_1 < x_2 and y_1 < y_2, found {x1:g} {y1:g} {x2:g} {y2:g}", path=path, line=line)

    def parse(tokens: _Tokens) -> tuple[np.ndarray, Any]:
        if (tokens.counts != 5).any():
            return tokens.counts != 5, None
        (x1, b1), (y1, b2), (x2, b3), (y2, b4) = (_numbers(tokens.column(k), float) for k in range(1, 5))
        return b1 | b2 | b3 | b4 | (x2 <= x1) | (y2 <= y1), np.stack([x1, y1, x2, y2], axis=1)

    _, _, rows, parts = _read_list(path, check, _tokenised(parse), lookup)
    boxes = np.full((len(lookup.names), 4), np.nan)
    boxes[rows] = np.concatenate([np.zeros((0, 4)), *parts])
    return boxes, len(rows)


def _landmarks(path: Path, lookup: _Lookup, categories: np.ndarray,
               category_types: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks into the fixed 8 slots; the column layout is read from the header line."""
    handle, _, header = _open_list(path)
    handle.close()
    lowered = [h.lower() for h in header]
    if lowered[:1] != ["image_name"]:
        raise DataError(f"expected a header starting with 'image_name', found {' '.join(header)!r}", path=path, line=2)
    has_type, has_variation = "clothes_type" in lowered, "variation_type" in lowered
    lead = 1 + int(has_type) + int(has_variation)
    layout = "image_name" + (" clothes_type" if has_type else "") + (" variation_type" if has_variation else "")

    def check(tokens: list[str], line: int) -> None:
        rest = len(tokens) - lead
        if rest < 0 or rest % 3 or rest // 3 not in TYPE_BY_LANDMARK_COUNT:
            raise DataError(f"expected {lead} leading column(s) ({layout}) then 4, 6 or 8 (visibility x y) triples "
                            f"= {lead + 12}, {lead + 18} or {lead + 24} columns, found {len(tokens)}", path=path, line=line)
        count = rest // 3
        clothes_type = TYPE_BY_LANDMARK_COUNT[count]
        if has_type:
            written = _int(tokens[1], path, line, "clothes_type", CLOTHES_TYPE_NAMES)
            if written != clothes_type:
                raise DataError(f"clothes_type {written} ({CLOTHES_TYPE_NAMES[written]}) needs "
                                f"{len(LANDMARK_SLOTS[written])} landmarks, found {count}", path=path, line=line)
        else:  # No clothes_type column: the triple count says it, and the category's type must agree.
            row = lookup.row(tokens[0])
            category_type = category_types[categories[row]] if row >= 0 else clothes_type
            if category_type != clothes_type:
                raise DataError(f"{count} landmarks mean a {CLOTHES_TYPE_NAMES[clothes_type]} garment, but the image's "
                                f"category is {CLOTHES_TYPE_NAMES[category_type]} (type {category_type})", path=path, line=line)
        if has_variation:
            _int(tokens[1 + int(has_type)], path, line, "variation_type")
        for k in range(count):
            v, x, y = tokens[lead + 3 * k : lead + 3 * k + 3]
            _int(v, path, line, f"landmark_visibility_{k + 1}", (0, 1, 2))
            _float(x, path, line, f"landmark_location_x_{k + 1}"), _float(y, path, line, f"landmark_location_y_{k + 1}")

    def parse(tokens: _Tokens) -> tuple[np.ndarray, Any]:
        triples = (tokens.counts - lead) // 3
        bad = (tokens.counts < lead) | ((tokens.counts - lead) % 3 != 0) | ~np.isin(triples, list(TYPE_BY_LANDMARK_COUNT))
        if bad.any():
            return bad, None
        points = np.zeros((len(tokens.lines), NUM_LANDMARKS, 2), dtype=np.float32)
        visibility = np.full((len(tokens.lines), NUM_LANDMARKS), CUT_OFF, dtype=np.int8)
        for triple_count, clothes_type in TYPE_BY_LANDMARK_COUNT.items():
            group = np.flatnonzero(triples == triple_count)
            if has_type:
                written, wrong = _numbers(tokens.column(1, group), int)
                bad[group] |= wrong | (written != clothes_type)
            if has_variation:
                bad[group] |= _numbers(tokens.column(1 + int(has_type), group), int)[1]
            for k, slot in enumerate(LANDMARK_SLOTS[clothes_type] if len(group) else ()):
                (v, wrong), (x, wrong_x), (y, wrong_y) = (_numbers(tokens.column(lead + 3 * k + d, group), t)
                                                          for d, t in ((0, int), (1, float), (2, float)))
                bad[group] |= wrong | wrong_x | wrong_y | (v < 0) | (v > 2)
                visibility[group, slot], points[group, slot, 0], points[group, slot, 1] = v, x, y
        return bad, (points, visibility, np.array([TYPE_BY_LANDMARK_COUNT.get(t, 0) for t in range(9)])[triples])

    _, lines, rows, parts = _read_list(path, check, _tokenised(parse), lookup)
    n = len(lookup.names)
    points = np.zeros((n, NUM_LANDMARKS, 2), dtype=np.float32)
    visibility = np.full((n, NUM_LANDMARKS), CUT_OFF, dtype=np.int64)
    types = np.zeros(len(rows), dtype=np.int64)
    start = 0
    for block_points, block_visibility, block_types in parts:
        block = slice(start, start + len(block_types))
        points[rows[block]], visibility[rows[block]], types[block] = block_points, block_visibility, block_types
        start = block.stop
    disagree = np.asarray(category_types, dtype=np.int64)[categories[rows]] != types
    if not has_type and disagree.any():
        _rescan(path, check, lines[disagree])
    present = np.zeros(n, dtype=bool)
    present[rows] = True
    return points, visibility, present


def _partition(path: Path, lookup: _Lookup) -> np.ndarray:
    def check(tokens: list[str], line: int) -> None:
        _columns(tokens, 2, path, line, "image_name evaluation_status")
        if tokens[1] not in SPLITS:
            raise DataError(f"expected evaluation_status in {SPLITS}, found {tokens[1]!r}", path=path, line=line)

    def parse(tokens: _Tokens) -> tuple[np.ndarray, Any]:
        if (tokens.counts != 2).any():
            return tokens.counts != 2, None
        status = tokens.column(1)
        codes = np.full(len(status), -1, dtype=np.int8)
        for k, split in enumerate(SPLITS):
            codes[status == split.encode()] = k
        return codes < 0, codes

    _, _, rows, parts = _read_list(path, check, _tokenised(parse), lookup)
    splits = np.full(len(lookup.names), -1, dtype=np.int8)
    splits[rows] = np.concatenate([np.zeros(0, np.int8), *parts])
    return splits


# --------------------------------------------------------------------------------------------------
# All splits in one parse, cached; the datasets are views of it.


@dataclass
class DeepFashionAnnotations:
    """Every list file under one DeepFashion root, parsed once for all three splits.

    Row ``i`` is line ``lines[i]`` of ``list_category_img.txt``. ``attribute_values`` holds the
    attribute labels as written (1, -1, 0 = unknown; one int8 array, half the memory of labels plus
    mask, which each record gets as its own small arrays). ``bboxes`` is NaN where an image has no
    box row; ``splits`` holds indices into ``SPLITS`` (-1: not in the partition) and is None
    without a partition file. A bad partition file is only an error when a split is asked for
    (``partition_error``), as it was when the partition was read per split.
    """

    root: Path
    category_names: list[str]
    category_types: list[int]
    attribute_names: list[str]
    attribute_type_ids: list[int]
    image_names: pa.Array  # strings
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
                f"(first: {self.image_names[int(unlisted[0])].as_py()!r})",
                path=partition_path,
            )
        return np.flatnonzero(self.splits == SPLITS.index(split))

    def record(self, row: int, values: np.ndarray) -> Record:
        """The record of ``row``, with its attribute values taken from ``values`` (forced or not)."""
        box = None if self.bboxes is None or np.isnan(self.bboxes[row, 0]) else tuple(self.bboxes[row].tolist())
        return Record(
            image=Path(os.path.normpath(os.path.join(self.root, self.image_names[row].as_py()))),
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
            values = take_columns(self.attribute_values, self.attribute_names, vocabulary, 0)  # 0: unknown
        type_by_name = dict(zip(self.attribute_names, self.attribute_type_ids))
        attribute_types = [ATTRIBUTE_TYPE_IDS[type_by_name[name]] if name in type_by_name else "unknown" for name in vocabulary]
        return FashionDataset(
            LazyRows(partial(self.record, values=values), rows),
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

    # What the cache keeps: the JSON-able fields in its header, the arrays (None ones left out) as columns.
    _META_FIELDS = ("category_names", "category_types", "attribute_names", "attribute_type_ids", "partition_error", "notes")
    _ARRAY_FIELDS = ("image_names", "lines", "categories", "attribute_values", "bboxes", "landmarks", "landmark_visibility",
                     "splits")


def _parse(root: Path) -> DeepFashionAnnotations:
    anno = root / "Anno"
    category_names, category_types = read_vocabulary(anno / "list_category_cloth.txt", CLOTHES_TYPE_NAMES)
    attribute_names, attribute_type_ids = read_vocabulary(anno / "list_attr_cloth.txt", ATTRIBUTE_TYPE_IDS)
    notes: list[str] = []
    names, categories, lines = _category_rows(anno / "list_category_img.txt", root, len(category_names))
    lookup = _Lookup(root, names)
    n = len(names)

    attr_path = anno / "list_attr_img.txt"
    if attr_path.exists():
        values, found = _attributes(attr_path, lookup, len(attribute_names))
        if n - found:
            notes.append(f"{n - found} image(s) have no row in {attr_path.name}: all their attributes are unknown")
    else:
        values = np.zeros((n, len(attribute_names)), dtype=np.int8)
        notes.append(f"{attr_path} not found: every attribute is unknown")

    bboxes = None
    bbox_path = anno / "list_bbox.txt"
    if bbox_path.exists():
        bboxes, found = _bboxes(bbox_path, lookup)
        if n - found:
            notes.append(f"{n - found} image(s) have no row in {bbox_path.name}: the whole image is their box")

    points = visibility = None
    landmark_path = anno / "list_landmarks.txt"
    if landmark_path.exists():
        points, visibility, present = _landmarks(landmark_path, lookup, categories, category_types)
        if (~present).any():
            notes.append(f"{int((~present).sum())} image(s) have no row in {landmark_path.name}: all landmarks are cut off (2)")

    splits = partition_error = None
    partition_path = root / "Eval" / "list_eval_partition.txt"
    if partition_path.exists():
        try:
            splits = _partition(partition_path, lookup)
        except DataError as error:
            partition_error = [error.reason, error.path, error.line]

    return DeepFashionAnnotations(
        root=root,
        category_names=category_names,
        category_types=category_types,
        attribute_names=attribute_names,
        attribute_type_ids=attribute_type_ids,
        image_names=pa.array(names, type=pa.binary()).cast(pa.string()),  # from the bytes array: no 289k Python objects
        lines=lines,
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

    The cache (``fashionlens.data.cache``) is used while every list file keeps its size and mtime;
    ``cache=False`` (or ``FASHIONLENS_ANNOTATION_CACHE=off``) parses and writes nothing.
    """
    root = Path(root)
    fields = DeepFashionAnnotations._META_FIELDS, DeepFashionAnnotations._ARRAY_FIELDS
    store = AnnotationCache("deepfashion", root, [root / name for name in LIST_FILES], READER_VERSION, enabled=cache)
    cached = store.load()
    if cached is not None:
        meta, columns = cached
        return DeepFashionAnnotations(root=root, **{name: meta[name] for name in fields[0]},
                                      **{name: columns.get(name) for name in fields[1]})
    annotations = _parse(root)
    note = store.store({name: getattr(annotations, name) for name in fields[0]},
                       {name: getattr(annotations, name) for name in fields[1] if getattr(annotations, name) is not None})
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
    if split is not None and split not in SPLITS:  # before the parse, not after it
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    return parse_deepfashion(root, cache=cache).dataset(split, **options)
