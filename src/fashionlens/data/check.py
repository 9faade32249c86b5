"""``fashionlens data check``: read a dataset, validate every image, and report what was found.

Problems are collected, not raised: an annotation error stops parsing (nothing after it can be
trusted) but still becomes a report; unreadable images are listed one by one with file and line.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from fashionlens.data import open_dataset
from fashionlens.errors import DataError


@dataclass
class DatasetReport:
    """What ``check_dataset`` found. Label counts are per label over the readable images."""

    path: str
    format: str
    num_images: int = 0
    num_skipped: int = 0
    label_names: list[str] = field(default_factory=list)
    positives: list[int] = field(default_factory=list)
    negatives: list[int] = field(default_factory=list)
    unknown: list[int] = field(default_factory=list)
    images_all_unknown: int = 0
    images_without_positive: int = 0
    category_names: list[str] | None = None
    category_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the reader warned about (split-named folders, ...)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_text(self) -> str:
        out = [f"dataset {self.path} (format {self.format})"]
        out.append(f"images: {self.num_images} readable, {self.num_skipped} unreadable")
        out.append(f"labels: {len(self.label_names)}")
        if self.label_names:
            total_unknown = sum(self.unknown)
            out.append(f"unknown label entries: {total_unknown}; images with every label unknown: {self.images_all_unknown}")
            out.append(f"images with no positive label: {self.images_without_positive}")
            width = max(5, *(len(n) for n in self.label_names))
            out.append(f"  {'label':<{width}}  {'pos':>7}  {'neg':>7}  {'unknown':>7}")
            never = [name for name, p in zip(self.label_names, self.positives) if p == 0]
            # A 1000-attribute vocabulary on a small set is mostly empty rows; list those once, by name.
            compress = len(self.label_names) > 60 and never
            for name, p, n, u in zip(self.label_names, self.positives, self.negatives, self.unknown):
                if not (compress and p == 0):
                    out.append(f"  {name:<{width}}  {p:>7}  {n:>7}  {u:>7}")
            if compress:
                shown = ", ".join(never[:20]) + (", ..." if len(never) > 20 else "")
                out.append(f"  {len(never)} label(s) have no positive image: {shown}")
        if self.category_names is not None:
            used = sum(1 for name in self.category_counts if name != "(none)")
            out.append(f"categories: {len(self.category_names)} names, {used} used")
            for name, count in sorted(self.category_counts.items(), key=lambda kv: (-kv[1], kv[0])):
                out.append(f"  {name:<20}  {count:>7}")
        if self.notes:
            out.append("notes:")
            out += [f"  {note}" for note in self.notes]
        if self.warnings:
            out.append(f"warnings: {len(self.warnings)}")
            out += [f"  {warning}" for warning in self.warnings]
        out.append(f"problems: {len(self.problems)}")
        out += [f"  {problem}" for problem in self.problems]
        return "\n".join(out)


def check_dataset(
    path: str | Path,
    format: str,
    split: str | None = None,
    label_names: Sequence[str] | None = None,
    full_decode: bool = True,
    **kw: Any,
) -> DatasetReport:
    """Open the dataset, decode every image (``full_decode``) and count labels; never raises DataError."""
    report = DatasetReport(path=str(path), format=format)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = open_dataset(path, format, split=split, skip_bad=False, label_names=label_names, **kw)
    except DataError as err:
        report.problems.append(str(err))
        return report
    report.warnings = list(dict.fromkeys(str(warning.message) for warning in caught))
    dataset.validate_images(full_decode=full_decode, drop=True)
    report.num_images = len(dataset)
    report.num_skipped = len(dataset.skipped)
    report.problems += [str(err) for err in dataset.skipped]
    report.notes = list(dataset.notes)
    report.label_names = list(dataset.label_names)
    labels, mask = (matrix.astype(bool) for matrix in dataset.label_matrix())
    report.positives = (labels & mask).sum(0).astype(int).tolist()
    report.negatives = (~labels & mask).sum(0).astype(int).tolist()
    report.unknown = (~mask).sum(0).astype(int).tolist()
    report.images_all_unknown = int((~mask).all(1).sum()) if len(dataset.label_names) else 0
    report.images_without_positive = int((~(labels & mask).any(1)).sum())
    if dataset.category_names is not None:
        report.category_names = list(dataset.category_names)
        counts = Counter(r.category for r in dataset.records)
        report.category_counts = {
            (dataset.category_names[c] if c is not None and c >= 0 else "(none)"): n for c, n in counts.items()
        }
    return report
