"""Several datasets as one, for training on all of them at once.

Label vocabularies are merged by name: names are compared lower-cased with ``-``, ``_`` and spaces
removed (``T-Shirt`` = ``t_shirt`` = ``tshirt``), after an alias map has renamed them (``{"outwear":
"outerwear", "coat": "outerwear"}``). What a dataset does not annotate is unknown for its photos
(``label_mask`` 0); what it annotates as absent stays a negative. When several labels of one dataset
meet in one merged label (CCP's coat and jacket both as outerwear), the merged label is positive
when any of them is a known positive, negative when all of them are known negatives, and unknown
otherwise. Categories are merged the same way; a dataset without categories gives category -1.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torchvision import tv_tensors

from fashionlens.data.base import FashionDataset, Record
from fashionlens.errors import DataError
from fashionlens.vocabulary import CUT_OFF, NUM_LANDMARKS

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise_name(name: str) -> str:
    """The form names are compared in: lower case, without ``-``, ``_`` or spaces."""
    return _SEPARATORS.sub("", str(name).strip().lower())


def _alias_table(aliases: Mapping[str, str] | None, where: str) -> dict[str, str]:
    """Normalised alias -> target name; a target that is itself an alias is refused (no chains)."""
    table: dict[str, str] = {}
    for alias, target in (aliases or {}).items():
        if not isinstance(alias, str) or not isinstance(target, str) or not alias.strip() or not target.strip():
            raise ValueError(f"{where}: alias {alias!r}: expected a non-empty name mapped to a non-empty name, "
                             f"found {target!r}")
        key = normalise_name(alias)
        if key in table and normalise_name(table[key]) != normalise_name(target):
            raise ValueError(f"{where}: alias {alias!r} maps to both {table[key]!r} and {target!r}")
        table[key] = target.strip()
    for key, target in table.items():
        further = table.get(normalise_name(target))
        if further is not None and normalise_name(further) != normalise_name(target):
            raise ValueError(f"{where}: alias chain {key!r} -> {target!r} -> {further!r}: map {key!r} straight to "
                             f"{further!r} (chains are not followed)")
    return table


def load_aliases(path: str | Path) -> dict[str, str]:
    """Read an alias map from a YAML or JSON file (JSON when the name ends in ``.json``).

    Two forms, which may be mixed: ``alias: target`` (``outwear: outerwear``), or ``target: [alias,
    ...]`` (``outerwear: [outwear, coat, jacket]``). Returns ``{alias: target}``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("expected an alias file (YAML or JSON mapping of name -> name), found nothing", path=path) from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON: {error.msg}", path=path, line=error.lineno) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise DataError(f"not valid YAML: {getattr(error, 'problem', None) or error}", path=path,
                        line=None if mark is None else mark.line + 1) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DataError(f"expected a mapping of name -> name, found a {type(data).__name__}", path=path)
    aliases: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key.strip():
            raise DataError(f"key {key!r}: expected a label name (quote it if YAML reads it as a number or boolean)",
                            path=path)
        if isinstance(value, str) and value.strip():
            pairs = [(key, value)]
        elif isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            pairs = [(alias, key) for alias in value]
        else:
            raise DataError(f"key {key!r}: expected a target name or a list of alias names, found {value!r}", path=path)
        for alias, target in pairs:
            if alias in aliases and normalise_name(aliases[alias]) != normalise_name(target):
                raise DataError(f"key {key!r}: alias {alias!r} maps to both {aliases[alias]!r} and {target!r}", path=path)
            aliases[alias] = target
    try:
        _alias_table(aliases, str(path))
    except ValueError as error:
        raise DataError(str(error).removeprefix(f"{path}: "), path=path) from None
    return aliases


def _merge_names(per_source: Sequence[Sequence[str] | None], table: dict[str, str]
                 ) -> tuple[list[str], list[np.ndarray | None], set[int]]:
    """Merged names in order of first appearance; per source, its index -> merged index map."""
    merged: list[str] = []
    position: dict[str, int] = {}
    aliased: set[int] = set()
    maps: list[np.ndarray | None] = []
    for names in per_source:
        if names is None:
            maps.append(None)
            continue
        mapping = np.empty(len(names), dtype=np.int64)
        for j, name in enumerate(names):
            target = table.get(normalise_name(name))
            key = normalise_name(target if target is not None else name)
            if key not in position:
                position[key] = len(merged)
                merged.append(target if target is not None else name)
            if target is not None:
                aliased.add(position[key])
            mapping[j] = position[key]
        maps.append(mapping)
    return merged, maps, aliased


