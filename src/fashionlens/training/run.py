"""One run skeleton for both tasks: seed, run directory, trainer, resume, best weights, model
directory and results. `train_style` and `train_clothing` are only what differs between the tasks.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fashionlens.calibration import choose_thresholds, sigmoid
from fashionlens.config import ClothingConfig, ConfigError, StyleConfig, TaskConfig, to_dict, validate, write_yaml
from fashionlens.errors import FashionlensError
from fashionlens.fileio import atomic_write_bytes, atomic_write_json, file_sha256
from fashionlens.modeldir import save_model_dir
from fashionlens.models.backbones import backbone_normalisation
from fashionlens.models.knobs import with_network_defaults
from fashionlens.progress import interactive
from fashionlens.rundir import SCORES_KEY, RunDir
from fashionlens.training.data import FeatureCache, TrainingData, sample_path
from fashionlens.training.recipe import FreezeThenFinetune
from fashionlens.training.task import Task, collect_outputs
from fashionlens.training.tasks import clothing, style

MANIFEST = "manifest.json"


class CheckpointError(FashionlensError):
    """A checkpoint could not be written (the previous good ones are intact) or is not this run's."""


# ----------------------------------------------------------------------------------------- checkpoints


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class RunCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name and moved into place, and listed in a manifest.

    The temporary file is in the checkpoint folder itself (never ``$TMPDIR``, which may be another
    filesystem where the move becomes a copy), fsynced, then ``os.replace``d: a crash leaves either
    the old file or the new one, never half of one. After each save the file's name, step and
    SHA-256 go into ``checkpoints/manifest.json``; `--resume` only loads files listed there with a
    matching hash, so a file dropped into the folder is never unpickled.
    """
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getvalue()
        try:
            atomic_write_bytes(path, data)
            manifest = read_manifest(path.parent)
            manifest[path.name] = {"sha256": hashlib.sha256(data).hexdigest(),
                                   "global_step": int(checkpoint.get("global_step", -1)),
                                   "epoch": int(checkpoint.get("epoch", -1)), "bytes": len(data)}
            atomic_write_json(path.parent / MANIFEST, manifest)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointError(
                    f"{path.parent}: no space left on the device to write a {len(data) / 2**20:.0f} MiB checkpoint "
                    f"({path.name}); the previous checkpoints are intact. Free space (or point --out elsewhere) "
                    f"and rerun with --resume") from None
            raise CheckpointError(f"{path}: could not write the checkpoint ({error}); the previous checkpoints "
                                  f"are intact") from None

    def remove_checkpoint(self, path) -> None:
        path = Path(path)
        manifest = read_manifest(path.parent)
        if manifest.pop(path.name, None) is not None:
            atomic_write_json(path.parent / MANIFEST, manifest)
        if path.exists():
            path.unlink()


def resolve_resume_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint this run wrote that is intact; anything else is refused, by name.

    Newest = highest global step among the files in ``checkpoints/manifest.json`` (last, best and
    the two most recent epochs): Lightning refreshes last.ckpt only with a new best, so last.ckpt
    alone can be many epochs old. A listed file whose hash no longer matches (truncated, replaced)
    is skipped with a warning; a ``.ckpt`` the manifest does not list is never opened.
    """
    directory = Path(run_dir) / "checkpoints"
    manifest = read_manifest(directory)
    for stray in sorted(directory.glob("*.ckpt")):
        if stray.name not in manifest:
            warnings.warn(f"{stray}: not written by this run (not in {MANIFEST}); it is not loaded", stacklevel=2)
            print(f"fashionlens: {stray} was not written by this run; ignored", flush=True)
    newest, newest_step = None, -1
    for name, entry in manifest.items():
        candidate = directory / name
        if Path(name).name != name or not candidate.is_file():
            continue
        if file_sha256(candidate) != entry.get("sha256"):
            warnings.warn(f"{candidate}: truncated or changed since it was written (hash differs); trying the "
                          f"previous one", stacklevel=2)
            print(f"fashionlens: {candidate} is truncated or corrupt; falling back to an earlier checkpoint",
                  flush=True)
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
                raise ValueError("no state_dict/epoch in it")
        except Exception as error:  # noqa: BLE001 - any unreadable file: skip it, loudly
            warnings.warn(f"{candidate}: unreadable checkpoint ({type(error).__name__}: {str(error)[:200]}); "
                          f"trying the previous one", stacklevel=2)
            continue
        step = int(state.get("global_step", -1))
        if step > newest_step:
            newest, newest_step = candidate, step
    return newest


