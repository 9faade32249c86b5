"""Plain manifests for your own multi-label data: CSV or JSON Lines.

CSV (header ``image,labels``)::

    image,labels
    shoots/a.jpg,street;casual
    shoots/b.jpg,
    shoots/c.jpg,romantic;?feminine

``labels`` are separated by ``;``. An empty cell means the image has no positive label (every label
is a known negative). A ``?`` prefix marks a label as unknown for that image: it is masked out of the
loss and metrics instead of being counted as a negative. Every label not listed is a negative.

JSON Lines, one object per line::

    {"image": "shoots/a.jpg", "labels": ["street", "casual"], "unknown": ["feminine"]}

``unknown`` is optional. In both formats relative image paths resolve against the manifest's folder
(or ``images_root``), and the vocabulary is the sorted union of all labels unless ``label_names``
forces one; then a label outside it is an error naming the file and line.

Image paths must stay inside that folder (the dataset root): an absolute path elsewhere
(``/etc/shadow``) or one that climbs out (``../../x.jpg``) is an error naming the file and line,
unless ``allow_outside_root=True``. Paths are normalised first, so ``images/../images/x.jpg`` is
the same image as ``images/x.jpg`` (a duplicate row). Manifests are UTF-8 (a byte-order mark is
dropped); UTF-16 is read when it starts with its byte-order mark; anything else is an error naming
the line of the first byte that does not decode.

A manifest of a million rows is parsed with pyarrow (CSV reader, JSON reader, string kernels);
a CSV's labels are split once per distinct ``labels`` cell (a manifest repeats few label sets), and
each row takes its cell's row of the label matrices. One in which that fast parse meets anything
unusual (quotes, a bad row, a duplicate, a label in two roles, a path to check) is read again line
by line, which is where every message comes from. The parse is kept in the annotation cache
(``fashionlens.data.cache``) while the manifest keeps its size, times and content digest. Measured
in docs/benchmarks.md ("Readers at full size").
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from fashionlens.data.base import FashionDataset, ReaderOptions, Record, force_vocabulary, resolve_inside
from fashionlens.data.cache import LazyFashionDataset, LazyRecords, Strings, cache_for_files
from fashionlens.errors import DataError

UNKNOWN_PREFIX = "?"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_OUTSIDE_HINT = "pass allow_outside_root=True to read it anyway"
# Bump when what the reader keeps in the cache changes: older cache files are then ignored.
CACHE_LAYOUT = 1


# --------------------------------------------------------------------------------------------------
# Text and paths


def _line_and_column(data: bytes, offset: int) -> tuple[int, int]:
    start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - start + 1


def _utf8(path: Path) -> bytes:
    """The manifest's bytes as UTF-8 without a byte-order mark, or a DataError naming the line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("manifest not found", path=path) from None
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    elif data.startswith(_UTF16_BOMS):
        try:
            return data.decode("utf-16").encode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].decode("utf-16", "replace").count("\n") + 1
            raise DataError(f"expected UTF-16 text after its byte-order mark, found bytes that do not decode ({exc.reason})", path=path, line=line) from None
    try:
        if not data.isascii():  # ASCII is UTF-8; isascii is many times faster than a decode
            data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_and_column(data, exc.start)
        raise DataError(
            f"expected UTF-8 text (or UTF-16 starting with a byte-order mark), found the byte 0x{data[exc.start]:02x} "
            f"at column {column}, which is not UTF-8: save the manifest as UTF-8",
            path=path,
            line=line,
        ) from None
    nul = data.find(b"\x00")
    if nul >= 0:
        line, column = _line_and_column(data, nul)
        raise DataError(
            f"expected UTF-8 text, found a NUL byte at column {column} (UTF-16 without a byte-order mark?): "
            "save the manifest as UTF-8",
            path=path,
            line=line,
        )
    return data


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root if root.endswith(os.sep) else root + os.sep)


