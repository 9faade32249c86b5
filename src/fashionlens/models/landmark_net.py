"""Landmark-driven clothing recognition with the global-local embedding module (GLEM).

Seed system 2: Lee, Oh, Jung, Kim, "Global-local embedding module for fashion landmark detection"
(ICCV workshops 2019) and its clothing-recognition extension (2020), built on Liu & Lu, "Deep fashion
analysis with feature map upsampling and landmark-driven attention" (ECCV 2018 workshops).

    images -> backbone to stride 8 ("conv4") -> landmark branch: [1x1 projection] -> GLEM x n
           -> upsampler -> K heatmaps
    concat(landmark features, conv4) -> category branch (convs, pool, linear)
                                      -> attribute branch (convs, pool, linear | ML-GCN head)
                                         | label-query head (attribute queries attend the fused map)

Ablations (``ClothingNetConfig.landmarks``): ``"glem"`` (full), ``"convs"`` (the same branch with the
non-local blocks removed, so only the 3x3 convs remain) and ``"none"`` (no landmark branch; the
heads see conv4 only and the outputs have no ``"heatmaps"``).

Unlike the public reference (suminlee94/GLE_FLD issue #8, whose module applies its local convs to
the block input and discards the non-local output), :class:`GLEM` applies the local convs to the
non-local output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fashionlens.heatmaps import gaussian_heatmaps, heatmap_loss
from fashionlens.losses import single_label_cross_entropy, weighted_bce_with_logits
from fashionlens.models.backbones import create_backbone
from fashionlens.models.mlgcn import MLGCNHead, build_query_head, label_maps
from fashionlens.models.netconfig import ClothingNetConfig
from fashionlens.vocabulary import FLIP_PERMUTATION

def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block, Wang et al., "Non-local neural networks", CVPR 2018, Eqs. 1-3, 6.

    ``y_i = sum_j softmax_j(theta(x_i)^T phi(x_j)) g(x_j)`` over all positions, then
    ``z = BN(W y) + x``. theta, phi, g and W are 1x1 convolutions (``inner`` = C/2 by default).

    ``bn_init`` is the initial BatchNorm gamma of the W path. Wang et al. initialise it to zero so
    the block starts as the identity (the default here); gamma still receives a gradient at the first
    step, so the non-local path becomes live as soon as training starts (tests/test_landmark_net.py
    checks both this and liveness with a non-zero gamma).
    """

    def __init__(self, channels: int, inner: int | None = None, bn_init: float = 0.0):
        super().__init__()
        inner = max(1, channels // 2) if inner is None else int(inner)
        self.inner = inner
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.w = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.constant_(self.bn.weight, bn_init)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, inner)
        phi = self.phi(x).flatten(2)  # (B, inner, N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, inner)
        attention = torch.softmax(theta @ phi, dim=-1)  # (B, N, N), rows sum to 1 over positions j
        y = (attention @ g).transpose(1, 2).reshape(b, self.inner, h, w)
        return self.bn(self.w(y)) + x


