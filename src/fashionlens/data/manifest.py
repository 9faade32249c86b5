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
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashionlens.data.base import FashionDataset, Record
from fashionlens.errors import DataError

UNKNOWN_PREFIX = "?"


def _image_path(base: Path, value: str, path: Path, line: int) -> Path:
    value = value.strip()
    if not value:
        raise DataError("expected an image path, found an empty value", path=path, line=line)
    image = Path(value)
    return image if image.is_absolute() else base / image


def _build(
    entries: list[tuple[Path, list[str], list[str], int]],
    path: Path,
    label_names: Sequence[str] | None,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None,
    skip_bad: bool,
) -> FashionDataset:
    if label_names is not None:
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
    else:
        vocabulary = sorted({name for _, positives, unknown, _ in entries for name in (*positives, *unknown)})
    index = {name: i for i, name in enumerate(vocabulary)}
    seen: dict[Path, int] = {}
    records = []
    for image, positives, unknown, line in entries:
        if image in seen:
            raise DataError(f"duplicate row for image {str(image)!r}: first listed on line {seen[image]}", path=path, line=line)
        seen[image] = line
        both = set(positives) & set(unknown)
        if both:
            raise DataError(f"label(s) {sorted(both)} are both positive and unknown", path=path, line=line)
        labels = np.zeros(len(vocabulary), dtype=np.uint8)
        mask = np.ones(len(vocabulary), dtype=np.uint8)
        labels[[index[n] for n in positives]] = 1
        mask[[index[n] for n in unknown]] = 0
        records.append(Record(image=image, labels=labels, label_mask=mask, source=path, line=line))
    return FashionDataset(records, vocabulary, transform=transform, skip_bad=skip_bad)


def read_manifest_csv(
    path: str | Path,
    images_root: str | Path | None = None,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
) -> FashionDataset:
    """Read an ``image,labels`` CSV manifest (see the module docstring for ``;`` and ``?label``)."""
    path = Path(path)
    base = Path(images_root) if images_root is not None else path.parent
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("manifest not found", path=path) from None
    entries = []
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header] != ["image", "labels"]:
            raise DataError(f"expected the header 'image,labels', found {','.join(header or [])!r}", path=path, line=1)
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
            entries.append((_image_path(base, row[0], path, line), positives, unknown, line))
    return _build(entries, path, label_names, transform, skip_bad)


def _string_list(record: dict[str, Any], key: str, path: Path, line: int) -> list[str]:
    value = record.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise DataError(f"expected {key!r} to be a list of non-empty strings, found {value!r}", path=path, line=line)
    return value


def read_manifest_jsonl(
    path: str | Path,
    images_root: str | Path | None = None,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
) -> FashionDataset:
    """Read a JSON Lines manifest of ``{"image", "labels", "unknown"?}`` objects."""
    path = Path(path)
    base = Path(images_root) if images_root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("manifest not found", path=path) from None
    entries = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(f"expected one JSON object per line, found invalid JSON ({exc.msg})", path=path, line=line) from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise DataError(f"expected an object with a string 'image', found {raw.strip()[:80]!r}", path=path, line=line)
        extra = set(record) - {"image", "labels", "unknown"}
        if extra:
            raise DataError(f"expected only the keys image, labels, unknown, found also {sorted(extra)}", path=path, line=line)
        entries.append(
            (
                _image_path(base, record["image"], path, line),
                _string_list(record, "labels", path, line),
                _string_list(record, "unknown", path, line),
                line,
            )
        )
    return _build(entries, path, label_names, transform, skip_bad)
