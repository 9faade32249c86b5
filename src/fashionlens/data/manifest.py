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

The whole file is parsed by pyarrow (its CSV and JSON readers, then its string kernels); a row that
fails a check is read again on its own in Python, which names its line and what is wrong. The parse
is kept in the annotation cache (``fashionlens.data.cache``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from fashionlens.data.base import (FashionDataset, LazyRows, ReaderOptions, Record, force_vocabulary,
                                   resolve_inside)
from fashionlens.data.cache import AnnotationCache
from fashionlens.errors import DataError

UNKNOWN_PREFIX = "?"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_OUTSIDE_HINT = "pass allow_outside_root=True to read it anyway"
# Bump when what the reader keeps in the cache changes: older cache files are then ignored.
READER_VERSION = 2
# A path that needs the exact check: empty, absolute, or one that normpath would change.
_ODD_PATH = r"^$|^/|(^|/)\.\.?(/|$)|//|/$"
_JSONL_SCHEMA = pa.schema([("image", pa.string()), ("labels", pa.list_(pa.string())), ("unknown", pa.list_(pa.string()))])
Entry = tuple[str, list[str], list[str]]  # image as written, positive labels, unknown labels


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


def _image_path(base: Path, value: str, path: Path, line: int, allow_outside_root: bool) -> str:
    """The row's image path, normalised, refused (with the file and line) when it leaves ``base``."""
    value = value.strip()
    if not value:
        raise DataError("expected an image path, found an empty value", path=path, line=line)
    if allow_outside_root:
        return os.path.normpath(os.path.join(base, value))
    if os.path.isabs(value):
        normalised, root = os.path.normpath(value), os.path.abspath(base)
        if normalised != root and not normalised.startswith(root.rstrip(os.sep) + os.sep):
            raise DataError(f"image path {value!r} leaves the dataset root {base}: expected a path inside it; {_OUTSIDE_HINT}",
                            path=path, line=line)
        return normalised
    try:
        return str(resolve_inside(base, value, path, line))
    except DataError as exc:
        raise DataError(f"{exc.reason}; {_OUTSIDE_HINT}", path=path, line=line) from None


# --------------------------------------------------------------------------------------------------
# One row read on its own: where every message about a bad row comes from.


def _line(data: bytes, line: int) -> str:
    return data.split(b"\n", line)[line - 1].decode("utf-8", "surrogatepass").rstrip("\r")


def _csv_row(text: str, path: Path, line: int) -> Entry | None:
    """The entry of one CSV line (None for a blank one)."""
    try:
        row = next(csv.reader([text]), [])
    except csv.Error as exc:
        raise DataError(f"expected a CSV row, found {text[:80]!r} ({exc})", path=path, line=line) from None
    if not row or (len(row) == 1 and not row[0].strip()):
        return None
    if len(row) != 2:
        raise DataError(f"expected 2 columns (image,labels), found {len(row)}: {row!r}", path=path, line=line)
    positives, unknown = [], []
    for token in (token.strip() for token in row[1].split(";")):
        if token.startswith(UNKNOWN_PREFIX):
            name = token[len(UNKNOWN_PREFIX) :].strip()
            if not name:
                raise DataError("expected a label name after '?', found nothing", path=path, line=line)
            unknown.append(name)
        elif token:
            positives.append(token)
    return row[0], positives, unknown


def _jsonl_row(text: str, path: Path, line: int) -> Entry | None:
    """The entry of one JSON Lines line (None for a blank one)."""
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"expected one JSON object per line, found invalid JSON ({exc.msg})", path=path, line=line) from None
    except RecursionError:
        raise DataError("expected one JSON object per line, found JSON nested too deeply to parse", path=path, line=line) from None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise DataError(f"expected an object with a string 'image', found {text.strip()[:80]!r}", path=path, line=line)
    extra = set(record) - {"image", "labels", "unknown"}
    if extra:
        raise DataError(f"expected only the keys image, labels, unknown, found also {sorted(extra)}", path=path, line=line)
    lists = []
    for key in ("labels", "unknown"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise DataError(f"expected {key!r} to be a list of non-empty strings, found {value!r}", path=path, line=line)
        lists.append(value)
    return record["image"], lists[0], lists[1]


_ROW_READERS = {"csv": _csv_row, "jsonl": _jsonl_row}


def _check_row(kind: str, data: bytes, line: int, path: Path, base: Path, allow_outside_root: bool,
               label_names: Sequence[str] | None = None) -> None:
    """Read line ``line`` again on its own and raise what is wrong with it."""
    image, positives, unknown = _ROW_READERS[kind](_line(data, line), path, line)  # type: ignore[misc]
    _image_path(base, image, path, line, allow_outside_root)
    both = set(positives) & set(unknown)
    if both:
        raise DataError(f"label(s) {sorted(both)} are both positive and unknown", path=path, line=line)
    outside = [name for name in [*positives, *unknown] if label_names is not None and name not in set(label_names)]
    if outside:
        vocabulary = list(label_names or ())
        raise DataError(
            f"label(s) {', '.join(repr(n) for n in outside)} not in the forced vocabulary of "
            f"{len(vocabulary)} labels (expected one of {vocabulary[:10]}{' ...' if len(vocabulary) > 10 else ''})",
            path=path,
            line=line,
        )
    raise DataError("this row could not be read", path=path, line=line)


# --------------------------------------------------------------------------------------------------
# The whole file at once: columns of images and (row, label) pairs.


def _row_lines(data: bytes, first: int) -> np.ndarray:
    """Line numbers (from 1) of the lines of ``data`` that are not blank, from line ``first`` on."""
    a = np.frombuffer(data, dtype=np.uint8)
    ends = np.append(np.flatnonzero(a == 10), len(a))
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts
    length[length > 0] -= a[np.maximum(ends[length > 0] - 1, 0)] == 13  # CRLF
    numbers = np.flatnonzero(length > 0) + 1
    return numbers[numbers >= first]


def _csv_header(data: bytes, path: Path) -> None:
    header = next(csv.reader([_line(data, 1)]), [])
    if [h.strip().lower() for h in header] != ["image", "labels"]:
        raise DataError(f"expected the header 'image,labels', found {','.join(header)!r}", path=path, line=1)


def _csv_columns(data: bytes, path: Path) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """Image cells, labels cells and line numbers; ValueError where pyarrow cannot read the file."""
    _csv_header(data, path)
    end = data.find(b"\n")
    table = pa_csv.read_csv(
        pa.BufferReader(pa.py_buffer(data).slice(len(data) if end < 0 else end + 1)),
        read_options=pa_csv.ReadOptions(column_names=["image", "labels"], block_size=16 << 20),
        parse_options=pa_csv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True),
        convert_options=pa_csv.ConvertOptions(column_types={"image": pa.string(), "labels": pa.string()},
                                              strings_can_be_null=False, quoted_strings_can_be_null=False),
    )
    lines = _row_lines(data, 2)
    if len(lines) != table.num_rows:
        raise ValueError("a quoted line break")
    return table["image"].combine_chunks(), table["labels"].combine_chunks(), lines


