"""Dataset readers: every format becomes a ``FashionDataset`` returning the contract's sample dict.

``open_dataset(path, format)`` is the one door the CLI, the training code and the server use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fashionlens.data.base import FashionDataset, Record, check_format
from fashionlens.data.clothing_attributes import read_clothing_attributes
from fashionlens.data.clothing_co_parsing import read_clothing_co_parsing
from fashionlens.data.clothing_dataset import read_clothing_dataset
from fashionlens.data.deepfashion import read_deepfashion
from fashionlens.data.deepfashion_fine import read_deepfashion_fine
from fashionlens.data.folders import read_class_folders
from fashionlens.data.kfashion import STYLE_NAMES, read_kfashion
from fashionlens.data.manifest import read_manifest_csv, read_manifest_jsonl
from fashionlens.data.samples import DeepFashionRow, weak_label_rows, write_deepfashion_lists
from fashionlens.data.transforms import build_transforms
from fashionlens.errors import DataError
from fashionlens.vocabulary import FORMATS, LANDMARK_NAMES, SPLIT_FORMATS

_READERS: dict[str, Callable[..., FashionDataset]] = {
    "deepfashion": read_deepfashion,
    "manifest": read_manifest_csv,
    "jsonl": read_manifest_jsonl,
    "kfashion": read_kfashion,
    "clothing-attributes": read_clothing_attributes,
    "folders": read_class_folders,
    "clothing-co-parsing": read_clothing_co_parsing,
    "deepfashion-fine": read_deepfashion_fine,
    "clothing-dataset": read_clothing_dataset,
}


def open_dataset(
    path: str | Path,
    format: str,
    split: str | None = None,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    **kw: Any,
) -> FashionDataset:
    """Open ``path`` with the reader for ``format`` (one of ``FORMATS``).

    ``split`` is only meaningful for the formats with their own partition (``SPLIT_FORMATS``:
    "deepfashion", "deepfashion-fine"); other formats are one file or folder per split, so passing
    one there is an error rather than ignored.
    Extra keyword arguments go to the reader (e.g. ``crop_to_bbox`` for DeepFashion,
    ``images_root`` for manifests).
    """
    if format not in _READERS:
        raise ValueError(f"unknown dataset format {format!r}: expected one of {', '.join(FORMATS)}")
    check_format(path, format)
    if format in SPLIT_FORMATS:
        kw["split"] = split
    elif split is not None:
        raise ValueError(f"format {format!r} has no built-in splits; point at the split's own file or folder (got split={split!r})")
    try:
        return _READERS[format](path, skip_bad=skip_bad, transform=transform, label_names=label_names, **kw)
    except DataError as error:
        if error.path is not None:
            raise
        raise DataError(error.reason, path=path) from None  # about the dataset as a whole: name it


__all__ = [
    "FORMATS",
    "LANDMARK_NAMES",
    "STYLE_NAMES",
    "DeepFashionRow",
    "FashionDataset",
    "Record",
    "build_transforms",
    "open_dataset",
    "read_class_folders",
    "read_clothing_attributes",
    "read_clothing_co_parsing",
    "read_deepfashion",
    "read_deepfashion_fine",
    "read_kfashion",
    "read_manifest_csv",
    "read_manifest_jsonl",
    "weak_label_rows",
    "write_deepfashion_lists",
]
