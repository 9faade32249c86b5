"""A. Grigorev's full clothing dataset in its original layout: ``images.csv`` and ``images/<id>.jpg``.

``images.csv`` has the header ``image,sender_id,label,kids``: ``image`` is the photo's id (the file is
``images/<id>.jpg``), ``label`` its one garment class (``T-Shirt``, ``Outwear``, ``Polo``, ...). The
class names are lower-cased, so they meet the folder names of clothing-dataset-small (``t-shirt``,
``outwear``) when the two are merged. Rows whose label is not a garment class (``Not sure``,
``Other``, ``Skip``) are left out, and the dataset's ``notes`` say how many. Every row is one
photo with exactly one known class, as in class folders.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv

from fashionlens.data.base import FashionDataset, Record
from fashionlens.errors import DataError

#: Labels of the release that say the photo has no garment class.
NOT_A_CLASS = ("not sure", "other", "skip")
_COLUMNS = ("image", "label")


def read_clothing_dataset(
    root: str | Path,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
) -> FashionDataset:
    """Read ``root/images.csv`` and ``root/images/``; vocabulary = sorted class names unless forced."""
    root = Path(root)
    table_path = root / "images.csv"
    if not table_path.is_file():
        raise DataError("expected images.csv (image,sender_id,label,kids) and images/ here", path=root)
    table = pa_csv.read_csv(table_path, convert_options=pa_csv.ConvertOptions(
        include_columns=list(_COLUMNS), column_types={name: "string" for name in _COLUMNS}))
    images, labels = (table.column(name).to_pylist() for name in _COLUMNS)
    rows: list[tuple[Path, str]] = []
    left_out: Counter[str] = Counter()
    for line, (image, label) in enumerate(zip(images, labels, strict=True), start=2):
        if not image or not label:
            raise DataError("empty image or label cell", path=table_path, line=line)
        name = label.strip().lower()
        if name in NOT_A_CLASS:
            left_out[label] += 1
            continue
        file = root / "images" / f"{image}.jpg"
        if not file.is_file():
            raise DataError(f"photo images/{image}.jpg not found", path=table_path, line=line)
        rows.append((file, name))
    found = sorted({name for _, name in rows})
    vocabulary = list(label_names) if label_names is not None else found
    outside = sorted(set(found) - set(vocabulary))
    if outside:
        raise DataError(f"class(es) {outside} not in the forced vocabulary {vocabulary}", path=table_path)
    index = {name: i for i, name in enumerate(vocabulary)}
    records = [Record.one_class(file, index[name], len(vocabulary)) for file, name in rows]
    notes = [f"left out {sum(left_out.values())} row(s) without a garment class: {dict(left_out)}"] if left_out else []
    return FashionDataset(records, vocabulary, category_names=vocabulary, transform=transform,
                          skip_bad=skip_bad, notes=notes)