class GLEM(nn.Module):
    """Global-local embedding module (Lee et al. 2019, Sec. 3.2): a non-local block (global), then two
    3x3 conv + BN + ReLU layers (local) applied to the non-local output.

    ``use_nonlocal=False`` drops the non-local block and keeps the two convs (the ``"convs"`` ablation).
    """

    def __init__(self, channels: int, inner: int | None = None, use_nonlocal: bool = True, bn_init: float = 0.0):
        super().__init__()
        self.nonlocal_block = NonLocalBlock(channels, inner, bn_init) if use_nonlocal else None
        self.local = nn.Sequential(_conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nonlocal_block is not None:
            x = self.nonlocal_block(x)
        return self.local(x)


class HeatmapUpsampler(nn.Module):
    """Landmark features (stride s) -> ``num_landmarks`` heatmaps at a requested size.

    ``"deconv"``: a 1x1 reduction to ``width``, then one 4x4 stride-2 transposed conv + BN + ReLU per
    doubling (as in Liu & Lu's and GLEM's upsamplers), a bilinear resize only if the size is still off,
    then a 1x1 conv to the heatmaps. ``"bilinear"``: 1x1 reduction, bilinear resize, 3x3 conv + BN +
    ReLU, 1x1 conv. The heatmaps are linear (no sigmoid), matched to targets in [0, 1] by L2.
    """

    def __init__(self, in_channels: int, num_landmarks: int, scale: int, width: int = 64, mode: str = "deconv"):
        super().__init__()
        if mode not in ("deconv", "bilinear"):
            raise ValueError(f"upsample must be 'deconv' or 'bilinear', got {mode!r}")
        self.mode = mode
        self.reduce = _conv_bn_relu(in_channels, width, kernel_size=1)
        layers: list[nn.Module] = []
        if mode == "deconv":
            for _ in range(max(0, round(math.log2(max(scale, 1))))):
                layers += [nn.ConvTranspose2d(width, width, 4, stride=2, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        else:
            layers.append(_conv_bn_relu(width, width))
        self.refine = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, num_landmarks, 1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.reduce(x)
        if self.mode == "deconv":
            x = self.refine(x)
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        else:
            x = self.refine(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.out(x)


class _PooledBranch(nn.Module):
    """Two 3x3 conv + BN + ReLU (the first with stride 2, standing in for the conv5 stage) and a global
    average pool: ``(B, C, h, w) -> (B, width)``."""

    def __init__(self, in_channels: int, width: int, dropout: float = 0.0):
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(in_channels, width, stride=2), _conv_bn_relu(width, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.convs(x))

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The branch's own feature map (``convs(x)``) -> its pooled output ``(B, width)``."""
        return self.dropout(feature_map.mean(dim=(-2, -1)))


class LandmarkClothingNet(nn.Module):
    """Category, attribute and landmark-heatmap prediction from one backbone, built from a
    :class:`ClothingNetConfig`; outputs follow docs/design-contract.md."""

    def __init__(self, config: ClothingNetConfig, attr_embeddings: torch.Tensor | None = None,
                 attr_adjacency: torch.Tensor | None = None):
        super().__init__()
        self.backbone = create_backbone(config.backbone, pretrained=config.pretrained, stage=config.stage)
        conv4_channels = self.backbone.out_channels
        fused_channels = conv4_channels
        self.landmark_proj: nn.Module | None = None
        self.landmark_blocks: nn.Sequential | None = None
        self.upsampler: HeatmapUpsampler | None = None
        if config.landmarks != "none":
            width = config.landmark_width or conv4_channels
            config = dataclasses.replace(config, landmark_width=width)
            self.landmark_proj = (nn.Identity() if width == conv4_channels
                                  else _conv_bn_relu(conv4_channels, width, kernel_size=1))
            use_nonlocal = config.landmarks == "glem"
            self.landmark_blocks = nn.Sequential(*[GLEM(width, use_nonlocal=use_nonlocal)
                                                   for _ in range(config.num_glem)])
            scale = max(1, round(config.heatmap_size * self.backbone.stride / config.image_size))
            self.upsampler = HeatmapUpsampler(width, config.num_landmarks, scale, config.upsample_width,
                                              config.upsample)
            fused_channels = conv4_channels + width
        self.category_branch = _PooledBranch(fused_channels, config.head_width, config.dropout)
        self.category_fc = nn.Linear(config.head_width, config.num_categories)
        self.attribute_branch: _PooledBranch | None = None
        if config.attr_head == "query":  # reads the fused map itself: no pooled branch
            self.attribute_fc = build_query_head(config, fused_channels, config.num_attributes, attr_embeddings,
                                                 attr_adjacency, config.negative_slope)
        else:
            self.attribute_branch = _PooledBranch(fused_channels, config.head_width, config.dropout)
        if config.attr_head == "mlgcn":
            embeddings, adjacency = _graph_inputs(config, attr_embeddings, attr_adjacency)
            config = dataclasses.replace(config, attr_embedding_dim=int(embeddings.shape[1]))
            self.attribute_fc = MLGCNHead(embeddings, adjacency, config.head_width, hidden=config.hidden_dim,
                                          negative_slope=config.negative_slope, bias=config.bias)
        elif config.attr_head == "linear":
            self.attribute_fc = nn.Linear(config.head_width, config.num_attributes)
        self.config = config  # with the derived landmark_width and attr_embedding_dim

    @property
    def has_landmarks(self) -> bool:
        return self.upsampler is not None

    def heatmap_size_for(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """Heatmap size for an input of ``image_hw``: ``heatmap_size / image_size`` of it (56 at 224)."""
        ratio = self.config.heatmap_size / self.config.image_size
        # int(): while the ONNX exporter traces, the sizes arrive as 0-d tensors; the exported graph
        # has a fixed spatial size (only the batch axis is dynamic), so a constant is what it needs.
        height, width = (int(value) for value in image_hw)
        return max(1, round(height * ratio)), max(1, round(width * ratio))

    def forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"conv4", "features"}`` (features: the fused map the heads see) plus ``"heatmaps"`` and
        ``"landmark_features"`` when the model has a landmark branch."""
        return self.features_from_conv4(self.backbone(images), images.shape[-2:])

    def features_from_conv4(self, conv4: torch.Tensor, image_hw: Sequence[int]) -> dict[str, torch.Tensor]:
        """:meth:`forward_features` after the backbone: from its map ``conv4`` of an ``image_hw`` input
        (what a frozen backbone's cached features feed)."""
        out = {"conv4": conv4}
        if self.has_landmarks:
            landmark_features = self.landmark_blocks(self.landmark_proj(conv4))
            out["landmark_features"] = landmark_features
            out["heatmaps"] = self.upsampler(landmark_features, self.heatmap_size_for(image_hw))
            out["features"] = torch.cat([landmark_features, conv4], dim=1)
        else:
            out["features"] = conv4
        return out

    def forward_head(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fused feature map -> ``{"category_logits", "attribute_logits"}``."""
        attribute = features if self.attribute_branch is None else self.attribute_branch(features)
        return {"category_logits": self.category_fc(self.category_branch(features)),
                "attribute_logits": self.attribute_fc(attribute)}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"category_logits", "attribute_logits"[, "heatmaps"]}``; in eval mode with ``flip_test``, the
        mean of the photo's and its mirror image's (the mirror's heatmaps mirrored back, left and right
        swapped)."""
        return self._with_flip_test(self._forward_once, images)

    def _with_flip_test(self, forward, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward(images)``, averaged with ``forward`` of the mirror image mirrored back (in eval mode with
        ``flip_test``): maps flipped, heatmaps also left and right swapped, logits as they are."""
        out = forward(images)
        if not self.config.flip_test or self.training:
            return out
        mirrored = forward(images.flip(-1))
        for key, value in mirrored.items():
            if value.ndim == 4:  # heatmaps and attribute maps
                mirrored[key] = value.flip(-1)[:, list(FLIP_PERMUTATION)] if key == "heatmaps" else value.flip(-1)
        return {key: (value + mirrored[key]) / 2 for key, value in out.items()}

    def _forward_once(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.forward_features(images)
        out = self.forward_head(feats["features"])
        if "heatmaps" in feats:
            out["heatmaps"] = feats["heatmaps"]
        return out

    def attribute_classifiers(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attribute head as ``(weights (A, head_width), bias (A,) or None)``: logits = pooled @ W.T + b."""
        if self.attribute_branch is None:
            raise ValueError("the label-query attribute head has no classifier per attribute: its maps are its "
                             "attention (forward_attribute_maps)")
        if isinstance(self.attribute_fc, nn.Linear):
            return self.attribute_fc.weight, self.attribute_fc.bias
        return self.attribute_fc.classifier_weights()

    def forward_attribute_maps(self, images: torch.Tensor,
                               labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The outputs dict plus ``"attribute_maps"`` ``(B, L, h, w)`` for the attribute indices ``labels``
        (all by default), in one pass (two with ``flip_test``, as :meth:`forward`): the attribute
        classifiers applied at every place of the attribute branch's feature map before its average
        pooling (so a map's mean is the logit; ``h = H / (2 * backbone stride)``, the branch's first conv
        has stride 2). With the query head (``attr_head="query"``) a map is that attribute's attention over
        the fused map's places (``h = H / backbone stride``), summing to 1, not a logit."""
        return self._with_flip_test(lambda batch: self._attribute_maps_once(batch, labels), images)

    def _attribute_maps_once(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        feats = self.forward_features(images)
        features = feats["features"]
        out = {"category_logits": self.category_fc(self.category_branch(features))}
        if self.attribute_branch is None:  # the query head: each attribute's attention over the places
            out["attribute_logits"], attention = self.attribute_fc.forward_with_attention(features)
            out["attribute_maps"] = attention if labels is None else attention[:, labels]
        else:
            attribute_map = self.attribute_branch.convs(features)
            weights, bias = self.attribute_classifiers()
            out["attribute_logits"] = self.attribute_fc(self.attribute_branch.pool(attribute_map))
            out["attribute_maps"] = label_maps(attribute_map, weights, bias, labels)
        if "heatmaps" in feats:
            out["heatmaps"] = feats["heatmaps"]
        return out

    @property
    def embedding_dim(self) -> int:
        """The length of :meth:`forward_embedding`'s vectors."""
        return self.config.head_width * (1 if self.attribute_branch is None else 2)

    def forward_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled features the heads see, category branch then attribute branch ``(B, 2 * head_width)``
        (the category branch's alone with the query head), not normalised: the image's embedding."""
        features = self.forward_features(images)["features"]
        branches = [self.category_branch] + ([self.attribute_branch] if self.attribute_branch is not None else [])
        return torch.cat([branch(features) for branch in branches], dim=1)


def _graph_inputs(config: ClothingNetConfig, embeddings: torch.Tensor | None,
                  adjacency: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    c = config.num_attributes
    if embeddings is None and adjacency is None:
        # Rebuilding from a saved config: placeholders of the right shape, overwritten by load_state_dict.
        dim = config.attr_embedding_dim
        if not dim:
            raise ValueError("attr_head='mlgcn' needs attr_embeddings and attr_adjacency, or a config with "
                             "'attr_embedding_dim' (saved by a model built with them) to rebuild placeholders")
        return torch.zeros(c, int(dim)), torch.eye(c)
    if embeddings is None or adjacency is None:
        raise ValueError("attr_head='mlgcn' needs both attr_embeddings and attr_adjacency (or neither, "
                         "when rebuilding from a saved config and loading a state dict)")
    embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
    adjacency = torch.as_tensor(adjacency, dtype=torch.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != c or adjacency.shape != (c, c):
        raise ValueError(f"expected attr_embeddings ({c}, E) and attr_adjacency ({c}, {c}); got "
                         f"{tuple(embeddings.shape)} and {tuple(adjacency.shape)}")
    return embeddings, adjacency


def build_clothing_model(config: ClothingNetConfig | Mapping[str, Any], attr_embeddings: torch.Tensor | None = None,
                         attr_adjacency: torch.Tensor | None = None) -> LandmarkClothingNet:
    """Build the clothing network from its config, or from a mapping of its keys (the config's own
    defaults for the others: a model directory's config.json goes through ``ClothingNetConfig.from_dict``).

    ``model.config`` holds the complete config (with derived values filled in, e.g.
    ``landmark_width`` and ``attr_embedding_dim``); ``build_clothing_model(model.config)`` followed by
    ``load_state_dict`` rebuilds the exact model, the ML-GCN graph buffers included. When rebuilding,
    pass ``pretrained="none"`` in the config to skip loading backbone weights that the state dict
    replaces anyway.
    """
    if not isinstance(config, ClothingNetConfig):
        config = ClothingNetConfig.new(config)
    return LandmarkClothingNet(config, attr_embeddings, attr_adjacency)


def clothing_loss(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any],
                  lambdas: tuple[float, float, float] = (1.0, 20.0, 10.0),
                  attr_pos_weight: float | torch.Tensor = 1.0, attr_neg_weight: float | torch.Tensor = 0.1,
                  heatmap_sigma: float = 8.0, heatmap_kind: str = "gaussian",
                  category_present: torch.Tensor | None = None,
                  attribute_groups: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``λ_cat · CE(category) + λ_attr · weighted BCE(attributes) + λ_lm · heatmap L2``.

    Defaults are Liu & Lu's weights (ECCV 2018 workshops, Sec. 3.4: 1 / 20 / 10) and class weights
    (1 positive, 0.1 negative). Theirs is a 2-way softmax per attribute; ours is the equivalent
    sigmoid BCE from :func:`fashionlens.losses.weighted_bce_with_logits`, so the balance is the same
    only up to that loss's normalisation: treat 20 as a starting point to tune.

    - Category: cross-entropy, ``category == -1`` ignored (0 when the batch has none). Categories that
      never occur (DeepFashion merged 4 of 50 into Dress) need nothing: softmax CE simply drives their
      logits down. ``category_present`` (bool, ``(num_categories,)``) optionally masks their logits out
      of the softmax instead; a target pointing at a masked category raises ``ValueError``.
    - Attributes: weighted BCE on ``labels`` with ``label_mask`` (unknown attributes contribute 0).
      The attributes of ``attribute_groups`` (index tensors, one per group whose labels are "exactly
      one of these", e.g. DeepFashion-fine's sleeve group) take a softmax cross-entropy per group
      instead, weighted like the category (``λ_cat``) and averaged over the groups; a photo whose
      group is not known (mask 0, or not exactly one positive) is left out of that group.
    - Landmarks: targets from ``landmarks`` (``(B, K, 2)`` pixels of ``image``) and
      ``landmark_visibility`` via :func:`gaussian_heatmaps` (``heatmap_sigma`` in image pixels), L2 over
      visible landmarks only (:func:`heatmap_loss`).

    A part whose outputs or batch keys are absent (e.g. ``landmarks="none"``, or a dataset without
    landmarks) is 0. Returns ``(total, {"category", "attribute", "groups", "landmark"})`` (parts
    unweighted).
    """
    lam_cat, lam_attr, lam_lm = lambdas
    ref = outputs["category_logits"] if "category_logits" in outputs else outputs["attribute_logits"]
    zero = ref.sum() * 0.0
    parts = {"category": zero, "attribute": zero, "groups": zero, "landmark": zero}

    if "category_logits" in outputs and "category" in batch:
        logits = outputs["category_logits"]
        target = torch.as_tensor(batch["category"], device=logits.device).long().view(-1)
        if category_present is not None:
            present = torch.as_tensor(category_present, device=logits.device, dtype=torch.bool)
            known = target >= 0
            if bool((~present[target[known]]).any()):
                raise ValueError("a sample's category is marked absent in category_present")
            logits = logits.masked_fill(~present, float("-inf"))
        if bool((target >= 0).any()):
            parts["category"] = F.cross_entropy(logits, target, ignore_index=-1)

    if "attribute_logits" in outputs and "labels" in batch:
        logits = outputs["attribute_logits"]
        labels = batch["labels"].to(logits.dtype)
        mask = batch.get("label_mask")
        mask = torch.ones_like(labels) if mask is None else mask.to(logits.dtype)
        if len(attribute_groups):
            groups = [torch.as_tensor(group, device=logits.device) for group in attribute_groups]
            parts["groups"] = torch.stack([single_label_cross_entropy(logits[:, g], labels[:, g], mask[:, g])
                                           for g in groups]).mean()
            mask = mask.index_fill(1, torch.cat(groups), 0.0)  # the grouped attributes leave the BCE
        if bool(mask.sum() > 0):
            parts["attribute"] = weighted_bce_with_logits(logits, labels, mask, attr_pos_weight, attr_neg_weight)

    if "heatmaps" in outputs and "landmarks" in batch and "landmark_visibility" in batch:
        pred = outputs["heatmaps"]
        image_hw = tuple(batch["image"].shape[-2:])
        landmarks = torch.as_tensor(batch["landmarks"], device=pred.device).as_subclass(torch.Tensor).to(pred.dtype)
        visibility = torch.as_tensor(batch["landmark_visibility"], device=pred.device)
        target = gaussian_heatmaps(landmarks, visibility, image_hw, tuple(pred.shape[-2:]),
                                   sigma=heatmap_sigma, kind=heatmap_kind)
        parts["landmark"] = heatmap_loss(pred, target, visibility)

    total = (lam_cat * (parts["category"] + parts["groups"]) + lam_attr * parts["attribute"]
             + lam_lm * parts["landmark"])
    return total, parts
