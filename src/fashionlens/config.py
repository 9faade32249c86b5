"""Typed training configuration: frozen dataclasses, each default written once: here, or for the
network's knobs (None here), in the network's own config (models/; see models/knobs.py).

A run is described by a :class:`StyleConfig` or a :class:`ClothingConfig`, composed of the sections
below. The CLI converts its flags into one of these at the edge (flags override a ``--config FILE``,
which overrides the defaults); the library only ever sees these objects. Every run writes its full
config to ``RUN_DIR/config.yaml``, and ``fashionlens train TASK --config RUN_DIR/config.yaml``
reproduces it. Unknown keys are errors that name the key.

Named recipes (:data:`RECIPES`) are whole :class:`RecipeConfig` values: ``default`` is the best
recipe measured here (docs/results.md: AdamW at 1e-3, one epoch frozen, then fine-tuned, 6 epochs;
the reference's SGD at lr 0.1 diverged on real photos: held-out mAP 27, falling to 13),
``reference`` is the ML-GCN reference's SGD recipe.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fashionlens.errors import FashionlensError
from fashionlens.fileio import atomic_write_bytes
from fashionlens.vocabulary import CLOTHING_FORMATS, STYLE_FORMATS, TYPED_ATTRIBUTE_FORMATS

T = TypeVar("T")


#: The square input side a model may have, in pixels, for training and in a model directory: 2048 px
#: took 2.5 GB for one photo, 4096 px trained into an allocator traceback.
IMAGE_SIZE_RANGE = (16, 1024)


class ConfigError(FashionlensError):
    """A configuration that cannot be used; the message names the key (and the file)."""


# ------------------------------------------------------------------------------------------ sections

# `fashionlens index --kind`, and what auto builds (fashionlens.search).
KINDS = ("auto", "flat", "ivf", "hnsw")
# Where "auto" leaves the exact search: a judgement, not a measured crossover (docs/benchmarks.md,
# "Similarity search"). Exact costs grow linearly (one query over 1,000,000 1280-d vectors: 0.2 s on
# one core); at 50,000 one query is still tens of ms and needs no build. Past it "auto" builds IVF,
# measured far cheaper to build than HNSW (2.8 s against ~17 min at 100,000 on a 2-core CPU) and as
# fast to query (5.5 ms at 1,000,000, recall@10 1.000 on clustered synthetic vectors).
EXACT_LIMIT = 50_000


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers() -> int:
    """DataLoader workers when ``data.workers`` (or ``--workers``) is not given: all cores but one
    with a GPU (it waits for the decoding), else at most 2 (the model needs the cores too)."""
    import torch  # here: reading a config (and `fashionlens --help`) needs no torch

    cores = cpu_cores()
    return max(0, min(8, cores - 1)) if torch.cuda.is_available() else min(2, cores)


def default_predict_workers() -> int:
    """Decoding workers of the batch commands (``predict``, ``embed``) when ``--workers`` is not given.

    :func:`default_workers`, except on a CPU of 1 or 2 cores without a GPU: none there, the main
    process decodes each batch and then runs the model on both cores. Workers decoding while the
    model runs take a core from one of the model's threads, and the other waits for it: on 2 cores
    the model fed by predict's loader ran at 0.74-0.80x of the model alone with 2 workers and at
    0.81-0.93x without (docs/benchmarks.md, "predict"). With more cores the decoding in the main
    process would be a larger share of each batch, and workers stay (not measured: the project's
    CPUs have 2 cores).
    """
    import torch  # here: reading a config (and `fashionlens --help`) needs no torch

    if not torch.cuda.is_available() and cpu_cores() <= 2:
        return 0
    return default_workers()


@dataclass(frozen=True)
class DataSource:
    """One dataset: where it is and how to read it."""

    path: Path
    format: str


@dataclass(frozen=True)
class DataConfig:
    """What to train on and how to split it."""

    sources: tuple[DataSource, ...] = ()
    val: Path | None = None  # a separate validation set in the first source's format
    val_split: float = 0.2  # fraction held out when there is no --val and no built-in partition
    limit: int | None = None  # style: a seeded random N of the samples; clothing: the first N training rows
    skip_bad: bool = False
    allow_outside_root: bool = False  # manifests: image paths outside the manifest's folder (absolute, ../)
    batch_size: int = 32
    workers: int | None = None  # None: default_workers()
    aliases: Path | None = None  # label-name aliases when several sources are merged
    # style, every head (linear and ML-GCN alike): leave out labels without training positives, with a
    # warning. Without it the ML-GCN head refuses them (the graph needs P(.|label)); the linear head
    # keeps them. Clothing ignores it: the attribute outputs are fixed, an empty one stays (no edges).
    drop_empty_labels: bool = False

    @property
    def format(self) -> str:
        return self.sources[0].format if self.sources else ""


# The network's knobs below (backbone, head, model) default to None: the network's own default, written
# once, in its config beside it (models/mlgcn.py StyleNetConfig, models/landmark_net.py ClothingNetConfig);
# training fills them in before it starts (models/knobs.py), and the run's config.yaml says the values.


@dataclass(frozen=True)
class BackboneConfig:
    """The ImageNet-pretrained CNN and the input it sees."""

    name: str | None = None
    pretrained: str | None = None  # auto | shipped | hub | none | PATH (see models/backbones.py)
    image_size: int | None = None
    compile: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class GraphConfig:
    """The label graph of an ML-GCN head (Chen et al. 2019, Eq. 7-8) and the label vectors it convolves."""

    # onehot | glove50 | PATH to glove.*.txt | minilm | minilm-desc, optionally +onehot. One-hot is the
    # measured best on real photos (docs/results.md: 67.5 fine-tuned mAP against 59.4 for GloVe-50d).
    embeddings: str = "onehot"
    embedding_fallback: str | None = None  # a word without a vector: None (error) | zero | random
    graph: str = "cooccurrence"  # cooccurrence | identity (the no-graph ablation)
    t: float = 0.4  # binarisation threshold
    p: float = 0.2  # neighbour reweighting
    min_lift: float | None = None  # also require P(j|i) >= min_lift * P(j) (not in the paper)


@dataclass(frozen=True)
class HeadConfig:
    """A multi-label head: a linear classifier per label, ML-GCN's graph-convolved classifiers, or label
    queries attending the feature map."""

    kind: str | None = None  # mlgcn | linear | query
    pool: str | None = None  # max | avg (style model's global pooling)
    hidden_dim: int | None = None  # the GCN's hidden width
    bias: bool | None = None  # a learned per-label bias on the ML-GCN logits (the reference has none)
    residual: bool | None = None  # learned classifiers added to the GCN's
    query_init: str | None = None  # the query head's start: gcn | scratch
    query_dim: int | None = None  # the query head's width
    query_layers: int | None = None  # the query head's decoder layers
    query_self_attention: bool | None = None  # self-attention among the label queries


@dataclass(frozen=True)
class RecipeConfig:
    """The optimisation recipe: frozen first, then fine-tuned."""

    optimizer: str = "adamw"  # sgd | adamw | adam; ML-GCN's SGD lr 0.1 is RECIPES["reference"]
    lr: float | None = None  # the heads' learning rate; None: DEFAULT_LR[optimizer]
    lrp: float = 0.1  # the backbone's lr = lr x lrp once unfrozen
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    epochs: int = 6
    freeze_epochs: int = 1  # epochs with the pretrained backbone frozen
    grad_clip: float | None = 10.0
    # style: auto = softmax when every training photo has exactly one label (class folders), else bce
    # (decided in training/tasks/style.py, choose_loss); asl; clothing ignores it
    loss: str = "auto"
    cache_features: bool = False  # frozen for every epoch; the head trains on features computed once
    final_weights: str = "best"  # best (on the validation set) | last
    seed: int = 0

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3, "adam": 1e-4}


@dataclass(frozen=True)
class TrainerConfig:
    """Engineering: where it runs and how (Lightning's Trainer)."""

    accelerator: str = "auto"
    devices: str = "auto"  # auto | N (DDP when > 1)
    num_nodes: int = 1
    precision: str | None = None  # None: bf16-mixed on a GPU, 32-true on a CPU
    resume: bool = False
    deterministic: bool = False
    progress: str = "auto"  # auto (a bar on a terminal, a line per epoch in a log) | epochs | none


@dataclass(frozen=True)
class CalibrationConfig:
    """Per-label decision thresholds chosen on the validation split at the end of training."""

    method: str = "f1"  # f1 | precision@P (e.g. precision@0.9) | none (one global threshold)
    min_positives: int = 5  # fewer validation positives: the label keeps the global threshold
    global_threshold: float = 0.5


@dataclass(frozen=True)
class ClothingModelConfig:
    """The landmark-driven clothing network (Lee et al. 2020)."""

    stage: str | None = None  # where the shared features come from: stride8 (VGG-19 conv4) | stride16
    landmarks: str | None = None  # glem | convs (the branch without the non-local block) | none
    heatmap_size: int | None = None
    heatmap_sigma: float | None = None  # Gaussian sigma in heatmap pixels; None: the heatmaps module's
    lambdas: tuple[float, float, float] = (1.0, 20.0, 10.0)  # category, attribute, landmark (Liu & Lu)
    head_width: int | None = None  # channels of the category and attribute branches
    upsample_width: int | None = None  # channels of the heatmap upsampler (its convs cost width squared)
    flip_test: bool | None = None  # evaluate and predict on the photo and its mirror image, averaged


@dataclass(frozen=True)
class StyleConfig:
    """`fashionlens train style`: multi-label recognition with an ML-GCN or linear head."""

    out: Path | None = None
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    task: str = "style"


@dataclass(frozen=True)
class ClothingConfig:
    """`fashionlens train clothing`: category + attributes + landmarks."""

    out: Path | None = None
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ClothingModelConfig = field(default_factory=ClothingModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)  # the attribute head
    graph: GraphConfig = field(default_factory=lambda: GraphConfig(embedding_fallback="zero"))
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    task: str = "clothing"


#: Whole recipes by name. ``reference``: ML-GCN's own (SGD, lr 0.1, backbone x 0.1, clip 10).
RECIPES: dict[str, RecipeConfig] = {
    "default": RecipeConfig(),
    "reference": RecipeConfig(optimizer="sgd", lr=0.1, lrp=0.1, weight_decay=1e-4, momentum=0.9, grad_clip=10.0,
                              epochs=20),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "recipe.optimizer": ("sgd", "adamw", "adam"),
    "recipe.loss": ("auto", "bce", "asl", "softmax"),
    "recipe.final_weights": ("best", "last"),
    "head.kind": ("mlgcn", "linear", "query"),
    "head.query_init": ("gcn", "scratch"),
    "head.pool": ("max", "avg"),
    "graph.graph": ("cooccurrence", "identity"),
    "graph.embedding_fallback": ("zero", "random"),
    "model.stage": ("stride8", "stride16"),
    "model.landmarks": ("glem", "convs", "none"),
    "trainer.progress": ("auto", "epochs", "none"),
}

TaskConfig = StyleConfig | ClothingConfig


# ------------------------------------------------------------------------------ overrides and checks


def parse_method(method: str) -> tuple[str, float | None]:
    """``"f1"`` -> ("f1", None); ``"precision@0.9"`` -> ("precision", 0.9); else ValueError."""
    if method == "f1":
        return "f1", None
    name, _, value = method.partition("@")
    if name == "precision" and value:
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        if 0.0 < target <= 1.0:
            return "precision", target
    raise ValueError(f"calibration method {method!r}: expected 'f1', 'precision@P' with 0 < P <= 1, or 'none'")



def override(config: T, changes: Mapping[str, Any], where: str = "") -> T:
    """``config`` with ``changes`` applied through ``dataclasses.replace``.

    ``changes`` maps field names to values, or section names to mappings of their fields
    (``{"head": {"kind": "linear"}, "recipe": {"lr": 0.01}}``), or dotted paths
    (``{"head.kind": "linear"}``). Values are converted to the field's type. An unknown key is a
    :class:`ConfigError` that names it and lists the known ones.
    """
    nested: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = str(key).partition(".")
        if rest:
            nested.setdefault(head, {})
            if not isinstance(nested[head], dict):
                raise ConfigError(f"{where}{head}: given both as a value and as a section")
            nested[head][rest] = value
        else:
            if isinstance(nested.get(head), dict) and not isinstance(value, Mapping):
                raise ConfigError(f"{where}{head}: given both as a value and as a section")
            if isinstance(value, Mapping) and isinstance(nested.get(head), dict):
                nested[head].update(value)
            else:
                nested[head] = value
    known = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    updates: dict[str, Any] = {}
    for key, value in nested.items():
        if key not in known:
            raise ConfigError(f"{where}{key}: unknown key; {_describe(config)} has {', '.join(known)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            updates[key] = override(current, value, where=f"{where}{key}.")
        else:
            updates[key] = _convert(value, hints[key], f"{where}{key}")
    result = dataclasses.replace(config, **updates)
    return result


def _describe(config: Any) -> str:
    return type(config).__name__


def _convert(value: Any, hint: Any, key: str) -> Any:
    """``value`` as type ``hint`` (the types used above: scalars, Path, Optional, tuples, sections)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, found {len(value)}")
        return tuple(_convert(item, arg, f"{key}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {', '.join(f.name for f in dataclasses.fields(hint))}, "
                              f"found {value!r}")
        missing = [f.name for f in dataclasses.fields(hint)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in value]
        if missing:
            raise ConfigError(f"{key}: missing {', '.join(missing)}")
        hints = typing.get_type_hints(hint)
        names = {f.name for f in dataclasses.fields(hint)}
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown key; {hint.__name__} has {', '.join(sorted(names))}")
        return hint(**{k: _convert(v, hints[k], f"{key}.{k}") for k, v in value.items()})
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, found {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, found {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, found {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{key}: expected a number, found {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, found {value!r}") from None
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, found {value!r}")
    return value


def validate(config: TaskConfig) -> TaskConfig:
    """Check the values that have a fixed set of choices or a range; return ``config`` unchanged."""
    for path, choices in CHOICES.items():
        section, _, name = path.partition(".")
        if not hasattr(config, section):
            continue
        value = getattr(getattr(config, section), name)
        if value is not None and value not in choices:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(choices)}")
    if config.out is None:
        raise ConfigError("out: a run directory is needed (--out RUN_DIR)")
    if not config.data.sources:
        raise ConfigError("data.sources: no dataset given (--data PATH --format FORMAT)")
    formats = STYLE_FORMATS if config.task == "style" else CLOTHING_FORMATS
    for index, source in enumerate(config.data.sources):
        if source.format not in formats:
            raise ConfigError(f"data.sources[{index}].format: {source.format!r} cannot train `{config.task}`; "
                              f"expected one of {', '.join(formats)}")
    if config.task == "clothing" and not any(s.format in TYPED_ATTRIBUTE_FORMATS for s in config.data.sources):
        raise ConfigError("data.sources: the clothing network needs a dataset with typed attributes ("
                          + " or ".join(TYPED_ATTRIBUTE_FORMATS) + "); class folders only name categories")
    if not 0.0 < config.data.val_split < 1.0:
        raise ConfigError(f"data.val_split: must be between 0 and 1, got {config.data.val_split}")
    # The same bounds as the flags (whole_number, positive_number below): a --config file meets them too.
    for key, value, low in (("data.limit", config.data.limit, 1), ("data.batch_size", config.data.batch_size, 1),
                            ("data.workers", config.data.workers, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{key}: must be at least {low}, got {value}")
    recipe = config.recipe
    if recipe.epochs < 1:
        raise ConfigError(f"recipe.epochs: must be at least 1, got {recipe.epochs}")
    if recipe.freeze_epochs < 0:
        raise ConfigError(f"recipe.freeze_epochs: must be 0 or more, got {recipe.freeze_epochs}")
    for key in ("learning_rate", "lrp", "weight_decay", "momentum", "grad_clip"):
        value = getattr(recipe, key)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"recipe.{'lr' if key == 'learning_rate' else key}: must be a finite number, got {value}")
    if recipe.learning_rate <= 0:
        raise ConfigError(f"recipe.lr: must be positive, got {recipe.lr}")
    if config.calibration.method != "none":
        try:
            parse_method(config.calibration.method)
        except ValueError as error:
            raise ConfigError(f"calibration.method: {error}") from None
    hidden_dim = config.head.hidden_dim  # None: the network's own default (models/netconfig.py)
    if hidden_dim is not None and not 1 <= hidden_dim <= 65536:  # 0 divided by zero in the GCN's initialisation
        raise ConfigError(f"head.hidden_dim: must be from 1 to 65536, got {config.head.hidden_dim}")
    for key, (low, high) in {"query_dim": (1, 65536), "query_layers": (1, 8)}.items():
        value = getattr(config.head, key)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"head.{key}: must be from {low} to {high}, got {value}")
    devices = config.trainer.devices.strip()
    if not (devices == "auto" or devices.isdigit() and int(devices) >= 1 or devices == "-1"
            or all(part.strip().isdigit() for part in devices.rstrip(",").split(","))):
        raise ConfigError(f"trainer.devices: expected auto, a number of devices (1, 2, ...), -1 (all) or device "
                          f"indices such as 0,1; found {config.trainer.devices!r}")
    if config.trainer.num_nodes < 1:
        raise ConfigError(f"trainer.num_nodes: must be at least 1, got {config.trainer.num_nodes}")
    low, high = IMAGE_SIZE_RANGE
    if config.backbone.image_size is not None and not low <= config.backbone.image_size <= high:
        raise ConfigError(f"backbone.image_size: must be from {low} to {high} px, got {config.backbone.image_size} "
                          f"(the papers train at 224-448; activations grow with the square of the side)")
    if isinstance(config, ClothingConfig):
        for key in ("head_width", "upsample_width"):
            if getattr(config.model, key) is not None and not 1 <= getattr(config.model, key) <= 4096:
                raise ConfigError(f"model.{key}: must be from 1 to 4096 channels, got {getattr(config.model, key)}")
    return config


# ------------------------------------------------------------------------- command-line flag values


def whole_number(low: int):
    """An argparse type: an integer of at least ``low``; anything else is a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"whole number >= {low}"
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (a learning rate of inf or nan trains into NaN)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


# ------------------------------------------------------------------------------------------ YAML


def to_dict(config: Any) -> Any:
    """Plain YAML/JSON-ready data: sections become mappings, paths strings, tuples lists."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, (tuple, list)):
        return [to_dict(item) for item in config]
    return config


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build ``cls`` from plain data (missing keys keep their defaults; unknown keys are errors)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}expected a mapping at the top level, found {type(data).__name__}")
    task = data.get("task")
    expected = cls().task if hasattr(cls, "task") else None  # type: ignore[call-arg]
    if task is not None and expected is not None and task != expected:
        raise ConfigError(f"{where}task: this config is for `train {task}`, not `train {expected}`")
    return override(cls(), {k: v for k, v in data.items() if k != "task"}, where=where)  # type: ignore[call-arg]


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=None)


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a config file written by a run (or by hand); errors name the file and the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(error, 'problem', None) or error})") from None
    return from_dict(cls, data, where=f"{path}: ")


def write_yaml(config: Any, path: Path) -> None:
    atomic_write_bytes(Path(path), dump_yaml(config).encode("utf-8"))
