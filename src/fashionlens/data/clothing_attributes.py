"""The Clothing Attribute Dataset (Chen, Gallagher, Girod, ECCV 2012): ``labels.csv`` + ``images/``.

Its 26 attributes are binarised into 37 named labels. Binary attributes are coded 1 = no, 2 = yes;
sleeve length, neckline and category are multi-class and become one-hot groups. A blank cell means
the 6 annotators disagreed: every label derived from that cell is unknown (masked), not negative.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashionlens.data.base import FashionDataset, Record, force_vocabulary, resolve_inside
from fashionlens.errors import DataError

# label name -> (CSV column, the code that makes it positive, display name, words for GloVe lookup).
# Binary columns: 2 = yes. Gender is split into both sexes so that each gets its own node in the graph.
BINARY_LABELS: tuple[tuple[str, str, int, str, str], ...] = (
    ("pattern_floral", "pattern_floral", 2, "floral pattern", "floral pattern"),
    ("pattern_graphics", "pattern_graphics", 2, "graphics pattern", "graphic print"),
    ("pattern_plaid", "pattern_plaid", 2, "plaid pattern", "plaid pattern"),
    ("pattern_solid", "pattern_solid", 2, "solid pattern", "solid plain"),
    ("pattern_spot", "pattern_spot", 2, "spotted pattern", "polka dots"),
    ("pattern_stripe", "pattern_stripe", 2, "striped pattern", "striped pattern"),
    ("color_black", "black", 2, "black", "black"),
    ("color_blue", "blue", 2, "blue", "blue"),
    ("color_brown", "brown", 2, "brown", "brown"),
    ("color_cyan", "cyan", 2, "cyan", "cyan"),
    ("color_gray", "gray", 2, "gray", "gray"),
    ("color_green", "green", 2, "green", "green"),
    ("color_many", "many_colors", 2, "many (>2) colors", "multicolored"),
    ("color_purple", "purple", 2, "purple", "purple"),
    ("color_red", "red", 2, "red", "red"),
    ("color_white", "white", 2, "white", "white"),
    ("color_yellow", "yellow", 2, "yellow", "yellow"),
    ("collar", "collar", 2, "collar", "collar"),
    ("necktie", "necktie", 2, "necktie", "necktie"),
    ("placket", "placket", 2, "placket", "button placket"),
    ("scarf", "scarf", 2, "scarf", "scarf"),
    ("skin_exposure_high", "skin_exposure", 2, "high skin exposure", "bare skin"),
    ("gender_female", "gender", 2, "female", "woman"),
    ("gender_male", "gender", 1, "male", "man"),
)
# Multi-class columns: code k (1-based) -> the k-th label of the group.
ONE_HOT_GROUPS: tuple[tuple[str, tuple[tuple[str, str, str], ...]], ...] = (
    (
        "sleevelength",
        (
            ("sleeve_none", "no sleeves", "sleeveless"),
            ("sleeve_short", "short sleeves", "short sleeves"),
            ("sleeve_long", "long sleeves", "long sleeves"),
        ),
    ),
    (
        "neckline",
        (
            ("neckline_v", "v-neckline", "v-neck"),
            ("neckline_round", "round neckline", "round neckline"),
            ("neckline_other", "other neckline", "other neckline"),
        ),
    ),
    (
        "category",
        (
            ("category_shirt", "shirt", "shirt"),
            ("category_sweater", "sweater", "sweater"),
            ("category_tshirt", "t-shirt", "t-shirt"),
            ("category_outerwear", "outerwear", "outerwear"),
            ("category_suit", "suit", "suit"),
            ("category_tanktop", "tank top", "tank top"),
            ("category_dress", "dress", "dress"),
        ),
    ),
)
LABEL_NAMES = tuple(b[0] for b in BINARY_LABELS) + tuple(label[0] for _, group in ONE_HOT_GROUPS for label in group)
DISPLAY_NAMES = tuple(b[3] for b in BINARY_LABELS) + tuple(label[1] for _, group in ONE_HOT_GROUPS for label in group)
LABEL_WORDS = tuple(b[4] for b in BINARY_LABELS) + tuple(label[2] for _, group in ONE_HOT_GROUPS for label in group)
CATEGORY_NAMES = tuple(label[1] for label in ONE_HOT_GROUPS[2][1])
CATEGORY_LABELS = frozenset(label[0] for label in ONE_HOT_GROUPS[2][1])
# The clothing network's attributes are the labels that are not categories (the category is its own
# head), each with a DeepFashion attribute type for the per-type recalls. DeepFashion's list_attr_cloth.txt
# decides wherever it has the word: floral, dot, striped, graphic, colorblock = texture; plaid = fabric;
# red, solid = style; sleeveless, long-sleeve, v-neck, collar, button-front = part. The others follow
# the nearest word there (scarf, necktie: part; gender: style; high skin exposure, like cutout: shape).
ATTRIBUTE_TYPES: dict[str, str] = {
    "pattern_floral": "texture", "pattern_graphics": "texture", "pattern_spot": "texture",
    "pattern_stripe": "texture", "color_many": "texture", "pattern_plaid": "fabric",
    "skin_exposure_high": "shape",
    "collar": "part", "necktie": "part", "placket": "part", "scarf": "part",
    "sleeve_none": "part", "sleeve_short": "part", "sleeve_long": "part",
    "neckline_v": "part", "neckline_round": "part", "neckline_other": "part",
    "pattern_solid": "style", "gender_female": "style", "gender_male": "style",
    **{name: "style" for name in LABEL_NAMES if name.startswith("color_") and name != "color_many"},
}
CLOTHING_ATTRIBUTE_NAMES = tuple(name for name in LABEL_NAMES if name in ATTRIBUTE_TYPES)
CSV_COLUMNS = frozenset({b[1] for b in BINARY_LABELS} | {column for column, _ in ONE_HOT_GROUPS} | {"image"})


def _code(value: str, allowed: int, column: str, path: Path, line: int) -> int | None:
    value = value.strip()
    if not value or value.lower() == "nan":
        return None
    try:
        code = int(float(value))  # some exports write 2.0
    except ValueError:
        raise DataError(f"expected {column} to be 1..{allowed} or blank, found {value!r}", path=path, line=line) from None
    if code != float(value) or not 1 <= code <= allowed:
        raise DataError(f"expected {column} to be 1..{allowed} or blank, found {value!r}", path=path, line=line)
    return code


def read_clothing_attributes(
    root: str | Path,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
) -> FashionDataset:
    """Read ``root/labels.csv`` (images under ``root/images``) into 37 binary labels.

    ``category`` is also set (0-based over shirt, sweater, t-shirt, outerwear, suit, tank top,
    dress; -1 when blank). ``dataset.label_words`` holds plain English words per label for word
    vectors.
    """
    root = Path(root)
    path = root / "labels.csv"
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("expected the Clothing Attribute Dataset's labels.csv here, found nothing", path=path) from None
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        missing = sorted(CSV_COLUMNS - set(header))
        if missing:
            raise DataError(f"expected the columns {sorted(CSV_COLUMNS)}, missing {missing}", path=path, line=1)
        column = {name: i for i, name in enumerate(header)}
        rows = [(reader.line_num, row) for row in reader if row]

    n = len(rows)
    labels = np.zeros((n, len(LABEL_NAMES)), dtype=np.uint8)
    mask = np.ones((n, len(LABEL_NAMES)), dtype=np.uint8)
    categories = np.full(n, -1, dtype=np.int64)
    images: list[Path] = []
    seen: dict[str, int] = {}
    for r, (line, row) in enumerate(rows):
        if len(row) != len(header):
            raise DataError(f"expected {len(header)} columns as in the header, found {len(row)}", path=path, line=line)
        name = row[column["image"]].strip()
        if name in seen:
            raise DataError(f"duplicate row for image {name!r}: first listed on line {seen[name]}", path=path, line=line)
        seen[name] = line
        images.append(resolve_inside(root / "images", name, path, line))
        for j, (_, col, positive, _, _) in enumerate(BINARY_LABELS):
            code = _code(row[column[col]], 2, col, path, line)
            if code is None:
                mask[r, j] = 0
            else:
                labels[r, j] = code == positive
        j = len(BINARY_LABELS)
        for col, group in ONE_HOT_GROUPS:
            code = _code(row[column[col]], len(group), col, path, line)
            if code is None:
                mask[r, j : j + len(group)] = 0
            else:
                labels[r, j + code - 1] = 1
                if col == "category":
                    categories[r] = code - 1
            j += len(group)

    words = dict(zip(LABEL_NAMES, LABEL_WORDS))
    display = dict(zip(LABEL_NAMES, DISPLAY_NAMES))
    names = list(LABEL_NAMES)
    if label_names is not None and not any(name in CATEGORY_LABELS for name in label_names):
        # A vocabulary without the category labels (the clothing network's): the category is still
        # there, as each record's category index, so its one-hot columns are dropped, not an error.
        keep = [j for j, name in enumerate(names) if name not in CATEGORY_LABELS]
        labels, mask, names = labels[:, keep], mask[:, keep], [names[j] for j in keep]
    labels, mask, vocabulary = force_vocabulary(labels, mask, names, label_names, path, absent_is_unknown=True)
    types = [ATTRIBUTE_TYPES.get(name) for name in vocabulary]  # typed only when every label is an attribute
    records = [
        Record(image=image, labels=labels[i], label_mask=mask[i], category=int(categories[i]), source=path, line=line)
        for i, (image, (line, _)) in enumerate(zip(images, rows))
    ]
    return FashionDataset(
        records,
        vocabulary,
        category_names=CATEGORY_NAMES,
        attribute_types=types if all(types) else None,
        display_names=[display.get(name, name) for name in vocabulary],
        label_words=[words.get(name, name.replace("_", " ")) for name in vocabulary],
        transform=transform,
        skip_bad=skip_bad,
    )
