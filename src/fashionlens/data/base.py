"""The record type every reader produces and the Dataset that turns records into sample dicts
(from a list of records, or ``LazyRows``: records built only when asked for, from a reader's columns).

Readers parse annotations only; images are opened lazily in ``FashionDataset.__getitem__`` so that
building a dataset of 289k DeepFashion rows costs no image I/O. The sample dict follows
docs/design-contract.md.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeVar, overload

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from fashionlens import images
from fashionlens.data.cache import photo_check_file, photo_stamp, read_passed, write_passed
from fashionlens.errors import DataError
from fashionlens.labels import clean_label_name, confusable_labels
from fashionlens.vocabulary import CUT_OFF, NUM_LANDMARKS

T = TypeVar("T")


@dataclass
class Record:
    """One annotated image, parsed but not loaded.

    ``labels`` / ``label_mask`` are stored compactly (uint8; DeepFashion has 289k x 1000 of them)
    and become float32 tensors in ``__getitem__``. ``source``/``line`` point at the annotation row
    so that an unreadable image can be reported where the user can fix it.
    """

    image: Path
    labels: np.ndarray
    label_mask: np.ndarray
    category: int | None = None
    bbox: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None
    landmark_visibility: np.ndarray | None = None
    source: Path | None = None
    line: int | None = None

    @classmethod
    def one_class(cls, image: Path, category: int, num_labels: int) -> Record:
        """A photo of exactly one known class (class folders, catalogue tables): one-hot, every label known."""
        labels = np.zeros(num_labels, dtype=np.uint8)
        labels[category] = 1
        return cls(image=image, labels=labels, label_mask=np.ones(num_labels, dtype=np.uint8), category=category)


class ReaderOptions(TypedDict, total=False):
    """Options every annotation reader takes (``**options: Unpack[...]`` of a subclass of this)."""

    skip_bad: bool
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None
    label_names: Sequence[str] | None


def image_error(record: Record, reason: str) -> DataError:
    """A DataError about ``record``'s image that also says which annotation row named it."""
    where = ""
    if record.source is not None:
        where = f" (listed at {record.source}" + (f":{record.line}" if record.line is not None else "") + ")"
    return DataError(f"{reason}{where}", path=record.image)


