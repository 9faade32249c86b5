"""The run directory: the files a training run writes, named once (docs/design-contract.md).

::

    RUN_DIR/
      config.yaml           the full typed config; `fashionlens train TASK --config` reproduces the run
      run.json              environment, seed, sizes, label names, start time
      metrics.json          final validation metrics (scalars and per-label/per-type tables)
      history.json          one row per epoch: epoch, seconds, train_loss and the scalar metrics
      val_predictions.npz   raw validation outputs, one row per validation photo (keys below)
      model/                the model directory (modeldir.py)
      checkpoints/          Lightning checkpoints and manifest.json (names, steps and hashes)
      logs/                 CSVLogger metrics
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionlens.fileio import atomic_write_bytes, atomic_write_json

#: val_predictions.npz keys. Both tasks: labels, mask (known labels), index (row in the dataset),
#: paths. Style: scores (logits). Clothing: attr_scores (attribute logits), category_logits,
#: category, and with landmarks pred_xy, true_xy, visibility, sizes, boxes.
SCORES_KEY = {"style": "scores", "clothing": "attr_scores"}


@dataclass(frozen=True)
class RunDir:
    """Paths of a run directory and readers/writers of its files."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config_yaml(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def history_json(self) -> Path:
        return self.path / "history.json"

    @property
    def predictions_npz(self) -> Path:
        return self.path / "val_predictions.npz"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def create(self) -> "RunDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # -- reading

    def metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics_json.read_text())

    def history(self) -> list[dict[str, Any]]:
        return json.loads(self.history_json.read_text()) if self.history_json.is_file() else []

    def run_info(self) -> dict[str, Any]:
        return json.loads(self.run_json.read_text()) if self.run_json.is_file() else {}

    def predictions(self) -> dict[str, np.ndarray]:
        with np.load(self.predictions_npz, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    # -- writing

    def write_results(self, metrics: dict, history: list[dict], arrays: dict[str, np.ndarray]) -> None:
        atomic_write_json(self.metrics_json, metrics)
        atomic_write_json(self.history_json, history)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.predictions_npz, buffer.getvalue())
