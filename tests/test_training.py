"""Training loop, model directory and evaluation, on the real photos bundled with the project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fashionlens.config import (
    ClothingConfig,
    ConfigError,
    DataSource,
    StyleConfig,
    override,
)
from fashionlens.errors import FashionlensError, ModelDirError
from fashionlens.modeldir import load_model_dir
from fashionlens.training import (
    evaluate_model_dir,
    split_indices,
    train_clothing,
    train_style,
)

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"


def test_split_is_fixed_by_seed_and_disjoint():
    train_a, val_a = split_indices(100, 0.2, seed=3)
    train_b, val_b = split_indices(100, 0.2, seed=3)
    assert (train_a, val_a) == (train_b, val_b)
    assert len(val_a) == 20 and len(train_a) == 80
    assert not set(train_a) & set(val_a)
    assert split_indices(100, 0.2, seed=4)[1] != val_a


def test_split_rejects_bad_fraction():
    with pytest.raises(FashionlensError, match="between 0 and 1"):
        split_indices(10, 1.5, seed=0)


def _config(out: Path, changes: dict | None = None) -> StyleConfig:
    """A small style run on the bundled photos; ``changes`` are config overrides (dotted keys)."""
    base = {"out": out, "data.sources": [DataSource(MINI, "clothing-attributes")], "data.batch_size": 16,
            "data.limit": 80, "data.val_split": 0.25, "data.workers": 0, "data.drop_empty_labels": True,
            "backbone.name": "tf_efficientnet_lite0", "backbone.pretrained": "shipped", "backbone.image_size": 64,
            "recipe.epochs": 1, "recipe.freeze_epochs": 1, "recipe.seed": 0, "head.kind": "linear", "head.pool": "max"}
    return override(StyleConfig(), {**base, **(changes or {})})


def _clothing_config(out: Path, data: Path, fmt: str, changes: dict) -> ClothingConfig:
    base = {"out": out, "data.sources": [DataSource(data, fmt)], "data.workers": 0, "backbone.name": "mobilenet_v2",
            "backbone.pretrained": "shipped", "backbone.image_size": 64, "recipe.epochs": 1,
            "recipe.optimizer": "adamw", "recipe.lr": 1e-3, "recipe.seed": 0}
    return override(ClothingConfig(), {**base, **changes})


@pytest.fixture(scope="module")
def style_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("style-run")
    return train_style(_config(out, {"head.kind": "mlgcn"}))


def test_training_writes_a_complete_run_directory(style_run: Path):
    for name in ("run.json", "metrics.json", "history.json", "val_predictions.npz", "checkpoints/last.ckpt"):
        assert (style_run / name).is_file(), name
    for name in ("config.json", "model.safetensors", "labels.json", "graph.json", "preprocessing.json",
                 "thresholds.json"):
        assert (style_run / "model" / name).is_file(), name
    thresholds = json.loads((style_run / "model" / "thresholds.json").read_text())
    assert thresholds["method"] == "f1" and len(thresholds["thresholds"]) == load_model_dir(
        style_run / "model").config["num_labels"]
    assert set(thresholds["fallback"]) <= set(thresholds["thresholds"])
    run = json.loads((style_run / "run.json").read_text())
    assert run["seed"] == 0 and run["val_size"] == 20 and run["train_size"] == 60
    metrics = json.loads((style_run / "metrics.json").read_text())
    assert 0.0 < metrics["mAP"] <= 100.0
    predictions = np.load(style_run / "val_predictions.npz")
    assert predictions["scores"].shape == predictions["labels"].shape
    assert predictions["scores"].shape[0] == 20
    assert all(Path(p).is_file() for p in predictions["paths"])


@pytest.mark.slow
def test_saved_model_reloads_and_evaluates_to_the_same_metrics(style_run: Path, tmp_path: Path):
    bundle = load_model_dir(style_run / "model")
    assert bundle.task == "style"
    assert bundle.config["head"] == "mlgcn"
    # The graph travels inside the weights: the adjacency buffer equals graph.json's size.
    graph = json.loads((style_run / "model" / "graph.json").read_text())
    assert len(graph["labels"]) == bundle.config["num_labels"]
    # Evaluating the whole bundled set gives metrics on all 495 photos.
    metrics = evaluate_model_dir(style_run / "model", MINI, "clothing-attributes", workers=0)
    assert metrics["num_images"] == 495
    assert 0.0 < metrics["mAP"] <= 100.0


def test_validation_trainer_predict_and_the_predictor_give_the_same_scores(style_run: Path):
    """One forward for all three: the run's validation records, ``trainer.predict`` on the task (its
    ``predictions``), and the Predictor on the same photo files (its own decoder and eval transform)."""
    import lightning as L
    import torch

    from fashionlens.inference import load, read_image, to_uint8_chw
    from fashionlens.training.tasks.style import StyleTask

    recorded = np.load(style_run / "val_predictions.npz")
    paths = [str(p) for p in recorded["paths"][:6]]
    predictor = load(style_run / "model")
    bundle = load_model_dir(style_run / "model")
    task = StyleTask(bundle.model, bundle.label_names)
    images = torch.stack([predictor.preprocess(to_uint8_chw(read_image(p))[0]) for p in paths])
    batches = torch.utils.data.DataLoader([{"image": image, "index": i} for i, image in enumerate(images)],
                                          batch_size=4)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    predicted = trainer.predict(task, batches)
    scores = torch.cat([batch["scores"] for batch in predicted]).numpy()
    assert torch.equal(torch.cat([batch["index"] for batch in predicted]), torch.arange(6))
    np.testing.assert_allclose(scores, recorded["scores"][:6], atol=1e-4)
    by_predictor = np.array([[label.logit for label in sorted(result.labels, key=lambda l: bundle.label_names.index(l.name))]
                             for result in predictor(paths)])
    np.testing.assert_allclose(by_predictor, scores, atol=1e-4)


def test_corrupt_model_directory_is_a_clear_error(style_run: Path, tmp_path: Path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(style_run / "model", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelDirError, match="model.safetensors"):
        load_model_dir(broken)
    (broken / "labels.json").unlink()
    with pytest.raises(ModelDirError, match="missing labels.json"):
        load_model_dir(broken)


def test_weights_that_do_not_match_the_config_are_refused(style_run: Path, tmp_path: Path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(style_run / "model", broken)
    config = json.loads((broken / "config.json").read_text())
    config["head"] = "linear"
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="do not match config.json"):
        load_model_dir(broken)


@pytest.mark.slow
def test_style_model_learns_on_real_photos(tmp_path: Path):
    """A head trained on 240 real photos beats chance by a clear margin on 60 held-out photos."""
    out = train_style(_config(tmp_path, {"data.limit": 300, "recipe.epochs": 15, "backbone.image_size": 160,
                                         "recipe.optimizer": "adamw", "recipe.lr": 1e-3,
                                         "recipe.cache_features": True}))
    predictions = np.load(out / "val_predictions.npz")
    labels, mask = predictions["labels"], predictions["mask"]
    from fashionlens.metrics import multilabel_metrics

    # A model that ranks at random scores, in expectation, AP = the positive rate of each label.
    rng = np.random.default_rng(0)
    chance = np.mean([multilabel_metrics(rng.normal(size=labels.shape), labels, mask)["mAP"] for _ in range(20)])
    learned = json.loads((out / "metrics.json").read_text())["mAP"]
    assert learned > chance + 10.0, (learned, chance)


@pytest.mark.slow
def test_clothing_model_trains_and_evaluates_through_the_same_functions(tmp_path: Path, shared_data: Path):
    """The landmark network on the real landmark photos in benchmark format: train, save, reload, evaluate."""
    from fashionlens.data.samples import build_deepfashion_sample

    root = build_deepfashion_sample(shared_data, tmp_path / "sample", landmarks_only=True)
    out = train_clothing(_clothing_config(tmp_path / "run", root, "deepfashion",
                                          {"model.heatmap_size": 16, "data.batch_size": 4,
                                           "recipe.freeze_epochs": 0}))
    bundle = load_model_dir(out / "model")
    assert bundle.task == "clothing" and len(bundle.labels["attribute_types"]) == 1000
    # A new network takes the network config's defaults, not those of old config.json files (a training
    # built the deconv upsampler, whose landmarks stay at chance, from 2026-12-06 to 2026-12-07).
    assert bundle.config["upsample"] == "bilinear" and bundle.config["flip_test"] is True
    predictions = np.load(out / "val_predictions.npz")
    assert predictions["boxes"].shape == (4, 4) and predictions["pred_xy"].shape == (4, 8, 2)
    metrics = evaluate_model_dir(out / "model", root, "deepfashion", split="val", workers=0)
    assert metrics["num_images"] == 4
    for key in ("category_top1", "category_top3", "normalized_error", "detection_rate@0.1"):
        assert key in metrics, key
    # The landmark photos carry no attribute annotation (every attribute unknown): no attribute figures.
    assert not [key for key in metrics if key.startswith(("attr", "texture", "style"))]
    assert 0.0 <= metrics["normalized_error"] < 2.0


@pytest.mark.slow  # 3 s: a training run (the fast suite stays under a minute)
@pytest.mark.parametrize("attr_head", ["linear", "mlgcn", "query"])
def test_clothing_network_trains_on_the_clothing_attribute_layout(tmp_path: Path, attr_head: str):
    """Category head over the 7 categories, 30 typed attributes, no landmarks; evaluate on the saved model."""
    out = train_clothing(_clothing_config(tmp_path / "run", MINI, "clothing-attributes", {
        "data.batch_size": 16, "data.limit": 48, "data.val_split": 0.25, "model.landmarks": "none",
        "head.kind": attr_head, "graph.embeddings": "onehot", "recipe.freeze_epochs": 1}))
    bundle = load_model_dir(out / "model")
    assert bundle.task == "clothing" and len(bundle.labels["category_names"]) == 7
    assert len(bundle.label_names) == 30 and bundle.config["attr_head"] == attr_head
    run = json.loads((out / "run.json").read_text())
    assert run["train_size"] == 48 and run["val_size"] == len(split_indices(495, 0.25, 0)[1])
    metrics = evaluate_model_dir(out / "model", MINI, "clothing-attributes", workers=0)
    assert metrics["num_images"] == 495
    for key in ("category_top3", "attr_top3", "texture_top3", "part_top5", "style_top3"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert metrics["fabric_top3"] == 100.0  # one fabric attribute (plaid): top-3 of one is always a hit
    assert 0.0 < metrics["attr_mAP"] <= 100.0


def test_clothing_network_refuses_a_format_without_categories(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data.sources: the clothing network needs a dataset with typed "
                                          r"attributes \(deepfashion or clothing-attributes or "
                                          r"deepfashion-fine\)"):
        train_clothing(_clothing_config(tmp_path / "run", MINI, "folders", {}))
    with pytest.raises(ConfigError, match=r"data.sources\[0\].format: 'manifest' cannot train `clothing`"):
        train_clothing(_clothing_config(tmp_path / "run", MINI, "manifest", {}))


def test_glove_plus_onehot_label_inputs_keep_exclusive_labels_apart():
    """GloVe-50d puts "man" and "woman" at cosine 0.89; with a one-hot code appended they are distinct inputs."""
    from fashionlens.config import GraphConfig
    from fashionlens.training import build_label_graph_inputs

    labels = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=np.uint8)
    mask = np.ones_like(labels)
    names, words = ["gender_male", "gender_female", "collar"], ["man", "woman", "collar"]
    glove, _, _, _ = build_label_graph_inputs(labels, mask, names, words, GraphConfig(embeddings="glove50"))
    both, adjacency, _, kept = build_label_graph_inputs(labels, mask, names, words,
                                                          GraphConfig(embeddings="glove50+onehot"))
    assert glove.shape == (3, 50) and both.shape == (3, 53) and kept == [0, 1, 2] and adjacency.shape == (3, 3)
    np.testing.assert_array_equal(both[:, :50], glove)
    np.testing.assert_array_equal(both[:, 50:], np.eye(3))

    def cosine(m, i, j):
        return float(m[i] @ m[j] / np.linalg.norm(m[i]) / np.linalg.norm(m[j]))

    assert cosine(glove, 0, 1) > 0.85
    assert cosine(both, 0, 1) < cosine(glove, 0, 1)


@pytest.mark.slow
def test_the_default_train_style_command_learns_on_real_photos(tmp_path: Path):
    """`fashionlens train style` with every recipe default (only the size is made small): held-out
    mAP clearly above chance. The reference's SGD lr 0.1 fell to chance with the same command."""
    from fashionlens import cli
    from fashionlens.metrics import multilabel_metrics

    out = tmp_path / "run"
    assert cli.main(["train", "style", "--data", str(MINI), "--format", "clothing-attributes", "--out", str(out),
                     "--image-size", "128", "--limit", "400", "--drop-empty-labels"]) == 0
    config = json.loads(json.dumps(__import__("yaml").safe_load((out / "config.yaml").read_text())))
    assert config["recipe"]["optimizer"] == "adamw" and config["graph"]["embeddings"] == "onehot"
    assert config["backbone"]["name"] == "tf_efficientnet_lite0" and config["head"]["kind"] == "mlgcn"
    predictions = np.load(out / "val_predictions.npz")
    labels, mask = predictions["labels"], predictions["mask"]
    rng = np.random.default_rng(0)
    chance = np.mean([multilabel_metrics(rng.normal(size=labels.shape), labels, mask)["mAP"] for _ in range(20)])
    learned = json.loads((out / "metrics.json").read_text())["mAP"]
    assert learned > chance + 10.0, (learned, chance)


