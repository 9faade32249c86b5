"""Clothing Co-Parsing (Yang, Luo, Lin, CVPR 2014) in its original layout.

::

    root/label_list.mat                      1 x 59 cell array of names; id k is the (k+1)-th name
    root/photos/NNNN.jpg
    root/annotations/image-level/NNNN.mat    variable ``tags``: the label ids present in the photo
    root/annotations/pixel-level/NNNN.mat    variable ``groundtruth``: H x W mask of label ids

A photo's tags come from either kind of annotation (for a mask: the ids it contains). The tags are
exhaustive, so every label is known for every photo: absent means negative. ``null`` (id 0, the
background), ``skin`` and ``hair`` are not garments and are left out of the labels by default.

Masks are not kept in memory (803 masks of 400 x 265 pixels are 85 MB): records carry the mask's
path and ``__getitem__`` reads it again. Opened with ``with_masks=True`` the sample dict also holds
``mask``, a ``tv_tensors.Mask`` that the transforms resize and crop with the image; photos without
a pixel-level annotation get an all -1 mask so that a mixed batch still collates.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from fashionlens import images
from fashionlens.data.base import FashionDataset, Record, force_vocabulary
from fashionlens.errors import DataError
from fashionlens.vocabulary import IMAGE_EXTENSIONS

DEFAULT_EXCLUDE: tuple[str, ...] = ("null", "skin", "hair")
TAGS_VARIABLE = "tags"
MASK_VARIABLE = "groundtruth"
NAMES_VARIABLE = "label_list"
# Words for word vectors where the tag name means something else on its own (GloVe-50d knows all 59
# names; "intimate" is mostly the adjective there).
LABEL_WORDS: dict[str, str] = {"intimate": "lingerie"}


@dataclass
class ParsingRecord(Record):
    """A Record that may also point at a pixel-level annotation (``mask_path``, whose ``groundtruth`` is the mask)."""

    mask_path: Path | None = None


def _loadmat(path: Path, variable: str) -> np.ndarray:
    """``variable`` of the MATLAB file ``path``, or a DataError saying what the file holds instead."""
    from scipy.io import loadmat  # only this format needs scipy: `import fashionlens.data` goes without it
    from scipy.io.matlab import MatReadError

    try:
        contents = loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"expected a MATLAB .mat file with variable {variable!r}, found nothing", path=path) from None
    except (MatReadError, ValueError, TypeError, OSError, IndexError, KeyError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read as a MATLAB .mat file ({error}); expected variable {variable!r}", path=path) from None
    if variable not in contents:
        found = sorted(k for k in contents if not k.startswith("__"))
        raise DataError(f"expected the variable {variable!r}, found {found or 'no variables'}", path=path)
    return contents[variable]


def read_label_list(path: str | Path) -> list[str]:
    """The tag names of ``label_list.mat`` in id order (id 0 = ``null``)."""
    path = Path(path)
    cells = _loadmat(path, NAMES_VARIABLE)
    names = []
    for k, cell in enumerate(np.asarray(cells, dtype=object).ravel()):
        value = np.asarray(cell).ravel()
        if value.size != 1 or not isinstance(value[0], str) or not value[0].strip():
            raise DataError(f"expected cell {k + 1} of {NAMES_VARIABLE!r} to hold a name, found {cell!r}", path=path)
        names.append(value[0].strip())
    if not names:
        raise DataError(f"expected a cell array of names in {NAMES_VARIABLE!r}, found it empty", path=path)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"expected distinct names, found duplicates {dupes}", path=path)
    return names


def _as_ids(values: np.ndarray, what: str, num_ids: int, path: Path) -> np.ndarray:
    """Integer label ids in ``0..num_ids-1``, or a DataError naming the first bad one."""
    values = np.asarray(values)
    if values.dtype.kind not in "iuf" or values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise DataError(f"expected {what} to be integer label ids, found an array of {values.dtype}", path=path)
    ids = values.astype(np.int64)
    if values.dtype.kind == "f" and np.any(ids != values):
        raise DataError(f"expected {what} to be integer label ids, found {values[ids != values].ravel()[0]!r}", path=path)
    bad = ids[(ids < 0) | (ids >= num_ids)]
    if bad.size:
        raise DataError(
            f"{what} holds label id {int(bad.ravel()[0])}, outside the vocabulary of label_list.mat "
            f"(expected 0..{num_ids - 1})",
            path=path,
        )
    return ids


def _mask_ids(path: Path, num_ids: int) -> np.ndarray:
    """The H x W label ids of the pixel-level annotation ``path``."""
    ids = _as_ids(_loadmat(path, MASK_VARIABLE), MASK_VARIABLE, num_ids, path)
    if ids.ndim != 2:
        raise DataError(f"expected {MASK_VARIABLE!r} to be an H x W mask, found shape {ids.shape}", path=path)
    return ids


def _check_mask_size(ids: np.ndarray, path: Path, photo: Path, height: int, width: int) -> None:
    if ids.shape != (height, width):
        raise DataError(f"mask is {ids.shape[0]} x {ids.shape[1]} (H x W) but its photo {photo} is "
                        f"{height} x {width}: expected the same size", path=path)


def _photo_size(path: Path, annotation: Path) -> tuple[int, int]:
    """(height, width) from the photo's header, as the image will have after EXIF orientation."""
    try:
        img = images.open_header(path)
    except DataError as error:
        raise DataError(f"{error.reason} (annotated by {annotation})", path=path) from None
    try:  # close() as well: Pillow leaves open a file it was handed
        width, height = img.size
        turned = images.exif_orientation(img) in (5, 6, 7, 8)  # rotated by 90 degrees on loading
    finally:
        img.close()
    return (width, height) if turned else (height, width)


