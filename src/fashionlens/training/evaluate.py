"""Metrics of a saved model directory on a dataset, through the task's own ``outputs``."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader

from fashionlens.config import default_workers
from fashionlens.data import open_dataset
from fashionlens.errors import FashionlensError
from fashionlens.hub import resolve_model_dir
from fashionlens.modeldir import load_model_dir
from fashionlens.training.data import ColumnSubset
from fashionlens.training.task import collect_outputs
from fashionlens.training.tasks.clothing import ClothingTask
from fashionlens.training.tasks.style import StyleTask


def evaluate_model_dir(model_dir: Path, data: Path, fmt: str, split: str | None = None, batch_size: int = 32,
                       skip_bad: bool = False, workers: int | None = None, **options) -> dict:
    """Metrics of a saved model on a whole dataset (labels matched to the model's by name); ``options``
    go to the reader (``allow_outside_root`` for manifests)."""
    bundle = load_model_dir(resolve_model_dir(model_dir))
    # A clothing model's attributes are a subset of some readers' labels (the Clothing Attribute
    # Dataset's categories are its category head): read the dataset in the model's vocabulary.
    vocabulary = bundle.label_names if bundle.task == "clothing" else None
    dataset = open_dataset(data, fmt, split=split, skip_bad=skip_bad, transform=bundle.eval_transform(),
                           label_names=vocabulary, **options)
    names = bundle.label_names
    missing = [name for name in names if name not in dataset.label_names]
    if len(missing) == len(names):
        raise FashionlensError(f"{data}: none of the model's {len(names)} labels occur in this dataset "
                               f"(model labels start {names[:5]}, dataset labels start {dataset.label_names[:5]})")
    columns = [dataset.label_names.index(n) if n in dataset.label_names else -1 for n in names]
    workers = default_workers() if workers is None else workers
    loader = DataLoader(ColumnSubset(dataset, None, columns), batch_size=batch_size, num_workers=workers)
    task = task_module(bundle)
    metrics = task.metrics(collect_outputs(task, loader))
    metrics["num_images"] = len(dataset)
    if getattr(dataset, "skipped", None):
        metrics["skipped_images"] = [str(error) for error in dataset.skipped]
    return metrics


def task_module(bundle):
    """The LightningModule of a loaded model directory, for its ``outputs`` and ``metrics`` (no recipe)."""
    if bundle.task == "style":
        return StyleTask(bundle.model, bundle.label_names)
    return ClothingTask(bundle.model, bundle.labels["attribute_types"],
                        attribute_groups=bundle.labels.get("attribute_groups") or (), label_names=bundle.label_names,
                        train_counts=bundle.labels.get("attribute_counts"))
