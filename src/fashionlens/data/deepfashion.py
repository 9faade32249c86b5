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
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashionlens.data.base import CUT_OFF, NUM_LANDMARKS, FashionDataset, Record, force_vocabulary, resolve_inside
from fashionlens.errors import DataError
from fashionlens.vocabulary import ATTRIBUTE_TYPE_IDS

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
    """Maps image names (as written in the list files) to rows, refusing duplicates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.where: list[tuple[Path, int]] = []

    def add(self, name: str, path: Path, line: int) -> int:
        if name in self.index:
            first = self.where[self.index[name]]
            raise DataError(f"duplicate row for image {name!r}: first listed at {first[0]}:{first[1]}", path=path, line=line)
        resolve_inside(self.root, name, path, line)
        self.index[name] = len(self.names)
        self.names.append(name)
        self.where.append((path, line))
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


def _parse_landmarks(
    listing: ListFile,
    table: _ImageTable,
    categories: np.ndarray,
    category_types: Sequence[int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Landmarks into the fixed 8 slots; the column layout is read from the header line."""
    path = listing.path
    header = [h.lower() for h in listing.header]
    if not header or header[0] != "image_name":
        raise DataError(f"expected a header starting with 'image_name', found {' '.join(listing.header)!r}", path=path, line=2)
    has_type = "clothes_type" in header
    has_variation = "variation_type" in header
    lead = 1 + int(has_type) + int(has_variation)
    layout = "image_name" + (" clothes_type" if has_type else "") + (" variation_type" if has_variation else "")
    n = len(table.names)
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