# --------------------------------------------------------------------------------------------- trainer


class _LightningChatter(logging.Filter):
    """Drops Lightning's start-up advertising and the TPU/HPU lines; keeps the GPU line and the rest."""

    DROPPED = ("💡", "TPU available", "HPU available")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.DROPPED)


def quiet_lightning() -> None:
    """Lightning's noise out of a training log (idempotent): tips, absent accelerators, and a
    deprecation warning Lightning raises about its own use of torch's pytree."""
    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _LightningChatter) for f in chatter.filters):
        chatter.addFilter(_LightningChatter())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


class EpochLines(L.Callback):
    """One line per epoch (epoch, seconds, train loss and the task's key metrics), for logs.

    Printed at the end of the training epoch: by then this epoch's validation (run inside the
    training epoch) has logged its metrics and ``train/loss_epoch`` has been reduced. At the end of
    validation neither is true yet: callbacks run before the LightningModule's hook that logs the
    metrics, and the training loss of the epoch is reduced only after validation.
    """

    def __init__(self, keys: tuple[str, ...], stream=None):
        self.keys = keys
        self.stream = stream or sys.stdout
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}",
                 f"{time.perf_counter() - self._started:.0f} s"]
        if "train/loss_epoch" in metrics:
            parts.append(f"train loss {float(metrics['train/loss_epoch']):.4f}")
        if "val/loss" in metrics:
            parts.append(f"val loss {float(metrics['val/loss']):.4f}")
        for key in self.keys:
            if f"val/{key}" in metrics:
                parts.append(f"{key} {float(metrics[f'val/{key}']):.2f}")
        print(" | ".join(parts), file=self.stream, flush=True)


def make_trainer(config: TaskConfig, run: RunDir, task: Task) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    quiet_lightning()
    trainer_config = config.trainer
    on_gpu = torch.cuda.is_available() and trainer_config.accelerator in ("auto", "gpu", "cuda")
    precision = trainer_config.precision or ("bf16-mixed" if on_gpu else "32-true")
    best = ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor=f"val/{task.monitor}",
                           mode=task.monitor_mode, save_last=True, save_top_k=1, every_n_epochs=1)
    # The two most recent epochs, so a damaged last.ckpt still leaves a good checkpoint to resume from.
    recent = ModelCheckpoint(dirpath=run.checkpoints, filename="recent-{epoch:03d}", monitor="global_step",
                             mode="max", save_top_k=2, every_n_epochs=1)
    mode = trainer_config.progress
    bar = mode == "auto" and interactive()
    progress = [TQDMProgressBar(refresh_rate=1)] if bar else [EpochLines(task.progress_keys)] if mode != "none" else []
    devices: Any = trainer_config.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(
            default_root_dir=run.path,
            max_epochs=config.recipe.epochs,
            accelerator=trainer_config.accelerator,
            devices=devices,
            num_nodes=trainer_config.num_nodes,
            precision=precision,
            gradient_clip_val=config.recipe.grad_clip or None,
            callbacks=[best, recent, FreezeThenFinetune(config.recipe.freeze_epochs), *progress],
            enable_progress_bar=bar,
            plugins=[RunCheckpointIO()],
            logger=CSVLogger(run.path, name="logs", version=""),
            log_every_n_steps=1,
            enable_model_summary=False,
            deterministic=trainer_config.deterministic,
            num_sanity_val_steps=0,
        )
    except (MisconfigurationException, TypeError, ValueError) as error:
        # Lightning's own words on what is wrong, in one line that names the flags (a TypeError traceback before).
        raise ConfigError(f"trainer.devices: --devices {trainer_config.devices} --accelerator "
                          f"{trainer_config.accelerator} --num-nodes {trainer_config.num_nodes}: {error}") from None


def _fit(trainer: L.Trainer, task: Task, data: TrainingData, run: RunDir, resume: bool) -> None:
    """trainer.fit, resuming from the newest good checkpoint when asked (--resume)."""
    checkpoint = resolve_resume_checkpoint(run.path) if resume else None
    if resume:
        print(f"fashionlens: resuming from {checkpoint}" if checkpoint else
              "fashionlens: --resume: no usable checkpoint in the run directory, starting from scratch", flush=True)
    elif (run.checkpoints / "last.ckpt").exists():
        print(f"fashionlens: {run.path} already holds checkpoints; starting over (pass --resume to continue)",
              flush=True)
        for old in run.checkpoints.glob("*.ckpt"):  # a fresh run's manifest must not list the old run's files
            old.unlink()
        (run.checkpoints / MANIFEST).unlink(missing_ok=True)
    trainer.fit(task, datamodule=data, ckpt_path=str(checkpoint) if checkpoint else None,
                weights_only=True if checkpoint else None)


