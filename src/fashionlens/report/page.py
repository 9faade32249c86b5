"""The HTML report of a run directory (`fashionlens report RUN_DIR`).

`write_report` reads what training left in the run directory through :class:`fashionlens.rundir.RunDir`
(run.json, metrics.json, history.json, logs/metrics.csv, val_predictions.npz, model/labels.json,
model/graph.json, and compare.json in the run directory or its parent) and writes
RUN_DIR/report/index.html with its PNG figures (from :mod:`fashionlens.report.plots`) beside it.
A figure whose data the run lacks is skipped, and the page says why.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fashionlens.metrics import multilabel_metrics
from fashionlens.report.plots import (
    STYLE_TABLE_KEYS,
    _read_json,
    category_gallery,
    load_graph_json,
    plot_confusion_matrix,
    plot_label_graph,
    plot_landmark_overlays,
    plot_per_label_ap,
    plot_pr_curves,
    plot_prediction_gallery,
    plot_training_curves,
    read_step_losses,
    style_gallery,
)
from fashionlens.rundir import SCORES_KEY, RunDir
from fashionlens.vocabulary import LANDMARK_NAMES, VISIBLE


def _lower_is_better(key: str) -> bool:
    return "error" in key.lower() or key.lower().endswith("loss")


def _scalar_metrics(metrics: dict) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def metric_table_html(rows: dict[str, dict], highlight: str | None = None) -> str:
    """An HTML table, one row per run/variant; the best value of each column is bold.

    Columns: the style metrics (mAP, CP, ..., OF1_top3) when present, else every scalar metric the
    rows share. Lower is better for errors and losses.
    """
    scalars = {name: _scalar_metrics(metrics) for name, metrics in rows.items()}
    present = set().union(*[set(values) for values in scalars.values()]) if scalars else set()
    columns = [key for key in STYLE_TABLE_KEYS if key in present]
    if not columns:
        columns = sorted(key for key in present if not key.startswith("num_"))
    best = {}
    for key in columns:
        values = [values[key] for values in scalars.values() if key in values]
        if len(values) > 1:
            best[key] = min(values) if _lower_is_better(key) else max(values)
    head = "".join(f"<th>{html.escape(key)}</th>" for key in columns)
    body = []
    for name, values in scalars.items():
        cells = []
        for key in columns:
            if key not in values:
                cells.append("<td>–</td>")
                continue
            text = f"{values[key]:.4f}" if abs(values[key]) < 1 and "error" in key else f"{values[key]:.2f}"
            cells.append(f"<td><b>{text}</b></td>" if best.get(key) == values[key] else f"<td>{text}</td>")
        mark = ' class="current"' if name == highlight else ""
        body.append(f"<tr{mark}><th>{html.escape(name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>run</th>{head}</tr>{''.join(body)}</table>"


def find_comparison(run_dir: Path) -> tuple[dict[str, dict], Path] | None:
    """compare.json ({variant: {metrics, history}}) of run_dir or its parent, with the folder holding it."""
    for folder in (run_dir, run_dir.parent):
        data = _read_json(folder / "compare.json")
        if isinstance(data, dict) and data and all(isinstance(v, dict) and "metrics" in v for v in data.values()):
            return data, folder
    return None


# ---------------------------------------------------------------------------------- the report


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #1f2328; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; }
th { background: #f6f8fa; } tr th:first-child { text-align: left; }
tr.current th, tr.current td { background: #fff8c5; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #6e7781; font-style: italic; } .meta td { text-align: left; font-family: monospace; }
details { margin: 0.5em 0; }
"""


@dataclass
class _Page:
    sections: list[str] = field(default_factory=list)

    def figure(self, heading: str, png: Path | None, caption: str = "", skipped: str | None = None) -> None:
        if png is not None:
            body = f'<img src="{html.escape(png.name)}" alt="{html.escape(heading)}">'
            if caption:
                body += f"<p>{html.escape(caption)}</p>"
        else:
            body = f'<p class="note">Skipped: {html.escape(skipped or "the run holds no data for this figure")}.</p>'
        self.sections.append(f"<h2>{html.escape(heading)}</h2>{body}")


def _attempt(page: _Page, heading: str, caption: str, missing: str | None, draw) -> None:
    """Draw one figure; a missing input or a drawing error becomes a note on the page, not a failure."""
    if missing:
        page.figure(heading, None, skipped=missing)
        return
    try:
        page.figure(heading, draw(), caption)
    except (ValueError, KeyError, IndexError, OSError) as error:
        page.figure(heading, None, skipped=f"{type(error).__name__}: {error}")


def _flatten(config: dict, prefix: str = "") -> dict:
    """``{"recipe": {"lr": 0.001}}`` -> ``{"recipe.lr": 0.001}``."""
    flat: dict = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _run_meta_html(run: dict | None) -> str:
    if not run:
        return '<p class="note">No run.json in this folder: options, seed and versions unknown.</p>'
    rows = []
    for key in ("seed", "started", "python", "torch", "torchvision", "lightning", "machine", "cpu_count", "cuda",
                "train_size", "val_size"):
        if key in run:
            rows.append((key, run[key]))
    options = _flatten(run.get("config") or run.get("options") or {})  # run.json keeps the run's config
    meta = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    opts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in sorted(options.items()))
    return (f'<table class="meta">{meta}</table>'
            f'<details><summary>all {len(options)} options</summary><table class="meta">{opts}</table></details>')


