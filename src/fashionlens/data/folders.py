"""Single-label image folders: ``root/<label>/<image>`` (like torchvision's ImageFolder).

The category is the folder's index in the vocabulary, the label vector is one-hot and fully known
(an image in ``street/`` is known not to be ``retro``). Files that are not images by extension are
not read; how many were passed over is recorded in the dataset's ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import warnings
from pathlib import Path
from typing import Any

from fashionlens.data.base import FashionDataset, Record, split_folder_warning
from fashionlens.errors import DataError
from fashionlens.vocabulary import IMAGE_EXTENSIONS


def _follows(link: Path, root: Path) -> bool:
    """Whether a folder link may be walked: it leads inside ``root`` and not to a folder above it
    (``loop -> .`` would list every photo again under the link's name)."""
    target, real_root = link.resolve(), root.resolve()
    return target.is_relative_to(real_root) and not link.parent.resolve().is_relative_to(target)


def _label_folders(root: Path) -> tuple[list[Path], list[str]]:
    """The label folders of ``root`` and the folder links left out (see ``_follows``)."""
    folders, outside = [], []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not _follows(entry, root):
            outside.append(entry.name)
            continue
        folders.append(entry)
    return folders, outside


def _files_inside(root: Path, folder: Path) -> tuple[list[Path], list[str]]:
    """Every file under ``folder`` (sorted), following folder links that stay inside ``root`` once."""
    files, outside, visited = [], [], {folder.resolve()}
    pending = [folder]
    while pending:
        current = pending.pop()
        for entry in sorted(current.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if entry.is_symlink() and (not _follows(entry, root) or entry.resolve() in visited):
                    outside.append(str(entry.relative_to(root)))
                    continue
                visited.add(entry.resolve())
                pending.append(entry)
            elif entry.is_file():
                files.append(entry)
    return sorted(files), outside


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
    folders, outside = _label_folders(root)
    if not folders:
        raise DataError("expected one sub-folder per label, found none", path=root)
    names = [p.name for p in folders]
    if label_names is not None:
        vocabulary = list(label_names)
        extra = [n for n in names if n not in vocabulary]
        if extra:
            raise DataError(f"label folder(s) {extra} not in the forced vocabulary {vocabulary}", path=root)
    else:
        vocabulary = names
    index = {name: i for i, name in enumerate(vocabulary)}
    records: list[Record] = []
    passed_over: list[str] = []
    seen: dict[Path, str] = {}  # resolved photo -> its label folder: a folder link must not give a photo two labels
    twice: list[str] = []
    for folder in folders:
        files, links = _files_inside(root, folder)
        outside += links
        for file in files:
            if file.suffix.lower() not in IMAGE_EXTENSIONS:
                passed_over.append(str(file.relative_to(root)))
                continue
            real = file.resolve()
            if real in seen:
                twice.append(str(file.relative_to(root)))
                continue
            seen[real] = folder.name
            records.append(Record.one_class(file, index[folder.name], len(vocabulary)))
    notes = []
    if passed_over:
        notes.append(f"passed over {len(passed_over)} non-image file(s), e.g. {passed_over[:5]}")
    used = {vocabulary[r.category] for r in records}
    empty = [n for n in names if n not in used]
    if empty:
        notes.append(f"label folder(s) with no images: {empty}")
    warned = []
    if outside:
        warned.append(f"not followed {len(outside)} folder link(s) that lead out of the dataset root or back "
                      f"into a folder above them (a loop): {outside[:5]}")
    if twice:
        warned.append(f"left out {len(twice)} photo(s) reached a second time through a folder link: {twice[:5]}")
    split_note = split_folder_warning(root, names)
    if split_note:
        warned.append(split_note)
    for note in warned:  # `data check` lists them under warnings; training prints them
        warnings.warn(f"{root}: {note}", stacklevel=2)
    return FashionDataset(
        records,
        vocabulary,
        category_names=vocabulary,
        transform=transform,
        skip_bad=skip_bad,
        notes=notes,
    )
