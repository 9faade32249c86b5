"""Multi-label style recognition (Kim et al. 2021 on ML-GCN, Chen et al. 2019): model, loss, metrics."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from fashionlens import labels as label_tools
from fashionlens.catalogue import catalogue_labels
from fashionlens.config import ConfigError, StyleConfig, TaskConfig
from fashionlens.losses import AsymmetricLoss, masked_bce_with_logits, single_label_cross_entropy
from fashionlens.metrics import multilabel_metrics
from fashionlens.models.knobs import network_fields, with_network_defaults
from fashionlens.models.mlgcn import build_style_model
from fashionlens.models.netconfig import StyleNetConfig
from fashionlens.training.task import Task

SCALAR_METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "CP", "CR", "OP", "OR")


class StyleTask(Task):
    """An ML-GCN, linear or label-query head on a pretrained backbone, masked BCE (or ASL) over the known labels."""

    monitor = "mAP"
    monitor_mode = "max"
    progress_keys = ("mAP",)

    def __init__(self, model: nn.Module, label_names: list[str], loss: str = "bce", recipe=None,
                 channels_last: bool = False):
        super().__init__(model, recipe, channels_last)
        self.label_names = list(label_names)
        self.single_label = loss == "softmax"
        if loss == "asl":
            self.criterion = AsymmetricLoss()
        elif loss == "softmax":  # one label per photo (class folders): a softmax over the labels
            self.criterion = single_label_cross_entropy
            self.monitor, self.progress_keys = "top1", ("top1",)
        else:
            self.criterion = masked_bce_with_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]

    def logits(self, batch: dict) -> torch.Tensor:
        if "features" in batch:  # what the head consumes, from a frozen backbone, computed once (FeatureCache)
            return self.model.forward_head(batch["features"])
        return self(self.images(batch))

    def training_loss(self, batch, batch_idx):
        return self.criterion(self.logits(batch), batch["labels"], batch["label_mask"]), {}

    def predictions(self, batch):
        return {"scores": self.logits(batch).float().detach()}

    def outputs(self, batch):
        records = self.predictions(batch)
        loss = self.criterion(records["scores"], batch["labels"], batch["label_mask"])
        return {**records, "labels": batch["labels"].detach(), "mask": batch["label_mask"].detach(),
                "index": batch["index"].detach()}, loss

    def metrics(self, outputs):
        metrics = multilabel_metrics(outputs["scores"], outputs["labels"], outputs["mask"],
                                     label_names=self.label_names)
        metrics.update(top1_accuracy(outputs["scores"], outputs["labels"], outputs["mask"]))
        return metrics


def top1_accuracy(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Percent of single-label rows (exactly one known positive) whose top-scored label is that one;
    empty when no row is single-label (multi-label data)."""
    positives = (labels > 0.5) & (mask > 0)
    single = positives.sum(dim=1) == 1
    if not bool(single.any()):
        return {}
    hits = positives[single].float().argmax(dim=1) == scores[single].argmax(dim=1)
    return {"top1": 100.0 * float(hits.float().mean()), "top1_count": int(single.sum())}


def words_for_labels(dataset) -> list[str]:
    """The words whose vectors stand for each label (a reader's ``label_words``, else the names)."""
    words = getattr(dataset, "label_words", None)
    if words:
        return list(words)
    return [name.replace("_", " ") for name in dataset.label_names]


#: Word-vector widths of the named label embeddings (a GloVe file: 300, the widest GloVe release).
WORD_VECTOR_DIMS = {"onehot": 0, "glove50": 50, "minilm": 384, "minilm-desc": 384}
#: Feature width assumed for the second graph convolution before the backbone is built (the widest
#: common backbones: ResNet-50 and up; tf_efficientnet_lite0 has 1280). Its share is small.
ASSUMED_FEATURE_DIM = 2048


def embedding_width(choice: str, num_labels: int) -> int:
    """The node-feature width ``E`` of ``--embeddings choice`` over ``num_labels`` labels, without
    building the vectors (one-hot: ``E = C``; ``+onehot`` adds ``C``)."""
    base, plus_onehot = (choice[: -len("+onehot")], True) if choice.endswith("+onehot") else (choice, False)
    width = num_labels if base == "onehot" else WORD_VECTOR_DIMS.get(base, 300)
    return width + (num_labels if plus_onehot and base != "onehot" else 0)