def _csv_pairs(cells: pa.Array) -> tuple[tuple[np.ndarray, pa.Array], tuple[np.ndarray, pa.Array]]:
    """(row, name) pairs of the positive and the unknown labels of CSV ``labels`` cells."""
    lists = pc.split_pattern(cells, ";")
    tokens, parents = pc.utf8_trim_whitespace(pc.list_flatten(lists)), pc.list_parent_indices(lists)
    keep = pc.greater(pc.binary_length(tokens), 0)
    tokens, parents = pc.filter(tokens, keep), pc.filter(parents, keep)
    is_unknown = pc.starts_with(tokens, UNKNOWN_PREFIX)
    unknown = pc.utf8_trim_whitespace(pc.utf8_slice_codeunits(pc.filter(tokens, is_unknown), len(UNKNOWN_PREFIX)))
    positive = pc.invert(is_unknown)
    return ((pc.filter(parents, positive).to_numpy(), pc.filter(tokens, positive)),
            (pc.filter(parents, is_unknown).to_numpy(), unknown))


def _columns(kind: str, data: bytes, path: Path) -> tuple[pa.Array, tuple, tuple, np.ndarray]:
    """Images, positive and unknown (row, name) pairs, and each row's line.

    pyarrow reads the file; where it cannot (a row it does not take: quotes across lines, odd
    whitespace, a value of the wrong type), every line is read on its own, which names the bad one.
    """
    try:
        if kind == "csv":
            images, cells, lines = _csv_columns(data, path)
            return images, *_csv_pairs(cells), lines
        lines = _row_lines(data, 1)
        a = np.frombuffer(data, dtype=np.uint8)
        starts = np.concatenate(([0], np.flatnonzero(a == 10) + 1))[lines - 1]
        if (a[starts] != ord("{")).any():  # one object per line, from column 1 (and nothing nested at its top)
            raise ValueError("not an object at the start of a line")
        table = pa_json.read_json(io.BytesIO(data), parse_options=pa_json.ParseOptions(
            explicit_schema=_JSONL_SCHEMA, unexpected_field_behavior="error"))
        if table.num_rows != len(lines) or table["image"].null_count:
            raise ValueError("not one object per line")
        # A JSON null reads as a missing key: the rows that have one are read again on their own.
        nulls = pc.or_(pc.is_null(table["labels"]), pc.is_null(table["unknown"])).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(nulls) if b"null" in data else ():
            _jsonl_row(_line(data, int(lines[row])), path, int(lines[row]))
        pairs = [(pc.list_parent_indices(c).to_numpy(), pc.list_flatten(c)) for c in
                 (table["labels"].combine_chunks(), table["unknown"].combine_chunks())]
        return table["image"].combine_chunks(), pairs[0], pairs[1], lines
    except (ValueError, pa.ArrowInvalid):
        pass
    text = data.decode("utf-8", "surrogatepass").split("\n")
    entries, lines = [], []
    for number, line in enumerate(text[1:] if kind == "csv" else text, start=2 if kind == "csv" else 1):
        entry = _ROW_READERS[kind](line.rstrip("\r"), path, number)  # type: ignore[operator]
        if entry is not None:
            entries.append(entry)
            lines.append(number)
    pairs = [(np.array([r for r, e in enumerate(entries) for _ in e[k]], dtype=np.int64),
              pa.array([name for e in entries for name in e[k]], type=pa.string())) for k in (1, 2)]
    return pa.array([e[0] for e in entries], type=pa.string()), pairs[0], pairs[1], np.array(lines, dtype=np.int64)


