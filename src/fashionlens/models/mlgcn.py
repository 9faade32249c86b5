"""The ML-GCN style model (Chen et al., CVPR 2019): backbone -> global pooling -> label-graph head.

A two-layer graph convolution turns the label word vectors into one classifier per label; the
logits are the image feature times those classifiers. The word vectors and the adjacency are
buffers: they are saved in ``model.safetensors`` with the weights, never trained, and never
recomputed when a saved model is loaded (:func:`build_style_model` rebuilds zero-filled buffers of
the right shapes from ``config.json``, a :class:`StyleNetConfig`; loading the weights fills them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from fashionlens.models.backbones import Backbone, create_backbone
from fashionlens.models.netconfig import POOLS, ClothingNetConfig, StyleNetConfig
from fashionlens.models.query_head import QueryHead


def label_maps(feature_map: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None = None,
               labels: torch.Tensor | None = None) -> torch.Tensor:
    """Each label's classifier applied at every place of a feature map: ``(B, D, h, w) -> (B, L, h, w)``.

    The class activation map of Zhou et al., "Learning deep features for discriminative
    localization" (CVPR 2016, Eq. 2), with the classifier rows ``weights`` ``(C, D)`` (and ``bias``
    ``(C,)``) of any head that ends in ``features @ weights.T + bias``. ``labels`` (indices) picks rows;
    all ``C`` by default. Under average pooling the mean of a label's map is exactly its logit; under
    max pooling each channel is pooled on its own, so the logit is neither the map's mean nor its
    maximum: the map says where the evidence is, not how much there is.
    """
    if labels is not None:
        weights = weights[labels]
        bias = None if bias is None else bias[labels]
    maps = torch.einsum("bdhw,ld->blhw", feature_map, weights)
    return maps if bias is None else maps + bias.view(1, -1, 1, 1)


def _as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array) if not isinstance(array, torch.Tensor) else array,
                           dtype=torch.float32).clone().contiguous()


class GraphConvolution(nn.Module):
    """One graph convolution (Kipf & Welling 2017, as used in ML-GCN Eq. 5): ``adj @ (x @ W)``.

    No bias. ``W`` is initialised uniform in ``±1/sqrt(out_features)``, as in the ML-GCN reference.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.out_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return adjacency @ (x @ self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias=False"


class MLGCNHead(nn.Module):
    """Label-graph classifier head: ``logits = features @ classifiers.T``.

    ``classifiers = GC2(LeakyReLU(GC1(embeddings)))`` with sizes ``E -> hidden -> feature_dim``
    (ML-GCN Eq. 5 stacked twice; the reference uses no activation after the last layer).
    ``embeddings`` ``(C, E)`` and ``adjacency`` ``(C, C)`` (receiving orientation, see
    :mod:`fashionlens.labels`) are buffers.

    ``residual=True`` adds a learned per-label classifier matrix to the GCN's classifiers
    (``classifiers = GCN(embeddings) + W``, ``W`` initialised to zero so training starts from the
    plain ML-GCN head): the graph then only has to supply a correction to a linear head.

    ``bias=True`` adds a learned per-label bias to the logits. The reference has none, so the
    classifiers must also encode each label's base rate; with a bias they only have to rank.
    """

    def __init__(self, embeddings: np.ndarray | torch.Tensor, adjacency: np.ndarray | torch.Tensor,
                 feature_dim: int, hidden: int = 1024, negative_slope: float = 0.2, residual: bool = False,
                 bias: bool = False):
        super().__init__()
        embeddings = _as_tensor(embeddings)
        adjacency = _as_tensor(adjacency)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (num_labels, embedding_dim), got {tuple(embeddings.shape)}")
        num_labels = embeddings.shape[0]
        if adjacency.shape != (num_labels, num_labels):
            raise ValueError(f"adjacency must be ({num_labels}, {num_labels}) to match {num_labels} label "
                             f"embeddings, got {tuple(adjacency.shape)}")
        self.num_labels = int(num_labels)
        self.feature_dim = int(feature_dim)
        self.register_buffer("embeddings", embeddings)
        self.register_buffer("adjacency", adjacency)
        self.gc1 = GraphConvolution(embeddings.shape[1], hidden)
        self.activation = nn.LeakyReLU(negative_slope)
        self.gc2 = GraphConvolution(hidden, feature_dim)
        self.residual = residual
        if residual:
            self.residual_classifiers = nn.Parameter(torch.zeros(num_labels, feature_dim))
        self.bias = nn.Parameter(torch.zeros(num_labels)) if bias else None

    def classifiers(self) -> torch.Tensor:
        """The per-label classifiers ``(C, feature_dim)``."""
        hidden = self.activation(self.gc1(self.embeddings, self.adjacency))
        weights = self.gc2(hidden, self.adjacency)
        if self.residual:
            weights = weights + self.residual_classifiers
        return weights

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = features @ self.classifiers().t()
        return logits if self.bias is None else logits + self.bias

    def classifier_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(classifiers (C, feature_dim), bias (C,) or None)``: ``forward`` is ``x @ W.T + b``."""
        return self.classifiers(), self.bias


class LinearHead(nn.Module):
    """The baseline head: one linear classifier per label, with bias."""

    def __init__(self, feature_dim: int, num_labels: int):
        super().__init__()
        self.fc = nn.Linear(feature_dim, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)

    def classifier_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight (C, feature_dim), bias (C,))``: ``forward`` is ``x @ W.T + b``."""
        return self.fc.weight, self.fc.bias


class MultiLabelClassifier(nn.Module):
    """Backbone + global pooling + head, split timm-style into ``forward_features`` / ``forward_head``."""

    def __init__(self, backbone: Backbone, head: nn.Module, pool: str = "max"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.backbone = backbone
        self.head = head
        self.pool = pool

    @property
    def spatial(self) -> bool:
        """Whether the head reads the feature map itself (the query head) rather than a pooled vector."""
        return bool(getattr(self.head, "spatial", False))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """What the head consumes (and the feature cache stores): pooled image features ``(B, D)``, or
        the feature map ``(B, D, h, w)`` for a :attr:`spatial` head.

        Global max pooling as ML-GCN (it beat average pooling there, 81.9 vs 77.3 COCO mAP), taken
        over whatever spatial size the backbone returns, so any input size works.
        """
        feature_map = self.backbone(images)
        return feature_map if self.spatial else self.pool_features(feature_map)

    def pool_features(self, feature_map: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w) -> (B, D)`` with the model's global pooling."""
        if self.pool == "max":
            return feature_map.amax(dim=(2, 3))
        return feature_map.mean(dim=(2, 3))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.forward_head(self.forward_features(images))}

    def forward_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map before pooling ``(B, D, h, w)`` (``h = H / stride``)."""
        return self.backbone(images)

    @property
    def embedding_dim(self) -> int:
        """The length of :meth:`forward_embedding`'s vectors: the backbone's channels."""
        return int(self.backbone.out_channels)

    def forward_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled backbone feature ``(B, D)`` (not normalised): the image's embedding (what a pooled
        head sees; the query head's model pools with ``pool`` for this only)."""
        return self.pool_features(self.backbone(images))

    def forward_label_maps(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One pass: ``{"logits": (B, C), "label_maps": (B, L, h, w)}`` for the label indices ``labels``
        (all by default); each map is the head's classifier of that label applied at every place of
        the feature map before pooling (:func:`label_maps`), or for the query head that label's
        query's attention over the places (summing to 1); no gradients are needed."""
        feature_map = self.forward_feature_map(images)
        if self.spatial:
            logits, attention = self.head.forward_with_attention(feature_map)
            return {"logits": logits, "label_maps": attention if labels is None else attention[:, labels]}
        weights, bias = self.head.classifier_weights()
        return {"logits": self.forward_head(self.pool_features(feature_map)),
                "label_maps": label_maps(feature_map, weights, bias, labels)}


def build_query_head(config: StyleNetConfig | ClothingNetConfig, feature_dim: int, num_labels: int,
                     embeddings: np.ndarray | torch.Tensor | None = None,
                     adjacency: np.ndarray | torch.Tensor | None = None, negative_slope: float = 0.2) -> QueryHead:
    """The label-query head a network's config asks for (its ``query_*`` fields), over ``feature_dim``
    channels. With ``query_init="gcn"`` and a label graph, the queries start at an untrained GCN's
    classifiers; a saved model's queries come from its weights (pass no graph)."""
    gcn = None
    if config.query_init == "gcn" and embeddings is not None and adjacency is not None:
        gcn = MLGCNHead(embeddings, adjacency, feature_dim, hidden=config.hidden_dim,
                        negative_slope=negative_slope).classifiers()
    return QueryHead(feature_dim, num_labels, dim=config.query_dim, layers=config.query_layers,
                     heads=config.query_heads, self_attention=config.query_self_attention, gcn_classifiers=gcn)


def build_style_model(config: StyleNetConfig | Mapping[str, Any], embeddings: np.ndarray | torch.Tensor | None = None,
                      adjacency: np.ndarray | torch.Tensor | None = None) -> MultiLabelClassifier:
    """Build a style model from its config, or from a mapping of its keys (the config's own defaults
    for the others: a model directory's config.json goes through ``StyleNetConfig.from_dict`` first);
    ``model.config`` is the config.

    For a new ``"mlgcn"`` model (or a ``"query"`` one with ``query_init="gcn"``: its queries start
    at an untrained GCN's classifiers) pass ``embeddings`` ``(C, E)`` and ``adjacency`` ``(C, C)``. To
    rebuild a saved model, pass neither and ``pretrained="none"``: the buffers are created
    zero-filled with the shapes from the config and ``load_state_dict`` fills them.
    """
    if not isinstance(config, StyleNetConfig):
        config = StyleNetConfig.new(config)
    backbone = create_backbone(config.backbone, pretrained=config.pretrained, stage="final")
    feature_dim = backbone.out_channels
    if config.head == "linear":
        head: nn.Module = LinearHead(feature_dim, config.num_labels)
    elif config.head == "query":
        head = build_query_head(config, feature_dim, config.num_labels, embeddings, adjacency)
    else:
        if embeddings is None:
            embeddings = torch.zeros(config.num_labels, config.embedding_dim)
        if adjacency is None:
            adjacency = torch.zeros(config.num_labels, config.num_labels)
        shape = tuple(np.shape(embeddings))
        if shape != (config.num_labels, config.embedding_dim):
            raise ValueError(f"embeddings have shape {shape}, config says ({config.num_labels}, "
                             f"{config.embedding_dim}) (num_labels, embedding_dim)")
        head = MLGCNHead(embeddings, adjacency, feature_dim, hidden=config.hidden_dim, residual=config.residual,
                         bias=config.bias)
    model = MultiLabelClassifier(backbone, head, pool=config.pool)
    model.config = config
    return model