def mlgcn_memory_bytes(num_labels: int, embedding_dim: int, hidden_dim: int,
                       feature_dim: int = ASSUMED_FEATURE_DIM) -> dict[str, int]:
    """About how many bytes an ML-GCN head over ``num_labels`` labels needs, part by part.

    - label graph: the dense ``(C, C)`` int64/float64 intermediates of :func:`build_label_graph_inputs`
      (counts, conditional probabilities, edges, reweighted and normalised copies) peak at about
      59 bytes per label pair (measured with tracemalloc at 3,000 labels, one-hot and 384-d inputs
      alike), then the float32 adjacency as the model's buffer (4 bytes a pair);
    - label inputs: the ``(C, E)`` float32 node features, as built and as the model's buffer;
    - parameters: GC1 ``E x hidden`` and GC2 ``hidden x D`` float32, with gradients and the two
      AdamW moments (4 copies);
    - activations: the GC1 and GC2 outputs ``(C, hidden)`` (twice) and ``(C, D)`` of a step and
      their gradients.

    The label graph grows with ``C^2`` whatever the inputs; one-hot inputs (``E = C``) add another
    ``C^2`` term: 10,000 one-hot labels need about 7.1 GiB (issue 13 saw a MemoryError at 6.9 GB).
    """
    c, e, h, d = int(num_labels), int(embedding_dim), int(hidden_dim), int(feature_dim)
    return {"label graph": (59 + 4) * c * c, "label inputs": 2 * 4 * c * e,
            "parameters": 4 * 4 * (e * h + h * d), "activations": 2 * 4 * c * (2 * h + d)}


