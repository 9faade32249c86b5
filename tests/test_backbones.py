"""The backbone factory: real shipped ImageNet weights, feature-map shapes per stage, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashionlens.models.backbones import (_SPECS, BackboneError, _build_full_model, available_backbones,
                                          create_backbone)

IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-attributes" / "images"
CLOTHING = {"suit, suit of clothes", "trench coat", "jersey, T-shirt, tee shirt", "cardigan", "sweatshirt",
            "Windsor tie", "lab coat, laboratory coat", "fur coat", "jean, blue jean, denim", "military uniform",
            "academic gown, academic robe, judge's robe", "abaya", "gown", "overskirt", "miniskirt, mini",
            "bow tie, bow-tie, bowtie", "poncho", "kimono", "pajama, pyjama, pj's, jammies"}


def _photo(name: str, size: int) -> torch.Tensor:
    image = Image.open(IMAGES / name).convert("RGB").resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("photo", ["000013.jpg", "000014.jpg"])
def test_shipped_efficientnet_lite0_recognises_clothing_in_a_real_photo(photo):
    from timm.data import ImageNetInfo

    # The full model (with its ImageNet classifier) as the factory loads it from the shipped file.
    model = _build_full_model("tf_efficientnet_lite0", _SPECS["tf_efficientnet_lite0"], "shipped").eval()
    backbone = create_backbone("tf_efficientnet_lite0", pretrained="shipped")
    mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = model((_photo(photo, 224) - mean) / std).softmax(-1)[0]
    info = ImageNetInfo()
    top5 = [info.index_to_description(int(k)) for k in probabilities.topk(5).indices]
    assert CLOTHING & set(top5[:2]), top5
    # 000013 is a trench coat (0.75 with these weights), 000014 a suit with a tie (0.74).
    assert float(probabilities.max()) > 0.5


@pytest.mark.parametrize("stage, channels, stride", [("final", 1280, 32), ("stride16", 112, 16), ("stride8", 40, 8)])
def test_efficientnet_lite0_shapes_per_stage(stage, channels, stride):
    backbone = create_backbone("tf_efficientnet_lite0", pretrained="none", stage=stage)
    assert (backbone.out_channels, backbone.stride) == (channels, stride)
    with torch.no_grad():
        out = backbone(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, channels, 64 // stride, 96 // stride)


def test_mobilenet_v2_shipped_final_stage():
    backbone = create_backbone("mobilenet_v2", pretrained="shipped")
    assert backbone.mean == (0.485, 0.456, 0.406)
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1280, 2, 2)


def test_unknown_backbone_and_missing_weights_are_clear_errors(tmp_path):
    assert "tf_efficientnet_lite0" in available_backbones()
    with pytest.raises(BackboneError, match="unknown backbone 'resnet9000'"):
        create_backbone("resnet9000")
    with pytest.raises(BackboneError, match="stage must be one of"):
        create_backbone("mobilenet_v2", stage="stride4")
    missing = tmp_path / "nothing.pth"
    with pytest.raises(BackboneError, match="no such file"):
        create_backbone("mobilenet_v2", pretrained=str(missing))
    with pytest.raises(BackboneError, match="no shipped offline weights for 'resnet18'"):
        create_backbone("resnet18", pretrained="shipped")


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenet_v2", "resnet18"])
def test_normalisation_table_matches_the_built_backbone(name):
    from fashionlens.models.backbones import backbone_normalisation

    built = create_backbone(name, pretrained="none")
    assert backbone_normalisation(name) == (built.mean, built.std)
