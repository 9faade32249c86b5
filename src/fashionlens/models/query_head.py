"""The label-query head (Query2Label, Liu et al. 2021): one learned query per label cross-attends the
places of the backbone's feature map; each label's logit reads only its own query's output.

The queries start either at random (``scratch``) or from the ML-GCN head's per-label classifiers
(``gcn``: label vectors through the two-layer GCN on the label graph, the seed's idea), taken
through the same projection the features go through, so labels that co-occur start with similar
queries. Each query's cross-attention over the ``h x w`` places (last layer, averaged over the
attention heads) is that label's explanation map: it sums to 1 over the places.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Query2Label's and DETR's dropout in the decoder.
DROPOUT = 0.1


class DecoderLayer(nn.Module):
    """A post-norm transformer decoder layer: [self-attention among the queries], cross-attention from
    the queries to the feature map's places, a feed-forward block; each with a residual and LayerNorm."""

    def __init__(self, dim: int, heads: int, self_attention: bool = False):
        super().__init__()
        self.self_attention = (nn.MultiheadAttention(dim, heads, dropout=DROPOUT, batch_first=True)
                               if self_attention else None)
        self.cross_attention = nn.MultiheadAttention(dim, heads, dropout=DROPOUT, batch_first=True)
        self.feedforward = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Dropout(DROPOUT),
                                         nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, queries: torch.Tensor, places: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, dim), (B, N, dim) -> (B, C, dim)`` and the attention ``(B, C, N)`` (mean over heads)."""
        # need_weights everywhere: it keeps PyTorch off its fused inference path, which ONNX cannot export.
        if self.self_attention is not None:
            mixed = self.self_attention(queries, queries, queries, need_weights=True)[0]
            queries = self.norms[0](queries + self.dropout(mixed))
        attended, attention = self.cross_attention(queries, places, places, need_weights=True)
        queries = self.norms[1](queries + self.dropout(attended))
        return self.norms[2](queries + self.dropout(self.feedforward(queries))), attention


class QueryHead(nn.Module):
    """Label queries ``(C, dim)`` cross-attending the projected places of a feature map ``(B, D, h, w)``;
    logit ``k = <w_k, q_k> + b_k`` (Query2Label's group-wise linear layer).

    ``gcn_classifiers`` ``(C, D)``: start the queries at these classifiers (in the backbone's feature
    space) times the input projection, rescaled to unit standard deviation like the random start
    (one factor for all labels: their directions and relative sizes are kept).
    """

    spatial = True  # consumes the feature map, not a pooled vector (the feature cache stores the map)

    def __init__(self, feature_dim: int, num_labels: int, dim: int = 256, layers: int = 1, heads: int = 4,
                 self_attention: bool = False, gcn_classifiers: torch.Tensor | None = None):
        super().__init__()
        self.input_proj = nn.Linear(feature_dim, dim)
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, self_attention) for _ in range(layers))
        if gcn_classifiers is None:
            queries = torch.randn(num_labels, dim)
        else:
            queries = gcn_classifiers.detach() @ self.input_proj.weight.detach().t()
            queries = queries / queries.std().clamp_min(1e-12)
        self.queries = nn.Parameter(queries)
        bound = 1.0 / math.sqrt(dim)  # as nn.Linear's weight
        self.readout_weight = nn.Parameter(torch.empty(num_labels, dim).uniform_(-bound, bound))
        self.readout_bias = nn.Parameter(torch.zeros(num_labels))

    def forward_with_attention(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, D, h, w) -> logits (B, C)`` and each label's attention over the places ``(B, C, h, w)``."""
        places = self.input_proj(feature_map.flatten(2).transpose(1, 2))
        queries = self.queries.expand(feature_map.shape[0], -1, -1)
        for layer in self.layers:
            queries, attention = layer(queries, places)
        logits = (queries * self.readout_weight).sum(dim=-1) + self.readout_bias
        return logits, attention.unflatten(2, feature_map.shape[2:])

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attention(feature_map)[0]
