"""The data of a training run: opening the datasets, the split, label columns, transforms, loaders
and the frozen-feature cache. Lightning adds the DistributedSampler under DDP.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from fashionlens.config import ClothingConfig, ConfigError, DataConfig, DataSource, StyleConfig, default_workers
from fashionlens.data import open_dataset
from fashionlens.data.clothing_attributes import CLOTHING_ATTRIBUTE_NAMES
from fashionlens.data.merge import load_aliases, MergedDataset, normalise_name
from fashionlens.data.transforms import BOX_CROP_SCALES, build_transforms
from fashionlens.errors import FashionlensError
from fashionlens.progress import progress_bar
from fashionlens.vocabulary import SPLIT_FORMATS

MANIFEST_FORMATS = ("manifest", "jsonl")


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed random split: the same (count, fraction, seed) always gives the same indices."""
    if not 0.0 < val_fraction < 1.0:
        raise FashionlensError(f"--val-split must be between 0 and 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(count)
    val_count = max(1, int(round(count * val_fraction)))
    if val_count >= count:
        raise FashionlensError(f"dataset of {count} samples is too small to hold out {val_fraction:.0%}")
    return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())


#: How many unreadable photos an error lists before it counts the rest.
LISTED_BAD_PHOTOS = 50


def check_photos(dataset, skip_bad: bool, announce: bool = True) -> None:
    """Every photo opened and decoded before the first epoch, all at once (cached: a second run over
    the same unchanged photos decodes none). Bad photos are a DataError listing every one and
    suggesting --skip-bad; with ``skip_bad`` they are left out and, with ``announce``, listed."""
    from fashionlens.errors import DataError

    problems = dataset.validate_images(full_decode=True, drop=skip_bad, remember=True)
    if skip_bad:  # with the ones the reader left out already (it checks with skip_bad too)
        problems = list(dataset.skipped)
    if not problems:
        return
    total = len(dataset) + (len(problems) if skip_bad else 0)
    listed = [f"  {error}" for error in problems[:LISTED_BAD_PHOTOS]]
    if len(problems) > LISTED_BAD_PHOTOS:
        listed.append(f"  ... and {len(problems) - LISTED_BAD_PHOTOS} more (`fashionlens data check` lists them all)")
    if not skip_bad:
        raise DataError(f"{len(problems)} of {total} photos cannot be read; fix or remove them, or pass --skip-bad "
                        f"to train without them:\n" + "\n".join(listed))
    if announce:
        print(f"fashionlens: --skip-bad: left out {len(problems)} of {total} photos that cannot be read:\n"
              + "\n".join(listed), flush=True)


def open_sources(data: DataConfig, transform, label_names=None, split: str | None = None,
                 source_vocabulary: dict[str, list[str]] | None = None, announce: bool = True):
    """The dataset of ``data.sources``: one reader, or several merged by label name; its photos
    checked (:func:`check_photos`).

    ``label_names`` force the vocabulary of a single source; ``source_vocabulary`` (format -> names)
    forces it for the sources of that format when several are merged.
    """
    options = {"allow_outside_root": True} if data.allow_outside_root else {}
    if len(data.sources) == 1:
        source = data.sources[0]
        dataset = open_dataset(source.path, source.format, split=split, skip_bad=data.skip_bad, transform=transform,
                               label_names=label_names, **(options if source.format in MANIFEST_FORMATS else {}))
        check_photos(dataset, data.skip_bad, announce)
        return dataset
    aliases = load_aliases(data.aliases) if data.aliases else None
    parts = [open_dataset(s.path, s.format, split=split if s.format in SPLIT_FORMATS else None,
                          skip_bad=data.skip_bad, transform=transform,
                          label_names=source_vocabulary.get(s.format) if source_vocabulary else None,
                          **(options if s.format in MANIFEST_FORMATS else {}))
             for s in data.sources]
    merged = MergedDataset(parts, aliases=aliases)
    if label_names is not None:
        missing = [name for name in label_names if name not in merged.label_names]
        if missing:
            raise ConfigError(f"data.sources: labels {missing[:5]} of the training vocabulary are in none of them")
    check_photos(merged, data.skip_bad, announce)
    return merged