def available_memory_bytes() -> int | None:
    """The memory this machine can still give (``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_mlgcn_memory(num_labels: int, embeddings: str, hidden_dim: int, available: int | None = None) -> None:
    """Refuse (ConfigError) an ML-GCN head whose estimate (:func:`mlgcn_memory_bytes`) exceeds the
    available memory, before anything is allocated, naming the sizes and what would fit."""
    width = embedding_width(embeddings, num_labels)
    parts = mlgcn_memory_bytes(num_labels, width, hidden_dim)
    needed = sum(parts.values())
    available = available_memory_bytes() if available is None else available
    if available is None or needed <= available:
        return
    gb = 1024 ** 3
    listed = ", ".join(f"{name} {size / gb:.2f}" for name, size in parts.items())
    graph_only = parts["label graph"]
    fits, too_many = 0, num_labels  # the most labels these settings fit in the available memory
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        size = sum(mlgcn_memory_bytes(middle, embedding_width(embeddings, middle), hidden_dim).values())
        fits, too_many = (middle, too_many) if size <= available else (fits, middle)
    raise ConfigError(
        f"ML-GCN head over {num_labels} labels with {embeddings!r} inputs (E = {width}) and hidden dim {hidden_dim} "
        f"needs about {needed / gb:.1f} GB ({listed} GB), but {available / gb:.1f} GB is available. "
        f"The label graph alone is {graph_only / gb:.1f} GB (it grows with the square of the label count; "
        f"about {fits} labels fit here with these settings): use --head linear, or fewer labels (train on a label subset); "
        f"word or sentence vectors instead of one-hot codes (--embeddings glove50 or minilm) and a smaller "
        f"--hidden-dim only shrink the label inputs and parameters")


def build_label_graph_inputs(train_labels: np.ndarray, train_mask: np.ndarray, label_names: list[str],
                             words: list[str], graph_config, on_empty: str = "error", hidden_dim: int = 1024):
    """Label vectors and normalised adjacency for an ML-GCN head, from the TRAINING labels only.

    Returns ``(embeddings (C', E), adjacency (C', C'), LabelGraph, kept)``: ``kept`` are the label
    columns left after ``on_empty`` ("error" | "drop" | "isolate") dealt with labels that have no
    training positive. A head too large for this machine's memory is refused first
    (:func:`check_mlgcn_memory`).
    """
    check_mlgcn_memory(len(label_names), str(graph_config.embeddings).strip(), hidden_dim)
    embeddings = label_tools.label_vectors(graph_config.embeddings, label_names, words,
                                           fallback=graph_config.embedding_fallback)
    counts, totals = label_tools.cooccurrence_counts(train_labels, train_mask)
    known = np.asarray(train_mask, dtype=np.float64).sum(axis=0)
    base_rates = np.divide(totals, known, out=np.zeros(len(label_names)), where=known > 0)
    graph = label_tools.build_adjacency(counts, totals, t=graph_config.t, p=graph_config.p, label_names=label_names,
                                        on_empty=on_empty, min_lift=graph_config.min_lift, base_rates=base_rates)
    kept = list(graph.kept)
    if graph_config.graph == "identity":
        graph = label_tools.identity_adjacency(len(kept), [label_names[i] for i in kept])
    adjacency = np.asarray(graph.adjacency, dtype=np.float32)
    return np.asarray(embeddings, dtype=np.float32)[kept], adjacency, graph, kept


def labels_with_positives(train_labels: np.ndarray, train_mask: np.ndarray, label_names: list[str]) -> list[int]:
    """The label columns with at least one known positive training photo (``--drop-empty-labels``);
    the others are left out of the model, with a warning naming them."""
    import warnings

    _, positives = label_tools.cooccurrence_counts(train_labels, train_mask)
    empty = [label_names[k] for k in range(len(label_names)) if positives[k] <= 0]
    if empty:
        warnings.warn(f"--drop-empty-labels: left out label(s) with no training positives: {empty}", stacklevel=2)
    return [k for k in range(len(label_names)) if positives[k] > 0]


def graph_record(graph_config) -> dict[str, Any]:
    """The label-graph settings a model directory's config.json records (graph.json holds the graph)."""
    return {"embeddings": graph_config.embeddings, "graph": graph_config.graph, "t": graph_config.t,
            "p": graph_config.p, "min_lift": graph_config.min_lift}


def uses_label_graph(config: TaskConfig) -> bool:
    """Whether the head is built from the label graph: ML-GCN, or label queries started at its classifiers."""
    head = with_network_defaults(config).head
    return head.kind == "mlgcn" or (head.kind == "query" and head.query_init == "gcn")


def network_config(config: StyleConfig, num_labels: int | None = None,
                   embedding_dim: int | None = None) -> dict[str, Any]:
    """The style model's config.json (what ``build_style_model`` takes) for ``config``: the one place
    it is assembled, for training, benchmarks and tests alike. ``num_labels`` and ``embedding_dim``
    (ML-GCN label inputs) are known once the data is open; ``build`` fills them in."""
    network = {**network_fields(config), "activation": "softmax" if config.recipe.loss == "softmax" else "sigmoid"}
    if num_labels is not None:
        network["num_labels"] = int(num_labels)
    if uses_label_graph(config) and embedding_dim is not None:
        network.update(graph_record(config.graph), embedding_dim=int(embedding_dim))
    return network


def is_single_label(train_labels: np.ndarray, train_mask: np.ndarray) -> bool:
    """Every training photo has exactly one positive label and every label known (class folders)."""
    return bool(len(train_labels)) and bool(np.asarray(train_mask).all()) and bool(
        ((np.asarray(train_labels) > 0.5).sum(axis=1) == 1).all())


def choose_loss(config: StyleConfig, train_labels: np.ndarray, train_mask: np.ndarray) -> StyleConfig:
    """``config`` with ``recipe.loss: auto`` decided on the training labels, the one place it is:
    single-label data gets a softmax head (cross-entropy; top-1 and a confusion matrix in the report),
    anything else the multi-label BCE; said in one line."""
    from dataclasses import replace

    if config.recipe.loss != "auto":
        return config
    if is_single_label(train_labels, train_mask):
        print(f"fashionlens: every training photo has exactly one of {train_labels.shape[1]} labels (class folders): "
              f"a softmax head (cross-entropy), top-1 and a confusion matrix; --loss bce trains a multi-label one",
              flush=True)
        loss = "softmax"
    else:
        loss = "bce"
    return replace(config, recipe=replace(config.recipe, loss=loss))


def build(config: StyleConfig, data) -> dict[str, Any]:
    """The style model and task for ``config`` on the opened ``data`` (a TrainingData); ``built["config"]``
    is ``config`` with its choices made (:func:`choose_loss`)."""
    config = with_network_defaults(config)
    label_names = list(data.label_names)
    train_labels, train_mask = data.train_label_matrix()
    config = choose_loss(config, train_labels, train_mask)
    embeddings = adjacency = graph_json = None
    kept = list(range(len(label_names)))
    if config.data.drop_empty_labels:
        # Every head, so that a linear and an ML-GCN variant on the same split have the same labels.
        kept = labels_with_positives(train_labels, train_mask, label_names)
    if uses_label_graph(config):
        words = words_for_labels(data.train_full)
        embeddings, adjacency, graph, graph_kept = build_label_graph_inputs(
            train_labels[:, kept], train_mask[:, kept], [label_names[i] for i in kept],
            [words[data.columns[i]] for i in kept], config.graph, on_empty="isolate", hidden_dim=config.head.hidden_dim)
        kept = [kept[i] for i in graph_kept]
        graph_json = json.loads(graph.to_json())
    kept_names = [label_names[i] for i in kept]
    network = network_config(config, len(kept_names), None if embeddings is None else embeddings.shape[1])
    # A new network: the config's own defaults (from_dict's are those of config.json files older than a key).
    model = build_style_model(StyleNetConfig(**network), embeddings=embeddings, adjacency=adjacency)
    data.keep_columns(kept)
    task = StyleTask(model, kept_names, loss=config.recipe.loss, recipe=config.recipe,
                     channels_last=config.backbone.channels_last)
    words = words_for_labels(data.train_full)
    labels_json = {"label_names": kept_names, "display_names": [data.display_name(k) for k in range(len(kept))],
                   "words": [words[data.columns[k]] for k in range(len(kept))]}
    # The category apart from the attributes, and which attributes apply to which garment (catalogue.py).
    labels_json.update(catalogue_labels(kept_names, getattr(data.train_full, "category_names", None) or [],
                                        train_labels[:, kept], train_mask[:, kept]))
    # The network's own config: every key, defaults included, so a later default cannot change it.
    return {"task": task, "network": dataclasses.asdict(model.config), "labels": labels_json, "graph": graph_json,
            "preprocessing": {"resize": "square"}, "config": config}
