"""DDP: metrics gathered across 2 CPU processes (gloo) equal the single-process metrics on the same data."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from fashionlens.data import build_transforms, open_dataset
from fashionlens.models.mlgcn import build_style_model
from fashionlens.training import ColumnSubset, StyleTask

MINI = Path(__file__).resolve().parents[1] / "examples" / "clothing-attributes-mini"


class _Data(L.LightningDataModule):
    """One validation set (module level, so that ddp_spawn can pickle it)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=4, num_workers=0)


def _validate(devices: int, tmp_path: Path) -> dict[str, float]:
    torch.manual_seed(0)
    dataset = open_dataset(MINI, "clothing-attributes",
                           transform=build_transforms(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), train=False))
    # 21 samples: odd, so the distributed sampler must pad one rank with a repeated sample.
    columns = list(range(len(dataset.label_names)))
    val = ColumnSubset(dataset, list(range(21)), columns)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": "linear", "num_labels": len(columns), "image_size": 64}
    model = build_style_model(config)
    task = StyleTask(model, list(dataset.label_names))
    data = _Data(val)
    strategy = "ddp_spawn" if devices > 1 else "auto"
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.validate(task, datamodule=data, verbose=False)
    return {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}


@pytest.mark.slow
def test_ddp_metrics_equal_single_process(tmp_path: Path):
    single = _validate(1, tmp_path / "one")
    double = _validate(2, tmp_path / "two")
    assert single["val/mAP"] > 0
    for key in ("val/mAP", "val/CF1", "val/OF1", "val/OF1_top3"):
        assert double[key] == pytest.approx(single[key], abs=1e-4), key