def _image_path(base: Path, value: str, path: Path, line: int, allow_outside_root: bool) -> Path:
    """The row's image path, normalised, refused (with the file and line) when it leaves ``base``."""
    value = value.strip()
    if not value:
        raise DataError("expected an image path, found an empty value", path=path, line=line)
    if allow_outside_root:
        return Path(os.path.normpath(os.path.join(base, value)))
    if os.path.isabs(value):
        normalised = os.path.normpath(value)
        if not _inside(normalised, os.path.abspath(base)):
            raise DataError(
                f"image path {value!r} leaves the dataset root {base}: expected a path inside it; {_OUTSIDE_HINT}",
                path=path,
                line=line,
            )
        return Path(normalised)
    try:
        return resolve_inside(base, value, path, line)
    except DataError as exc:
        raise DataError(f"{exc.reason}; {_OUTSIDE_HINT}", path=path, line=line) from None


# --------------------------------------------------------------------------------------------------
# The line-by-line readers: exact, and the source of every message about a bad row.


@dataclass
class _Rows:
    """A parsed manifest: one row per image, labels over the sorted union of the names used."""

    images: Strings  # normalised image paths; relative ones are relative to ``prefix``
    lines: np.ndarray  # line of each row
    vocabulary: list[str]
    labels: np.ndarray  # (rows, labels) uint8
    mask: np.ndarray  # (rows, labels) uint8, 0 = unknown
    prefix: str = ""  # the root and a '/', or ''


def _check_forced(entries: list[tuple[Path, list[str], list[str], int]], path: Path, label_names: Sequence[str]) -> None:
    vocabulary = list(label_names)
    known = set(vocabulary)
    for _, positives, unknown, line in entries:
        outside = [name for name in [*positives, *unknown] if name not in known]
        if outside:
            raise DataError(
                f"label(s) {', '.join(repr(n) for n in outside)} not in the forced vocabulary of "
                f"{len(vocabulary)} labels (expected one of {vocabulary[:10]}{' ...' if len(vocabulary) > 10 else ''})",
                path=path,
                line=line,
            )


def _rows_from_entries(
    entries: list[tuple[Path, list[str], list[str], int]], path: Path, label_names: Sequence[str] | None
) -> _Rows:
    if label_names is not None:
        _check_forced(entries, path, label_names)
    vocabulary = sorted({name for _, positives, unknown, _ in entries for name in (*positives, *unknown)})
    index = {name: i for i, name in enumerate(vocabulary)}
    seen: dict[Path, int] = {}
    labels = np.zeros((len(entries), len(vocabulary)), dtype=np.uint8)
    mask = np.ones((len(entries), len(vocabulary)), dtype=np.uint8)
    for row, (image, positives, unknown, line) in enumerate(entries):
        if image in seen:
            raise DataError(f"duplicate row for image {str(image)!r}: first listed on line {seen[image]}", path=path, line=line)
        seen[image] = line
        both = set(positives) & set(unknown)
        if both:
            raise DataError(f"label(s) {sorted(both)} are both positive and unknown", path=path, line=line)
        labels[row, [index[n] for n in positives]] = 1
        mask[row, [index[n] for n in unknown]] = 0
    return _Rows(
        Strings.from_list([str(image) for image, _, _, _ in entries]),
        np.array([line for _, _, _, line in entries], dtype=np.int64),
        vocabulary,
        labels,
        mask,
    )