@pytest.mark.slow
def test_training_on_street_and_catalogue_photos_at_once(tmp_path: Path, shared_data: Path):
    """CCP street photos and Grigorev catalogue photos in one run: labels merged through the alias
    file, what a dataset does not annotate masked for its photos, metrics per source."""
    from fashionlens import cli

    out = tmp_path / "run"
    assert cli.main(["train", "style", "--data", str(shared_data / "clothing-co-parsing"),
                     "--format", "clothing-co-parsing", "--data", str(shared_data / "clothing-dataset-small" / "train"),
                     "--format", "folders", "--aliases", str(REPO / "configs" / "garment-aliases.yaml"),
                     "--out", str(out), "--image-size", "64", "--epochs", "2", "--limit", "300",
                     "--cache-features", "--drop-empty-labels", "--workers", "0"]) == 0
    names = json.loads((out / "model" / "labels.json").read_text())["label_names"]
    assert "outerwear" in names and not {"outwear", "coat", "jacket"} & set(names)
    assert {"bag", "longsleeve", "skirt"} <= set(names)
    predictions = np.load(out / "val_predictions.npz")
    mask, paths = predictions["mask"], predictions["paths"]
    catalogue = np.array(["clothing-dataset-small" in str(p) for p in paths])
    assert catalogue.any() and (~catalogue).any()
    assert (mask[catalogue, names.index("bag")] == 0).all()  # catalogue photos say nothing about bags
    assert (mask[~catalogue, names.index("longsleeve")] == 0).all()  # CCP has no longsleeve tag
    assert (mask[catalogue, names.index("skirt")] == 1).all()  # a catalogue class: known everywhere there
    per_source = json.loads((out / "metrics.json").read_text())["per_source"]
    assert len(per_source) == 2 and all(0.0 < m["mAP"] <= 100.0 for m in per_source.values())
    assert sum(m["num_images"] for m in per_source.values()) == len(paths)


