"""Training and evaluation: Lightning modules (the science), a data module (the data) and entry points.

The split follows Lightning: the LightningModule holds model, loss, optimiser and metrics; the
DataModule holds the datasets and loaders; the Trainer holds precision, devices, DDP, checkpoints
and the progress bar. `train_style`, `train_clothing` and `evaluate_model_dir` are what the CLI calls.

Recipe (Chen et al. 2019, ML-GCN; Kim et al. 2021): SGD, momentum 0.9, weight decay 1e-4, gradient
norm clipped at 10, heads at lr and the pretrained backbone at lr x lrp (0.1) once it is unfrozen
after `freeze_epochs` epochs (transfer learning: frozen first, then fine-tuned).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fashionlens.errors import FashionlensError
from fashionlens.modeldir import atomic_write_json, load_model_dir, save_model_dir

log = logging.getLogger("fashionlens")

DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3, "adam": 1e-4}


# ----------------------------------------------------------------------------------------------- data


class FashionDataModule(L.LightningDataModule):
    """Train/val datasets and their loaders. Lightning adds the DistributedSampler under DDP."""

    def __init__(self, train_set, val_set, batch_size: int, workers: int | None = None):
        super().__init__()
        self.train_set = train_set
        self.val_set = val_set
        self.batch_size = batch_size
        self.workers = default_workers() if workers is None else workers

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1)) if torch.cuda.is_available() else min(2, cores)


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A fixed random split: the same (count, fraction, seed) always gives the same indices."""
    if not 0.0 < val_fraction < 1.0:
        raise FashionlensError(f"--val-split must be between 0 and 1, got {val_fraction}")
    order = np.random.default_rng(seed).permutation(count)
    val_count = max(1, int(round(count * val_fraction)))
    if val_count >= count:
        raise FashionlensError(f"dataset of {count} samples is too small to hold out {val_fraction:.0%}")
    return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())


def label_matrix(dataset, indices=None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask) arrays (N, C) read from a dataset's parsed records, without loading images."""
    records = dataset.records if indices is None else [dataset.records[i] for i in indices]
    labels = np.stack([np.asarray(record.labels, dtype=np.float32) for record in records])
    mask = np.stack([np.asarray(record.label_mask, dtype=np.float32) for record in records])
    return labels, mask


# ------------------------------------------------------------------------------------- shared module