class ClothingCoParsingDataset(FashionDataset):
    """A FashionDataset whose records may carry a parsing mask.

    ``label_ids[c]`` is the label_list.mat id of label ``c``; ``id_to_label[k]`` is the label index
    of id ``k`` (-1 for excluded ids and ids outside the vocabulary). With ``with_masks`` the
    sample dict has ``mask`` (see the module docstring).
    """

    def __init__(self, records: list[Record], label_names: Sequence[str], *, id_names: Sequence[str],
                 with_masks: bool = False, **kw: Any) -> None:
        super().__init__(records, label_names, **kw)
        self.id_names = list(id_names)
        self.with_masks = with_masks
        position = {name: c for c, name in enumerate(self.label_names)}
        self.id_to_label = np.array([position.get(name, -1) for name in self.id_names], dtype=np.int64)
        self.label_ids = [self.id_names.index(name) if name in self.id_names else -1 for name in self.label_names]

    def has_mask(self, index: int) -> bool:
        return getattr(self.records[index], "mask_path", None) is not None

    def load_mask(self, index: int) -> np.ndarray | None:
        """Record ``index``'s mask as int64 label indices (-1: background / excluded), or None."""
        path = getattr(self.records[index], "mask_path", None)
        return None if path is None else self.id_to_label[_mask_ids(path, len(self.id_names))]

    def load_sample(self, index: int) -> dict[str, Any]:
        sample = super().load_sample(index)
        if not self.with_masks:
            return sample
        height, width = sample["image"].shape[-2:]
        mask = self.load_mask(index)
        if mask is None:
            mask = np.full((height, width), -1, dtype=np.int64)
        else:
            record = self.records[index]
            _check_mask_size(mask, record.mask_path, record.image, height, width)
        sample["mask"] = tv_tensors.Mask(torch.from_numpy(mask))
        return sample


