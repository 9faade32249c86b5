"""DeepFashion fine-grained attributes (the DeepFashion Attribute Prediction challenge's release).

Layout under ``root``::

    img/NNNNN.jpg
    split/list_attr_cloth.txt     count, header, then 26 lines ``name group`` (group 1-6, see GROUPS)
    split/<split>.txt             one image path a line, relative to root -- defines the split
    split/<split>_attr.txt        6 integers a row: the class index (0-based) within each group
    split/<split>_landmards.txt   (sic) 16 integers a row: 8 x/y slots in pixels, ``0 0`` = absent
    split/<split>_bbox.txt        x1 y1 x2 y2

The annotation files have one row per path of ``<split>.txt``, in its order. A split without
``_attr.txt`` (the release's test split) is valid: its labels are all unknown (mask zeros).

Each group is one class per photo: the labels are one-hot within each group and the dataset says so
(``exclusive_types``). The garment type (upper_body, lower_body, full_body) is not written; it
decides what the landmark slots mean (DeepFashion's ``list_landmarks.txt`` layout, ``LANDMARK_SLOTS``)
and is inferred per row:

- full_body: slot 6 or 7 is present (a full-body garment's hem), or the length is maxi or mini (a dress);
- upper_body: otherwise, slot 4 or 5 is present (an upper garment's hem), or the neckline is not
  no_neckline, or the sleeve is not sleeveless;
- lower_body: the rest (slots 0-3 or fewer, no neckline, sleeveless, no dress length).

On the train split (5,000 rows) the slots alone decide 3,928 rows (1,652 with slot 6/7, 2,276 with
slot 4/5 and no dress length). The attributes decide the other 1,072: 53 dresses whose only lower
points are slots 4/5 (full_body, which makes them waistline points), 13 dresses with no slot 4-7
(full_body), 58 rows with no slot 4-7 but a neckline or sleeves (upper_body, hem cut off), and 948
rows with no slot 4-7, no neckline, sleeveless and no dress length. Those 948 stay ambiguous: trousers
and skirts look like this, but so would a strapless top with its hem out of the photo; they are
called lower_body (slots 0-3 = waistline and hem). Val: 164 full, 229 upper, 107 lower, the
attributes deciding 121 (107 of them lower_body). Without attributes the slots alone decide and a
row with only slots 0-3 is lower_body. The dataset's ``notes`` give the counts of the split read.

The photos' headers (not their pixels) are read to check that every landmark and box lies inside its
photo. Reading train takes about 0.45 s on a 2-core machine, 0.25 s of it the 5,000 headers.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Unpack

import numpy as np

from fashionlens.data.base import FashionDataset, ReaderOptions, Record, force_vocabulary, open_image, resolve_inside
from fashionlens.data.deepfashion import LANDMARK_SLOTS, read_vocabulary
from fashionlens.errors import DataError
from fashionlens.vocabulary import CUT_OFF, LANDMARK_NAMES, NUM_LANDMARKS, VISIBLE

#: The attribute groups, in the order of their ids 1-6 in list_attr_cloth.txt and of the columns of ``_attr.txt``.
GROUPS: tuple[str, ...] = ("texture", "sleeve", "length", "neckline", "fabric", "fit")
#: The category names: the garment type, inferred per row (module docstring).
GARMENT_TYPES: tuple[str, ...] = ("upper_body", "lower_body", "full_body")
UPPER_BODY, LOWER_BODY, FULL_BODY = range(3)
# Per garment type, the contract landmark each slot fills: DeepFashion numbers the types 1-3 in this order.
SLOT_LANDMARKS: tuple[tuple[int, ...], ...] = tuple(LANDMARK_SLOTS[t] for t in (1, 2, 3))
# The classes that tell a garment type (module docstring), by their names in list_attr_cloth.txt.
DRESS_LENGTHS = frozenset({"maxi_length", "mini_length"})
NO_NECKLINE, SLEEVELESS = "no_neckline", "sleeveless"


def _read_rows(path: Path, width: int, what: str) -> list[list[str]]:
    """The whitespace-separated values of each line (row ``i`` is line ``i + 1``), ``width`` a line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("file not found: expected a DeepFashion fine-grained list file here", path=path) from None
    while lines and not lines[-1].strip():
        lines.pop()
    rows = [line.split() for line in lines]
    for number, tokens in enumerate(rows, start=1):
        if len(tokens) != width:
            raise DataError(f"expected {width} value{'s' * (width > 1)} ({what}), found {len(tokens)}",
                            path=path, line=number)
    return rows


