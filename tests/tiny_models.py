"""Small untrained model directories shared by the tests (not a test module)."""

from __future__ import annotations

from pathlib import Path

import torch

from fashionlens.modeldir import save_model_dir

PREPROCESSING = {"image_size": 128, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "square"}
STYLE_NAMES = ["floral", "striped", "plaid", "solid", "necktie", "scarf", "collar"]


def style_model_dir(path: Path) -> Path:
    """An untrained linear-head style model over the shipped EfficientNet-Lite0 (7 labels, 128 px)."""
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": "linear", "num_labels": len(STYLE_NAMES), "image_size": 128}
    model = build_style_model(config)
    return save_model_dir(path, model, config, {"label_names": STYLE_NAMES, "display_names": STYLE_NAMES},
                          PREPROCESSING)


def clothing_model_dir(path: Path, flip_test: bool = False, attr_head: str = "linear") -> Path:
    """A clothing network with a GLEM landmark branch (untrained heads): 4 categories, 6 attributes of 3 types;
    ``flip_test`` doubles its inference (off: the fast suite's budget)."""
    from fashionlens.models.landmark_net import build_clothing_model

    torch.manual_seed(0)
    config = {"task": "clothing", "backbone": "tf_efficientnet_lite0", "pretrained": "none", "stage": "stride8",
              "landmarks": "glem", "num_categories": 4, "num_attributes": 6, "image_size": 128,
              "heatmap_size": 32, "num_glem": 1, "landmark_width": 16, "upsample_width": 16, "head_width": 16,
              "flip_test": flip_test, "attr_head": attr_head, "query_dim": 16}
    model = build_clothing_model(config)
    labels = {"label_names": ["floral", "striped", "cotton", "denim", "long", "short"],
              "attribute_types": ["texture", "texture", "fabric", "fabric", "shape", "shape"],
              "category_names": ["Tee", "Dress", "Jeans", "Skirt"],
              "landmark_names": ["left_collar", "right_collar", "left_sleeve", "right_sleeve",
                                 "left_waistline", "right_waistline", "left_hem", "right_hem"]}
    return save_model_dir(path, model, model.config, labels, PREPROCESSING)