def _load_final_weights(trainer: L.Trainer, task: Task, final_weights: str) -> None:
    """Put the best checkpoint's weights into ``task`` (default), or keep the last epoch's."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if final_weights == "best" and best and Path(best).exists():
        task.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])


def run_metadata(config: TaskConfig, data: TrainingData, labels: list[str]) -> dict[str, Any]:
    import lightning
    import torchvision

    return {"config": to_dict(config), "seed": config.recipe.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "lightning": lightning.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "train_size": len(data.train_set), "val_size": len(data.val_set), "labels": labels}


def prediction_arrays(outputs: dict[str, torch.Tensor], val_set) -> dict[str, np.ndarray]:
    """val_predictions.npz's arrays: the final validation records and each row's image path."""
    arrays = {key: value.numpy() for key, value in outputs.items()}
    if isinstance(val_set, FeatureCache):
        by_index = dict(zip(val_set.index.tolist(), val_set.paths))
        arrays["paths"] = np.array([by_index[int(i)] for i in arrays["index"]])
    else:
        arrays["paths"] = np.array([sample_path(val_set, int(i)) for i in arrays["index"]])
    return arrays


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "_orig_mod", model)


def _builder(config: TaskConfig) -> Callable[[TaskConfig, TrainingData], dict[str, Any]]:
    return style.build if config.task == "style" else clothing.build


def prepare(config: TaskConfig) -> tuple[TrainingData, dict[str, Any]]:
    """The opened data and the built (untrained) task of ``config``: what a run starts from.

    ``built`` holds ``task`` (the LightningModule), ``network`` (the model's config.json),
    ``labels``, ``graph`` and ``preprocessing`` (with ``image_size``, ``mean`` and ``std``).
    """
    config = validate(with_network_defaults(config))
    mean, std = backbone_normalisation(config.backbone.name)
    data = TrainingData(config, mean, std)
    built = _builder(config)(config, data)
    built.setdefault("config", config)  # with the choices the data decides (style: the loss)
    built["preprocessing"] = {"image_size": config.backbone.image_size, "mean": list(mean), "std": list(std),
                              **built["preprocessing"]}
    return data, built


def save_built_model(path: Path, built: dict[str, Any]) -> Path:
    """The model directory of a built task (trained or not)."""
    return save_model_dir(path, _unwrap(built["task"].model), built["network"], built["labels"],
                          built["preprocessing"], graph=built["graph"], thresholds=built.get("thresholds"))


def metrics_per_source(task: Task, outputs: dict[str, torch.Tensor], dataset) -> dict[str, dict[str, Any]]:
    """With several datasets merged: the task's scalar metrics on each source's validation photos."""
    source_of = getattr(dataset, "source_of", None)
    if source_of is None or len(getattr(dataset, "sources", ())) < 2:
        return {}
    names = [source_of(int(i)) for i in outputs["index"]]
    result = {}
    for name in dict.fromkeys(names):
        rows = torch.as_tensor([n == name for n in names])
        part = task.metrics({key: value[rows] for key, value in outputs.items()})
        result[name] = {key: value for key, value in part.items()
                        if isinstance(value, (int, float)) and not isinstance(value, bool)}
        result[name]["num_images"] = int(rows.sum())
    return result


def calibrate(config: TaskConfig, outputs: dict[str, torch.Tensor], label_names: list[str]):
    """Per-label thresholds on the final validation outputs (None with ``calibration.method: none``)."""
    settings = config.calibration
    if settings.method == "none" or (config.task == "style" and config.recipe.loss == "softmax"):
        return None
    scores = outputs[SCORES_KEY[config.task]].numpy()
    return choose_thresholds(sigmoid(scores), outputs["labels"].numpy(), outputs["mask"].numpy(), label_names,
                             settings.method, settings.min_positives, settings.global_threshold)


#: The config sections and keys that shape the network's weights: a checkpoint of another value
#: cannot continue the run (``--resume``).
MODEL_KEYS = ("task", "backbone.name", "backbone.image_size", "head", "graph", "model", "recipe.loss")


def check_resume_matches(run: RunDir, config: TaskConfig, label_names: list[str]) -> None:
    """Refuse (ConfigError) a ``--resume`` whose data or model differs from the run in ``run``, before
    anything is written: the checkpoint's weights belong to that run's labels and network."""
    if not run.run_json.is_file():
        return
    try:
        earlier = json.loads(run.run_json.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{run.run_json}: unreadable ({error}); --resume needs it to know what the run "
                          f"trained on: train into a new --out") from None
    old_labels = list(earlier.get("labels") or [])
    if old_labels != list(label_names):
        added = [n for n in label_names if n not in old_labels]
        missing = [n for n in old_labels if n not in label_names]
        change = "; ".join(part for part in (f"new: {', '.join(added[:5])}" if added else "",
                                              f"gone: {', '.join(missing[:5])}" if missing else "") if part)
        raise ConfigError(f"--resume: {run.path} was trained on {len(old_labels)} labels, this data gives "
                          f"{len(label_names)} ({change or 'same names, another order'}); resume on the same "
                          f"data, or train into a new --out")
    old_config, new_config = earlier.get("config") or {}, to_dict(config)
    for key in MODEL_KEYS:
        old_value, new_value = old_config, new_config
        for part in key.split("."):
            old_value = old_value.get(part) if isinstance(old_value, dict) else None
            new_value = new_value.get(part) if isinstance(new_value, dict) else None
        if old_value != new_value:
            raise ConfigError(f"--resume: {run.path} was trained with {key} {old_value!r}, not {new_value!r}; "
                              f"resume with the run's own settings (--config {run.config_yaml}), or train into "
                              f"a new --out")


def run_training(config: TaskConfig) -> Path:
    """Train ``config``; write the run directory (docs/design-contract.md); return its path."""
    config = validate(with_network_defaults(config))
    L.seed_everything(config.recipe.seed, workers=True)
    # The data is opened and the model built before anything is written: a run that cannot start
    # (a wrong --format, a bad photo, a --resume on other data) leaves no run directory behind.
    data, built = prepare(config)
    config = built["config"]
    run = RunDir(config.out)
    if config.trainer.resume:
        check_resume_matches(run, config, built["labels"]["label_names"])
    task: Task = built["task"]
    written = config
    if config.recipe.cache_features and config.recipe.freeze_epochs < config.recipe.epochs:
        # Frozen for every epoch is what makes the cache exact.
        from dataclasses import replace

        task.recipe = replace(config.recipe, freeze_epochs=config.recipe.epochs)
        config = replace(config, recipe=task.recipe)
    trainer = make_trainer(config, run, task)  # odd --devices values are refused here, before any write
    run.create()
    write_yaml(written, run.config_yaml)
    if config.recipe.cache_features:
        data.cache_features(task.model)
        # Extraction draws from the global RNG (its loaders); re-seed so a cache hit trains identically.
        L.seed_everything(config.recipe.seed, workers=True)
    if config.backbone.compile:
        task.model = torch.compile(task.model)
    atomic_write_json(run.run_json, run_metadata(config, data, built["labels"]["label_names"]))
    _fit(trainer, task, data, run, config.trainer.resume)
    _load_final_weights(trainer, task, config.recipe.final_weights)
    if trainer.is_global_zero:
        outputs = collect_outputs(task, data.val_dataloader(), device=task.device, progress=False)
        metrics = task.metrics(outputs)
        per_source = metrics_per_source(task, outputs, data.val_full)
        if per_source:
            metrics["per_source"] = per_source
        thresholds = calibrate(config, outputs, built["labels"]["label_names"])
        if thresholds is not None:
            built["thresholds"] = thresholds.to_json()
        save_built_model(run.model_dir, built)
        run.write_results(metrics, task.history, prediction_arrays(outputs, data.val_set))
    return run.path


def train_style(config: StyleConfig) -> Path:
    """`fashionlens train style`: fit a multi-label model and write RUN_DIR/model/."""
    if not isinstance(config, StyleConfig):
        raise TypeError(f"train_style takes a StyleConfig (fashionlens.config), got {type(config).__name__}")
    return run_training(config)


def train_clothing(config: ClothingConfig) -> Path:
    """`fashionlens train clothing`: category + attributes + landmarks."""
    if not isinstance(config, ClothingConfig):
        raise TypeError(f"train_clothing takes a ClothingConfig (fashionlens.config), got {type(config).__name__}")
    return run_training(config)
