"""The HTML report and its figures, on a fake-but-realistic run folder built from real photos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionlens import report
from fashionlens.labels import build_adjacency, cooccurrence_counts
from fashionlens.metrics import multilabel_metrics
from fashionlens.fileio import atomic_write_json
from fashionlens.vocabulary import CUT_OFF, LANDMARK_NAMES

LABELS = ["black", "blue", "white", "red", "floral", "plaid", "stripe", "solid", "long_sleeve", "collar"]


def read_landmark_annotations(root: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Paths, (N, 8, 2) points and (N, 8) visibility of ../shared/data/landmarks' landmarks.json (items of
    file and landmarks {name, x, y, visibility}; a landmark an item does not list is cut off, at NaN)."""
    items = json.loads((root / "landmarks.json").read_text(encoding="utf-8"))["items"]
    xy = np.full((len(items), len(LANDMARK_NAMES), 2), np.nan)
    visibility = np.full((len(items), len(LANDMARK_NAMES)), CUT_OFF)
    for i, item in enumerate(items):
        for landmark in item["landmarks"]:
            if landmark["name"] in LANDMARK_NAMES:
                m = LANDMARK_NAMES.index(landmark["name"])
                xy[i, m], visibility[i, m] = (landmark["x"], landmark["y"]), int(landmark["visibility"])
    return [root / item["file"] for item in items], xy, visibility


def _check_png(path: Path, min_side: int = 200) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min(width, height) >= min_side, f"{path.name} is only {width}x{height}"
    assert max(width, height) <= 4000, f"{path.name} is {width}x{height}: too big to read on a page"
    return width, height


def _image_paths(shared_data: Path, count: int) -> list[str]:
    folder = shared_data / "clothing-attributes" / "images"
    paths = sorted(folder.glob("*.jpg"))[:count]
    assert len(paths) == count
    return [str(path) for path in paths]


def _style_run(root: Path, shared_data: Path, name: str = "run", seed: int = 0) -> Path:
    """A style run folder as train_style leaves it (model weights aside)."""
    rng = np.random.default_rng(seed)
    run = root / name
    n, c = 48, len(LABELS)
    labels = (rng.random((n, c)) < np.linspace(0.15, 0.5, c)).astype(np.float32)
    labels[0] = 0
    labels[0, 0] = 1
    mask = (rng.random((n, c)) > 0.1).astype(np.float32)
    noise = np.linspace(0.3, 3.0, c)  # some labels easy, some hard
    scores = (labels * 2 - 1) * 1.5 + rng.normal(size=(n, c)) * noise
    paths = _image_paths(shared_data, n)
    metrics = multilabel_metrics(scores, labels, mask, label_names=LABELS)
    history = [{"epoch": e, "seconds": 3.0, "train_loss": 0.7 * 0.8 ** e, "mAP": metrics["mAP"] * (1 - 0.3 * 0.5 ** e),
                "CF1": metrics["CF1"] * (1 - 0.4 * 0.5 ** e), "OF1": metrics["OF1"]} for e in range(5)]
    (run / "logs").mkdir(parents=True)
    rows = ["epoch,step,train/loss_step,train/loss_epoch,val/mAP"]
    rows += [f"{s // 8},{s},{0.7 * 0.97 ** s + rng.normal() * 0.02:.4f},," for s in range(40)]
    (run / "logs" / "metrics.csv").write_text("\n".join(rows) + "\n")
    atomic_write_json(run / "run.json", {"options": {"backbone": "resnet18", "head": "mlgcn", "epochs": 5, "lr": 0.1},
                                         "seed": 0, "python": "3.11", "torch": "2.4", "lightning": "2.4",
                                         "train_size": 200, "val_size": n, "labels": LABELS})
    atomic_write_json(run / "metrics.json", metrics)
    atomic_write_json(run / "history.json", history)
    np.savez_compressed(run / "val_predictions.npz", scores=scores.astype(np.float32), labels=labels, mask=mask,
                        index=np.arange(n), paths=np.array(paths))
    atomic_write_json(run / "model" / "labels.json", {"label_names": LABELS,
                                                      "display_names": [x.replace("_", " ") for x in LABELS]})
    counts, totals = cooccurrence_counts(labels, mask)
    graph = build_adjacency(counts, totals, t=0.3, p=0.2, label_names=LABELS)
    # As train_style does: LabelGraph.to_json() (a str) written through atomic_write_json.
    atomic_write_json(run / "model" / "graph.json", graph.to_json())
    return run


def _referenced_pngs(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+\.png)"', index.read_text())


