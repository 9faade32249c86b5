"""What the style and clothing LightningModules share: the recipe, gathered outputs and the history.

Each task defines two pure methods. ``predictions(batch)``: what the network says about the
photos, needing no labels (detached, float); ``trainer.predict`` returns it. ``outputs(batch) ->
(records, loss)``: those predictions with the batch's labels, mask and dataset index (the records
that metrics, ``val_predictions.npz`` and evaluation read) and the batch loss. Validation,
``evaluate`` and the final validation of a run all call ``outputs``; nothing is patched.

The Predictor (``fashionlens.inference``) runs the network's own outputs dict, the same forward
these methods call, without building a Task: importing Lightning would add seconds to the start of
``predict`` and ``serve``.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from torch import nn

from fashionlens.config import RecipeConfig
from fashionlens.progress import progress_bar
from fashionlens.training.recipe import configure_optimizers


class Task(L.LightningModule):
    """A model with its loss and metrics; ``recipe`` is only needed to train it."""

    #: The validation metric that picks the best checkpoint, and whether higher is better.
    monitor: str = "loss"
    monitor_mode: str = "min"
    #: Metrics shown in the progress bar.
    progress_keys: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, recipe: RecipeConfig | None = None, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.channels_last = channels_last
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.last_metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._epoch_start = time.perf_counter()

    # -- what each task defines

    def predictions(self, batch: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def outputs(self, batch: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def metrics(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        raise NotImplementedError

    def training_loss(self, batch: dict, batch_idx: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    # -- shared

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def images(self, batch: dict) -> torch.Tensor:
        images = batch["image"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def configure_optimizers(self):
        if self.recipe is None:
            raise RuntimeError("this task was built without a recipe (evaluation only); it cannot train")
        return configure_optimizers(self.model, self.backbone, self.recipe)

    def training_step(self, batch, batch_idx):
        loss, parts = self.training_loss(batch, batch_idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {self.current_epoch}, "
                                     f"step {self.global_step}, batch {batch_idx} "
                                     f"(first image: {batch['path'][0]})")
        size = len(batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_epoch=True, batch_size=size)
        return loss

    def predict_step(self, batch, batch_idx):
        return {**self.predictions(batch), "index": batch["index"].detach()}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("global_step", float(self.global_step), on_step=True, on_epoch=False, logger=False)

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fashionlens_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("fashionlens_history", []))

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def validation_step(self, batch, batch_idx):
        records, loss = self.outputs(batch)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["labels"]), sync_dist=True)
        self._outputs.append(records)

    def on_validation_epoch_end(self) -> None:
        outputs = self._gathered()
        if not outputs:
            return
        metrics = self.metrics(outputs)
        self.last_metrics = metrics
        if self.trainer is not None and self.trainer.sanity_checking:
            return
        row = {"epoch": self.current_epoch, "seconds": time.perf_counter() - self._epoch_start}
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
                self.log(f"val/{key}", float(value), prog_bar=key in self.progress_keys, sync_dist=False)
        self.history.append(row)

    def on_train_epoch_end(self) -> None:
        # This epoch's training loss is reduced only after its validation has run: the row written
        # at validation gets it here (reading it at validation gave the previous epoch's).
        train_loss = self.trainer.callback_metrics.get("train/loss_epoch")
        if train_loss is not None and self.history and self.history[-1]["epoch"] == self.current_epoch:
            self.history[-1]["train_loss"] = float(train_loss)

    def _gathered(self) -> dict[str, torch.Tensor]:
        """This epoch's validation records, concatenated across batches and DDP ranks.

        The distributed sampler pads the last batches by repeating samples; each sample carries its
        dataset index, so duplicates are dropped and every sample counts exactly once.
        """
        if not self._outputs:
            return {}
        keys = self._outputs[0].keys()
        local = {key: torch.cat([output[key] for output in self._outputs]) for key in keys}
        if self.trainer is not None and self.trainer.world_size > 1:
            gathered = self.all_gather(local)
            local = {key: value.flatten(0, 1) if value.dim() > 1 else value.flatten() for key, value in gathered.items()}
        return unique_by_index(local)


def unique_by_index(records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Records sorted by their dataset index, each index once, on the CPU."""
    order = torch.argsort(records["index"], stable=True)
    records = {key: value[order] for key, value in records.items()}
    keep = torch.ones_like(records["index"], dtype=torch.bool)
    keep[1:] = records["index"][1:] != records["index"][:-1]
    return {key: value[keep].cpu() for key, value in records.items()}


@torch.no_grad()
def collect_outputs(task: Task, loader, device=None, progress: bool = True) -> dict[str, torch.Tensor]:
    """``task.outputs`` over a loader, concatenated (one record per sample, in index order)."""
    task.eval()
    device = device or next(task.parameters()).device
    records: list[dict[str, torch.Tensor]] = []
    for batch in progress_bar(loader, desc="evaluating", disable=not progress):
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        records.append({key: value.cpu() for key, value in task.outputs(batch)[0].items()})
    if not records:
        return {}
    return unique_by_index({key: torch.cat([r[key] for r in records]) for key in records[0]})