class _Task(L.LightningModule):
    """What the style and clothing tasks share: the optimiser recipe, freezing, and gathered outputs."""

    def __init__(self, model: nn.Module, optimizer: str, lr: float, lrp: float, weight_decay: float,
                 freeze_epochs: int, epochs: int, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.optimizer_name = optimizer
        self.lr = lr
        self.lrp = lrp
        self.weight_decay = weight_decay
        self.freeze_epochs = freeze_epochs
        self.epochs = epochs
        self.channels_last = channels_last
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.last_metrics: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self._epoch_start = time.perf_counter()

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def _images(self, batch) -> torch.Tensor:
        images = batch["image"]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.log("global_step", float(self.global_step), on_step=True, on_epoch=False, logger=False)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["fashionlens_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("fashionlens_history", []))

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.freeze_epochs
        self.backbone.requires_grad_(not frozen)
        if frozen:
            # A frozen pretrained backbone keeps its ImageNet BatchNorm statistics too.
            self.backbone.eval()
        self._epoch_start = time.perf_counter()

    def configure_optimizers(self):
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        head = [p for p in self.model.parameters() if id(p) not in backbone_ids]
        groups = [
            {"params": list(self.backbone.parameters()), "lr": self.lr * self.lrp},
            {"params": head, "lr": self.lr},
        ]
        if self.optimizer_name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def _gathered(self) -> dict[str, torch.Tensor]:
        """Concatenate this epoch's validation outputs across batches and DDP ranks.

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
        order = torch.argsort(local["index"], stable=True)
        local = {key: value[order] for key, value in local.items()}
        keep = torch.ones_like(local["index"], dtype=torch.bool)
        keep[1:] = local["index"][1:] != local["index"][:-1]
        return {key: value[keep].cpu() for key, value in local.items()}

    def _record_epoch(self, metrics: dict[str, Any], scalar_keys: list[str]) -> None:
        self.last_metrics = metrics
        if self.trainer is not None and self.trainer.sanity_checking:
            return
        row = {"epoch": self.current_epoch, "seconds": time.perf_counter() - self._epoch_start}
        for key in scalar_keys:
            if key in metrics:
                row[key] = float(metrics[key])
                self.log(f"val/{key}", float(metrics[key]), prog_bar=key in ("mAP", "category_top3"), sync_dist=False)
        train_loss = self.trainer.callback_metrics.get("train/loss_epoch") if self.trainer else None
        if train_loss is not None:
            row["train_loss"] = float(train_loss)
        self.history.append(row)


# ------------------------------------------------------------------------------------------- styles


class StyleTask(_Task):
    """Multi-label style recognition: ML-GCN or linear head on a pretrained backbone."""

    def __init__(self, model: nn.Module, label_names: list[str], loss: str = "bce", **recipe):
        super().__init__(model, **recipe)
        self.label_names = label_names
        if loss == "asl":
            from fashionlens.losses import AsymmetricLoss

            self.criterion = AsymmetricLoss()
        else:
            from fashionlens.losses import masked_bce_with_logits

            self.criterion = masked_bce_with_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]

    def _logits(self, batch) -> torch.Tensor:
        if "features" in batch:  # cached pooled features of a frozen backbone (see FeatureCache)
            return self.model.forward_head(batch["features"])
        return self(self._images(batch))

    def training_step(self, batch, batch_idx):
        logits = self._logits(batch)
        loss = self.criterion(logits, batch["labels"], batch["label_mask"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {self.current_epoch}, "
                                     f"step {self.global_step}, batch {batch_idx} "
                                     f"(first image: {batch['path'][0]})")
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self._logits(batch)
        loss = self.criterion(logits, batch["labels"], batch["label_mask"])
        self.log("val/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        self._outputs.append({"scores": logits.float().detach(), "labels": batch["labels"].detach(),
                              "mask": batch["label_mask"].detach(), "index": batch["index"].detach()})

    def on_validation_epoch_end(self) -> None:
        from fashionlens.metrics import multilabel_metrics

        outputs = self._gathered()
        if not outputs:
            return
        metrics = multilabel_metrics(outputs["scores"], outputs["labels"], outputs["mask"],
                                     label_names=self.label_names)
        self._record_epoch(metrics, ["mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "CP", "CR", "OP", "OR"])


# ----------------------------------------------------------------------------------------- clothing


class ClothingTask(_Task):
    """Category + attributes + landmarks (Lee et al. 2020), with the loss of `clothing_loss`."""

    def __init__(self, model: nn.Module, attribute_types: list[str], image_size: int, lambdas=(1.0, 20.0, 10.0),
                 attr_pos_weight: torch.Tensor | None = None, attr_neg_weight: torch.Tensor | None = None,
                 heatmap_sigma: float | None = None, **recipe):
        super().__init__(model, **recipe)
        self.attribute_types = attribute_types
        self.image_size = image_size
        self.lambdas = tuple(lambdas)
        self.heatmap_sigma = heatmap_sigma
        self.register_buffer("attr_pos_weight", attr_pos_weight if attr_pos_weight is not None else torch.ones(0))
        self.register_buffer("attr_neg_weight", attr_neg_weight if attr_neg_weight is not None else torch.ones(0))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)

    def _loss(self, outputs, batch):
        from fashionlens.models.landmark_net import clothing_loss

        kwargs = {}
        if self.heatmap_sigma is not None:
            kwargs["heatmap_sigma"] = self.heatmap_sigma
        if self.attr_pos_weight.numel():  # else clothing_loss's defaults (Liu & Lu's 1 and 0.1)
            kwargs.update(attr_pos_weight=self.attr_pos_weight, attr_neg_weight=self.attr_neg_weight)
        return clothing_loss(outputs, batch, lambdas=self.lambdas, **kwargs)

    def training_step(self, batch, batch_idx):
        outputs = self(self._images(batch))
        loss, parts = self._loss(outputs, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {self.current_epoch}, "
                                     f"step {self.global_step}, batch {batch_idx} (first image: {batch['path'][0]})")
        size = len(batch["image"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_epoch=True, batch_size=size)
        return loss

    def validation_step(self, batch, batch_idx):
        from fashionlens.heatmaps import decode_heatmaps

        outputs = self(self._images(batch))
        loss, _ = self._loss(outputs, batch)
        self.log("val/loss", loss, on_epoch=True, batch_size=len(batch["image"]), sync_dist=True)
        record = {"category_logits": outputs["category_logits"].float().detach(),
                  "category": batch["category"].detach(),
                  "attr_scores": outputs["attribute_logits"].float().detach(),
                  "labels": batch["labels"].detach(), "mask": batch["label_mask"].detach(),
                  "index": batch["index"].detach()}
        if "heatmaps" in outputs and "landmarks" in batch:
            size = batch["image"].shape[-2:]
            xy, _ = decode_heatmaps(outputs["heatmaps"].float().detach(), tuple(size), subpixel=True)
            if "crop_box" in batch:
                record["boxes"] = batch["crop_box"].detach()
            record.update(pred_xy=xy, true_xy=torch.as_tensor(batch["landmarks"]).float().detach(),
                          visibility=batch["landmark_visibility"].detach(),
                          sizes=torch.tensor([[size[1], size[0]]] * len(xy), device=xy.device, dtype=torch.float32))
        self._outputs.append(record)

    def on_validation_epoch_end(self) -> None:
        outputs = self._gathered()
        if not outputs:
            return
        metrics = clothing_metrics(outputs, self.attribute_types)
        self._record_epoch(metrics, [k for k, v in metrics.items() if isinstance(v, (int, float))])


def clothing_metrics(outputs: dict[str, torch.Tensor], attribute_types: list[str]) -> dict[str, Any]:
    from fashionlens.metrics import (
        deepfashion_metrics,
        landmark_metrics,
        multilabel_metrics,
    )

    metrics = deepfashion_metrics(outputs["category_logits"], outputs["category"], outputs["attr_scores"],
                                  outputs["labels"], attribute_types, attr_mask=outputs["mask"])
    # Threshold-free and independent of k and of the group sizes: the attribute ranking per attribute.
    metrics["attr_mAP"] = multilabel_metrics(outputs["attr_scores"], outputs["labels"], outputs["mask"])["mAP"]
    if "pred_xy" in outputs and (outputs["visibility"] == 0).any():
        metrics.update(landmark_metrics(outputs["pred_xy"], outputs["true_xy"], outputs["visibility"],
                                        outputs["sizes"]))
    return metrics


# ------------------------------------------------------------------------------------- entry points


def _trainer(run_dir: Path, options: dict, monitor: str, mode: str = "max", callbacks_extra=()) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    on_gpu = torch.cuda.is_available() and options.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    precision = options.get("precision") or ("bf16-mixed" if on_gpu else "32-true")
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=f"val/{monitor}",
                                 mode=mode, save_last=True, save_top_k=1, every_n_epochs=1)
    # The two most recent epochs, so a truncated last.ckpt still leaves a good checkpoint to resume from.
    recent = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="recent-{epoch:03d}", monitor="global_step",
                             mode="max", save_top_k=2, every_n_epochs=1)
    devices = options.get("devices", "auto")
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=options["epochs"],
        accelerator=options.get("accelerator", "auto"),
        devices=devices,
        num_nodes=options.get("num_nodes", 1),
        precision=precision,
        gradient_clip_val=options.get("grad_clip", 10.0) or None,
        callbacks=[checkpoint, recent, TQDMProgressBar(refresh_rate=1), *callbacks_extra],
        logger=CSVLogger(run_dir, name="logs", version=""),
        log_every_n_steps=1,
        enable_model_summary=False,
        deterministic=options.get("deterministic", False),
        num_sanity_val_steps=0,
    )


def resolve_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint in RUN_DIR/checkpoints that loads; a truncated or corrupt one is skipped, loudly.

    Newest = highest global step, over every checkpoint there (last, best, the two most recent
    epochs, and their -vN copies from earlier runs in the same folder): Lightning refreshes last.ckpt
    only when it saves a new best, so last.ckpt alone can be many epochs old.
    """
    newest, newest_step = None, -1
    for candidate in sorted(Path(run_dir).glob("checkpoints/*.ckpt")):
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
                raise ValueError("no state_dict/epoch in it")
        except Exception as error:  # truncated zip, bad pickle, wrong content
            warnings.warn(f"{candidate}: truncated or corrupt checkpoint ({type(error).__name__}: "
                          f"{str(error)[:200]}); trying the previous one", stacklevel=2)
            print(f"fashionlens: {candidate} is truncated or corrupt; falling back to an earlier checkpoint",
                  flush=True)
            continue
        step = int(state.get("global_step", -1))
        if step > newest_step:
            newest, newest_step = candidate, step
    return newest


def _fit(trainer: L.Trainer, task: "_Task", data: FashionDataModule, run_dir: Path, options: dict) -> None:
    """trainer.fit, resuming from the newest good checkpoint when asked (--resume)."""
    checkpoint = resolve_resume_checkpoint(run_dir) if options.get("resume") else None
    if options.get("resume"):
        print(f"fashionlens: resuming from {checkpoint}" if checkpoint else
              "fashionlens: --resume: no usable checkpoint in the run directory, starting from scratch", flush=True)
    elif (Path(run_dir) / "checkpoints" / "last.ckpt").exists():
        print(f"fashionlens: {run_dir} already holds checkpoints; starting over (pass --resume to continue)",
              flush=True)
    trainer.fit(task, datamodule=data, ckpt_path=str(checkpoint) if checkpoint else None)


def _load_final_weights(trainer: L.Trainer, task: "_Task", options: dict) -> None:
    """Put the best checkpoint's weights into `task` (default), or keep the last epoch's (--final-weights last)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if options.get("final_weights", "best") == "best" and best and Path(best).exists():
        task.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])


def _run_metadata(options: dict) -> dict:
    import lightning
    import torchvision

    return {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
            "seed": options.get("seed", 0), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "lightning": lightning.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _words_for_labels(dataset) -> list[str]:
    words = getattr(dataset, "label_words", None)
    if words:
        return list(words)
    return [name.replace("_", " ") for name in dataset.label_names]


def build_label_graph_inputs(train_labels: np.ndarray, train_mask: np.ndarray, label_names: list[str],
                             words: list[str], options: dict):
    """Word vectors and normalised adjacency for the ML-GCN head, from the TRAINING labels only."""
    from fashionlens import labels as label_tools

    embeddings_choice = str(options.get("embeddings", "glove50"))
    # "X+onehot": word vectors X with a one-hot code appended, so labels whose word vectors nearly
    # coincide (short/long sleeves in GloVe-50d: cosine 0.96) still enter the GCN as distinct inputs.
    words_choice, plus_onehot = (embeddings_choice[: -len("+onehot")], True) \
        if embeddings_choice.endswith("+onehot") else (embeddings_choice, False)
    if words_choice == "onehot":
        embeddings = label_tools.onehot_embeddings(len(label_names))
    else:
        vectors = label_tools.load_glove(words_choice)
        embeddings = label_tools.label_embeddings(words, vectors, fallback=options.get("embedding_fallback"))
        if plus_onehot:
            embeddings = np.concatenate([np.asarray(embeddings, dtype=np.float32),
                                         label_tools.onehot_embeddings(len(label_names))], axis=1)
    counts, totals = label_tools.cooccurrence_counts(train_labels, train_mask)
    on_empty = options.get("on_empty") or ("drop" if options.get("drop_empty_labels") else "error")
    known = np.asarray(train_mask, dtype=np.float64).sum(axis=0)
    base_rates = np.divide(totals, known, out=np.zeros(len(label_names)), where=known > 0)
    graph = label_tools.build_adjacency(counts, totals, t=options.get("t", 0.4), p=options.get("p", 0.2),
                                        label_names=label_names, on_empty=on_empty,
                                        min_lift=options.get("min_lift"), base_rates=base_rates)
    kept = list(graph.kept)
    if options.get("graph") == "identity":
        graph = label_tools.identity_adjacency(len(kept), [label_names[i] for i in kept])
    adjacency = np.asarray(graph.adjacency, dtype=np.float32)
    return np.asarray(embeddings, dtype=np.float32)[kept], adjacency, graph, kept


def _graph_config(options: dict) -> dict:
    """The label-graph settings a model directory records (its graph itself is saved as graph.json)."""
    return {"embeddings": str(options.get("embeddings", "glove50")), "graph": options.get("graph", "cooccurrence"),
            "t": options.get("t", 0.4), "p": options.get("p", 0.2), "min_lift": options.get("min_lift")}


def train_style(options: dict) -> Path:
    """`fashionlens train style`: fit a multi-label model and write RUN_DIR/model/."""
    from fashionlens.data import open_dataset
    from fashionlens.data.transforms import build_transforms
    from fashionlens.models.backbones import backbone_normalisation
    from fashionlens.models.mlgcn import build_style_model

    options = dict(options)
    L.seed_everything(options.get("seed", 0), workers=True)
    run_dir = Path(options["out"])
    run_dir.mkdir(parents=True, exist_ok=True)
    image_size = int(options.get("image_size", 448))
    optimizer = options.get("optimizer", "sgd")
    options["lr"] = options.get("lr") or DEFAULT_LR[optimizer]

    mean, std = backbone_normalisation(options["backbone"])
    train_transform = build_transforms(image_size, mean, std, train=True)
    eval_transform = build_transforms(image_size, mean, std, train=False)
    fmt = options["format"]
    skip_bad = options.get("skip_bad", False)
    train_full = open_dataset(options["data"], fmt, skip_bad=skip_bad, transform=train_transform)
    if options.get("val"):
        val_full = open_dataset(options["val"], fmt, skip_bad=skip_bad, transform=eval_transform,
                                label_names=train_full.label_names)
        train_idx, val_idx = list(range(len(train_full))), list(range(len(val_full)))
    else:
        val_full = open_dataset(options["data"], fmt, skip_bad=skip_bad, transform=eval_transform)
        limit = options.get("limit") or len(train_full)
        train_idx, val_idx = split_indices(min(limit, len(train_full)), options.get("val_split", 0.2),
                                           options.get("seed", 0))
    label_names = list(train_full.label_names)
    train_labels, train_mask = label_matrix(train_full, train_idx)

    head = options.get("head", "mlgcn")
    config = {
        "task": "style", "backbone": options["backbone"], "pretrained": str(options.get("pretrained", "shipped")),
        "pool": options.get("pool", "max"), "head": head, "image_size": image_size,
        "residual": bool(options.get("residual", False)), "hidden_dim": 1024,
        "bias": bool(options.get("bias", True)),
    }
    embeddings = adjacency = None
    graph_json = None
    kept = list(range(len(label_names)))
    if head == "mlgcn":
        embeddings, adjacency, graph, kept = build_label_graph_inputs(
            train_labels, train_mask, label_names, _words_for_labels(train_full), options)
        graph_json = json.loads(graph.to_json())
        config.update(_graph_config(options), embedding_dim=int(embeddings.shape[1]))
    kept_names = [label_names[i] for i in kept]
    config["num_labels"] = len(kept_names)
    model = build_style_model(config, embeddings=embeddings, adjacency=adjacency)
    if options.get("compile"):
        model = torch.compile(model)

    train_set = _ColumnSubset(train_full, train_idx, kept)
    val_set = _ColumnSubset(val_full, val_idx, kept)
    if options.get("cache_features"):
        # Frozen for every epoch: features once (eval transform, no augmentation), then the head alone.
        options["freeze_epochs"] = options["epochs"]
        workers = default_workers() if options.get("workers") is None else options["workers"]
        size = options.get("batch_size", 32)
        key = (str(options["data"]), fmt, options["backbone"], str(options.get("pretrained")), config["pool"],
               image_size, tuple(train_idx), tuple(val_idx), tuple(kept))
        if key not in _FEATURE_CACHES:  # variants of one `compare` share the backbone's features
            plain_train = _ColumnSubset(val_full, train_idx, kept)
            _FEATURE_CACHES.clear()
            _FEATURE_CACHES[key] = (FeatureCache.extract(model, plain_train, size, workers, "caching train features"),
                                    FeatureCache.extract(model, val_set, size, workers, "caching val features"))
        train_set, val_set = _FEATURE_CACHES[key]
        # Extraction draws from the global RNG (its loaders); re-seed so a cache hit trains identically.
        L.seed_everything(options.get("seed", 0), workers=True)
        options["workers"] = 0
    task = StyleTask(model, kept_names, loss=options.get("loss", "bce"), optimizer=optimizer, lr=options["lr"],
                     lrp=options.get("lrp", 0.1), weight_decay=1e-4, freeze_epochs=options.get("freeze_epochs", 1),
                     epochs=options["epochs"], channels_last=options.get("channels_last", False))
    data = FashionDataModule(train_set, val_set, options.get("batch_size", 32), options.get("workers"))
    trainer = _trainer(run_dir, options, monitor="mAP")
    atomic_write_json(run_dir / "run.json", {**_run_metadata(options), "train_size": len(train_set),
                                             "val_size": len(val_set), "labels": kept_names})
    _fit(trainer, task, data, run_dir, options)

    _load_final_weights(trainer, task, options)
    final_metrics, final_outputs = _validate(task, data) if trainer.is_global_zero else ({}, {})
    if trainer.is_global_zero:
        labels_json = {"label_names": kept_names,
                       "display_names": [_display(train_full, i) for i in kept],
                       "words": [_words_for_labels(train_full)[i] for i in kept]}
        save_model_dir(run_dir / "model", _unwrap(task.model), config, labels_json,
                       {"image_size": image_size, "mean": list(mean), "std": list(std), "resize": "square"},
                       graph=graph_json)
        _write_results(run_dir, task, final_metrics, final_outputs, data.val_set, quiet=options.get("quiet", False))
    return run_dir


def train_clothing(options: dict) -> Path:
    """`fashionlens train clothing`: category + attributes + landmarks on the DeepFashion layout."""
    from fashionlens.data import open_dataset
    from fashionlens.data.transforms import build_transforms
    from fashionlens.models.backbones import backbone_normalisation
    from fashionlens.models.landmark_net import build_clothing_model

    options = dict(options)
    L.seed_everything(options.get("seed", 0), workers=True)
    run_dir = Path(options["out"])
    run_dir.mkdir(parents=True, exist_ok=True)
    image_size = int(options.get("image_size", 224))
    optimizer = options.get("optimizer", "sgd")
    options["lr"] = options.get("lr") or DEFAULT_LR[optimizer]
    mean, std = backbone_normalisation(options["backbone"])
    skip_bad = options.get("skip_bad", False)
    train_transform = build_transforms(image_size, mean, std, train=True)
    eval_transform = build_transforms(image_size, mean, std, train=False)
    fmt = options.get("format", "deepfashion")
    if fmt == "deepfashion":  # the benchmark's own partition
        base = open_dataset(options["data"], fmt, split="train", skip_bad=skip_bad, transform=train_transform)
        val_set = open_dataset(options["data"], fmt, split="val", skip_bad=skip_bad, transform=eval_transform)
        train_idx = list(range(len(base)))
    elif fmt == "clothing-attributes":  # 7 categories + 30 typed attributes, the style task's split
        from fashionlens.data.clothing_attributes import CLOTHING_ATTRIBUTE_NAMES

        names = list(CLOTHING_ATTRIBUTE_NAMES)
        base = open_dataset(options["data"], fmt, skip_bad=skip_bad, transform=train_transform, label_names=names)
        val_full = open_dataset(options["data"], fmt, skip_bad=skip_bad, transform=eval_transform, label_names=names)
        train_idx, val_idx = split_indices(len(base), options.get("val_split", 0.2), options.get("seed", 0))
        val_set = Subset(val_full, val_idx)
    else:
        raise ValueError(f"train clothing: format {fmt!r} has no categories and typed attributes; "
                         "expected deepfashion or clothing-attributes")
    if options.get("limit"):
        train_idx = train_idx[: options["limit"]]
    train_set = Subset(base, train_idx)
    attribute_names = list(base.label_names)
    attribute_types = list(base.attribute_types)
    category_names = list(base.category_names)
    train_labels, train_mask = label_matrix(base, train_idx)

    landmarks = "none" if options.get("no_landmarks") else ("plain" if options.get("no_glem") else "glem")
    config = {"task": "clothing", "backbone": options["backbone"], "pretrained": str(options.get("pretrained")),
              "stage": options.get("stage", "stride8"), "landmarks": landmarks,
              "attr_head": "mlgcn" if options.get("attr_head") == "mlgcn" else "linear",
              "num_categories": len(category_names), "num_attributes": len(attribute_names), "num_landmarks": 8,
              "heatmap_size": options.get("heatmap_size", 56), "image_size": image_size}
    attr_embeddings = attr_adjacency = None
    graph_json = None
    if config["attr_head"] == "mlgcn":
        attr_embeddings, attr_adjacency, graph, _ = build_label_graph_inputs(
            train_labels, train_mask, attribute_names, _words_for_labels(base),
            # The attribute head's outputs are fixed (all attributes): an attribute without training
            # positives keeps its classifier, as a graph node without edges.
            {**options, "on_empty": "isolate", "embedding_fallback": options.get("embedding_fallback", "zero")})
        graph_json = json.loads(graph.to_json())
        config.update(_graph_config(options), attr_embedding_dim=int(attr_embeddings.shape[1]))
    model = build_clothing_model(config, attr_embeddings=attr_embeddings, attr_adjacency=attr_adjacency)

    from fashionlens.losses import attribute_loss_weights

    pos_weight, neg_weight = attribute_loss_weights(torch.as_tensor(train_labels), torch.as_tensor(train_mask))
    task = ClothingTask(model, attribute_types, image_size, lambdas=options.get("lambdas", (1.0, 20.0, 10.0)),
                        attr_pos_weight=torch.as_tensor(pos_weight, dtype=torch.float32),
                        attr_neg_weight=torch.as_tensor(neg_weight, dtype=torch.float32),
                        heatmap_sigma=options.get("heatmap_sigma"), optimizer=optimizer, lr=options["lr"],
                        lrp=options.get("lrp", 0.1), weight_decay=1e-4,
                        freeze_epochs=options.get("freeze_epochs", 1), epochs=options["epochs"],
                        channels_last=options.get("channels_last", False))
    data = FashionDataModule(train_set, val_set, options.get("batch_size", 32), options.get("workers"))
    # The multi-task validation loss: category top-k saturates early (DeepFashion is 40% dresses, and a
    # sample set can be all one category), which would freeze "best" at the first epoch.
    trainer = _trainer(run_dir, options, monitor="loss", mode="min")
    atomic_write_json(run_dir / "run.json", {**_run_metadata(options), "train_size": len(train_set),
                                             "val_size": len(val_set)})
    _fit(trainer, task, data, run_dir, options)
    _load_final_weights(trainer, task, options)
    final_metrics, final_outputs = _validate(task, data) if trainer.is_global_zero else ({}, {})
    if trainer.is_global_zero:
        labels_json = {"label_names": attribute_names, "display_names": list(base.display_names),
                       "attribute_types": attribute_types,
                       "category_names": category_names,
                       "landmark_names": ["left_collar", "right_collar", "left_sleeve", "right_sleeve",
                                          "left_waistline", "right_waistline", "left_hem", "right_hem"]}
        # The network's own config: every key, defaults included, so a later default cannot change it.
        save_model_dir(run_dir / "model", _unwrap(task.model), {**_unwrap(task.model).config, **config}, labels_json,
                       {"image_size": image_size, "mean": list(mean), "std": list(std), "resize": "square",
                        "crop_to_bbox": True}, graph=graph_json)
        _write_results(run_dir, task, final_metrics, final_outputs, data.val_set)
    return run_dir


class _ColumnSubset(torch.utils.data.Dataset):
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


_FEATURE_CACHES: dict[tuple, tuple["FeatureCache", "FeatureCache"]] = {}


class FeatureCache(torch.utils.data.Dataset):
    """Pooled features of a frozen backbone, computed once, with the samples' labels.

    With the backbone frozen for every epoch its output never changes, so computing it once and
    training only the head gives the same optimisation at a fraction of the cost (the linear-probe
    setting, and the calibration setting of RESEARCH.md). Views are deterministic (eval transform).
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, index: torch.Tensor,
                 paths: list[str]):
        self.features, self.labels, self.mask, self.index, self.paths = features, labels, mask, index, paths

    @classmethod
    @torch.no_grad()
    def extract(cls, model: nn.Module, dataset, batch_size: int, workers: int, description: str) -> "FeatureCache":
        from tqdm.auto import tqdm

        model.eval()
        device = next(model.parameters()).device
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        parts: dict[str, list] = {"features": [], "labels": [], "mask": [], "index": [], "paths": []}
        for batch in tqdm(loader, desc=description, leave=False):
            parts["features"].append(model.forward_features(batch["image"].to(device)).float().cpu())
            parts["labels"].append(batch["labels"])
            parts["mask"].append(batch["label_mask"])
            parts["index"].append(batch["index"])
            parts["paths"].extend(batch["path"])
        return cls(torch.cat(parts["features"]), torch.cat(parts["labels"]), torch.cat(parts["mask"]),
                   torch.cat(parts["index"]), parts["paths"])

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i], "label_mask": self.mask[i],
                "index": self.index[i], "path": self.paths[i]}