class ColumnSubset(torch.utils.data.Dataset):
    """Some rows of a dataset, with its label columns reordered to a model's vocabulary.

    ``columns[j]`` is the dataset column of the model's label ``j``, or -1 when the dataset lacks that
    label: then the label is unknown (mask 0) for every sample, never a silent negative.
    """

    def __init__(self, dataset, indices: list[int] | None, columns: list[int]):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.columns = torch.as_tensor(columns, dtype=torch.long)
        self._identity = list(columns) == list(range(len(dataset.label_names)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        sample = self.dataset[self.indices[position]]
        if not self._identity:
            present = self.columns >= 0
            safe = self.columns.clamp(min=0)
            sample["labels"] = torch.where(present, sample["labels"][safe], torch.zeros(()))
            sample["label_mask"] = torch.where(present, sample["label_mask"][safe], torch.zeros(()))
        return sample


class FeatureCache(torch.utils.data.Dataset):
    """What the head consumes (``model.forward_features``: pooled features, or the feature map for the
    query head) from a frozen backbone, computed once, with the samples' labels.

    With the backbone frozen for every epoch its output never changes, so computing it once and
    training only the head gives the same optimisation at a fraction of the cost (the linear-probe
    setting). Views are deterministic (eval transform).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, index: torch.Tensor,
                 paths: list[str]):
        self.features, self.labels, self.mask, self.index, self.paths = features, labels, mask, index, paths

    @classmethod
    @torch.no_grad()
    def extract(cls, model: nn.Module, dataset, batch_size: int, workers: int, description: str) -> "FeatureCache":
        model.eval()
        device = next(model.parameters()).device
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        parts: dict[str, list] = {"features": [], "labels": [], "mask": [], "index": [], "paths": []}
        for batch in progress_bar(loader, desc=description):
            parts["features"].append(model.forward_features(batch["image"].to(device)).float().cpu())
            parts["labels"].append(batch["labels"])
            parts["mask"].append(batch["label_mask"])
            parts["index"].append(batch["index"])
            parts["paths"].extend(batch["path"])
        return cls(torch.cat(parts["features"]), torch.cat(parts["labels"]), torch.cat(parts["mask"]),
                   torch.cat(parts["index"]), parts["paths"])

    def columns(self, columns: list[int]) -> "FeatureCache":
        """The same samples with only these label columns (the features are shared, not copied)."""
        index = torch.as_tensor(columns, dtype=torch.long)
        return FeatureCache(self.features, self.labels[:, index], self.mask[:, index], self.index, self.paths)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i], "label_mask": self.mask[i],
                "index": self.index[i], "path": self.paths[i]}


# Variants of one `compare` share the frozen backbone's features: the last extraction, by its key.
_FEATURE_CACHE: dict[tuple, tuple[FeatureCache, FeatureCache]] = {}


class TrainingData(L.LightningDataModule):
    """The datasets of a run, its split and label columns, and their loaders."""

    def __init__(self, config: StyleConfig | ClothingConfig, mean, std):
        super().__init__()
        self.config = config
        data = config.data
        size = config.backbone.image_size
        boxed = config.task == "clothing" and data.format in SPLIT_FORMATS  # photos cropped to the garment
        self.train_transform = build_transforms(size, mean, std, train=True,
                                                **({"scales": BOX_CROP_SCALES} if boxed else {}))
        self.eval_transform = build_transforms(size, mean, std, train=False)
        self.batch_size = data.batch_size
        self.workers = default_workers() if data.workers is None else data.workers
        seed = config.recipe.seed
        fmt = data.format
        if config.task == "clothing" and fmt in SPLIT_FORMATS:  # the benchmark's own partition
            self.train_full = open_sources(data, self.train_transform, split="train")
            self.val_full = open_sources(data, self.eval_transform, split="val")
            self.train_idx = list(range(len(self.train_full)))
            self.val_idx = list(range(len(self.val_full)))
            self.train_eval = None
        else:
            vocabulary = None
            if config.task == "clothing":  # 7 categories + 30 typed attributes; categories are the category head
                vocabulary = list(CLOTHING_ATTRIBUTE_NAMES)
            open_kw: dict[str, Any] = {}
            if len(data.sources) > 1 and vocabulary is not None:
                open_kw, vocabulary = {"source_vocabulary": {"clothing-attributes": vocabulary}}, None
            self.train_full = open_sources(data, self.train_transform, label_names=vocabulary, **open_kw)
            if data.val is not None:
                val_data = DataConfig(sources=(DataSource(data.val, fmt),), skip_bad=data.skip_bad,
                                      allow_outside_root=data.allow_outside_root)
                self.val_full = open_sources(val_data, self.eval_transform, label_names=self.train_full.label_names)
                self.train_idx = list(range(len(self.train_full)))
                self.val_idx = list(range(len(self.val_full)))
            else:
                self.val_full = open_sources(data, self.eval_transform, label_names=vocabulary, announce=False,
                                             **open_kw)
                count = len(self.train_full)
                if config.task == "style" and data.limit and data.limit < count:
                    # A seeded random subset: the first N rows of a class-folder dataset are one class.
                    chosen = np.sort(np.random.default_rng(seed).permutation(count)[: data.limit])
                    train_pos, val_pos = split_indices(len(chosen), data.val_split, seed)
                    self.train_idx = chosen[train_pos].tolist()
                    self.val_idx = chosen[val_pos].tolist()
                else:
                    self.train_idx, self.val_idx = split_indices(count, data.val_split, seed)
            # The training photos under the eval transform: what the feature cache reads.
            self.train_eval = self.val_full if data.val is None else open_sources(
                data, self.eval_transform, label_names=vocabulary, announce=False, **open_kw)
        if config.task == "clothing" and data.limit:
            self.train_idx = self.train_idx[: data.limit]
        self.columns = list(range(len(self.train_full.label_names)))
        self._types = list(getattr(self.train_full, "attribute_types", None) or [])
        if config.task == "clothing" and not self._types and hasattr(self.train_full, "datasets"):
            # Merged sources: the attributes are the typed labels (the others name categories).
            self.columns, self._types = typed_columns(self.train_full)
        self.train_set: Any = ColumnSubset(self.train_full, self.train_idx, self.columns)
        self.val_set: Any = ColumnSubset(self.val_full, self.val_idx, self.columns)

    @property
    def label_names(self) -> list[str]:
        """The names of the label columns trained on (model order)."""
        return [self.train_full.label_names[c] for c in self.columns]

    @property
    def attribute_types(self) -> list[str]:
        return list(self._types)

    @property
    def category_names(self) -> list[str]:
        return list(getattr(self.train_full, "category_names", None) or [])

    def display_name(self, column: int) -> str:
        """The display name of label ``column`` (an index into :attr:`label_names`)."""
        names = getattr(self.train_full, "display_names", None)
        source = self.columns[column]
        return names[source] if names else self.train_full.label_names[source]

    def train_label_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        labels, mask = self.train_full.label_matrix(self.train_idx)
        return labels[:, self.columns], mask[:, self.columns]

    def keep_columns(self, kept: list[int]) -> None:
        """Train and validate on these of :attr:`label_names` only (labels left out of the model)."""
        self.columns = [self.columns[k] for k in kept]
        if self._types:
            self._types = [self._types[k] for k in kept]
        self.train_set = ColumnSubset(self.train_full, self.train_idx, self.columns)
        self.val_set = ColumnSubset(self.val_full, self.val_idx, self.columns)

    def cache_features(self, model: nn.Module) -> None:
        """Replace both sets by the frozen backbone's features as the head consumes them (pooled, or the
        map for the query head: ``model.forward_features``; eval transform, computed once).

        The key leaves out the label columns: the features do not depend on them, so variants that
        keep different labels (a linear and an ML-GCN head) share one extraction. The cache holds
        every label column of the dataset and each run takes its own.
        """
        config = self.config
        sources = tuple((str(s.path), s.format) for s in config.data.sources)
        key = (sources, str(config.data.val), config.backbone.name, config.backbone.pretrained, config.head.pool,
               config.backbone.image_size, bool(getattr(model, "spatial", False)), tuple(self.train_idx),
               tuple(self.val_idx))
        if key not in _FEATURE_CACHE:
            _FEATURE_CACHE.clear()
            every_column = list(range(len(self.train_full.label_names)))
            train_view = ColumnSubset(self.train_eval, self.train_idx, every_column)
            val_view = ColumnSubset(self.val_full, self.val_idx, every_column)
            _FEATURE_CACHE[key] = (
                FeatureCache.extract(model, train_view, self.batch_size, self.workers, "caching train features"),
                FeatureCache.extract(model, val_view, self.batch_size, self.workers, "caching val features"))
        train, val = _FEATURE_CACHE[key]
        self.train_set, self.val_set = train.columns(self.columns), val.columns(self.columns)
        self.workers = 0

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.workers > 0,
                          drop_last=shuffle and len(dataset) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


def typed_columns(merged) -> tuple[list[int], list[str]]:
    """The columns of a merged dataset whose label has an attribute type in some source, and the types."""
    types: dict[str, str] = {}
    for part in merged.datasets:
        for name, kind in zip(part.label_names, getattr(part, "attribute_types", None) or []):
            types.setdefault(normalise_name(name), kind)
    columns = [i for i, name in enumerate(merged.label_names) if normalise_name(name) in types]
    if not columns:
        raise ConfigError("data.sources: none of the datasets has typed attributes (clothing-attributes or "
                          "deepfashion): the clothing network needs some")
    return columns, [types[normalise_name(merged.label_names[i])] for i in columns]


def sample_path(dataset, index: int) -> str:
    """The image path of row ``index`` (a sample's own "index": a row of the underlying reader's dataset)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return str(dataset.records[index].image)