@pytest.mark.slow
def test_the_clothing_network_learns_catalogue_categories_beside_attribute_photos(tmp_path: Path, shared_data: Path):
    """Clothing Attribute photos (7 categories + 30 typed attributes) and Grigorev catalogue photos
    (10 classes) in one clothing run: 13 categories after the aliases, 30 attributes, masks per source."""
    from fashionlens import cli

    out = tmp_path / "run"
    assert cli.main(["train", "clothing", "--data", str(MINI), "--format", "clothing-attributes",
                     "--data", str(shared_data / "clothing-dataset-small" / "train"), "--format", "folders",
                     "--aliases", str(REPO / "configs" / "garment-aliases.yaml"), "--out", str(out),
                     "--image-size", "64", "--epochs", "1", "--limit", "64", "--landmarks", "none",
                     "--workers", "0"]) == 0
    bundle = load_model_dir(out / "model")
    categories = bundle.labels["category_names"]
    assert len(categories) == 13 and {"outerwear", "pants", "shoes", "skirt", "hat"} <= set(categories)
    assert len(bundle.label_names) == 30 and len(bundle.labels["attribute_types"]) == 30
    per_source = json.loads((out / "metrics.json").read_text())["per_source"]
    assert len(per_source) == 2
    predictions = np.load(out / "val_predictions.npz")
    catalogue = np.array(["clothing-dataset-small" in str(p) for p in predictions["paths"]])
    assert (predictions["mask"][catalogue] == 0).all()  # catalogue photos have no attribute annotations
    assert (predictions["category"][catalogue] >= 0).all()


