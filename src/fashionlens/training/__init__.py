"""Training and evaluation, split the Lightning way (see docs/architecture.md).

- ``data``: opening the datasets, the split, label columns, transforms, loaders, the feature cache;
- ``recipe``: optimiser groups and schedule, freeze-then-finetune (a ``BaseFinetuning`` callback);
- ``task``: what both LightningModules share; ``tasks/style.py`` and ``tasks/clothing.py``: each
  task's model, loss and metrics, and one pure ``outputs(batch)``;
- ``run``: the one run skeleton (seed, run directory, trainer, resume, best weights, results);
- ``evaluate``: a saved model directory on a dataset.
"""

from fashionlens.training.data import (
    ColumnSubset,
    FeatureCache,
    TrainingData,
    split_indices,
)
from fashionlens.training.evaluate import evaluate_model_dir
from fashionlens.training.run import (
    prepare,
    resolve_resume_checkpoint,
    run_training,
    save_built_model,
    train_clothing,
    train_style,
)
from fashionlens.training.task import Task, collect_outputs
from fashionlens.training.tasks.clothing import ClothingTask, clothing_metrics
from fashionlens.training.tasks.style import StyleTask, build_label_graph_inputs

__all__ = [
    "ClothingTask",
    "ColumnSubset",
    "FeatureCache",
    "StyleTask",
    "Task",
    "TrainingData",
    "build_label_graph_inputs",
    "clothing_metrics",
    "collect_outputs",
    "evaluate_model_dir",
    "prepare",
    "resolve_resume_checkpoint",
    "run_training",
    "save_built_model",
    "split_indices",
    "train_clothing",
    "train_style",
]
