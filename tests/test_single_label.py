"""Single-label data (class folders) gets a softmax head by default, top-1 and a confusion matrix
(issue 32 item 3); multi-label data keeps the multi-label head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fashionlens.config import DataSource, StyleConfig, override
from fashionlens.data import read_class_folders, read_clothing_attributes
from fashionlens.training.tasks.style import choose_loss

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"
STYLES = ("academia", "alt", "cottagecore", "y2k")


@pytest.fixture()
def style_folders(tmp_path: Path, shared_data: Path) -> Path:
    """Six photos of each of the four fashion-aesthetics style folders (links to the real files)."""
    root = tmp_path / "styles"
    for style in STYLES:
        (root / style).mkdir(parents=True)
        for photo in sorted((shared_data / "fashion-aesthetics" / style).glob("*.jpg"))[:6]:
            (root / style / photo.name).symlink_to(photo)
    return root


def test_the_loss_is_chosen_by_the_data_and_said_in_one_line(style_folders: Path, capsys):
    config = StyleConfig()
    assert config.recipe.loss == "auto"
    folders = read_class_folders(style_folders).label_matrix()
    assert choose_loss(config, *folders).recipe.loss == "softmax"
    assert capsys.readouterr().out == (
        "fashionlens: every training photo has exactly one of 4 labels (class folders): a softmax head "
        "(cross-entropy), top-1 and a confusion matrix; --loss bce trains a multi-label one\n")
    assert choose_loss(config, *read_clothing_attributes(MINI).label_matrix()).recipe.loss == "bce"
    assert capsys.readouterr().out == ""
    given = override(config, {"recipe.loss": "bce"})
    assert choose_loss(given, *folders).recipe.loss == "bce"  # a loss given is kept


@pytest.mark.slow
def test_class_folders_train_a_softmax_head_with_top1_and_a_confusion_matrix(style_folders: Path, tmp_path: Path,
                                                                            capsys):
    """4 style folders trained ML-GCN with binary cross-entropy on a graph with 0 edges, silently; the
    report had no top-1 and no confusion matrix."""
    from fashionlens.report import write_report
    from fashionlens.training import train_style

    config = override(StyleConfig(), {"out": tmp_path / "run", "data.sources": [DataSource(style_folders, "folders")],
                                      "data.workers": 0, "data.val_split": 0.25, "backbone.image_size": 32,
                                      "recipe.epochs": 1, "recipe.cache_features": True})
    run = train_style(config)
    assert "a softmax head (cross-entropy), top-1 and a confusion matrix" in capsys.readouterr().out
    assert json.loads((run / "model" / "config.json").read_text())["activation"] == "softmax"
    assert "loss: softmax" in (run / "config.yaml").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["top1_count"] == 6 and 0 <= metrics["top1"] <= 100
    page = write_report(run).read_text()
    assert (run / "report" / "confusion_matrix.png").is_file()
    assert "Category confusion matrix" in page and "no category predictions" not in page
    # Its scores are softmax probabilities, in the prediction and in the explanation of the top label alike.
    from fashionlens.inference import load

    explanation = load(run / "model").explain(next(style_folders.rglob("*.jpg")))
    labels = explanation.prediction.labels
    assert sum(label.score for label in labels) == pytest.approx(1.0, abs=1e-5)
    assert explanation.maps[0].score == pytest.approx(labels[0].score, abs=1e-6)