def _display(dataset, index: int) -> str:
    names = getattr(dataset, "display_names", None)
    return names[index] if names else dataset.label_names[index]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


def _validate(task: _Task, data: FashionDataModule) -> tuple[dict, dict[str, torch.Tensor]]:
    """Metrics and raw outputs of the final (best) weights on the validation set, in this process."""
    outputs = collect_outputs(task, data.val_dataloader(), device=task.device)
    if isinstance(task, StyleTask):
        from fashionlens.metrics import multilabel_metrics

        return multilabel_metrics(outputs["scores"], outputs["labels"], outputs["mask"],
                                  label_names=task.label_names), outputs
    return clothing_metrics(outputs, task.attribute_types), outputs


@torch.no_grad()
def collect_outputs(task: _Task, loader: DataLoader, device=None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Run a task over a loader and return its concatenated outputs (as the validation step records them)."""
    from tqdm.auto import tqdm

    task.eval()
    device = device or next(task.parameters()).device
    task._outputs = []
    for batch_index, batch in enumerate(tqdm(loader, desc="evaluating", disable=not progress, leave=False)):
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _validation_forward(task, batch, batch_index)
    records = task._outputs
    task._outputs = []
    return {key: torch.cat([r[key].cpu() for r in records]) for key in records[0]}


def _validation_forward(task: _Task, batch: dict, batch_index: int) -> None:
    """The validation step without logging (usable outside a Trainer)."""
    log_method = task.log
    task.log = lambda *args, **kwargs: None
    try:
        task.validation_step(batch, batch_index)
    finally:
        task.log = log_method


def _write_results(run_dir: Path, task: _Task, metrics: dict, outputs: dict[str, torch.Tensor], val_set,
                   quiet: bool = False) -> None:
    """metrics.json, history.json and val_predictions.npz (raw validation outputs, for the report)."""
    import io

    from fashionlens.modeldir import atomic_write_bytes

    atomic_write_json(run_dir / "metrics.json", metrics)
    atomic_write_json(run_dir / "history.json", task.history)
    arrays = {key: value.numpy() for key, value in outputs.items()}
    if isinstance(val_set, FeatureCache):
        by_index = dict(zip(val_set.index.tolist(), val_set.paths))
        arrays["paths"] = np.array([by_index[int(i)] for i in arrays["index"]])
    else:
        arrays["paths"] = np.array([str(_sample_path(val_set, int(i))) for i in arrays["index"]])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(run_dir / "val_predictions.npz", buffer.getvalue())
    if not quiet:
        print(format_metrics(metrics))
        print(f"model directory: {run_dir / 'model'}")


def _sample_path(dataset, index: int) -> str:
    """The image path of row `index` (the sample's own "index": a row of the underlying reader's dataset)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    record = dataset.records[index]
    return str(record.image)


def evaluate_model_dir(model_dir: Path, data: Path, fmt: str, split: str | None = None, batch_size: int = 32,
                       skip_bad: bool = False, workers: int | None = None) -> dict:
    """Metrics of a saved model on a whole dataset (labels matched to the model's by name)."""
    from fashionlens.data import open_dataset
    from fashionlens.data.transforms import build_transforms

    bundle = load_model_dir(model_dir)
    pre = bundle.preprocessing
    transform = build_transforms(pre["image_size"], pre["mean"], pre["std"], train=False)
    # A clothing model's attributes are a subset of some readers' labels (the Clothing Attribute
    # Dataset's categories are its category head): read the dataset in the model's vocabulary.
    vocabulary = bundle.label_names if bundle.task == "clothing" else None
    dataset = open_dataset(data, fmt, split=split, skip_bad=skip_bad, transform=transform, label_names=vocabulary)
    names = bundle.label_names
    missing = [name for name in names if name not in dataset.label_names]
    if len(missing) == len(names):
        raise FashionlensError(f"{data}: none of the model's {len(names)} labels occur in this dataset "
                               f"(model labels start {names[:5]}, dataset labels start {dataset.label_names[:5]})")
    workers = default_workers() if workers is None else workers
    if bundle.task == "style":
        columns = [dataset.label_names.index(n) if n in dataset.label_names else -1 for n in names]
        loader = DataLoader(_ColumnSubset(dataset, None, columns), batch_size=batch_size, num_workers=workers)
        task = StyleTask(bundle.model, names, optimizer="sgd", lr=0.0, lrp=0.0, weight_decay=0.0, freeze_epochs=0,
                         epochs=1)
        outputs = collect_outputs(task, loader)
        from fashionlens.metrics import multilabel_metrics

        metrics = multilabel_metrics(outputs["scores"], outputs["labels"], outputs["mask"], label_names=names)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
        task = ClothingTask(bundle.model, bundle.labels["attribute_types"], pre["image_size"], optimizer="sgd", lr=0.0,
                            lrp=0.0, weight_decay=0.0, freeze_epochs=0, epochs=1)
        metrics = clothing_metrics(collect_outputs(task, loader), bundle.labels["attribute_types"])
    metrics["num_images"] = len(dataset)
    if getattr(dataset, "skipped", None):
        metrics["skipped_images"] = [str(error) for error in dataset.skipped]
    return metrics


def format_metrics(metrics: dict) -> str:
    """A readable two-column table of the scalar metrics (per-class values are left to --json)."""
    rows = [(key, value) for key, value in metrics.items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if not rows:
        return "(no metrics)"
    width = max(len(key) for key, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in rows:
        lines.append(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return "\n".join(lines)
