"""The networks' configurations, apart from the networks so that reading them needs no torch (the
command line shows their defaults in ``--help``): :class:`StyleNetConfig` for ``mlgcn.build_style_model``,
:class:`ClothingNetConfig` for ``landmark_net.LandmarkClothingNet``. Each is, as a dict, a model
directory's ``config.json``, and is checked when made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fashionlens.config import IMAGE_SIZE_RANGE
from fashionlens.fileio import check_fields, dataclass_from_json
from fashionlens.vocabulary import FLIP_PERMUTATION

POOLS = ("max", "avg")
HEADS = ("mlgcn", "linear", "query")
QUERY_INITS = ("gcn", "scratch")
MAX_SIZE = 65536  # any width, count or embedding size a config.json may ask for; the real ones are a few thousand


def _check_query_heads(config: StyleNetConfig | ClothingNetConfig) -> None:
    if config.query_dim % config.query_heads:
        raise ValueError(f"'query_dim': expected a multiple of query_heads ({config.query_heads}), "
                         f"found {config.query_dim}")


@dataclass(frozen=True)
class StyleNetConfig:
    """The style model's configuration: what :func:`build_style_model` takes, and as a dict
    (``dataclasses.asdict``) the model directory's ``config.json``. Checked when made."""

    num_labels: int
    task: str = "style"
    backbone: str = "tf_efficientnet_lite0"
    pretrained: str = "auto"  # see models/backbones.py; loading a model directory uses "none"
    pool: str = "max"
    head: str = "mlgcn"
    image_size: int = 224
    embedding_dim: int = 50  # the ML-GCN head's label-vector width
    hidden_dim: int = 1024  # the GCN's hidden width
    residual: bool = False  # learned classifiers added to the GCN's
    # A learned per-label bias on the ML-GCN logits (the reference has none; docs/results.md measures it);
    # a config.json without the key was written before it existed: none (from_dict).
    bias: bool = True
    activation: str = "sigmoid"  # softmax: one label per photo (class folders)
    # The query head (models/query_head.py); ignored by the others. A config.json without these keys
    # was written before the head existed, by another head.
    query_init: str = "scratch"  # gcn: the queries start at the GCN's classifiers; scratch: at random
    query_dim: int = 256  # the width of the queries and of the projected places
    query_layers: int = 1  # decoder layers
    query_heads: int = 4  # attention heads (query_dim must divide by it)
    query_self_attention: bool = False  # self-attention among the queries in each layer
    # How the label graph was built (a record for people; the weights hold the graph itself).
    embeddings: str | None = None
    graph: str | None = None
    t: float | None = None
    p: float | None = None
    min_lift: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, ranges={"num_labels": (1, MAX_SIZE), "image_size": IMAGE_SIZE_RANGE,
                                   "embedding_dim": (1, MAX_SIZE), "hidden_dim": (1, MAX_SIZE),
                                   "query_dim": (1, MAX_SIZE), "query_layers": (1, 8), "query_heads": (1, 64)},
                     choices={"task": ("style",), "pool": POOLS, "head": HEADS, "activation": ("sigmoid", "softmax"),
                              "query_init": QUERY_INITS})
        _check_query_heads(self)

    @classmethod
    def new(cls, data: Mapping[str, Any]) -> StyleNetConfig:
        """A new network's config from some of its keys, the others at their defaults; ValueError names a bad key."""
        return dataclass_from_json(cls, data, "a style model's config")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleNetConfig:
        """A ``config.json`` (or a mapping of some of its keys) as a config; ValueError names a bad key."""
        return dataclass_from_json(cls, {"bias": False, **data}, "a style model's config.json")


LANDMARK_MODES = ("glem", "convs", "none")
ATTRIBUTE_HEADS = ("linear", "mlgcn", "query")
# Keys of model directories written before they were renamed, and their names now.
_RENAMED_KEYS = {"mlgcn_hidden": "hidden_dim", "mlgcn_bias": "bias", "mlgcn_negative_slope": "negative_slope"}