def test_style_report_has_every_figure(tmp_path, shared_data):
    run = _style_run(tmp_path, shared_data)
    index = report.write_report(run)
    assert index == run / "report" / "index.html"
    text = index.read_text()
    assert "<h1>" in text and "resnet18" in text and "seed" in text
    pngs = set(_referenced_pngs(index))
    written = {path.name for path in (run / "report").glob("*.png")}
    assert written == pngs  # every written figure is on the page, and every picture on the page exists
    assert {"training_curves.png", "per_label_ap.png", "pr_curves.png", "label_graph.png", "gallery.png"} <= pngs
    for name in pngs:
        _check_png(run / "report" / name)
    # A style run has no categories and no landmarks: those sections say why they are missing.
    assert "Category confusion matrix</h2><p class=\"note\">Skipped" in text
    assert "Landmarks</h2><p class=\"note\">Skipped" in text
    # The run's own mAP is in the table.
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{metrics['mAP']:.2f}" in text


def test_report_of_bare_run_skips_with_notes(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    atomic_write_json(run / "metrics.json", {"category_top3": 41.5, "attr_top3": 12.0})
    index = report.write_report(run, out=tmp_path / "elsewhere")
    assert index == tmp_path / "elsewhere" / "index.html"
    text = index.read_text()
    assert _referenced_pngs(index) == []
    assert text.count("Skipped") == 7
    assert "41.50" in text and "No run.json" in text


@pytest.mark.slow
def test_compare_folder_table_bolds_best_variant(tmp_path, shared_data):
    compare = tmp_path / "compare"
    results = {}
    for k, name in enumerate(["linear-avg", "mlgcn-glove"]):
        run = _style_run(compare, shared_data, name, seed=k)
        results[name] = {"metrics": json.loads((run / "metrics.json").read_text()),
                         "history": json.loads((run / "history.json").read_text())}
    results["mlgcn-glove"]["metrics"]["mAP"] = 99.0
    (compare / "compare.json").write_text(json.dumps(results))
    index = report.write_report(compare)
    text = index.read_text()
    assert "<b>99.00</b>" in text
    assert "linear-avg" in text and "figures from variant <b>mlgcn-glove</b>" in text
    assert "training_curves.png" in _referenced_pngs(index)
    # A variant's own report finds the comparison in its parent and highlights its row.
    child = report.write_report(compare / "linear-avg").read_text()
    assert '<tr class="current"><th>linear-avg</th>' in child


def test_sort_per_label_ap_orders_by_ap_and_drops_missing():
    rows = report.sort_per_label_ap({"b": 50.0, "a": 50.0, "c": 90.0, "d": None, "e": 10.0, "f": float("nan")})
    assert rows == [("c", 90.0), ("a", 50.0), ("b", 50.0), ("e", 10.0)]


def test_per_label_ap_chart_draws_best_at_top(tmp_path):
    aps = {f"label_{k}": float(v) for k, v in enumerate(np.random.default_rng(1).uniform(5, 95, 40))}
    path = report.plot_per_label_ap(aps, tmp_path / "ap.png")
    width, height = _check_png(path)
    assert height > width * 0.8  # 40 bars need a tall picture
    with pytest.raises(ValueError, match="no label"):
        report.plot_per_label_ap({"a": None}, tmp_path / "none.png")


def test_circular_layout_puts_nodes_evenly_on_a_circle():
    for count in (1, 7, 40):
        xy = report.circular_layout(count, radius=2.0)
        assert xy.shape == (count, 2)
        np.testing.assert_allclose(np.linalg.norm(xy, axis=1), 2.0)
        np.testing.assert_allclose(xy[0], [0.0, 2.0], atol=1e-12)  # first node at the top
        if count > 1:
            steps = np.linalg.norm(np.diff(np.vstack([xy, xy[:1]]), axis=0), axis=1)
            np.testing.assert_allclose(steps, 2 * 2.0 * np.sin(np.pi / count))  # equal chords
            assert xy[1, 0] > 0  # clockwise: the second node is to the right of the top
    np.testing.assert_allclose(report.circular_layout(40).sum(axis=0), 0.0, atol=1e-12)


def test_graph_edges_reads_matrix_triples_and_graph_json():
    matrix = np.array([[0.0, 0.5, 0.0], [0.25, 0.9, 0.0], [0.0, 0.0, 0.0]])
    assert report.graph_edges(["a", "b", "c"], matrix) == [(0, 1, 0.5), (1, 0, 0.25)]
    assert report.graph_edges(["a", "b", "c"], [("a", "c", 0.4), (2, 1)]) == [(0, 2, 0.4), (2, 1, 1.0)]
    graph = {"labels": ["a", "b"], "edges": [{"source": "a", "target": "b", "p_target_given_source": 0.6,
                                              "weight": 0.3}]}
    assert report.graph_edges(["a", "b"], json.dumps(graph)) == [(0, 1, 0.6)]
    with pytest.raises(ValueError, match="'zzz'"):
        report.graph_edges(["a", "b"], [("a", "zzz", 1.0)])


def test_label_graph_picture_for_40_labels(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"style_{k:02d}" for k in range(40)]
    conditional = np.where(rng.random((40, 40)) < 0.06, rng.uniform(0.4, 1.0, (40, 40)), 0.0)
    path = report.plot_label_graph(names, conditional, tmp_path / "graph.png")
    _check_png(path, min_side=600)


def test_precision_recall_curve_by_hand():
    recall, precision = report.precision_recall_curve(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 0, 1, 0]))
    # 0.9: 1 of 1 right; the tie at 0.8 ranks its negative first (1 of 2), then its positive (2 of 3);
    # 0.1 adds only a negative
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1.0])  # stops once all positives are found
    np.testing.assert_allclose(precision, [1, 1, 1 / 2, 2 / 3])