def test_epoch_lines_and_history_report_each_epochs_own_values(tmp_path: Path, capsys):
    """The per-epoch log line shows that epoch's mAP, and history.json's train_loss is that epoch's
    loss (logs/metrics.csv): both used to be one epoch behind (the last epoch's mAP never printed,
    row 0 without a training loss)."""
    import csv

    run = train_style(_config(tmp_path / "run", {"recipe.epochs": 3, "recipe.freeze_epochs": 3,
                                                 "recipe.cache_features": True, "recipe.lr": 0.01,
                                                 "trainer.progress": "epochs"}))
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 3
    for line, row in zip(lines, history):
        assert line.startswith(f"epoch {row['epoch'] + 1}/3"), line
        assert f"mAP {row['mAP']:.2f}" in line, (line, row)
        assert f"train loss {row['train_loss']:.4f}" in line, (line, row)
    logged = {}
    with open(run / "logs" / "metrics.csv") as handle:
        for record in csv.DictReader(handle):
            if record.get("train/loss_epoch"):
                logged[int(record["epoch"])] = float(record["train/loss_epoch"])
    assert sorted(logged) == [0, 1, 2]
    assert len(set(logged.values())) == 3  # the loss changes between epochs, so a lag would show
    for row in history:
        assert row["train_loss"] == pytest.approx(logged[row["epoch"]], rel=1e-6), (row, logged)