def _ints(tokens: list[str], path: Path, line: int, what: str) -> list[int]:
    values = []
    for token in tokens:
        try:
            values.append(int(token))
        except ValueError:
            raise DataError(f"expected integers ({what}), found {token!r}", path=path, line=line) from None
    return values


def _check_same_length(paths_file: Path, count: int, path: Path, rows: int) -> None:
    if rows < count:
        raise DataError(f"expected {count} rows, one per path of {paths_file.name}, found {rows}: the row for "
                        f"{paths_file.name}:{rows + 1} is missing", path=path, line=rows + 1)
    if rows > count:
        raise DataError(f"expected {count} rows, one per path of {paths_file.name}, found {rows}: this row and "
                        f"those after it have no path", path=path, line=count + 1)


def _garment_type(present: np.ndarray, classes: dict[str, str] | None) -> tuple[int, bool]:
    """The garment type of one row and whether the attributes (``group -> class name``) decided it."""
    if present[6] or present[7]:
        return FULL_BODY, False
    if classes is None:
        return (UPPER_BODY if present[4] or present[5] else LOWER_BODY), False
    if classes["length"] in DRESS_LENGTHS:
        return FULL_BODY, True
    if present[4] or present[5]:
        return UPPER_BODY, False
    if classes["neckline"] != NO_NECKLINE or classes["sleeve"] != SLEEVELESS:
        return UPPER_BODY, True
    return LOWER_BODY, True