def test_the_pr_curve_breaks_ties_as_the_metrics_do():
    # Three photos tied at 0.5, two of them positive: pessimistic AP = (1/2 + 2/3) / 2 = 58.33 %;
    # grouping the tie into one threshold would give 2/3 (66.67 %).
    scores, positive = np.array([[0.5], [0.5], [0.5], [0.2]]), np.array([[1], [1], [0], [0]])
    recall, precision = report.precision_recall_curve(scores[:, 0], positive[:, 0])
    area = float(np.sum(np.diff(recall) * precision[1:])) * 100
    assert area == pytest.approx(58.333333, abs=1e-5)
    assert multilabel_metrics(scores, positive)["mAP"] == pytest.approx(area, abs=1e-9)


@pytest.mark.slow  # 1.9 s
def test_landmark_overlays_on_the_real_images(tmp_path, shared_data):
    paths, true_xy, visibility = read_landmark_annotations(shared_data / "landmarks")
    assert len(paths) == 20 and true_xy.shape == (20, 8, 2)
    assert (visibility[:, 4:6] == CUT_OFF).all()  # this set has no waistline points
    rng = np.random.default_rng(0)
    pred_xy = true_xy + rng.normal(scale=6.0, size=true_xy.shape)
    path = report.plot_landmark_overlays(paths, pred_xy, true_xy, visibility, LANDMARK_NAMES,
                                         tmp_path / "overlay.png", titles=[p.stem for p in paths])
    width, height = _check_png(path, min_side=800)
    assert width > height  # 5 columns by 4 rows


@pytest.mark.slow
def test_clothing_run_report_has_confusion_landmarks_and_gallery(tmp_path, shared_data):
    paths, true_xy, visibility = read_landmark_annotations(shared_data / "landmarks")
    rng = np.random.default_rng(0)
    n = len(paths)
    category = rng.integers(0, 4, n)
    category_logits = rng.normal(size=(n, 50))
    category_logits[np.arange(n), category] += rng.uniform(0, 4, n)
    run = tmp_path / "clothing"
    pred_xy = np.nan_to_num(true_xy) + rng.normal(scale=5, size=true_xy.shape)
    run.mkdir()
    np.savez_compressed(run / "val_predictions.npz", category_logits=category_logits,
                        category=category, attr_scores=rng.normal(size=(n, 20)), labels=rng.random((n, 20)) < 0.3,
                        mask=np.ones((n, 20)), index=np.arange(n), paths=np.array([str(p) for p in paths]),
                        pred_xy=pred_xy, true_xy=np.nan_to_num(true_xy), visibility=visibility,
                        sizes=np.full((n, 2), 224.0))
    atomic_write_json(run / "model" / "labels.json", {"label_names": [f"a{k}" for k in range(20)],
                                                      "category_names": ["Blouse", "Tee", "Tank", "Cardigan"] +
                                                      [f"c{k}" for k in range(46)]})
    atomic_write_json(run / "history.json", [{"epoch": e, "train_loss": 1 / (e + 1), "category_top3": 30 + e}
                                             for e in range(3)])
    index = report.write_report(run)
    pngs = set(_referenced_pngs(index))
    assert {"confusion_matrix.png", "landmarks.png", "gallery.png", "training_curves.png"} <= pngs
    # Attributes get the per-label pictures too (AP from the saved attribute scores).
    assert {"per_label_ap.png", "pr_curves.png"} <= pngs
    assert "plain canvas" not in index.read_text()  # the 224x224 photos are the network input itself
    for name in pngs:
        _check_png(run / "report" / name)


def test_a_dollar_in_a_label_name_is_drawn_as_text(tmp_path):
    """Issue 27 item 12: "$100 dress" and "50$ top" made mathtext raise, and the figure was skipped."""
    aps = {"$100 dress": 80.0, "50$ top": 40.0, **{f"label_{k}": 3.0 * k for k in range(20)}}
    _check_png(report.plot_per_label_ap(aps, tmp_path / "ap.png"))


def test_the_page_lists_the_runs_options_from_its_config(tmp_path):
    """Issue 27 item 12: every report said "all 0 options" (it read run["options"]; run.json keeps "config")."""
    from fashionlens.report.page import _run_meta_html

    text = _run_meta_html({"seed": 0, "config": {"recipe": {"lr": 0.001, "epochs": 6}, "task": "style"}})
    assert "all 3 options" in text and "recipe.lr" in text and "recipe.epochs" in text