def _npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError):
        return None


def _overlay_inputs(predictions: dict[str, np.ndarray], limit: int = 10):
    """Images and coordinates for the overlay figure from val_predictions.npz, worst samples first.

    Coordinates are pixels of the network input. The photo is drawn under them only where that is
    the same picture: with `boxes` (N, 4) XYXY crop boxes in the npz (cropped and resized here), or
    when the photo already has the network input's size; otherwise a plain canvas (and a note).
    """
    from PIL import Image

    pred, true, vis = predictions["pred_xy"], predictions["true_xy"], predictions["visibility"]
    sizes = predictions.get("sizes")
    paths = predictions.get("paths")
    visible = vis == VISIBLE
    error = np.where(visible, np.linalg.norm(pred - true, axis=-1), np.nan)
    with np.errstate(invalid="ignore"):
        mean_error = np.nan_to_num(np.nanmean(np.where(visible.any(axis=1, keepdims=True), error, 0.0), axis=1))
    order = np.argsort(-mean_error)[:limit]
    images, plain = [], 0
    for n in order:
        picture = None
        width, height = (int(sizes[n][0]), int(sizes[n][1])) if sizes is not None else (None, None)
        if paths is not None and width:
            try:
                with Image.open(str(paths[n])) as opened:
                    photo = opened.convert("RGB")
                    if "boxes" in predictions:
                        photo = photo.crop(tuple(float(v) for v in predictions["boxes"][n]))
                        picture = np.asarray(photo.resize((width, height)))
                    elif photo.size == (width, height):
                        picture = np.asarray(photo)
            except OSError:
                picture = None
        plain += picture is None
        images.append(picture)
    titles = [Path(str(paths[n])).name if paths is not None else f"#{n}" for n in order]
    canvas = np.asarray(sizes)[order] if sizes is not None else None
    return images, pred[order], true[order], vis[order], titles, canvas, plain


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run (or compare) directory; return the path of its index.html.

    `out` defaults to RUN_DIR/report/. For a compare folder (compare.json inside), the table has one
    row per variant and the figures are those of the best variant's own run folder when it exists.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory (expected the --out folder of a training run)")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    page = _Page()

    comparison = find_comparison(run_dir)
    figure_dir = run_dir
    highlight = None
    if comparison is not None and comparison[1] == run_dir:
        results = comparison[0]
        key = "mAP" if any("mAP" in r["metrics"] for r in results.values()) else "category_top3"
        best = max(results, key=lambda name: results[name]["metrics"].get(key, float("-inf")))
        if (run_dir / best).is_dir():
            figure_dir = run_dir / best
        highlight = best
    elif comparison is not None:
        highlight = run_dir.name

    files = RunDir(figure_dir)
    run = _read_json(files.run_json)
    metrics = _read_json(files.metrics_json) or {}
    history = _read_json(files.history_json) or []
    labels_json = _read_json(files.model_dir / "labels.json") or {}
    predictions = _npz(files.predictions_npz)
    label_names = list(labels_json.get("label_names") or (run or {}).get("labels") or [])
    display = list(labels_json.get("display_names") or label_names)
    if len(display) != len(label_names):
        display = label_names

    title = f"fashionlens report: {run_dir.name}"
    page.sections.append(f"<h1>{html.escape(title)}</h1><p>{html.escape(str(run_dir.resolve()))}"
                         + (f" (figures from variant <b>{html.escape(figure_dir.name)}</b>)" if figure_dir != run_dir else "")
                         + "</p>")
    page.sections.append("<h2>Run</h2>" + _run_meta_html(run))

    # Metric table: variants of a comparison, or this run alone.
    if comparison is not None:
        table_rows = {name: result["metrics"] for name, result in comparison[0].items()}
        caption = f"{len(table_rows)} variants from {comparison[1] / 'compare.json'}; best value of each column in bold."
    else:
        table_rows = {run_dir.name: metrics} if metrics else {}
        caption = "no compare.json beside this run: no baselines to compare with."
    if table_rows:
        page.sections.append(f"<h2>Validation metrics</h2>{metric_table_html(table_rows, highlight)}"
                             f"<p class=\"note\">{html.escape(caption)}</p>")
    else:
        page.sections.append('<h2>Validation metrics</h2><p class="note">Skipped: no metrics.json.</p>')

    variants = {name: r.get("history", []) for name, r in comparison[0].items()} if comparison else None
    steps = read_step_losses(figure_dir / "logs" / "metrics.csv")
    _attempt(page, "Training curves", "Training loss (left) and validation metrics per epoch (right).",
             None if history or len(steps[0]) or variants else "no history.json and no logs/metrics.csv",
             lambda: plot_training_curves(history, out / "training_curves.png", steps, variants))

    per_class = metrics.get("per_class_AP")
    if predictions is not None and "scores" not in predictions and SCORES_KEY["clothing"] in predictions:
        # A clothing run: its attributes get the same per-label pictures, each name tagged with its type.
        predictions = {**predictions, "scores": predictions[SCORES_KEY["clothing"]]}
        types = list(labels_json.get("attribute_types") or [])
        if len(types) == len(display):
            display = [f"{name} ({kind})" for name, kind in zip(display, types)]
        if not per_class and len(label_names) == predictions["scores"].shape[1]:
            per_class = multilabel_metrics(predictions["scores"], predictions["labels"], predictions.get("mask"),
                                           label_names=label_names)["per_class_AP"]
    _attempt(page, "Average precision per label", "Sorted best to worst; dashed line: mean over the labels shown.",
             None if isinstance(per_class, dict) and per_class else "metrics.json has no per_class_AP",
             lambda: plot_per_label_ap({display[label_names.index(k)] if k in label_names else k: v
                                        for k, v in per_class.items()}, out / "per_label_ap.png"))

    has_scores = predictions is not None and "scores" in predictions and "labels" in predictions
    _attempt(page, "Precision-recall curves", "The three best and three worst labels by AP; unknown labels excluded.",
             None if has_scores and label_names else "val_predictions.npz with scores and labels.json needed",
             lambda: plot_pr_curves(predictions["scores"], predictions["labels"], predictions.get("mask"), display,
                                    out / "pr_curves.png",
                                    {display[label_names.index(k)]: v for k, v in (per_class or {}).items()
                                     if k in label_names}))

    graph = load_graph_json(files.model_dir / "graph.json")
    if graph is None:  # a compare folder whose best variant has a linear head: the graph of an ML-GCN variant
        for candidate in sorted(Path(run_dir).glob("*/model/graph.json")):
            graph = load_graph_json(candidate)
            if graph is not None:
                break
    graph_names = list(graph.get("labels") or label_names) if isinstance(graph, dict) else label_names
    _attempt(page, "Label co-occurrence graph",
             "An arrow source → target is an edge of the ML-GCN graph: P(target | source) ≥ t; width ∝ probability.",
             None if graph is not None and graph_names else "model/graph.json missing (linear head, or not written)",
             lambda: plot_label_graph(graph_names, graph, out / "label_graph.png"))

    category_names = list(labels_json.get("category_names") or [])
    has_categories = predictions is not None and "category_logits" in predictions and "category" in predictions
    if not has_categories and has_scores and predictions["scores"].shape[1] == len(display):
        # A style run on single-label data (softmax head, class folders): its labels are categories.
        positives = (predictions["labels"] > 0.5) & (predictions.get("mask", np.ones_like(predictions["labels"])) > 0)
        single = positives.sum(axis=1) == 1
        if single.all():
            predictions = {**predictions, "category_logits": predictions["scores"],
                           "category": np.where(single, positives.argmax(axis=1), -1)}
            category_names, has_categories = list(display), True
    _attempt(page, "Category confusion matrix", "Only categories that occur (true or predicted) are shown.",
             None if has_categories else "no category predictions (style run)",
             lambda: plot_confusion_matrix(predictions["category_logits"], predictions["category"],
                                           category_names, out / "confusion_matrix.png"))

    has_landmarks = predictions is not None and all(k in predictions for k in ("pred_xy", "true_xy", "visibility"))
    if has_landmarks:
        images, pred, true, vis, titles, canvas, plain = _overlay_inputs(predictions)
        note = "The samples with the largest landmark error; circle = true, cross = predicted."
        if plain:
            note += (f" {plain} photo(s) drawn as a plain canvas: the network input was a crop the npz does not "
                     "record (no 'boxes').")
        names = list(labels_json.get("landmark_names") or LANDMARK_NAMES)[: pred.shape[1]]
        _attempt(page, "Landmarks", note, None,
                 lambda: plot_landmark_overlays(images, pred, true, vis, names, out / "landmarks.png", titles,
                                                canvas_sizes=canvas))
    else:
        page.figure("Landmarks", None, skipped="no landmark predictions in val_predictions.npz")

    gallery = None
    if predictions is not None and "paths" in predictions:
        if has_categories:
            gallery = category_gallery(predictions["category_logits"], predictions["category"],
                                       predictions["paths"], category_names)
        elif has_scores and label_names and predictions["scores"].shape[1] == len(label_names):
            gallery = style_gallery(predictions["scores"], predictions["labels"], predictions.get("mask"),
                                    predictions["paths"], display)
    _attempt(page, "Prediction gallery", "Top-3 predictions per photo: green correct, red wrong, grey unannotated.",
             None if gallery is not None else "val_predictions.npz with paths and scores needed",
             lambda: plot_prediction_gallery(gallery, out / "gallery.png"))

    document = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{_CSS}</style></head><body>{''.join(page.sections)}</body></html>\n")
    index = out / "index.html"
    index.write_text(document, encoding="utf-8")
    return index