def read_deepfashion_fine(
    root: str | Path,
    split: str | None = "train",
    *,
    crop_to_bbox: bool = True,
    bbox_margin: float = 0.0,
    **options: Unpack[ReaderOptions],
) -> FashionDataset:
    """Read one split of the DeepFashion fine-grained attribute release under ``root`` (module docstring).

    ``split`` None means "train". Labels are the 26 classes of list_attr_cloth.txt, one-hot within
    each of the six ``GROUPS`` (``attribute_types``, all of them ``exclusive_types``); the category
    is the inferred garment type (``GARMENT_TYPES``). ``crop_to_bbox`` with ``bbox_margin`` 0 crops
    to the box, the benchmark's protocol. ``label_names`` forces the label order (a saved model's).
    """
    root = Path(root)
    split = split or "train"
    split_dir = root / "split"
    list_path = split_dir / "list_attr_cloth.txt"
    names, group_ids = read_vocabulary(list_path, {index + 1: group for index, group in enumerate(GROUPS)})
    group_of = {name: GROUPS[g - 1] for name, g in zip(names, group_ids)}
    columns = [[j for j, g in enumerate(group_ids) if g == index + 1] for index in range(len(GROUPS))]
    empty = [GROUPS[index] for index, cols in enumerate(columns) if not cols]
    if empty:
        raise DataError(f"expected classes in each of the groups {', '.join(GROUPS)}, found none for {empty}",
                        path=list_path)

    paths_file = split_dir / f"{split}.txt"
    if not paths_file.is_file():
        found = sorted(p.stem for p in split_dir.glob("*.txt") if (split_dir / f"{p.stem}_landmards.txt").is_file())
        raise DataError(f"no split {split!r} here: expected one of {found or 'the splits'} "
                        f"(a <split>.txt beside its <split>_landmards.txt)", path=paths_file)
    paths = [tokens[0] for tokens in _read_rows(paths_file, 1, "an image path")]
    attr_path = split_dir / f"{split}_attr.txt"
    landmark_path = split_dir / f"{split}_landmards.txt"
    bbox_path = split_dir / f"{split}_bbox.txt"
    has_attributes = attr_path.is_file()
    attr_rows = _read_rows(attr_path, len(GROUPS), "a class index per group") if has_attributes else None
    landmark_rows = _read_rows(landmark_path, 2 * NUM_LANDMARKS, "8 x/y landmark slots")
    bbox_rows = _read_rows(bbox_path, 4, "x1 y1 x2 y2")
    for path, rows in ((attr_path, attr_rows), (landmark_path, landmark_rows), (bbox_path, bbox_rows)):
        if rows is not None:
            _check_same_length(paths_file, len(paths), path, len(rows))

    n = len(paths)
    labels = np.zeros((n, len(names)), dtype=np.uint8)
    mask = np.full((n, len(names)), 1 if has_attributes else 0, dtype=np.uint8)
    records: list[Record] = []
    raw_points: list[np.ndarray] = []
    decided_by: Counter[tuple[str, bool]] = Counter()  # (garment type, by the attributes) -> rows
    for i, relative in enumerate(paths):
        line = i + 1
        classes = None
        if attr_rows is not None:
            values = _ints(attr_rows[i], attr_path, line, "class indices")
            classes = {}
            for group, cols, k in zip(GROUPS, columns, values):
                if not 0 <= k < len(cols):
                    raise DataError(f"expected the {group} class in 0..{len(cols) - 1}, found {k}",
                                    path=attr_path, line=line)
                labels[i, cols[k]] = 1
                classes[group] = names[cols[k]]
        points = np.array(_ints(landmark_rows[i], landmark_path, line, "landmark x/y"), dtype=np.float32).reshape(-1, 2)
        present = (points != 0).any(axis=1)
        x1, y1, x2, y2 = _ints(bbox_rows[i], bbox_path, line, "box corners")
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"expected a box with x1 < x2 and y1 < y2, found {x1} {y1} {x2} {y2}",
                            path=bbox_path, line=line)
        category, by_attributes = _garment_type(present, classes)
        decided_by[GARMENT_TYPES[category], by_attributes] += 1
        slots = SLOT_LANDMARKS[category]
        assert not present[len(slots):].any(), "the rule gives every present slot a landmark"
        landmarks = np.zeros((NUM_LANDMARKS, 2), dtype=np.float32)
        visibility = np.full(NUM_LANDMARKS, CUT_OFF, dtype=np.int64)
        for slot, landmark in enumerate(slots):
            if present[slot]:
                landmarks[landmark] = points[slot]
                visibility[landmark] = VISIBLE
        raw_points.append(points)
        records.append(Record(
            image=resolve_inside(root, relative, paths_file, line), labels=labels[i], label_mask=mask[i],
            category=category, bbox=(float(x1), float(y1), float(x2), float(y2)), landmarks=landmarks,
            landmark_visibility=visibility, source=paths_file, line=line,
        ))

    skip_bad = bool(options.get("skip_bad"))
    for i, record in enumerate(records):
        line = i + 1
        try:
            with open_image(record, full_decode=False) as img:
                width, height = img.size
        except DataError:
            if skip_bad:  # FashionDataset drops it and says why
                continue
            raise
        points = raw_points[i]
        for slot in np.flatnonzero((points != 0).any(axis=1)):
            x, y = points[slot]
            if not (0 <= x < width and 0 <= y < height):
                name = LANDMARK_NAMES[SLOT_LANDMARKS[record.category][slot]]
                raise DataError(f"expected landmark slot {slot} ({name}) inside the {width}x{height} photo "
                                f"{paths[i]}, found ({x:g}, {y:g})", path=landmark_path, line=line)
        x1, y1, x2, y2 = record.bbox
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise DataError(f"expected a box inside the {width}x{height} photo {paths[i]}, found "
                            f"{x1:g} {y1:g} {x2:g} {y2:g}", path=bbox_path, line=line)

    labels, mask, vocabulary = force_vocabulary(labels, mask, names, options.get("label_names"), list_path,
                                                absent_is_unknown=True)
    if vocabulary != names:
        for i, record in enumerate(records):
            record.labels, record.label_mask = labels[i], mask[i]
    types = [group_of.get(name) for name in vocabulary]
    typed = all(types)
    # A group is "one of these" only while all its classes are columns.
    exclusive = [g for g, cols in zip(GROUPS, columns) if typed and all(names[j] in vocabulary for j in cols)]

    by_slots = sum(count for (_, by_attr), count in decided_by.items() if not by_attr)
    if has_attributes:
        by_attr = {garment: decided_by[garment, True] for garment in GARMENT_TYPES}
        note = (f"garment type inferred: {by_slots} rows from the landmark slots, {sum(by_attr.values())} by the "
                f"attributes ({by_attr['full_body']} full_body, {by_attr['upper_body']} upper_body, "
                f"{by_attr['lower_body']} lower_body: only slots 0-3, no neckline, sleeveless, no dress length; "
                f"ambiguous, called lower_body)")
    else:
        note = (f"garment type from the landmark slots alone ({attr_path.name} absent, labels unknown): "
                f"{decided_by['lower_body', False]} rows with only slots 0-3 called lower_body")
    return FashionDataset(
        records,
        vocabulary,
        category_names=GARMENT_TYPES,
        attribute_types=types if typed else None,
        exclusive_types=exclusive,
        landmarks_by_category={kind: [LANDMARK_NAMES[i] for i in SLOT_LANDMARKS[t]]
                               for t, kind in enumerate(GARMENT_TYPES)},
        display_names=[name.replace("_", " ") for name in vocabulary],
        transform=options.get("transform"),
        crop_to_bbox=crop_to_bbox,
        bbox_margin=bbox_margin,
        skip_bad=skip_bad,
        notes=[note],
    )