def _csv_entries(text: str, path: Path, base: Path, allow_outside_root: bool) -> list[tuple[Path, list[str], list[str], int]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["image", "labels"]:
        raise DataError(f"expected the header 'image,labels', found {','.join(header or [])!r}", path=path, line=1)
    entries = []
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != 2:
            raise DataError(f"expected 2 columns (image,labels), found {len(row)}: {row!r}", path=path, line=line)
        positives, unknown = [], []
        for token in row[1].split(";"):
            token = token.strip()
            if not token:
                continue
            if token.startswith(UNKNOWN_PREFIX):
                name = token[len(UNKNOWN_PREFIX) :].strip()
                if not name:
                    raise DataError("expected a label name after '?', found nothing", path=path, line=line)
                unknown.append(name)
            else:
                positives.append(token)
        entries.append((_image_path(base, row[0], path, line, allow_outside_root), positives, unknown, line))
    return entries


def _string_list(record: dict[str, Any], key: str, path: Path, line: int) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DataError(f"expected {key!r} to be a list of non-empty strings, found {value!r}", path=path, line=line)
    return value


def _jsonl_entries(text: str, path: Path, base: Path, allow_outside_root: bool) -> list[tuple[Path, list[str], list[str], int]]:
    entries = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"expected one JSON object per line, found invalid JSON ({exc.msg})", path=path, line=line) from None
        except RecursionError:
            raise DataError("expected one JSON object per line, found JSON nested too deeply to parse", path=path, line=line) from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise DataError(f"expected an object with a string 'image', found {raw.strip()[:80]!r}", path=path, line=line)
        extra = set(record) - {"image", "labels", "unknown"}
        if extra:
            raise DataError(f"expected only the keys image, labels, unknown, found also {sorted(extra)}", path=path, line=line)
        entries.append(
            (
                _image_path(base, record["image"], path, line, allow_outside_root),
                _string_list(record, "labels", path, line),
                _string_list(record, "unknown", path, line),
                line,
            )
        )
    return entries


# --------------------------------------------------------------------------------------------------
# The fast readers: pyarrow over the whole file. _Unexpected sends the file to the readers above.


class _Unexpected(Exception):
    """The fast parser met something it leaves to the line-by-line reader (which names the line)."""


# A path that normpath would change: '.', '..', '//' or a trailing '/'.
_NEEDS_NORMALISING = r"(^|/)\.\.?(/|$)|//|/$"


def _row_lines(data: bytes, first_line: int, newlines: np.ndarray) -> np.ndarray:
    """Line numbers of the non-empty lines of ``data`` (CRLF or LF), counting from ``first_line``."""
    a = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], newlines + 1))
    ends = np.concatenate((newlines, [len(a)]))
    lengths = ends - starts
    has_return = np.zeros(len(lengths), dtype=bool)
    nonempty = lengths > 0
    has_return[nonempty] = a[ends[nonempty] - 1] == 13
    return first_line + np.flatnonzero(lengths - has_return > 0)


def _newlines(data: bytes, allow_tabs: bool) -> np.ndarray:
    """Offsets of the newlines; _Unexpected at other control bytes (but tabs), or a lone carriage return.

    Other control bytes are whitespace to ``str.strip`` or line breaks to ``str.splitlines``, and a
    lone carriage return ends a CSV row: the line-by-line readers handle those.
    """
    a = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(a == 10)
    controls = np.count_nonzero(a < 32)
    if controls != len(newlines):
        returns = np.flatnonzero(a == 13)
        if controls != len(newlines) + len(returns) + (np.count_nonzero(a == 9) if allow_tabs else 0):
            raise _Unexpected
        if len(returns) and (returns[-1] + 1 >= len(a) or (a[returns + 1] != 10).any()):
            raise _Unexpected
    return newlines


def _may_need_normalising(images: pa.StringArray) -> bool:
    """Whether some path may need normalising: a '.' or '/' next to a '.' or '/', a path that starts
    with '.' or ends with '/'. The paths are not empty (else an end would be another path's).

    Conservative (a pair across two paths only costs the exact check of the paths) and vectorised
    over the column's own buffer: numpy compares each byte with its successor several times faster
    than a regular expression per path.
    """
    if len(images) == 0:
        return False
    data, offsets = _string_buffers(images)
    data, offsets = data[offsets[0] : offsets[-1]], offsets - offsets[0]
    if (data[offsets[:-1]] == ord(".")).any() or (data[offsets[1:] - 1] == ord("/")).any():
        return True
    mark = (data | 1) == ord("/")  # '.' (46) or '/' (47)
    return bool((mark[:-1] & mark[1:]).any())