@pytest.mark.slow
def test_drop_empty_labels_leaves_the_same_labels_out_of_every_head(tmp_path: Path):
    """--drop-empty-labels drops the labels without training positives for the linear head too, so
    the variants of one split are scored on the same labels (it used to apply to ML-GCN only)."""
    from fashionlens.data import open_dataset

    names = {}
    for head in ("linear", "mlgcn"):
        run = train_style(_config(tmp_path / head, {"head.kind": head, "recipe.cache_features": True,
                                                    "data.limit": 40}))
        names[head] = json.loads((run / "model" / "labels.json").read_text())["label_names"]
    everything = open_dataset(MINI, "clothing-attributes").label_names
    assert names["linear"] == names["mlgcn"]
    assert set(everything) - set(names["linear"]) == {"color_purple"}  # no positive in these 30 photos


def test_default_mlgcn_head_keeps_a_label_without_positives_as_a_node_without_edges(tmp_path: Path):
    """A default is a promise: the ML-GCN head used to stop on any label with no training positive
    ("no positive training examples for label(s) 'color_purple'"); it now trains, keeps the label
    without graph edges and says so in one warning."""
    with pytest.warns(UserWarning, match=r"kept without edges.*color_purple"):
        run = train_style(_config(tmp_path, {"head.kind": "mlgcn", "recipe.cache_features": True,
                                             "data.limit": 40, "data.drop_empty_labels": False}))
    names = json.loads((run / "model" / "labels.json").read_text())["label_names"]
    assert "color_purple" in names
    edges = json.loads((run / "model" / "graph.json").read_text())["edges"]
    assert edges and not [e for e in edges if "color_purple" in (e["source"], e["target"])]