@dataclass(frozen=True)
class ClothingNetConfig:
    """The clothing network's configuration: what :class:`LandmarkClothingNet` takes, and as a dict
    (``dataclasses.asdict``) the model directory's ``config.json``. Checked when made."""

    num_categories: int = 50  # DeepFashion's category and attribute benchmark
    num_attributes: int = 1000
    task: str = "clothing"
    # The measured offline recipe (docs/results.md, the released clothing models); the paper's VGG-19
    # conv4_4 (Lee et al. 2020) is backbone "vgg19", stage "stride8", with the hub's weights.
    backbone: str = "mobilenet_v2"
    pretrained: str = "auto"  # see models/backbones.py; loading a model directory uses "none"
    stage: str = "stride16"
    landmarks: str = "glem"  # glem | convs (the branch without the non-local blocks) | none
    attr_head: str = "linear"
    num_landmarks: int = 8
    image_size: int = 224
    heatmap_size: int = 56
    num_glem: int = 2
    landmark_width: int | None = None  # None: keep the backbone's channels (512 for VGG conv4)
    upsample_width: int = 64
    # "bilinear" (+ 3x3 conv) or "deconv" (transposed convs, x2 each, as Liu & Lu and GLEM): on 64 real
    # DeepFashion-fine crops (frozen MobileNetV2 stride 16, 150 Adam steps) bilinear fitted the landmarks to
    # NE 0.025 where deconv stayed at the all-zero loss (NE 0.54, chance): docs/results.md section 2a.
    # A config.json without the key was written before bilinear existed: deconv (from_dict).
    upsample: str = "bilinear"
    head_width: int = 256
    # In eval mode, average the outputs of the photo and of its mirror image (heatmaps mirrored back, left
    # and right swapped): the released landmark model's NE 0.104 -> 0.099 at twice the inference cost
    # (docs/results.md 2a). A config.json without the key was written before it existed: off (from_dict).
    flip_test: bool = True
    dropout: float = 0.0
    hidden_dim: int = 1024  # the ML-GCN attribute head's hidden width (same name as the style model's)
    negative_slope: float = 0.2
    bias: bool = True  # a per-label bias, as the linear head has: top-k ranks attributes against each other
    attr_embedding_dim: int | None = None  # set from the embeddings by LandmarkClothingNet
    # attr_head "query": the label-query head on the fused map (models/query_head.py, as the style model's).
    query_init: str = "scratch"
    query_dim: int = 256
    query_layers: int = 1
    query_heads: int = 4
    query_self_attention: bool = False
    # How the ML-GCN head's label graph was built (a record for people; the weights hold the graph).
    embeddings: str | None = None
    graph: str | None = None
    t: float | None = None
    p: float | None = None
    min_lift: float | None = None

    def __post_init__(self) -> None:
        sizes = {key: (1, MAX_SIZE) for key in ("num_categories", "num_attributes", "landmark_width",
                                                "upsample_width", "head_width", "hidden_dim", "attr_embedding_dim")}
        check_fields(self, ranges={**sizes, "num_landmarks": (1, 256), "num_glem": (0, 64),
                                   "image_size": IMAGE_SIZE_RANGE, "heatmap_size": (1, IMAGE_SIZE_RANGE[1]),
                                   "query_dim": (1, MAX_SIZE), "query_layers": (1, 8), "query_heads": (1, 64)},
                     choices={"task": ("clothing",), "stage": ("stride8", "stride16"), "landmarks": LANDMARK_MODES,
                              "attr_head": ATTRIBUTE_HEADS, "upsample": ("bilinear", "deconv"),
                              "query_init": QUERY_INITS})
        _check_query_heads(self)
        if self.flip_test and self.landmarks != "none" and self.num_landmarks != len(FLIP_PERMUTATION):
            raise ValueError(f"'flip_test': the mirror image swaps DeepFashion's {len(FLIP_PERMUTATION)} left and "
                             f"right landmarks; this network has {self.num_landmarks}: set flip_test false")

    @classmethod
    def new(cls, data: Mapping[str, Any]) -> ClothingNetConfig:
        """A new network's config from some of its keys, the others at their defaults; ValueError names a bad key."""
        return dataclass_from_json(cls, data, "a clothing model's config")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClothingNetConfig:
        """A ``config.json`` of any fashionlens version (or a mapping of some of its keys) as a config:
        old keys and values renamed, here only; ValueError names a bad key."""
        data = {"upsample": "deconv", "flip_test": False, **data}
        if data.get("landmarks") == "plain":
            data["landmarks"] = "convs"
        return dataclass_from_json(cls, data, "a clothing model's config.json", renamed=_RENAMED_KEYS)