def _fast_paths(images: pa.Array, base: Path, allow_outside_root: bool) -> tuple[Strings, str]:
    """The image paths, normalised and checked, vectorised; _Unexpected where the exact reader must decide.

    Returns the paths (relative to the returned prefix, the root and a '/', where inside it) and the prefix.
    """
    n = len(images)
    if os.sep != "/" or (n and pc.min(pc.binary_length(images)).as_py() == 0):  # an empty path
        raise _Unexpected
    base_text = os.path.normpath(base)
    prefix = "" if base_text == "." else base_text.rstrip("/") + "/"
    absolute = pc.starts_with(images, "/")
    any_absolute = n > 0 and pc.any(absolute).as_py()
    odd = pc.match_substring_regex(images, _NEEDS_NORMALISING) if _may_need_normalising(images) else None
    if not allow_outside_root and any_absolute:
        # Without '.', '..' or '//' a relative path stays inside; an absolute one must start with the root.
        root = os.path.abspath(base_text)
        outside = pc.invert(pc.or_(pc.starts_with(images, root.rstrip("/") + "/"), pc.equal(images, root)))
        if pc.any(pc.and_(absolute, outside if odd is None else pc.and_(pc.invert(odd), outside))).as_py():
            raise _Unexpected
    odd_rows = np.flatnonzero(odd.to_numpy(zero_copy_only=False)) if odd is not None else []
    if len(odd_rows):  # usually none: normalised (and checked) the exact way, one by one
        exact = []
        for i in odd_rows:
            try:
                image = str(_image_path(base, images[int(i)].as_py(), Path(), 0, allow_outside_root))
            except DataError:
                raise _Unexpected from None
            # Kept relative to the root where it is inside, else absolute (records add the root).
            exact.append(image[len(prefix) :] if prefix and image.startswith(prefix) else
                         image if os.path.isabs(image) or not prefix else os.path.abspath(image))
        images = pc.replace_with_mask(images, odd, pa.array(exact, type=pa.string()))
        absolute = pc.starts_with(images, "/")
        any_absolute = pc.any(absolute).as_py()
    # Duplicates: the same full path twice. Sorting finds them faster than hashing does here, and
    # a manifest written in path order (the usual case) needs no sort: strictly increasing has none.
    full = pc.if_else(absolute, images, pc.binary_join_element_wise(pa.scalar(prefix), images, "")) \
        if any_absolute and prefix else images
    if n > 1 and not pc.all(pc.less(full.slice(0, n - 1), full.slice(1))).as_py():
        ordered = pc.take(full, pc.sort_indices(full))
        if pc.any(pc.equal(ordered.slice(1), ordered.slice(0, n - 1))).as_py():
            raise _Unexpected
    data, offsets = _string_buffers(images)
    return Strings(data, offsets.astype(np.int64)), prefix


def _string_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes and the ``len + 1`` offsets into them of an arrow string array, without a copy."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64 if pa.types.is_large_string(strings.type) else np.int32)
    data = strings.buffers()[2]
    return (np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8),
            offsets[strings.offset : strings.offset + len(strings) + 1])


