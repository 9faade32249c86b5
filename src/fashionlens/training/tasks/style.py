"""Multi-label style recognition (Kim et al. 2021 on ML-GCN, Chen et al. 2019): model, loss, metrics."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from fashionlens.config import StyleConfig
from fashionlens.training.task import Task

SCALAR_METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3", "CP", "CR", "OP", "OR")


class StyleTask(Task):
    """An ML-GCN or linear head on a pretrained backbone, masked BCE (or ASL) over the known labels."""

    monitor = "mAP"
    monitor_mode = "max"
    progress_keys = ("mAP",)

    def __init__(self, model: nn.Module, label_names: list[str], loss: str = "bce", recipe=None,
                 channels_last: bool = False):
        super().__init__(model, recipe, channels_last)
        self.label_names = list(label_names)
        self.single_label = loss == "softmax"
        if loss == "asl":
            from fashionlens.losses import AsymmetricLoss

            self.criterion = AsymmetricLoss()
        elif loss == "softmax":  # one label per photo (class folders): a softmax over the labels
            from fashionlens.losses import single_label_cross_entropy

            self.criterion = single_label_cross_entropy
            self.monitor, self.progress_keys = "top1", ("top1",)
        else:
            from fashionlens.losses import masked_bce_with_logits

            self.criterion = masked_bce_with_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]

    def logits(self, batch: dict) -> torch.Tensor:
        if "features" in batch:  # pooled features of a frozen backbone, computed once (FeatureCache)
            return self.model.forward_head(batch["features"])
        return self(self.images(batch))

    def training_loss(self, batch, batch_idx):
        return self.criterion(self.logits(batch), batch["labels"], batch["label_mask"]), {}

    def outputs(self, batch):
        logits = self.logits(batch)
        loss = self.criterion(logits, batch["labels"], batch["label_mask"])
        return {"scores": logits.float().detach(), "labels": batch["labels"].detach(),
                "mask": batch["label_mask"].detach(), "index": batch["index"].detach()}, loss

    def metrics(self, outputs):
        from fashionlens.metrics import multilabel_metrics

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


def build_label_graph_inputs(train_labels: np.ndarray, train_mask: np.ndarray, label_names: list[str],
                             words: list[str], graph_config, on_empty: str = "error"):
    """Label vectors and normalised adjacency for an ML-GCN head, from the TRAINING labels only.

    Returns ``(embeddings (C', E), adjacency (C', C'), LabelGraph, kept)``: ``kept`` are the label
    columns left after ``on_empty`` ("error" | "drop" | "isolate") dealt with labels that have no
    training positive.
    """
    from fashionlens import labels as label_tools

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


def graph_record(graph_config) -> dict[str, Any]:
    """The label-graph settings a model directory's config.json records (graph.json holds the graph)."""
    return {"embeddings": graph_config.embeddings, "graph": graph_config.graph, "t": graph_config.t,
            "p": graph_config.p, "min_lift": graph_config.min_lift}


def build(config: StyleConfig, data) -> dict[str, Any]:
    """The style model and task for ``config`` on the opened ``data`` (a TrainingData)."""
    from fashionlens.models.mlgcn import build_style_model

    label_names = list(data.label_names)
    train_labels, train_mask = data.train_label_matrix()
    network = {"task": "style", "backbone": config.backbone.name, "pretrained": config.backbone.pretrained,
               "pool": config.head.pool, "head": config.head.kind, "image_size": config.backbone.image_size,
               "residual": config.head.residual, "hidden_dim": config.head.hidden_dim, "bias": config.head.bias,
               "activation": "softmax" if config.recipe.loss == "softmax" else "sigmoid"}
    embeddings = adjacency = graph_json = None
    kept = list(range(len(label_names)))
    if config.head.kind == "mlgcn":
        embeddings, adjacency, graph, kept = build_label_graph_inputs(
            train_labels, train_mask, label_names, [words_for_labels(data.train_full)[c] for c in data.columns],
            config.graph,
            on_empty="drop" if config.data.drop_empty_labels else "error")
        graph_json = json.loads(graph.to_json())
        network.update(graph_record(config.graph), embedding_dim=int(embeddings.shape[1]))
    kept_names = [label_names[i] for i in kept]
    network["num_labels"] = len(kept_names)
    model = build_style_model(network, embeddings=embeddings, adjacency=adjacency)
    data.keep_columns(kept)
    task = StyleTask(model, kept_names, loss=config.recipe.loss, recipe=config.recipe,
                     channels_last=config.backbone.channels_last)
    words = words_for_labels(data.train_full)
    labels_json = {"label_names": kept_names, "display_names": [data.display_name(k) for k in range(len(kept))],
                   "words": [words[data.columns[k]] for k in range(len(kept))]}
    return {"task": task, "network": network, "labels": labels_json, "graph": graph_json,
            "preprocessing": {"resize": "square"}}