def read_deepfashion(
    root: str | Path,
    split: str | None = None,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    crop_to_bbox: bool = True,
    bbox_margin: float = 0.1,
    decode_on_validate: bool = True,
) -> FashionDataset:
    """Read the DeepFashion Category & Attribute benchmark under ``root`` (see the module docstring).

    ``split`` keeps only the images whose ``evaluation_status`` is that split (every image must then
    be in the partition file). ``label_names`` forces the attribute order (e.g. a saved model's).
    Category ids are stored 0-based; the labels are the attributes (1 positive, -1 negative,
    0 unknown -> masked).
    """
    root = Path(root)
    anno = root / "Anno"
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    category_names, category_types = read_vocabulary(anno / "list_category_cloth.txt", CLOTHES_TYPE_NAMES)
    attribute_names, attribute_type_ids = read_vocabulary(anno / "list_attr_cloth.txt", ATTRIBUTE_TYPE_IDS)
    num_attrs = len(attribute_names)
    notes: list[str] = []

    table = _ImageTable(root)
    listing = read_list_file(anno / "list_category_img.txt")
    categories_list: list[int] = []
    for line, tokens in listing.rows:
        _check_columns(tokens, 2, listing.path, line, "image_name category_label")
        table.add(tokens[0], listing.path, line)
        label = _int(tokens[1], listing.path, line, "category_label", range(1, len(category_names) + 1))
        categories_list.append(label - 1)
    categories = np.asarray(categories_list, dtype=np.int64)
    n = len(table.names)

    labels = np.zeros((n, num_attrs), dtype=np.uint8)
    mask = np.zeros((n, num_attrs), dtype=np.uint8)
    attr_path = anno / "list_attr_img.txt"
    if attr_path.exists():
        _, attr_rows = iter_list_file(attr_path)
        seen: set[str] = set()
        for line, tokens in attr_rows:
            _check_columns(tokens, 1 + num_attrs, attr_path, line, f"image_name then {num_attrs} attribute labels")
            i = table.lookup(tokens[0], attr_path, line, seen)
            try:
                values = np.array(tokens[1:], dtype=np.int64)
            except ValueError:
                bad = next(t for t in tokens[1:] if not t.lstrip("-").isdigit())
                raise DataError(f"expected attribute labels 1, -1 or 0, found {bad!r}", path=attr_path, line=line) from None
            if not np.isin(values, (-1, 0, 1)).all():
                bad_value = values[~np.isin(values, (-1, 0, 1))][0]
                raise DataError(f"expected attribute labels 1, -1 or 0, found {bad_value}", path=attr_path, line=line)
            labels[i] = values == 1
            mask[i] = values != 0
        missing = n - len(seen)
        if missing:
            notes.append(f"{missing} image(s) have no row in {attr_path.name}: all their attributes are unknown")
    else:
        notes.append(f"{attr_path} not found: every attribute is unknown")

    bboxes: list[tuple[float, float, float, float] | None] = [None] * n
    bbox_path = anno / "list_bbox.txt"
    if bbox_path.exists():
        listing = read_list_file(bbox_path)
        seen = set()
        for line, tokens in listing.rows:
            _check_columns(tokens, 5, listing.path, line, "image_name x_1 y_1 x_2 y_2")
            i = table.lookup(tokens[0], listing.path, line, seen)
            x1, y1, x2, y2 = (_float(t, listing.path, line, name) for t, name in zip(tokens[1:], ("x_1", "y_1", "x_2", "y_2")))
            if x2 <= x1 or y2 <= y1:
                raise DataError(f"expected x_1 < x_2 and y_1 < y_2, found {x1:g} {y1:g} {x2:g} {y2:g}", path=listing.path, line=line)
            bboxes[i] = (x1, y1, x2, y2)
        if n - len(seen):
            notes.append(f"{n - len(seen)} image(s) have no row in {bbox_path.name}: the whole image is their box")

    landmark_path = anno / "list_landmarks.txt"
    landmarks = None
    if landmark_path.exists():
        points, visibility, present = _parse_landmarks(read_list_file(landmark_path), table, categories, category_types)
        landmarks = (points, visibility)
        if (~present).any():
            notes.append(f"{int((~present).sum())} image(s) have no row in {landmark_path.name}: all landmarks are cut off (2)")

    keep = np.ones(n, dtype=bool)
    if split is not None:
        partition_path = root / "Eval" / "list_eval_partition.txt"
        listing = read_list_file(partition_path)
        status: list[str | None] = [None] * n
        seen = set()
        for line, tokens in listing.rows:
            _check_columns(tokens, 2, listing.path, line, "image_name evaluation_status")
            if tokens[1] not in SPLITS:
                raise DataError(f"expected evaluation_status in {SPLITS}, found {tokens[1]!r}", path=listing.path, line=line)
            status[table.lookup(tokens[0], listing.path, line, seen)] = tokens[1]
        unlisted = [name for name, s in zip(table.names, status) if s is None]
        if unlisted:
            raise DataError(
                f"expected every image of list_category_img.txt in the partition, {len(unlisted)} are missing "
                f"(first: {unlisted[0]!r})",
                path=partition_path,
            )
        keep = np.array([s == split for s in status], dtype=bool)

    labels, mask, vocabulary = force_vocabulary(labels, mask, attribute_names, label_names, attr_path, absent_is_unknown=True)
    type_by_name = dict(zip(attribute_names, attribute_type_ids))
    attribute_types = [ATTRIBUTE_TYPE_IDS[type_by_name[name]] if name in type_by_name else "unknown" for name in vocabulary]

    records: list[Record] = []
    for i in np.flatnonzero(keep):
        source, line = table.where[i]
        records.append(
            Record(
                image=resolve_inside(root, table.names[i], source, line),
                labels=labels[i],
                label_mask=mask[i],
                category=int(categories[i]),
                bbox=bboxes[i],
                landmarks=None if landmarks is None else landmarks[0][i],
                landmark_visibility=None if landmarks is None else landmarks[1][i],
                source=source,
                line=line,
            )
        )
    return FashionDataset(
        records,
        vocabulary,
        category_names=category_names,
        attribute_types=attribute_types,
        transform=transform,
        crop_to_bbox=crop_to_bbox,
        bbox_margin=bbox_margin,
        skip_bad=skip_bad,
        decode_on_validate=decode_on_validate,
        notes=notes,
    )


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
