"""The label-query head (--head query): shapes, its GCN start, attention maps as explanations, the
feature cache, model directories, ONNX, its knobs, and (slow) that it learns on real street photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import PREPROCESSING, STYLE_NAMES

from fashionlens.config import ConfigError, DataSource, StyleConfig, override, validate
from fashionlens.models.backbones import create_backbone
from fashionlens.models.mlgcn import MLGCNHead, build_style_model
from fashionlens.models.netconfig import StyleNetConfig
from fashionlens.models.query_head import QueryHead

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"
CCP = REPO.parent / "shared" / "data" / "clothing-co-parsing"
# A small query head over the shipped EfficientNet-Lite0 at 64 px (a 2 x 2 feature map).
CONFIG = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "head": "query",
          "num_labels": len(STYLE_NAMES), "image_size": 64, "query_dim": 32, "query_layers": 2,
          "query_self_attention": True}


def _graph(count: int) -> tuple[np.ndarray, np.ndarray]:
    adjacency = np.random.default_rng(0).random((count, count)).astype(np.float32)
    return np.eye(count, dtype=np.float32), adjacency / adjacency.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("layers, self_attention", [(1, False), (2, True)])
def test_query_head_shapes_and_its_maps_sum_to_one_over_the_places(layers, self_attention):
    torch.manual_seed(0)
    head = QueryHead(feature_dim=24, num_labels=5, dim=16, layers=layers, heads=4, self_attention=self_attention).eval()
    for h, w in ((3, 5), (1, 1)):  # any feature-map size
        logits, attention = head.forward_with_attention(torch.randn(2, 24, h, w))
        assert logits.shape == (2, 5) and attention.shape == (2, 5, h, w)
        torch.testing.assert_close(attention.sum(dim=(2, 3)), torch.ones(2, 5))
        assert (attention >= 0).all()
    assert len(head.layers) == layers and (head.layers[0].self_attention is not None) == self_attention


def test_the_model_reads_the_feature_map_and_explains_with_the_attention():
    torch.manual_seed(0)
    model = build_style_model(CONFIG).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = model.forward_features(images)
        assert model.spatial and features.shape == (2, 1280, 2, 3)  # what the head consumes: the map
        assert model.forward_embedding(images).shape == (2, 1280)  # search still gets the pooled vector
        out = model.forward_label_maps(images)
        torch.testing.assert_close(out["logits"], model(images)["logits"])
        torch.testing.assert_close(out["logits"], model.forward_head(features))
        assert out["label_maps"].shape == (2, len(STYLE_NAMES), 2, 3)
        torch.testing.assert_close(out["label_maps"].sum(dim=(2, 3)), torch.ones(2, len(STYLE_NAMES)))
        picked = model.forward_label_maps(images, torch.tensor([3, 1]))["label_maps"]
        torch.testing.assert_close(picked, out["label_maps"][:, [3, 1]])


def test_gcn_start_is_the_gcn_classifiers_through_the_input_projection():
    embeddings, adjacency = _graph(len(STYLE_NAMES))
    config = {**CONFIG, "backbone": "resnet18", "pretrained": "none", "query_init": "gcn", "hidden_dim": 16,
              "embedding_dim": len(STYLE_NAMES)}
    torch.manual_seed(3)
    model = build_style_model(config, embeddings, adjacency)
    # The same draws again: the backbone, then the GCN head the queries start from.
    torch.manual_seed(3)
    create_backbone("resnet18", pretrained="none")
    classifiers = MLGCNHead(embeddings, adjacency, 512, hidden=16).classifiers().detach()
    projected = classifiers @ model.head.input_proj.weight.detach().t()
    scale = projected.std()
    torch.testing.assert_close(model.head.queries.detach() * scale, projected)
    assert float(model.head.queries.detach().std()) == pytest.approx(1.0, abs=1e-5)
    # Labels that share neighbours in the graph start with correlated queries; a random start does not see it.
    torch.manual_seed(3)
    scratch = build_style_model({**config, "query_init": "scratch"}, embeddings, adjacency)
    assert not torch.allclose(scratch.head.queries, model.head.queries)


def test_a_saved_query_model_loads_with_identical_logits_and_old_configs_still_load(tmp_path):
    from fashionlens.modeldir import load_model_dir, save_model_dir

    torch.manual_seed(0)
    model = build_style_model(CONFIG).eval()
    directory = save_model_dir(tmp_path / "model", model, model.config,
                               {"label_names": STYLE_NAMES, "display_names": STYLE_NAMES}, {**PREPROCESSING,
                                                                                            "image_size": 64})
    saved = json.loads((directory / "config.json").read_text())
    assert saved["head"] == "query" and saved["query_layers"] == 2 and saved["query_dim"] == 32
    loaded = load_model_dir(directory).model.eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images)["logits"], model(images)["logits"])
    # A config.json written before the query head existed has none of its keys: the defaults fill them.
    old = {k: v for k, v in saved.items() if not k.startswith("query_")} | {"head": "linear"}
    assert StyleNetConfig.from_dict(old).query_layers == StyleNetConfig(num_labels=1).query_layers


def test_onnx_export_and_explanations_of_the_query_head_on_real_photos(tmp_path, monkeypatch):
    from fashionlens.inference import load
    from fashionlens.modeldir import save_model_dir

    monkeypatch.setenv("FASHIONLENS_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = build_style_model(CONFIG)
    directory = save_model_dir(tmp_path / "model", model, model.config,
                               {"label_names": STYLE_NAMES, "display_names": STYLE_NAMES},
                               {**PREPROCESSING, "image_size": 64})
    photos = sorted((MINI / "images").glob("*.jpg"))[:3]
    predictor = load(directory)
    expected = predictor(photos)
    got = load(directory, runtime="onnx")(photos)  # exported on demand (checked against torch), a batch of 3
    # predict --explain, /explain and the page get each label's attention over the places.
    explanation = predictor.explain(photos[0], labels=["floral", "scarf"])
    assert [m.name for m in explanation.maps] == ["floral", "scarf"]
    assert all(m.grid.shape == (2, 2) and abs(float(m.grid.sum()) - 1) < 1e-5 for m in explanation.maps)
    for a, b in zip(expected, got):
        logits = {label.name: label.logit for label in b.labels}
        assert max(abs(label.logit - logits[label.name]) for label in a.labels) < 1e-4


@pytest.mark.slow  # 4 s: an ONNX round trip
def test_the_clothing_networks_query_head_predicts_explains_embeds_and_exports(tmp_path, monkeypatch):
    """`train clothing --attr-head query`: its model directory through the Predictor, ONNX and search."""
    from tiny_models import clothing_model_dir

    from fashionlens.inference import load, to_uint8_chw

    monkeypatch.setenv("FASHIONLENS_CACHE", str(tmp_path / "cache"))
    directory = clothing_model_dir(tmp_path / "model", flip_test=True, attr_head="query")
    photos = sorted((MINI / "images").glob("*.jpg"))[:3]
    predictor = load(directory)
    expected = predictor(photos)
    explanation = predictor.explain(photos[0], labels=["denim", "short"])
    assert [m.name for m in explanation.maps] == ["denim", "short"]
    assert all(m.grid.shape == (16, 16) and abs(float(m.grid.sum()) - 1) < 1e-5 for m in explanation.maps)
    assert predictor.embed(photos).shape == (3, predictor.embedding_dim) == (3, 16)  # the category branch
    onnx_predictor = load(directory, runtime="onnx")
    assert [r.category_top_k[0].name for r in onnx_predictor(photos)] == [r.category_top_k[0].name for r in expected]
    batch = predictor.preprocess_batch([to_uint8_chw(photo)[0] for photo in photos])
    for key, value in predictor.runtime(batch).items():  # the flip test's mirrored pass included
        np.testing.assert_allclose(onnx_predictor.runtime(batch)[key], value, atol=1e-4)


def test_the_feature_cache_gives_the_query_head_the_same_logits_as_the_photos():
    from fashionlens.data import open_dataset
    from fashionlens.data.transforms import build_transforms
    from fashionlens.training.data import ColumnSubset, FeatureCache

    torch.manual_seed(0)
    model = build_style_model(CONFIG).eval()
    dataset = open_dataset(MINI, "clothing-attributes", transform=build_transforms(64, (0.5,) * 3, (0.5,) * 3,
                                                                                   train=False))
    photos = ColumnSubset(dataset, [0, 1, 2, 3], list(range(len(dataset.label_names))))
    cache = FeatureCache.extract(model, photos, batch_size=2, workers=0, description="caching")
    assert cache.features.shape == (4, 1280, 2, 2)  # the map, not the pooled vector
    images = torch.stack([photos[i]["image"] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(cache.features), model(images)["logits"])


def test_a_bad_query_knob_is_a_one_line_error_naming_the_key(capsys):
    from fashionlens.cli import main

    base = override(StyleConfig(), {"out": "runs/x", "data.sources": [DataSource(MINI, "clothing-attributes")]})
    for key, value in (("head.query_layers", 0), ("head.query_dim", 0), ("head.query_init", "glove")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
            validate(override(base, {key: value}))
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="'query_dim': expected a multiple of query_heads"):
        StyleNetConfig(num_labels=3, head="query", query_dim=30, query_heads=4)
    with pytest.raises(ValueError, match="'query_init'"):
        StyleNetConfig.from_dict({"num_labels": 3, "head": "query", "query_init": "random"})
    clothing = override(base, {"head.kind": "query"})
    with pytest.raises(SystemExit):
        main(["train", "style", "--data", str(MINI), "--format", "clothing-attributes", "--out", "x",
              "--query-init", "glove"])
    assert "--query-init" in capsys.readouterr().err
    assert clothing.head.kind == "query"


@pytest.mark.slow
def test_the_query_head_learns_on_real_street_photos(tmp_path: Path):
    """Frozen cached features of 400 Clothing Co-Parsing photos (128 px, 8 epochs), 100 held out: the
    query head (its default start) ranks the held-out photos' garments well above chance."""
    from fashionlens.metrics import multilabel_metrics
    from fashionlens.training import train_style

    if not (CCP / "photos").is_dir():
        pytest.skip(f"Clothing Co-Parsing not found at {CCP}")
    config = override(StyleConfig(), {
        "out": tmp_path, "data.sources": [DataSource(CCP, "clothing-co-parsing")], "data.limit": 400,
        "data.val_split": 0.25, "data.workers": 0, "data.drop_empty_labels": True, "head.kind": "query",
        "backbone.pretrained": "shipped", "backbone.image_size": 128, "recipe.epochs": 8,
        "recipe.cache_features": True, "recipe.seed": 0, "trainer.progress": "none"})
    out = train_style(config)
    predictions = np.load(out / "val_predictions.npz")
    labels, mask = predictions["labels"], predictions["mask"]
    rng = np.random.default_rng(0)
    chance = np.mean([multilabel_metrics(rng.normal(size=labels.shape), labels, mask)["mAP"] for _ in range(20)])
    learned = json.loads((out / "metrics.json").read_text())["mAP"]
    # Measured 2026-12-07 (2-core CPU): 20.91 against a chance of 15.01; 3 points of margin for other
    # machines and library versions.
    assert learned > 20.9 - 3.0 and learned > chance + 2.0, (learned, chance)
