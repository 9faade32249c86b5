"""Landmark-driven clothing recognition (Lee et al. 2020): category + attributes + landmarks."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fashionlens.config import ClothingConfig
from fashionlens.heatmaps import decode_heatmaps
from fashionlens.losses import attribute_loss_weights
from fashionlens.metrics import (
    attribute_group_metrics,
    deepfashion_metrics,
    group_columns,
    landmark_metrics,
    multilabel_metrics,
)
from fashionlens.models.knobs import network_fields, with_network_defaults
from fashionlens.models.landmark_net import build_clothing_model, clothing_loss
from fashionlens.models.netconfig import ClothingNetConfig
from fashionlens.training.task import Task
from fashionlens.training.tasks.style import (
    build_label_graph_inputs,
    graph_record,
    uses_label_graph,
    words_for_labels,
)
from fashionlens.vocabulary import ATTRIBUTE_TYPES, LANDMARK_NAMES


class ClothingTask(Task):
    """The clothing network with ``clothing_loss``; best weights by the multi-task validation loss.

    Category top-k saturates early (DeepFashion is 40 % dresses, and a sample set can be all one
    category), which would freeze "best" at the first epoch; the loss keeps moving.
    """

    monitor = "loss"
    monitor_mode = "min"
    progress_keys = ("category_top3", "attr_mAP", "mean_class_accuracy", "normalized_error")

    def __init__(self, model: nn.Module, attribute_types: list[str], lambdas=(1.0, 20.0, 10.0),
                 attr_pos_weight: torch.Tensor | None = None, attr_neg_weight: torch.Tensor | None = None,
                 heatmap_sigma: float | None = None, recipe=None, channels_last: bool = False,
                 attribute_groups: Sequence[str] = (), label_names: list[str] | None = None,
                 train_counts: Sequence[int] | None = None):
        super().__init__(model, recipe, channels_last)
        self.attribute_types = list(attribute_types)
        # The attribute types that are "exactly one of these" groups -> their label indices: a softmax each.
        self.attribute_groups = group_columns(self.attribute_types, attribute_groups)
        self._group_columns = [torch.tensor(columns) for columns in self.attribute_groups.values()]
        self.label_names = list(label_names or [])
        self.train_counts = None if train_counts is None else [int(count) for count in train_counts]
        self.lambdas = tuple(lambdas)
        self.heatmap_sigma = heatmap_sigma
        self.register_buffer("attr_pos_weight", attr_pos_weight if attr_pos_weight is not None else torch.ones(0))
        self.register_buffer("attr_neg_weight", attr_neg_weight if attr_neg_weight is not None else torch.ones(0))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images)

    def loss(self, outputs, batch):
        kwargs: dict[str, Any] = {}
        if self.heatmap_sigma is not None:
            kwargs["heatmap_sigma"] = self.heatmap_sigma
        if self.attr_pos_weight.numel():  # else clothing_loss's defaults (Liu & Lu's 1 and 0.1)
            kwargs.update(attr_pos_weight=self.attr_pos_weight, attr_neg_weight=self.attr_neg_weight)
        return clothing_loss(outputs, batch, lambdas=self.lambdas, attribute_groups=self._group_columns, **kwargs)

    def training_loss(self, batch, batch_idx):
        return self.loss(self(self.images(batch)), batch)

    def predictions(self, batch):
        return self._predicted(self(self.images(batch)), tuple(batch["image"].shape[-2:]), confidence=True)

    def outputs(self, batch):
        outputs = self(self.images(batch))
        loss, _ = self.loss(outputs, batch)
        # Landmark positions only where the batch has true ones to score them against.
        record = {**self._predicted(outputs, tuple(batch["image"].shape[-2:]), landmarks="landmarks" in batch),
                  "category": batch["category"].detach(), "labels": batch["labels"].detach(),
                  "mask": batch["label_mask"].detach(), "index": batch["index"].detach()}
        if "pred_xy" in record:
            if "crop_box" in batch:
                record["boxes"] = batch["crop_box"].detach()
            record.update(true_xy=torch.as_tensor(batch["landmarks"]).float().detach(),
                          visibility=batch["landmark_visibility"].detach())
        return record, loss

    @staticmethod
    def _predicted(outputs: dict[str, torch.Tensor], size: tuple[int, int], landmarks: bool = True,
                   confidence: bool = False) -> dict[str, torch.Tensor]:
        """The network's outputs as records: logits, and with a landmark branch (and ``landmarks``)
        the decoded landmark positions in input pixels (the Predictor's decoder, subpixel), with
        ``confidence`` their peak values too."""
        record = {"category_logits": outputs["category_logits"].float().detach(),
                  "attr_scores": outputs["attribute_logits"].float().detach()}
        if landmarks and "heatmaps" in outputs:
            xy, peaks = decode_heatmaps(outputs["heatmaps"].float().detach(), size, subpixel=True)
            record.update(pred_xy=xy,
                          sizes=torch.tensor([[size[1], size[0]]] * len(xy), device=xy.device, dtype=torch.float32))
            if confidence:
                record["landmark_confidence"] = peaks
        return record

    def metrics(self, outputs):
        return clothing_metrics(outputs, self.attribute_types, self.attribute_groups, self.label_names,
                                self.train_counts)


def clothing_metrics(outputs: dict[str, torch.Tensor], attribute_types: list[str],
                     attribute_groups: dict[str, list[int]] | None = None,
                     label_names: list[str] | None = None,
                     train_counts: Sequence[int] | None = None) -> dict[str, Any]:
    """Category top-1/3/5, DeepFashion attribute top-k (pooled per type), attribute mAP and, with
    landmarks, the landmark error. With ``attribute_groups`` (one label of each per photo) the groups'
    accuracies and the mean class accuracy replace the top-k (with ``train_counts``, the training positives
    per attribute, those of the balanced decision too: metrics.attribute_group_metrics). Photos whose dataset annotates no
    attribute (class folders: every attribute unknown) give category figures only: figures of 0
    would read as a model that never finds one."""
    metrics = deepfashion_metrics(outputs["category_logits"], outputs["category"], None, None, None, ks=(1, 3, 5))
    annotated = bool(outputs["mask"].sum() > 0)
    if annotated and attribute_groups:
        metrics.update(attribute_group_metrics(outputs["attr_scores"], outputs["labels"], outputs["mask"],
                                               attribute_groups, label_names, train_counts))
    elif annotated and set(attribute_types) <= set(ATTRIBUTE_TYPES):
        # DeepFashion's top-k per type (its five types only: the groups of other data, merged, have none).
        metrics.update(deepfashion_metrics(None, None, outputs["attr_scores"], outputs["labels"], attribute_types,
                                           attr_mask=outputs["mask"]))
    if annotated:
        # Threshold-free and independent of k and of the group sizes: the attribute ranking per attribute.
        metrics["attr_mAP"] = multilabel_metrics(outputs["attr_scores"], outputs["labels"], outputs["mask"])["mAP"]
    if "pred_xy" in outputs and (outputs["visibility"] == 0).any():
        metrics.update(landmark_metrics(outputs["pred_xy"], outputs["true_xy"], outputs["visibility"],
                                        outputs["sizes"]))
    return metrics


def build(config: ClothingConfig, data) -> dict[str, Any]:
    """The clothing network and task for ``config`` on the opened ``data`` (a TrainingData)."""
    config = with_network_defaults(config)
    base = data.train_full
    attribute_names, attribute_types = data.label_names, data.attribute_types
    category_names = data.category_names
    train_labels, train_mask = data.train_label_matrix()
    network = {**network_fields(config), "num_categories": len(category_names),
               "num_attributes": len(attribute_names), "num_landmarks": len(LANDMARK_NAMES)}
    attr_embeddings = attr_adjacency = graph_json = None
    if uses_label_graph(config):
        # The attribute outputs are fixed (all attributes): an attribute without training positives
        # keeps its classifier, as a graph node without edges.
        attr_embeddings, attr_adjacency, graph, _ = build_label_graph_inputs(
            train_labels, train_mask, attribute_names, [words_for_labels(base)[c] for c in data.columns],
            config.graph, on_empty="isolate", hidden_dim=config.head.hidden_dim)
        graph_json = json.loads(graph.to_json())
        network.update(graph_record(config.graph), attr_embedding_dim=int(attr_embeddings.shape[1]))
    # A new network: the config's own defaults (from_dict's are those of config.json files older than a key).
    model = build_clothing_model(ClothingNetConfig(**network), attr_embeddings=attr_embeddings,
                                 attr_adjacency=attr_adjacency)
    pos_weight, neg_weight = attribute_loss_weights(torch.as_tensor(train_labels), torch.as_tensor(train_mask))
    groups = list(getattr(base, "exclusive_types", ()))  # the attribute types that are one-of groups
    train_counts = [int(count) for count in (train_labels * train_mask).sum(axis=0)]
    task = ClothingTask(model, attribute_types, lambdas=config.model.lambdas,
                        attr_pos_weight=torch.as_tensor(pos_weight, dtype=torch.float32),
                        attr_neg_weight=torch.as_tensor(neg_weight, dtype=torch.float32),
                        heatmap_sigma=config.model.heatmap_sigma, recipe=config.recipe,
                        channels_last=config.backbone.channels_last, attribute_groups=groups,
                        label_names=attribute_names, train_counts=train_counts)
    labels_json = {"label_names": attribute_names,
                   "display_names": [data.display_name(i) for i in range(len(attribute_names))],
                   "attribute_types": attribute_types, "category_names": category_names,
                   "landmark_names": list(LANDMARK_NAMES), "attribute_groups": list(groups),
                   "landmarks_by_category": getattr(base, "landmarks_by_category", None) or {},
                   "attribute_counts": train_counts}
    # The network's own config: every key, defaults included, so a later default cannot change it.
    return {"task": task, "network": dataclasses.asdict(model.config), "labels": labels_json, "graph": graph_json,
            "preprocessing": {"resize": "square", "crop_to_bbox": True}}
