"""Where the training config meets the networks' configs: the knobs of ``config.py``'s backbone, head
and model sections are None unless given, and take their default from the network's own config
(:class:`~fashionlens.models.mlgcn.StyleNetConfig`, :class:`~fashionlens.models.landmark_net.ClothingNetConfig`),
the one place it is written."""

from __future__ import annotations

import dataclasses
from typing import Any

from fashionlens.config import TaskConfig, override
from fashionlens.models.netconfig import ClothingNetConfig, StyleNetConfig

NETWORKS = {"style": StyleNetConfig, "clothing": ClothingNetConfig}
# Training config key -> the network config's field it sets, per task (a task without the field
# ignores the knob: the clothing network has no global pooling, the style model no stage).
KNOBS = {
    "style": {"backbone.name": "backbone", "backbone.pretrained": "pretrained", "backbone.image_size": "image_size",
              "head.kind": "head", "head.pool": "pool", "head.hidden_dim": "hidden_dim", "head.bias": "bias",
              "head.residual": "residual", "head.query_init": "query_init", "head.query_dim": "query_dim",
              "head.query_layers": "query_layers", "head.query_self_attention": "query_self_attention"},
    "clothing": {"backbone.name": "backbone", "backbone.pretrained": "pretrained", "backbone.image_size": "image_size",
                 "head.kind": "attr_head", "head.hidden_dim": "hidden_dim", "head.bias": "bias",
                 "model.stage": "stage", "model.landmarks": "landmarks", "model.heatmap_size": "heatmap_size",
                 "model.head_width": "head_width", "model.upsample_width": "upsample_width",
                 "model.flip_test": "flip_test", "head.query_init": "query_init", "head.query_dim": "query_dim",
                 "head.query_layers": "query_layers", "head.query_self_attention": "query_self_attention"},
}


def _get(config: TaskConfig, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def with_network_defaults(config: TaskConfig) -> TaskConfig:
    """``config`` with every knob left at None set to its network's default."""
    defaults = {field.name: field.default for field in dataclasses.fields(NETWORKS[config.task])}
    missing = {key: defaults[field] for key, field in KNOBS[config.task].items() if _get(config, key) is None}
    return override(config, missing) if missing else config


def network_fields(config: TaskConfig) -> dict[str, Any]:
    """The network config's fields that ``config``'s knobs set (the network's defaults for those not given)."""
    config = with_network_defaults(config)
    return {"task": config.task, **{field: _get(config, key) for key, field in KNOBS[config.task].items()}}