def _common_folder(dataset: FashionDataset) -> str:
    paths = [str(r.image) for r in dataset.records]
    if not paths:
        return type(dataset).__name__
    common = Path(os.path.commonpath(paths))
    if str(common) in set(paths):  # every record names the same file
        common = common.parent
    return "/".join(common.parts[-2:])


class MergedDataset(FashionDataset):
    """Rows of several FashionDatasets under one label vocabulary, merged by name through ``aliases``
    (see the module docstring). ``names`` name the sources in reports (default: the last two folders
    their images share).

    Each source keeps its own transform (or, with ``transform``, the merged dataset applies one to
    the sources' untransformed samples); ``__getitem__`` returns the source's sample dict with
    ``labels``, ``label_mask``, ``category`` and ``mask`` re-indexed to the merged vocabulary and
    ``index`` the merged row. Keys only some sources have are filled for the others as a
    FashionDataset does for its own records without them (``bbox``: the whole image; ``landmarks``:
    cut off; ``mask``: all -1), so that a mixed batch collates. ``sources[s]`` names source ``s``,
    ``rows[i]`` is ``(source, index in that source)`` and ``source_of(i)`` the name of row ``i``'s
    source; ``annotated_by[c]`` lists the sources that annotate merged label ``c``.
    """

    def __init__(self, datasets: Sequence[FashionDataset], aliases: Mapping[str, str] | None = None,
                 names: Sequence[str] | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        datasets = list(datasets)
        if not datasets:
            raise ValueError("MergedDataset needs at least one dataset")
        if names is None:
            names = [_common_folder(ds) for ds in datasets]
            names = [n if names.count(n) == 1 else f"{n}#{s}" for s, n in enumerate(names)]
        names = list(names)
        if len(names) != len(datasets) or len(set(names)) != len(names):
            raise ValueError(f"expected {len(datasets)} distinct source names, got {names}")
        table = _alias_table(aliases, "aliases")
        label_names, label_maps, aliased = _merge_names([ds.label_names for ds in datasets], table)
        has_categories = any(ds.category_names is not None for ds in datasets)
        category_names, category_maps, _ = _merge_names([ds.category_names for ds in datasets], table)

        size = len(label_names)
        display: list[str | None] = [None] * size
        words: list[str | None] = [None] * size
        types: list[str | None] = [None] * size
        typed = all(ds.attribute_types is not None for ds in datasets)
        annotated_by: list[list[str]] = [[] for _ in range(size)]
        notes: list[str] = []
        for s, (ds, mapping) in enumerate(zip(datasets, label_maps)):
            for j, c in enumerate(mapping):
                if display[c] is None:
                    display[c] = label_names[c] if c in aliased else ds.display_names[j]
                    words[c] = label_names[c] if c in aliased else ds.label_words[j]
                    types[c] = ds.attribute_types[j] if typed else None
                if names[s] not in annotated_by[c]:
                    annotated_by[c].append(names[s])
            met = [c for c in set(mapping.tolist()) if int((mapping == c).sum()) > 1]
            for c in sorted(met):
                joined = [ds.label_names[j] for j in np.flatnonzero(mapping == c)]
                notes.append(f"{names[s]}: labels {joined} merged into {label_names[c]!r}")
            notes += [f"{names[s]}: {note}" for note in ds.notes]

        records: list[Record] = []
        rows: list[tuple[int, int]] = []
        seen: set[str] = set()  # resolved photos of the earlier sources: `--data X --data X` counts each once
        repeated: list[str] = []
        real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
        self._label_lookup: list[torch.Tensor] = []
        self._category_lookup: list[np.ndarray | None] = []
        for s, (ds, mapping, cmap) in enumerate(zip(datasets, label_maps, category_maps)):
            spread = np.zeros((len(mapping), size), dtype=np.int64)  # source column -> merged column
            spread[np.arange(len(mapping)), mapping] = 1
            columns_per_label = spread.sum(axis=0)
            self._label_lookup.append(torch.as_tensor(np.append(mapping, -1)))
            self._category_lookup.append(cmap)
            if ds.records:
                labels, known = (matrix.astype(bool) for matrix in ds.label_matrix())
                positive = ((labels & known).astype(np.int64) @ spread) > 0
                all_known = (known.astype(np.int64) @ spread) == columns_per_label
                merged_mask = positive | ((columns_per_label > 0) & all_known)
            this_source: set[str] = set()  # rows of one source may share a photo (several boxes in it)
            for i, record in enumerate(ds.records):
                where = os.path.join(real_folder(os.path.dirname(str(record.image))), os.path.basename(str(record.image)))
                if where in seen:
                    repeated.append(str(record.image))
                    continue
                this_source.add(where)
                category = record.category
                if cmap is not None and category is not None and category >= 0:
                    category = int(cmap[category])
                elif has_categories:
                    category = -1
                records.append(replace(record, labels=positive[i].astype(np.uint8),
                                       label_mask=merged_mask[i].astype(np.uint8), category=category))
                rows.append((s, i))
            seen |= this_source

        if repeated:
            notes.append(f"left out {len(repeated)} photo(s) already read from an earlier --data (the same file by "
                         f"its resolved path), e.g. {repeated[:3]}")
            warnings.warn(notes[-1], stacklevel=2)
        super().__init__(
            records,
            label_names,
            category_names=category_names if has_categories else None,
            attribute_types=types if typed else None,
            display_names=display,
            label_words=words,
            transform=transform,
            notes=notes,
        )
        self.datasets = datasets
        self.sources = names
        self.rows = rows
        self.annotated_by = annotated_by
        self.skipped = [error for ds in datasets for error in ds.skipped]
        self.roots = {source: root for ds in datasets for source, root in ds.roots.items()}
        self.with_masks = any(getattr(ds, "with_masks", False) for ds in datasets)

    def source_of(self, index: int) -> str:
        """The name of the source dataset row ``index`` comes from."""
        return self.sources[self.rows[index][0]]

    def validate_images(self, full_decode: bool = True, drop: bool = False, workers: int | None = None,
                        remember: bool = False) -> list[DataError]:
        before = list(zip(self.records, self.rows))
        problems = super().validate_images(full_decode=full_decode, drop=drop, workers=workers, remember=remember)
        if drop and problems:
            kept = {id(record) for record in self.records}
            self.rows = [row for record, row in before if id(record) in kept]
        return problems

    def _reindex(self, sample: dict[str, Any], index: int) -> dict[str, Any]:
        source, _ = self.rows[index]
        record = self.records[index]
        known = torch.as_tensor(record.label_mask, dtype=torch.float32)
        sample["labels"] = torch.as_tensor(record.labels, dtype=torch.float32) * known
        sample["label_mask"] = known
        if self.category_names is not None:
            sample["category"] = torch.tensor(-1 if record.category is None else record.category, dtype=torch.int64)
        height, width = sample["image"].shape[-2:]
        if "mask" in sample:
            sample["mask"] = tv_tensors.Mask(self._label_lookup[source][torch.as_tensor(sample["mask"]).long()])
        elif self.with_masks:
            sample["mask"] = tv_tensors.Mask(torch.full((height, width), -1, dtype=torch.int64))
        if self._has_bbox and "bbox" not in sample:
            sample["bbox"] = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0.0, float(width), float(height)]]),
                                                      format="XYXY", canvas_size=(height, width))
        if self._has_landmarks and "landmarks" not in sample:
            sample["landmarks"] = tv_tensors.KeyPoints(torch.zeros(NUM_LANDMARKS, 2), canvas_size=(height, width))
            sample["landmark_visibility"] = torch.full((NUM_LANDMARKS,), CUT_OFF, dtype=torch.int64)
        sample["index"] = index
        return sample

    def load_sample(self, index: int) -> dict[str, Any]:
        source, local = self.rows[index]
        return self._reindex(self.datasets[source].load_sample(local), index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.transform is not None:
            return self.transform(self.load_sample(index))
        source, local = self.rows[index]
        return self._reindex(self.datasets[source][local], index)