def _parse(kind: str, data: bytes, path: Path, base: Path,
           allow_outside_root: bool) -> tuple[pa.Array, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Normalised image paths, lines, vocabulary, labels and mask of a whole manifest."""
    images, (rows_p, names_p), (rows_u, names_u), lines = _columns(kind, data, path)

    def check(row: int) -> None:
        _check_row(kind, data, int(lines[row]), path, base, allow_outside_root)

    vocabulary = sorted(pc.unique(pa.concat_arrays([names_p.cast(pa.string()), names_u.cast(pa.string())])).to_pylist())
    labels = np.zeros((len(lines), len(vocabulary)), dtype=np.uint8)
    mask = np.ones_like(labels)
    value_set = pa.array(vocabulary, type=pa.string())
    labels[rows_p, pc.index_in(names_p, value_set=value_set).to_numpy(zero_copy_only=False)] = 1
    mask[rows_u, pc.index_in(names_u, value_set=value_set).to_numpy(zero_copy_only=False)] = 0
    bad = np.zeros(len(lines), dtype=bool)
    bad[rows_u[pc.equal(pc.binary_length(names_u), 0).to_numpy(zero_copy_only=False)]] = True  # '?' alone
    bad[rows_p[pc.equal(pc.binary_length(names_p), 0).to_numpy(zero_copy_only=False)]] = True
    bad |= (labels > mask).any(axis=1)  # positive and unknown at once
    if bad.any():
        check(int(np.argmax(bad)))

    images = pc.utf8_trim_whitespace(images)
    odd = pc.match_substring_regex(images, _ODD_PATH).to_numpy(zero_copy_only=False) if os.sep == "/" \
        else np.ones(len(images), dtype=bool)
    base_text = os.path.normpath(base)
    full = pc.binary_join_element_wise("" if base_text == "." else base_text.rstrip("/") + "/", images, "")
    if odd.any():
        exact = [_image_path(base, images[int(row)].as_py(), path, int(lines[row]), allow_outside_root)
                 for row in np.flatnonzero(odd)]
        full = pc.replace_with_mask(full, pa.array(odd), pa.array(exact, type=pa.string()))
    index = pc.dictionary_encode(full).indices.to_numpy()
    _, first = np.unique(index, return_index=True)
    repeated = np.flatnonzero(first[index] != np.arange(len(index)))
    if len(repeated):
        row = int(repeated[0])
        raise DataError(f"duplicate row for image {full[row].as_py()!r}: first listed on line {lines[first[index[row]]]}",
                        path=path, line=int(lines[row]))
    return full, lines, vocabulary, labels, mask


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
    path = Path(path)
    base = Path(images_root) if images_root is not None else path.parent
    options = {"version": READER_VERSION, "format": kind, "root": os.path.abspath(base), "text": os.path.normpath(base),
               "allow_outside_root": allow_outside_root}
    store = AnnotationCache("manifest", path, [path], options, enabled=cache)
    cached = store.load()
    notes = []
    if cached is not None:
        meta, columns = cached
        images, lines, labels, mask, vocabulary = (*(columns[k] for k in ("images", "lines", "labels", "mask")),
                                                   meta["vocabulary"])
    else:
        images, lines, vocabulary, labels, mask = _parse(kind, _utf8(path), path, base, allow_outside_root)
        note = store.store({"vocabulary": vocabulary}, {"images": images, "lines": lines, "labels": labels, "mask": mask})
        notes = [note] if note else []
    if label_names is not None:
        outside = np.isin(np.asarray(vocabulary, dtype=object), list(label_names), invert=True)
        rows = (labels[:, outside] > 0).any(axis=1) | (mask[:, outside] == 0).any(axis=1)
        if rows.any():
            _check_row(kind, _utf8(path), int(lines[np.argmax(rows)]), path, base, allow_outside_root, label_names)
    labels, mask, vocabulary = force_vocabulary(labels, mask, vocabulary, label_names, path, absent_is_unknown=False)

    def record(row: int) -> Record:
        return Record(image=Path(images[row].as_py()), labels=labels[row], label_mask=mask[row], source=path,
                      line=int(lines[row]))

    dataset = FashionDataset(LazyRows(record, np.arange(len(lines))), vocabulary, has_bbox=False,
                                 has_landmarks=False, transform=transform, skip_bad=skip_bad, notes=notes)
    if not allow_outside_root:  # the text of each path stays inside; where its links lead is checked with the photos
        dataset.roots[str(path)] = os.path.realpath(base)
    return dataset


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
