"""Single-label image folders: ``root/<label>/<image>`` (like torchvision's ImageFolder).

The category is the folder's index in the vocabulary, the label vector is one-hot and fully known
(an image in ``street/`` is known not to be ``retro``). Files that are not images by extension are
not read; how many were passed over is recorded in the dataset's ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashionlens.data.base import FashionDataset, Record
from fashionlens.errors import DataError
from fashionlens.vocabulary import IMAGE_EXTENSIONS


def read_class_folders(
    root: str | Path,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
) -> FashionDataset:
    """Read ``root/<label>/*`` images; vocabulary = sorted folder names unless ``label_names`` forces one."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("expected a folder with one sub-folder per label, found no folder", path=root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError("expected one sub-folder per label, found none", path=root)
    names = [p.name for p in folders]
    if label_names is not None:
        vocabulary = list(label_names)
        outside = [n for n in names if n not in vocabulary]
        if outside:
            raise DataError(f"label folder(s) {outside} not in the forced vocabulary {vocabulary}", path=root)
    else:
        vocabulary = names
    index = {name: i for i, name in enumerate(vocabulary)}
    records: list[Record] = []
    passed_over: list[str] = []
    for folder in folders:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            if file.name.startswith("."):
                continue
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                passed_over.append(str(file.relative_to(root)))
                continue
            labels = np.zeros(len(vocabulary), dtype=np.uint8)
            labels[index[folder.name]] = 1
            records.append(
                Record(image=file, labels=labels, label_mask=np.ones(len(vocabulary), dtype=np.uint8), category=index[folder.name])
            )
    notes = []
    if passed_over:
        notes.append(f"passed over {len(passed_over)} non-image file(s), e.g. {passed_over[:5]}")
    used = {vocabulary[r.category] for r in records}
    empty = [n for n in names if n not in used]
    if empty:
        notes.append(f"label folder(s) with no images: {empty}")
    return FashionDataset(
        records,
        vocabulary,
        category_names=vocabulary,
        transform=transform,
        skip_bad=skip_bad,
        notes=notes,
    )