def _label_matrices(
    count: int, positives: tuple[np.ndarray, pa.Array], unknown: tuple[np.ndarray, pa.Array]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The vocabulary (the sorted union of the names) and the ``(count, labels)`` label and mask
    matrices of (row, name) pairs; _Unexpected where a row has a label both positive and unknown."""
    rows_p, names_p = positives
    rows_u, names_u = unknown
    vocabulary = sorted(pc.unique(pa.concat_arrays([names_p, names_u])).to_pylist())
    value_set = pa.array(vocabulary, type=pa.string())
    cols_p = pc.index_in(names_p, value_set=value_set).to_numpy(zero_copy_only=False)
    cols_u = pc.index_in(names_u, value_set=value_set).to_numpy(zero_copy_only=False)
    labels = np.zeros((count, len(vocabulary)), dtype=np.uint8)
    mask = np.ones((count, len(vocabulary)), dtype=np.uint8)
    labels[rows_p, cols_p] = 1
    mask[rows_u, cols_u] = 0
    if (labels > mask).any():
        raise _Unexpected
    return vocabulary, labels, mask


def _pairs(lists: pa.ListArray) -> tuple[np.ndarray, pa.Array]:
    return pc.list_parent_indices(lists).to_numpy(), pc.list_flatten(lists).cast(pa.string())


def _cell_pairs(cells: pa.Array, blanks: bool) -> tuple[tuple[np.ndarray, pa.Array], tuple[np.ndarray, pa.Array]]:
    """(row, name) pairs of the positive and the unknown labels in CSV ``labels`` cells; _Unexpected at
    a '?' with nothing after it. ``blanks``: strip spaces and tabs as ``str.strip`` would."""
    lists = pc.split_pattern(cells, ";")
    tokens = pc.list_flatten(lists)
    if blanks:
        tokens = pc.utf8_trim(tokens, " \t")
    parents = pc.list_parent_indices(lists)
    keep = pc.greater(pc.binary_length(tokens), 0)
    tokens, parents = pc.filter(tokens, keep), pc.filter(parents, keep)
    is_unknown = pc.starts_with(tokens, UNKNOWN_PREFIX)
    names_u = pc.utf8_slice_codeunits(pc.filter(tokens, is_unknown), 1)
    if blanks:
        names_u = pc.utf8_trim(names_u, " \t")
    if len(names_u) and pc.min(pc.binary_length(names_u)).as_py() == 0:
        raise _Unexpected
    positive = pc.invert(is_unknown)
    return (pc.filter(parents, positive).to_numpy(), pc.filter(tokens, positive)), \
        (pc.filter(parents, is_unknown).to_numpy(), names_u)


def _csv_lines(data: bytes, start: int, rows: int) -> np.ndarray:
    """Line numbers of the CSV's ``rows`` rows, which start at byte ``start`` after the header (line 1);
    _Unexpected at odd control bytes.

    One count settles the usual file: without carriage returns, when the control bytes are exactly
    one per row (less a missing last newline), each is a row's newline, so no line is blank and row
    i sits on line i + 2. Else the newlines are located.
    """
    if data.find(b"\r", start) < 0 and \
            np.count_nonzero(np.frombuffer(data, dtype=np.uint8, offset=start) < 32) == rows - (not data.endswith(b"\n")):
        return np.arange(2, rows + 2, dtype=np.int64)
    body = data[start:]
    lines = _row_lines(body, 2, _newlines(body, allow_tabs=True))
    if len(lines) != rows:
        raise _Unexpected
    return lines


def _fast_csv(data: bytes, base: Path, allow_outside_root: bool) -> _Rows:
    """Labels come from the distinct ``labels`` cells (a manifest repeats few label sets): each is
    split once, and the rows take their cell's matrix row."""
    if not data.isascii() or b'"' in data:
        raise _Unexpected
    end = data.find(b"\n")
    header, start = (data, len(data)) if end < 0 else (data[:end], end + 1)  # start: the first row's byte
    if [h.strip().lower() for h in header.decode("ascii").split(",")] != ["image", "labels"]:
        raise _Unexpected
    try:
        table = pa_csv.read_csv(
            pa.BufferReader(pa.py_buffer(data).slice(start)),  # no copy of the rows
            read_options=pa_csv.ReadOptions(column_names=["image", "labels"], block_size=16 << 20),
            parse_options=pa_csv.ParseOptions(delimiter=",", quote_char=False, double_quote=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pa_csv.ConvertOptions(column_types={"image": pa.string(), "labels": pa.string()},
                                                  strings_can_be_null=False),
        )
    except pa.ArrowInvalid:  # a row with other than 2 columns (or a blank one with spaces)
        raise _Unexpected from None
    blanks = b" " in data or b"\t" in data
    images = table["image"].combine_chunks()
    if blanks:  # str.strip() of the cells, for the ASCII whitespace this file may have
        images = pc.utf8_trim(images, " \t")

    def lines_and_paths() -> tuple[np.ndarray, Strings, str]:
        return _csv_lines(data, start, table.num_rows), *_fast_paths(images, base, allow_outside_root)

    # The paths and line numbers in a second thread while this one does the labels: numpy and
    # pyarrow's kernels let go of the interpreter's lock, and each half takes the other core.
    with ThreadPoolExecutor(1) as pool:
        try:
            beside = pool.submit(lines_and_paths).result
        except RuntimeError:  # no thread to be had (a thread limit, the interpreter shutting down)
            beside = lines_and_paths
        cells = table["labels"].combine_chunks()
        distinct = pc.dictionary_encode(cells)
        if 2 * len(distinct.dictionary) <= len(cells):  # the usual manifest: few label sets, each split once
            vocabulary, cell_labels, cell_mask = _label_matrices(len(distinct.dictionary), *_cell_pairs(distinct.dictionary, blanks))
            which = distinct.indices.to_numpy()
            labels, mask = np.take(cell_labels, which, axis=0), np.take(cell_mask, which, axis=0)
        else:  # nearly every row its own set: no second copy of the matrices
            vocabulary, labels, mask = _label_matrices(len(cells), *_cell_pairs(cells, blanks))
        lines, paths, prefix = beside()
    return _Rows(paths, lines, vocabulary, labels, mask, prefix)


_JSONL_SCHEMA = pa.schema([("image", pa.string()), ("labels", pa.list_(pa.string())), ("unknown", pa.list_(pa.string()))])
# Line breaks to str.splitlines() that are not newlines, and escaped surrogates: left to json.loads.
_JSONL_ODD = re.compile(rb"\xc2\x85|\xe2\x80[\xa8\xa9]|\\u[dD][89abcdefABCDEF]")


def _fast_jsonl(data: bytes, base: Path, allow_outside_root: bool) -> _Rows:
    # JSON null is indistinguishable from a missing key once parsed: the line-by-line reader decides.
    if b"null" in data or (b"\\u" in data or not data.isascii()) and _JSONL_ODD.search(data):
        raise _Unexpected
    newlines = _newlines(data, allow_tabs=False)
    lines = _row_lines(data, 1, newlines)
    a = np.frombuffer(data, dtype=np.uint8)
    starts = np.concatenate(([0], newlines + 1))[lines - 1]
    if len(starts) and (a[np.minimum(starts, len(a) - 1)] != ord("{")).any():  # one object per line, from column 1
        raise _Unexpected
    try:
        table = pa_json.read_json(
            io.BytesIO(data),
            read_options=pa_json.ReadOptions(block_size=16 << 20),
            parse_options=pa_json.ParseOptions(explicit_schema=_JSONL_SCHEMA, unexpected_field_behavior="error"),
        )
    except pa.ArrowInvalid:
        raise _Unexpected from None
    if table.num_rows != len(lines):
        raise _Unexpected
    images = table["image"].combine_chunks()
    labels = table["labels"].combine_chunks()
    unknown = table["unknown"].combine_chunks()
    if images.null_count or pc.any(pc.not_equal(pc.utf8_trim_whitespace(images), images)).as_py():
        raise _Unexpected
    positives, unknowns = _pairs(labels), _pairs(unknown)  # a missing key (null) has no pairs
    for _, names in (positives, unknowns):
        if len(names) and pc.min(pc.binary_length(names)).as_py() == 0:  # an empty label name
            raise _Unexpected
    vocabulary, label_matrix, mask = _label_matrices(len(lines), positives, unknowns)
    paths, prefix = _fast_paths(images, base, allow_outside_root)
    return _Rows(paths, lines, vocabulary, label_matrix, mask, prefix)


# --------------------------------------------------------------------------------------------------
# Both formats


@dataclass
class _ManifestRecords:
    """Builds record ``row`` from the parsed columns (what LazyRecords calls)."""

    images: Strings
    prefix: str
    lines: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    source: Path

    def __call__(self, row: int) -> Record:
        image = self.images[row]
        return Record(image=Path(image if image.startswith("/") else self.prefix + image), labels=self.labels[row],
                      label_mask=self.mask[row], source=self.source, line=int(self.lines[row]))


class ManifestOptions(ReaderOptions, total=False):
    """The options both manifest readers take (defaults in ``_read``)."""

    allow_outside_root: bool
    cache: bool


def _read(
    kind: str,
    path: str | Path,
    images_root: str | Path | None = None,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    allow_outside_root: bool = False,
    cache: bool = True,
) -> FashionDataset:
    fast, entries = (_fast_csv, _csv_entries) if kind == "csv" else (_fast_jsonl, _jsonl_entries)
    path = Path(path)
    base = Path(images_root) if images_root is not None else path.parent
    options = {"layout": CACHE_LAYOUT, "format": kind, "root": os.path.abspath(base), "text": os.path.normpath(base),
               "allow_outside_root": allow_outside_root}
    store = cache_for_files("manifest", path, {"manifest": path}, options, enabled=cache)
    cached = store.load()
    data = rows = None
    if cached is not None:
        meta, arrays = cached
        rows = _Rows(Strings.from_arrays(arrays, "images"), arrays["lines"], meta["vocabulary"], arrays["labels"],
                     arrays["mask"], meta["prefix"])
    else:
        data = _utf8(path)
        try:
            rows = fast(data, base, allow_outside_root)
        except _Unexpected:
            rows = None
    if rows is not None and label_names is not None:
        used = rows.labels.any(axis=0) | (rows.mask == 0).any(axis=0)
        if set(np.asarray(rows.vocabulary, dtype=object)[used]) - set(label_names):
            rows = None  # the line-by-line reader names the first row with a label outside
    if rows is None:
        data = _utf8(path) if data is None else data
        rows = _rows_from_entries(entries(data.decode("utf-8", "surrogatepass"), path, base, allow_outside_root), path, label_names)
    notes = []
    if cached is None:
        note = store.store({"vocabulary": rows.vocabulary, "prefix": rows.prefix},
                           {**rows.images.arrays("images"), "lines": rows.lines, "labels": rows.labels, "mask": rows.mask})
        notes = [note] if note else []
    labels, mask, vocabulary = force_vocabulary(rows.labels, rows.mask, rows.vocabulary, label_names, path, absent_is_unknown=False)
    return LazyFashionDataset(
        LazyRecords(_ManifestRecords(rows.images, rows.prefix, rows.lines, labels, mask, path), np.arange(len(rows.lines))),
        vocabulary,
        has_bbox=False,
        has_landmarks=False,
        transform=transform,
        skip_bad=skip_bad,
        notes=notes,
    )


def read_manifest_csv(path: str | Path, images_root: str | Path | None = None, **options: Unpack[ManifestOptions]) -> FashionDataset:
    """Read an ``image,labels`` CSV manifest (see the module docstring for ``;``, ``?label`` and paths).

    Options: ``skip_bad``, ``transform``, ``label_names`` (forces the vocabulary),
    ``allow_outside_root``; ``cache=False`` neither reads nor writes the annotation cache
    (``fashionlens.data.cache``).
    """
    return _read("csv", path, images_root, **options)


def read_manifest_jsonl(path: str | Path, images_root: str | Path | None = None, **options: Unpack[ManifestOptions]) -> FashionDataset:
    """Read a JSON Lines manifest of ``{"image", "labels", "unknown"?}`` objects (options as ``read_manifest_csv``)."""
    return _read("jsonl", path, images_root, **options)
