"""ML-GCN head, style model and the masked multi-label losses: hand-worked numbers and a real-data run."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fashionlens.labels import build_adjacency, cooccurrence_counts, label_embeddings, load_glove
from fashionlens.losses import (AsymmetricLoss, attribute_loss_weights, masked_bce_with_logits,
                                weighted_bce_with_logits)
from fashionlens.models.mlgcn import (GraphConvolution, LinearHead, MLGCNHead, MultiLabelClassifier,
                                      StyleNetConfig, build_style_model)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-attributes"


def test_graph_convolution_by_hand():
    layer = GraphConvolution(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 1], [0, 1, 1]]))
    x = torch.tensor([[1.0, 2], [3, 4]])
    adjacency = torch.tensor([[0.5, 0.5], [0, 1]])
    # x @ W = [[1, 2, 3], [3, 4, 7]]; row 0 averages both nodes, row 1 keeps node 1.
    torch.testing.assert_close(layer(x, adjacency), torch.tensor([[2.0, 3, 5], [3, 4, 7]]))
    assert not any(name.endswith("bias") for name, _ in layer.named_parameters())


def test_graph_convolution_init_range():
    torch.manual_seed(0)
    weight = GraphConvolution(1000, 4).weight  # U(-1/sqrt(4), 1/sqrt(4)) = U(-0.5, 0.5)
    assert weight.abs().max() <= 0.5
    assert weight.abs().max() > 0.49


def _tiny_head(residual: bool = False) -> MLGCNHead:
    head = MLGCNHead(np.array([[1.0], [2.0]]), np.array([[0.5, 0.5], [0.0, 1.0]]), feature_dim=2, hidden=2,
                     residual=residual)
    with torch.no_grad():
        head.gc1.weight.copy_(torch.tensor([[1.0, -1.0]]))
        head.gc2.weight.copy_(torch.eye(2))
    return head


def test_mlgcn_head_by_hand():
    head = _tiny_head()
    # gc1: adj @ (emb @ [1, -1]) = [[1.5, -1.5], [2, -2]]; LeakyReLU(0.2) -> [[1.5, -0.3], [2, -0.4]];
    # gc2 (W = I): adj @ h = [[1.75, -0.35], [2, -0.4]].
    torch.testing.assert_close(head.classifiers(), torch.tensor([[1.75, -0.35], [2.0, -0.4]]))
    logits = head(torch.tensor([[1.0, 1.0], [0.0, 2.0]]))
    torch.testing.assert_close(logits, torch.tensor([[1.4, 1.6], [-0.7, -0.8]]))


def test_mlgcn_buffers_are_saved_and_not_trained():
    head = _tiny_head()
    state = head.state_dict()
    assert {"embeddings", "adjacency"} <= set(state)
    parameter_names = {name for name, _ in head.named_parameters()}
    assert parameter_names == {"gc1.weight", "gc2.weight"}
    head(torch.ones(1, 2)).sum().backward()
    assert head.embeddings.grad is None and head.adjacency.grad is None
    with pytest.raises(ValueError, match=r"adjacency must be \(2, 2\)"):
        MLGCNHead(np.zeros((2, 3)), np.eye(3), feature_dim=4)


def test_residual_head_starts_as_plain_gcn_and_adds_learned_classifiers():
    head = _tiny_head(residual=True)
    features = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(head(features), torch.tensor([[1.4, 1.6]]))
    with torch.no_grad():
        head.residual_classifiers.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    torch.testing.assert_close(head(features), torch.tensor([[2.4, 0.6]]))


def test_style_model_pools_any_size_and_rebuilds_from_config(tmp_path):
    torch.manual_seed(0)
    graph = build_adjacency(np.array([[3, 2, 0], [2, 4, 1], [0, 1, 2]]), np.array([3, 4, 2]), t=0.4)
    config = {"backbone": "mobilenet_v2", "pretrained": "none", "pool": "max", "head": "mlgcn", "num_labels": 3,
              "embedding_dim": 5, "hidden_dim": 16, "residual": True}
    model = build_style_model(config, embeddings=np.random.default_rng(0).normal(size=(3, 5)),
                              adjacency=graph.adjacency).eval()
    assert isinstance(model, MultiLabelClassifier)
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feature_map = model.backbone(images)
        features = model.forward_features(images)
        out = model(images)
        assert model.forward_features(torch.rand(1, 3, 96, 80)).shape == (1, 1280)
    torch.testing.assert_close(features, feature_map.amax(dim=(2, 3)))
    assert out["logits"].shape == (2, 3)

    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    rebuilt = build_style_model(json.loads((tmp_path / "config.json").read_text())).eval()
    assert float(rebuilt.head.adjacency.abs().sum()) == 0.0  # placeholders until the weights load
    rebuilt.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    torch.testing.assert_close(rebuilt.head.adjacency, torch.from_numpy(graph.adjacency))
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images)["logits"], out["logits"])


def test_linear_head_and_avg_pool_and_config_errors():
    model = build_style_model({"backbone": "mobilenet_v2", "pretrained": "none", "head": "linear", "pool": "avg",
                               "num_labels": 4})
    assert isinstance(model.head, LinearHead)
    assert model(torch.rand(1, 3, 64, 64))["logits"].shape == (1, 4)
    with pytest.raises(ValueError, match=r"embeddings have shape \(4, 7\)"):
        build_style_model({"backbone": "mobilenet_v2", "pretrained": "none", "num_labels": 4, "embedding_dim": 50},
                          embeddings=np.zeros((4, 7)), adjacency=np.eye(4))
    with pytest.raises(ValueError, match=r"^'pool': expected 'max' or 'avg', found 'sum' \(a string\)$"):
        build_style_model({"backbone": "mobilenet_v2", "pretrained": "none", "head": "linear", "pool": "sum",
                           "num_labels": 4})
    with pytest.raises(ValueError, match=r"^'num_labels' is missing; a style model's config\.json holds it$"):
        StyleNetConfig.from_dict({"head": "linear"})


def test_the_style_config_is_config_json():
    config = StyleNetConfig(num_labels=4, head="linear", pool="avg")
    assert StyleNetConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    assert build_style_model(dataclasses.replace(config, pretrained="none")).config.pool == "avg"


# ------------------------------------------------------------------------------------------ losses


def test_masked_bce_equals_multilabel_soft_margin_when_all_known():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 7), (torch.rand(5, 7) > 0.5).float()
    expected = torch.nn.MultiLabelSoftMarginLoss()(logits, targets)
    torch.testing.assert_close(masked_bce_with_logits(logits, targets, torch.ones(5, 7)), expected)
    torch.testing.assert_close(masked_bce_with_logits(logits, targets), expected)


def test_masked_bce_by_hand():
    logits = torch.tensor([[0.0, 2.0], [0.0, -50.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # Known: two entries at logit 0, each costing log 2; the unknown entries (one hugely wrong) are ignored.
    assert masked_bce_with_logits(logits, targets, mask).item() == pytest.approx(math.log(2), abs=1e-6)
    assert masked_bce_with_logits(logits, targets, torch.zeros(2, 2)).item() == 0.0


def test_asymmetric_loss_by_hand():
    loss = AsymmetricLoss(gamma_neg=4, gamma_pos=1, clip=0.05)
    # Negative at logit 0: p = 0.5, shifted p_m = 0.45: 0.45^4 * -log(0.55) = 0.04100625 * 0.5978370 = 0.0245150.
    assert loss(torch.tensor([[0.0]]), torch.tensor([[0.0]])).item() == pytest.approx(0.0245150, abs=1e-6)
    # Positive at logit 0: (1 - 0.5)^1 * log 2 = 0.3465736.
    assert loss(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item() == pytest.approx(0.3465736, abs=1e-6)
    # An easy negative (p = 0.04 < clip) costs nothing; masked entries cost nothing.
    assert loss(torch.tensor([[math.log(0.04 / 0.96)]]), torch.tensor([[0.0]])).item() == 0.0
    both = loss(torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert both.item() == pytest.approx((0.0245150 + 0.3465736) / 2, abs=1e-6)
    summed = AsymmetricLoss(reduction="sum")(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert summed.item() == pytest.approx(0.0245150 + 0.3465736, abs=1e-6)


def test_asymmetric_loss_of_half_precision_logits_is_computed_in_float32():
    # A confident miss in float16: the hand-written loss clamped p at eps = 1e-8, which float16 rounds
    # to 0, and gave inf; timm's per-entry cost runs in float32. Positive at logit -20: p = 2.1e-9 is
    # clamped to eps, (1 - p)^1 * -log(1e-8) = 18.4206807; negative at 20: p_m = 0.95,
    # 0.95^4 * -log(0.05) = 2.4400427; their mean 10.4303617.
    logits, targets = torch.tensor([[-20.0, 20.0]]), torch.tensor([[1.0, 0.0]])
    expected = (-math.log(1e-8) + 0.95 ** 4 * -math.log(0.05)) / 2
    assert AsymmetricLoss()(logits, targets).item() == pytest.approx(expected, abs=1e-4)
    half = AsymmetricLoss()(logits.half(), targets)
    assert half.dtype == torch.float16 and half.item() == pytest.approx(expected, rel=1e-3)


def test_asymmetric_loss_without_focusing_is_bce():
    torch.manual_seed(1)
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) > 0.5).float()
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(logits, targets)
    torch.testing.assert_close(plain, masked_bce_with_logits(logits, targets), rtol=1e-5, atol=1e-6)


def test_attribute_weights_and_weighted_bce_by_hand():
    labels = torch.tensor([[1.0, 0], [0, 0], [1, 1], [0, 0]])
    mask = torch.tensor([[1.0, 1], [1, 1], [1, 1], [1, 0]])
    pos_weight, neg_weight = attribute_loss_weights(labels, mask)
    # Attribute 0: f = 2/4 -> (1, 1). Attribute 1: f = 1/3 -> w_pos = 1.5, w_neg = 0.75.
    torch.testing.assert_close(pos_weight, torch.tensor([1.0, 1.5]))
    torch.testing.assert_close(neg_weight, torch.tensor([1.0, 0.75]))
    # Mean weight over known entries of attribute 1: (1.5 + 0.75 + 0.75) / 3 = 1.
    logits = torch.zeros(4, 2)
    loss = weighted_bce_with_logits(logits, labels, mask, pos_weight, neg_weight)
    # Every known entry costs w * log 2; weights over the 7 known entries sum to 4 + 3 = 7.
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss = weighted_bce_with_logits(logits, labels, mask, torch.tensor([1.0, 1.0]), torch.tensor([0.1, 0.1]))
    # Liu & Lu style 1 vs 0.1: 3 positives (weight 1) and 4 negatives (0.1): (3 + 0.4) log 2 / 7.
    assert loss.item() == pytest.approx(3.4 * math.log(2) / 7, abs=1e-6)
    rare_pos, _ = attribute_loss_weights(torch.zeros(10, 1))
    assert rare_pos.item() == pytest.approx(50.0)  # f clamped to 0.01


# ----------------------------------------------------------------------------------- real data


def _clothing_attribute_subset(count: int, columns: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    with open(DATA / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    labels = np.array([[float(row[c] == "2") for c in columns] for row in rows], dtype=np.float32)
    mask = np.array([[float(row[c].strip() != "") for c in columns] for row in rows], dtype=np.float32)
    return [row["image"] for row in rows], labels, mask


@pytest.mark.slow
def test_mlgcn_head_learns_on_real_clothing_attribute_images():
    from PIL import Image

    columns = ["pattern_solid", "collar", "gender", "necktie", "placket", "scarf"]
    words = ["solid pattern", "collar", "female", "necktie", "placket", "scarf"]
    files, labels, mask = _clothing_attribute_subset(200, columns)
    backbone = build_style_model({"backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "head": "linear",
                                  "num_labels": len(columns)}).eval()
    mean = torch.tensor(backbone.backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.backbone.std).view(1, 3, 1, 1)
    features = []
    with torch.no_grad():
        for first in range(0, len(files), 50):
            batch = torch.stack([
                torch.from_numpy(np.asarray(Image.open(DATA / "images" / f).convert("RGB").resize((128, 128))).copy())
                .permute(2, 0, 1) for f in files[first:first + 50]]).float() / 255
            features.append(backbone.forward_features((batch - mean) / std))
    features = torch.cat(features)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)

    M, N = cooccurrence_counts(labels, mask)
    graph = build_adjacency(M, N, t=0.4, p=0.2, label_names=columns)
    assert graph.num_edges > 0
    torch.manual_seed(0)
    head = MLGCNHead(label_embeddings(words, load_glove("glove50")), graph.adjacency, features.shape[1], hidden=256)
    optimiser = torch.optim.Adam(head.parameters(), lr=1e-3)
    y, m = torch.from_numpy(labels), torch.from_numpy(mask)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        loss = masked_bce_with_logits(head(features), y, m)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::8]
    assert losses[-1] < 0.4