def open_image(record: Record, full_decode: bool = True, draft: bool = False) -> Image.Image:
    """Open ``record.image`` with the project's decoder (``fashionlens.images``): DataError naming the
    file and its row if it is missing, empty, not an accepted format, over the pixel limit or, with
    ``full_decode``, truncated or corrupt.

    ``full_decode=False`` only reads the header (enough to reject non-images and bombs); a truncated
    file is only found by decoding it. ``draft`` decodes a JPEG at 1/8 scale: libjpeg still reads
    every byte of the entropy stream (so truncation is caught) at a fraction of the cost. The image
    is returned as stored (mode and orientation).
    """
    try:
        img = images.open_header(record.image)
        try:
            if draft and img.format in ("JPEG", "MPO"):
                img.draft(None, (max(1, img.width // 8), max(1, img.height // 8)))
            if full_decode:
                images.load_pixels(img, record.image, record.image)
        except DataError:
            img.close()
            raise
    except DataError as exc:
        raise image_error(record, exc.reason) from None
    return img


def _load_rgb(record: Record) -> Image.Image:
    # Every pixel, never JPEG draft mode: these are the pixels a model is trained and evaluated on.
    try:
        return images.decode_image(record.image).image
    except DataError as exc:
        raise image_error(record, exc.reason) from None


def _check_image_quickly(record: Record, full_decode: bool) -> DataError | None:
    try:
        open_image(record, full_decode, draft=True).close()
    except DataError as error:
        return error
    return None


def clip_crop_box(
    bbox: Sequence[float], margin: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """Integer crop box: ``bbox`` grown by ``margin`` x its size on each side, clipped to the image."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    mw, mh = margin * (x2 - x1), margin * (y2 - y1)
    left = max(0, int(np.floor(x1 - mw)))
    top = max(0, int(np.floor(y1 - mh)))
    right = min(width, int(np.ceil(x2 + mw)))
    bottom = min(height, int(np.ceil(y2 + mh)))
    if right <= left or bottom <= top:
        # A box outside the image would give an empty crop; the whole image is the honest fallback.
        return 0, 0, width, height
    return left, top, right, bottom


def mark_outside_landmarks(landmarks: torch.Tensor, visibility: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Visibility with every landmark outside the ``height`` x ``width`` canvas set to cut off (2)."""
    x, y = landmarks[..., 0], landmarks[..., 1]
    outside = (x < -0.5) | (y < -0.5) | (x > width - 0.5) | (y > height - 0.5)
    out = visibility.clone()
    out[outside] = CUT_OFF
    return out


class FashionDataset(torch.utils.data.Dataset):
    """Records plus vocabulary; ``__getitem__`` returns the contract's sample dict.

    Args:
        records: parsed annotations, one per image.
        label_names: names of the label vector's entries, in vector order.
        category_names: names of the category indices, if the dataset has categories.
        attribute_types: per label, its type (e.g. "texture" for DeepFashion attributes).
        display_names: per label, a human-readable name (defaults to ``label_names``).
        label_words: per label, plain English words to look up word vectors for (defaults to
            ``display_names``).
        transform: called on the whole sample dict (see ``build_transforms``).
        crop_to_bbox: crop the image to the record's bbox grown by ``bbox_margin`` before the
            transform; landmarks and bbox move with the crop.
        skip_bad: validate every image now and move unreadable ones to ``.skipped`` instead of
            failing later inside a DataLoader worker.
        decode_on_validate: with ``skip_bad``, decode the pixel data too (catches truncated files).
        exclusive_types: the attribute types whose labels are "exactly one of these" per image (a
            class within a group, e.g. the sleeve length); each must be a value of ``attribute_types``.
        landmarks_by_category: per category name, the landmark names a garment of that category has
            (DeepFashion: trousers have no collar), for a model to report only those.
        notes: reader remarks worth showing a user (files ignored, images with no labels, ...).
        has_bbox, has_landmarks: whether any record has them (for ``LazyRows``; found by a scan if None).
    """

    def __init__(
        self,
        records: Sequence[Record],
        label_names: Sequence[str],
        *,
        category_names: Sequence[str] | None = None,
        attribute_types: Sequence[str] | None = None,
        display_names: Sequence[str] | None = None,
        label_words: Sequence[str] | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        crop_to_bbox: bool = False,
        bbox_margin: float = 0.1,
        skip_bad: bool = False,
        decode_on_validate: bool = True,
        exclusive_types: Sequence[str] = (),
        landmarks_by_category: Mapping[str, Sequence[str]] | None = None,
        notes: Iterable[str] = (),
        has_bbox: bool | None = None,
        has_landmarks: bool | None = None,
    ) -> None:
        # LazyRows stay lazy (a reader's 289k rows are built only when asked for); the reader then says
        # whether any has a box or landmarks, which would otherwise take a scan of every record.
        self.records = records if isinstance(records, LazyRows) else list(records)
        self.label_names = list(label_names)
        self.category_names = None if category_names is None else list(category_names)
        cleaning_notes = self._clean_names()
        self.attribute_types = None if attribute_types is None else list(attribute_types)
        self.display_names = list(display_names) if display_names is not None else list(self.label_names)
        self.label_words = list(label_words) if label_words is not None else list(self.display_names)
        for what, values in (
            ("attribute_types", self.attribute_types),
            ("display_names", self.display_names),
            ("label_words", self.label_words),
        ):
            if values is not None and len(values) != len(self.label_names):
                raise ValueError(f"{what} has {len(values)} entries, expected one per label ({len(self.label_names)})")
        self.exclusive_types = tuple(exclusive_types)
        self.landmarks_by_category = {str(k): list(v) for k, v in (landmarks_by_category or {}).items()}
        unknown = [kind for kind in self.exclusive_types if kind not in (self.attribute_types or ())]
        if unknown:
            raise ValueError(f"exclusive_types {unknown} are not attribute types: expected some of "
                             f"{sorted(set(self.attribute_types or ()))}")
        self.transform = transform
        self.crop_to_bbox = crop_to_bbox
        self.bbox_margin = bbox_margin
        self.notes: list[str] = list(notes) + cleaning_notes
        self.skipped: list[DataError] = []
        # Annotation file -> the folder its photos must stay inside once links are followed (manifests,
        # unless allow_outside_root): checked with the photos, before training (validate_images).
        self.roots: dict[str, str] = {}
        self._has_bbox = any(r.bbox is not None for r in self.records) if has_bbox is None else has_bbox
        self._has_landmarks = any(r.landmarks is not None for r in self.records) if has_landmarks is None else has_landmarks
        if skip_bad:
            self.validate_images(full_decode=decode_on_validate, drop=True, remember=True)

    def _clean_names(self) -> list[str]:
        """Label and category names normalised (``labels.clean_label_name``: NFKC, no zero-width or
        bidirectional characters); two labels that become one name ("pants" and "pants\u200b") are a
        DataError naming both. Look-alike names ("drеss" with a Cyrillic е beside "dress") are warned
        about. Returns the notes (each also a warning)."""
        notes = []
        for kind in ("label_names", "category_names"):
            names = getattr(self, kind)
            if names is None:
                continue
            cleaned = [clean_label_name(name) for name in names]
            if cleaned == names:
                continue
            for name in dict.fromkeys(cleaned):
                same = [ascii(old) for old, new in zip(names, cleaned) if new == name]
                if len(same) > 1:
                    raise DataError(f"labels {', '.join(same)} are one name once normalised (NFKC, format characters "
                                    f"such as zero-width spaces removed): write them the same way, {name!r}")
            changed = [f"{ascii(old)} -> {new!r}" for old, new in zip(names, cleaned) if old != new]
            notes.append(f"{kind.replace('_', ' ')} normalised (NFKC, format characters removed): "
                         f"{', '.join(changed[:10])}")
            setattr(self, kind, cleaned)
        for group in confusable_labels(self.label_names):
            what = "look alike" if len(group) > 1 else "mixes letters of another script into a Latin name"
            notes.append(f"label names {', '.join(f'{name!r} ({ascii(name)})' for name in group)} {what}: "
                         f"write them one way (or map one to the other with --aliases)")
        for note in notes:
            warnings.warn(note, stacklevel=3)
        return notes

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def label_matrix(self, rows: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, mask) float32 arrays (N, C) of the records (or of ``rows``), read without loading an image."""
        records = self.records if rows is None else [self.records[i] for i in rows]
        if not len(records):
            return np.zeros((0, self.num_labels), np.float32), np.zeros((0, self.num_labels), np.float32)
        return (np.stack([record.labels for record in records]).astype(np.float32),
                np.stack([record.label_mask for record in records]).astype(np.float32))

    def validate_images(self, full_decode: bool = True, drop: bool = False, workers: int | None = None,
                        remember: bool = False) -> list[DataError]:
        """Check that every record's image opens (and, with ``full_decode``, decodes).

        Returns the problems found; with ``drop`` the bad records are also removed and their
        errors appended to ``.skipped``. Threads are used because PIL releases the GIL while
        decoding. With ``remember`` the photos that passed are kept in a cache file (by path, size
        and mtime) and not decoded again while they stay the same: a second run checks for free.
        """
        records = list(self.records)
        stamps = [photo_stamp(record.image) for record in records] if remember else []
        cache_file = photo_check_file([record.image for record in records], full_decode) if remember else None
        passed = read_passed(cache_file) if cache_file is not None else set()
        todo = [i for i in range(len(records)) if not (remember and stamps[i] is not None and stamps[i] in passed)]
        workers = workers or min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            checked = list(pool.map(lambda i: _check_image_quickly(records[i], full_decode), todo))
            # Every photo, checked ones included: a link can be replaced without changing what it leads to.
            outside = list(pool.map(self._link_out_of_root, records)) if self.roots else [None] * len(records)
        results: list[DataError | None] = list(outside)
        for i, err in zip(todo, checked):
            results[i] = results[i] or err
        if cache_file is not None and todo:
            write_passed(cache_file, {stamp for stamp, err in zip(stamps, results) if stamp is not None and err is None})
        problems = [err for err in results if err is not None]
        if drop and problems:
            self.records = [r for r, err in zip(records, results) if err is None]
            self.skipped.extend(problems)
        return problems

    def _link_out_of_root(self, record: Record) -> DataError | None:
        root = self.roots.get(str(record.source))
        if root is None:
            return None
        real = os.path.realpath(record.image)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return None
        return DataError(f"{record.image}: a link to {real}, outside the dataset root {root}: not followed "
                         f"(--allow-outside-root reads it)", path=record.source, line=record.line)

    def skipped_summary(self, limit: int = 20) -> str:
        """How many images were skipped and why, one line each (first ``limit`` of them)."""
        total = len(self.records) + len(self.skipped)
        if not self.skipped:
            return f"no images skipped ({total} checked)"
        lines = [f"skipped {len(self.skipped)} of {total} images:"]
        lines += [f"  {err}" for err in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        return "\n".join(lines)

    def load_sample(self, index: int) -> dict[str, Any]:
        """The sample dict before the transform: uint8 ``tv_tensors.Image`` and pixel geometry."""
        record = self.records[index]
        img = _load_rgb(record)
        width, height = img.size
        offset = (0.0, 0.0)
        bbox = record.bbox
        if bbox is None and self._has_bbox:
            bbox = (0.0, 0.0, float(width), float(height))
        if self.crop_to_bbox and record.bbox is not None:
            left, top, right, bottom = clip_crop_box(record.bbox, self.bbox_margin, width, height)
            img = img.crop((left, top, right, bottom))
            offset = (float(left), float(top))
            width, height = img.size
        image = tv_tensors.Image(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        sample: dict[str, Any] = {
            "image": image,
            "labels": torch.as_tensor(record.labels, dtype=torch.float32) * torch.as_tensor(record.label_mask, dtype=torch.float32),
            "label_mask": torch.as_tensor(record.label_mask, dtype=torch.float32),
        }
        if self.category_names is not None:
            sample["category"] = torch.tensor(-1 if record.category is None else record.category, dtype=torch.int64)
        if bbox is not None:
            box = torch.tensor([bbox], dtype=torch.float32)
            box[:, 0::2] -= offset[0]
            box[:, 1::2] -= offset[1]
            sample["bbox"] = tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(height, width))
        if self._has_landmarks:
            if record.landmarks is None:
                points = torch.zeros(NUM_LANDMARKS, 2)
                visibility = torch.full((NUM_LANDMARKS,), CUT_OFF, dtype=torch.int64)
            else:
                points = torch.as_tensor(record.landmarks, dtype=torch.float32).clone()
                points[:, 0] -= offset[0]
                points[:, 1] -= offset[1]
                visibility = torch.as_tensor(record.landmark_visibility, dtype=torch.int64)
                visibility = mark_outside_landmarks(points, visibility, height, width)
            sample["landmarks"] = tv_tensors.KeyPoints(points, canvas_size=(height, width))
            sample["landmark_visibility"] = visibility
        # Where the network input came from in the original photo (XYXY pixels), to draw results back on it.
        sample["crop_box"] = torch.tensor([offset[0], offset[1], offset[0] + width, offset[1] + height],
                                          dtype=torch.float32)
        sample["path"] = str(record.image)
        sample["index"] = index
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.load_sample(index)
        if self.transform is not None:
            sample = self.transform(sample)
        return sample

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.num_labels} labels"
            + (f", {len(self.category_names)} categories" if self.category_names else "")
            + (f", {len(self.skipped)} skipped" if self.skipped else "")
            + ")"
        )


class LazyRows(Sequence[T]):
    """The items of some rows of a reader's columns, each built when it is asked for.

    Building 289,222 ``Record`` and ``Path`` objects takes seconds; a dataset read from the cache
    only builds the ones a DataLoader (or ``validate_images``) touches. ``build(row)`` makes the
    item of one row; ``rows`` says which rows, in order, this sequence shows.
    """

    def __init__(self, build: Callable[[int], T], rows: np.ndarray) -> None:
        self.build = build
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self.build(int(row)) for row in self.rows[index]]
        return self.build(int(self.rows[index]))  # numpy raises the IndexError

    def __iter__(self) -> Iterator[T]:
        return (self.build(int(row)) for row in self.rows)


def force_vocabulary(
    labels: np.ndarray,
    mask: np.ndarray,
    names: Sequence[str],
    forced: Sequence[str] | None,
    source: str | Path,
    absent_is_unknown: bool,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reorder label columns ``(N, C)`` to the ``forced`` vocabulary (e.g. a saved model's).

    A label with positives in the data but missing from ``forced`` is an error (its images would be
    scored against a class the model cannot predict). Forced labels the data does not have become
    unknown when the dataset has a fixed vocabulary (``absent_is_unknown``), or negatives when the
    data lists positives explicitly (manifests: an unlisted label is a negative).
    """
    names = list(names)
    if forced is None:
        return labels, mask, names
    forced = list(forced)
    if len(set(forced)) != len(forced):
        dupes = sorted({n for n in forced if forced.count(n) > 1})
        raise ValueError(f"label_names contains duplicates: {dupes}")
    forced_set = set(forced)
    positives = (labels.astype(bool) & mask.astype(bool)).any(axis=0) if labels.size else np.zeros(len(names), bool)
    missing = [n for n, used in zip(names, positives) if used and n not in forced_set]
    if missing:
        shown = ", ".join(missing[:30]) + (f", ... ({len(missing)} in all)" if len(missing) > 30 else "")
        raise DataError(
            f"labels not in the forced vocabulary of {len(forced)} labels: expected only those, found {shown}",
            path=source,
        )
    absent = 0 if absent_is_unknown else 1  # the mask of a forced label the data does not have
    return take_columns(labels, names, forced, 0), take_columns(mask, names, forced, absent), forced


def take_columns(array: np.ndarray, names: Sequence[str], wanted: Sequence[str], fill: int) -> np.ndarray:
    """The columns of ``array`` (named ``names``) in the order of ``wanted``, ``fill`` where a name is not one of them."""
    index = {name: i for i, name in enumerate(names)}
    columns = np.array([index.get(name, -1) for name in wanted], dtype=np.int64)
    if not len(names):
        return np.full((len(array), len(wanted)), fill, dtype=array.dtype)
    taken = array[:, np.maximum(columns, 0)]
    taken[:, columns < 0] = fill
    return taken


def resolve_inside(root: Path, relative: str, source: Path, line: int) -> Path:
    """``root / relative``, refusing absolute paths and ``..`` that leave ``root``.

    Lexical normalisation (not ``resolve()``) so that a root made of symlinks still works.
    """
    if os.path.isabs(relative) or relative.startswith(("/", "\\")):
        raise DataError(f"expected an image path relative to {root}, found the absolute path {relative!r}", path=source, line=line)
    joined = os.path.normpath(os.path.join(str(root), relative))
    root_norm = os.path.normpath(str(root))
    if joined != root_norm and not joined.startswith(root_norm + os.sep):
        raise DataError(f"image path {relative!r} leaves the dataset root {root}: expected a path inside it", path=source, line=line)
    return Path(joined)


# ------------------------------------------------------------------------------ what is on disk

#: Folder names that are a dataset's splits, not its labels (class folders one level too high).
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "dev"})
#: The files (or folders) that mark each folder layout, relative to the dataset root.
_LAYOUT_MARKERS: tuple[tuple[str, str], ...] = (
    ("clothing-attributes", "labels.csv"),
    ("deepfashion", "Anno"),
    ("deepfashion-fine", "split/list_attr_cloth.txt"),
    ("clothing-co-parsing", "label_list.mat"),
)
_FILE_FORMATS = {"manifest": "a CSV file (image,labels)", "jsonl": "a JSON Lines file (one object a line)"}


def guess_format(path: Path) -> str | None:
    """The dataset format that fits what is at ``path``, from its names alone (no annotation parsed):
    a manifest by its extension, a folder layout by its marker file, class folders by sub-folders."""
    path = Path(path)
    if path.is_file():
        return {".csv": "manifest", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(path.suffix.lower())
    if not path.is_dir():
        return None
    for fmt, marker in _LAYOUT_MARKERS:
        if (path / marker).exists():
            return fmt
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return None
    if any(entry.suffix.lower() == ".json" and entry.is_file() for entry in entries[:1000]):
        return "kfashion"
    if any(entry.is_dir() and not entry.name.startswith(".") for entry in entries):
        return "folders"
    return None


def check_format(path: str | Path, fmt: str) -> None:
    """Refuse (DataError) a ``--format`` that does not fit what is at ``path``, naming what was found
    and the format that fits, before a reader trips over it (``IsADirectoryError`` tracebacks)."""
    path = Path(path)
    if not path.exists():
        return
    guess = guess_format(path)
    hint = f"; it looks like --format {guess}" if guess and guess != fmt else ""
    if fmt in _FILE_FORMATS and path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".csv", ".jsonl"))[:3]
        if inside:
            hint += f" (or point --data at the manifest in it: {', '.join(inside)})"
        raise DataError(f"--format {fmt} expects {_FILE_FORMATS[fmt]}, found a folder{hint}", path=path)
    if fmt not in _FILE_FORMATS and path.is_file():
        raise DataError(f"--format {fmt} expects a dataset folder, found a file{hint}", path=path)
    markers = dict(_LAYOUT_MARKERS)
    if fmt in markers and not (path / markers[fmt]).exists() and guess and guess != fmt:
        raise DataError(f"--format {fmt} expects {markers[fmt]} in the folder, found none{hint}", path=path)
    if fmt == "folders" and guess in markers:
        raise DataError(f"--format folders expects one sub-folder per label, found the "
                        f"{markers[guess]} of another layout{hint}", path=path)


def split_folder_warning(root: Path, names: Sequence[str]) -> str | None:
    """A note when class folders are named like splits (``train/ validation/ test/``): the labels
    would be the split names. The fix names the folders to point at instead."""
    splits = [name for name in names if name.lower() in SPLIT_FOLDER_NAMES]
    if not splits:
        return None
    train = next((n for n in splits if n.lower() in ("train", "training")), splits[0])
    val = next((n for n in splits if n.lower() in ("val", "valid", "validation", "dev")), None)
    fix = f"--data {Path(root) / train}" + (f" --val {Path(root) / val}" if val else "")
    return (f"label folder(s) named like splits: {', '.join(splits)}; these would be the labels. If they are "
            f"splits of class folders, train on one and validate on another: {fix}")