def read_clothing_co_parsing(
    path: str | Path,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    *,
    with_masks: bool = False,
    **kw: Any,
) -> ClothingCoParsingDataset:
    """Read a Clothing Co-Parsing folder: one record per annotated photo, labels = its tags.

    ``exclude``: tag names that are not labels (default: null, skin, hair). ``label_names`` forces
    a vocabulary (e.g. a saved model's): forced names CCP does not have become unknown.
    ``with_masks``: put the parsing mask in the sample dict. Bad annotations (a photo missing, a
    mask of another size than its photo, a tag id outside label_list.mat, a .mat without its
    variable) raise DataError, or with ``skip_bad`` are left out and listed in ``.skipped``.
    Other keyword arguments go to :class:`FashionDataset`.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError("expected the Clothing Co-Parsing folder (label_list.mat, photos/, annotations/), found no folder",
                        path=root)
    id_names = read_label_list(root / "label_list.mat")
    exclude = [str(name) for name in exclude]
    unknown = [name for name in exclude if name not in id_names]
    if unknown:
        raise ValueError(f"exclude names {unknown} are not tags of {root / 'label_list.mat'}; its tags are {id_names}")
    names = [name for name in id_names if name not in set(exclude)]
    column = {name: c for c, name in enumerate(names)}
    id_to_column = np.array([column.get(name, -1) for name in id_names], dtype=np.int64)

    photos_dir = root / "photos"
    if not photos_dir.is_dir():
        raise DataError("expected a photos/ folder, found none", path=photos_dir)
    photos: dict[str, Path] = {}
    for file in sorted(photos_dir.iterdir()):
        if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
            photos.setdefault(file.stem, file)
    annotations: dict[str, dict[str, Path]] = {}
    for kind in ("image-level", "pixel-level"):
        folder = root / "annotations" / kind
        if folder.is_dir():
            for file in sorted(folder.glob("*.mat")):
                annotations.setdefault(file.stem, {})[kind] = file
    if not annotations:
        raise DataError("expected .mat files under annotations/image-level/ or annotations/pixel-level/, found none",
                        path=root / "annotations")

    problems: list[DataError] = []
    records: list[ParsingRecord] = []
    rows: list[np.ndarray] = []
    for stem in sorted(annotations):
        files = annotations[stem]
        first = files.get("pixel-level") or files["image-level"]
        try:
            photo = photos.get(stem)
            if photo is None:
                raise DataError(f"annotation has no photo: expected {photos_dir / (stem + '.jpg')}, found nothing",
                                path=first)
            present = np.zeros(len(id_names), dtype=bool)
            if "image-level" in files:
                present[_as_ids(_loadmat(files["image-level"], TAGS_VARIABLE), TAGS_VARIABLE, len(id_names),
                                files["image-level"]).ravel()] = True
            if "pixel-level" in files:
                mask_file = files["pixel-level"]
                ids = _mask_ids(mask_file, len(id_names))
                _check_mask_size(ids, mask_file, photo, *_photo_size(photo, mask_file))
                present |= np.bincount(ids.ravel(), minlength=len(id_names)) > 0
        except DataError as error:
            if not skip_bad:
                raise
            problems.append(error)
            continue
        row = np.zeros(len(names), dtype=np.uint8)
        row[id_to_column[present & (id_to_column >= 0)]] = 1
        rows.append(row)
        records.append(ParsingRecord(image=photo, labels=row, label_mask=np.ones(len(names), dtype=np.uint8),
                                     source=first, mask_path=files.get("pixel-level")))

    labels = np.stack(rows) if rows else np.zeros((0, len(names)), dtype=np.uint8)
    mask = np.ones_like(labels)
    labels, mask, vocabulary = force_vocabulary(labels, mask, names, label_names, root / "label_list.mat",
                                                absent_is_unknown=True)
    for record, row, known in zip(records, labels, mask):
        record.labels, record.label_mask = row, known
    notes = []
    unannotated = sorted(set(photos) - set(annotations))
    if unannotated:
        notes.append(f"passed over {len(unannotated)} photo(s) without annotation, e.g. {unannotated[:5]}")
    with_pixels = sum(r.mask_path is not None for r in records)
    notes.append(f"{with_pixels} photo(s) with pixel-level masks, {len(records) - with_pixels} with image-level tags only")
    untagged = [r.source.stem for r, row in zip(records, labels) if not row.any()]
    if untagged:
        notes.append(f"{len(untagged)} photo(s) with no tag besides {exclude}, e.g. {untagged[:5]}")
    dataset = ClothingCoParsingDataset(
        records,
        vocabulary,
        id_names=id_names,
        with_masks=with_masks,
        label_words=[LABEL_WORDS.get(name, name) for name in vocabulary],
        transform=transform,
        skip_bad=skip_bad,
        notes=notes,
        **kw,
    )
    dataset.skipped[:0] = problems
    return dataset