@pytest.mark.slow  # 2 s: two trainings on one feature cache (the fast suite stays under a minute)
def test_feature_cache_is_shared_by_heads_that_keep_different_labels(tmp_path: Path, monkeypatch):
    """The backbone features do not depend on the label columns: a linear head on every label and an
    ML-GCN head that drops the empty ones extract them once, and each gets its own columns' labels."""
    from fashionlens.training import data as training_data

    monkeypatch.setattr(training_data, "_FEATURE_CACHE", {})
    calls = []
    extract = training_data.FeatureCache.extract.__func__

    def counted(cls, *args, **kwargs):
        calls.append(args[-1])
        return extract(cls, *args, **kwargs)

    monkeypatch.setattr(training_data.FeatureCache, "extract", classmethod(counted))
    runs = {}
    for head, drop in (("linear", False), ("mlgcn", True)):
        run = train_style(_config(tmp_path / head, {"head.kind": head, "recipe.cache_features": True,
                                                    "data.limit": 40, "data.drop_empty_labels": drop}))
        runs[head] = (json.loads((run / "model" / "labels.json").read_text())["label_names"],
                      np.load(run / "val_predictions.npz"))
    assert calls == ["caching train features", "caching val features"]
    (all_names, every), (kept_names, kept) = runs["linear"], runs["mlgcn"]
    assert set(all_names) - set(kept_names) == {"color_purple"}
    columns = [all_names.index(name) for name in kept_names]
    np.testing.assert_array_equal(kept["index"], every["index"])
    np.testing.assert_array_equal(kept["labels"], every["labels"][:, columns])
    np.testing.assert_array_equal(kept["mask"], every["mask"][:, columns])


def test_mlgcn_over_10000_one_hot_labels_is_refused_before_anything_is_allocated(monkeypatch):
    """Issue 13: 10,000 labels with one-hot inputs allocated 6.9 GB and died with a MemoryError.
    The estimate refuses it first, with the sizes and what to change; a head that fits goes on."""
    from fashionlens import labels as label_tools
    from fashionlens.config import GraphConfig
    from fashionlens.training.tasks import style

    def allocates(*args, **kwargs):
        raise AssertionError("allocated the label inputs or the graph before refusing")

    monkeypatch.setattr(style, "available_memory_bytes", lambda: 4 * 1024 ** 3)
    monkeypatch.setattr(label_tools, "label_vectors", allocates)
    monkeypatch.setattr(label_tools, "cooccurrence_counts", allocates)
    count = 10_000
    names = [f"label{k}" for k in range(count)]
    labels = np.zeros((2, count), dtype=np.float32)
    with pytest.raises(ConfigError) as refused:
        build_inputs = style.build_label_graph_inputs
        build_inputs(labels, np.ones_like(labels), names, names, GraphConfig(embeddings="onehot"), hidden_dim=1024)
    message = str(refused.value)
    assert "10000 labels" in message and "E = 10000" in message and "hidden dim 1024" in message
    assert "needs about 7.1 GB" in message and "4.0 GB is available" in message
    assert "--head linear" in message and "--embeddings glove50" in message and "--hidden-dim" in message
    assert "about 7408 labels fit here" in message
    size = lambda c: sum(style.mlgcn_memory_bytes(c, c, 1024).values())  # noqa: E731
    assert size(7408) <= 4 * 1024 ** 3 < size(7409)
    parts = style.mlgcn_memory_bytes(count, count, 1024)
    assert 6.5 < sum(parts.values()) / 1024 ** 3 < 8.5  # issue 13 died at 6.9 GB
    assert parts["label graph"] > parts["label inputs"] > parts["activations"] > parts["parameters"]
    # The 37 labels of the Clothing Attribute vocabulary need about 35 MB: not refused.
    style.check_mlgcn_memory(37, "onehot", 1024)
