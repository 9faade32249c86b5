"""Plots of a run: training curves, AP per label, PR curves, the label graph, the confusion matrix,
landmark overlays and a prediction gallery.

The functions are public so that notebooks and docs can draw the same pictures. They use
matplotlib's object API (no pyplot global state), so they are safe in servers and threads.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from fashionlens.calibration import sigmoid, softmax
from fashionlens.vocabulary import CUT_OFF as ABSENT
from fashionlens.vocabulary import VISIBLE

DPI = 110
STYLE_TABLE_KEYS = ["mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CF1_top3", "OF1_top3"]


# --------------------------------------------------------------------------------------- helpers


def _save(fig: Figure, path: str | Path) -> Path:
    import matplotlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Label names are text, never TeX: a "$" in one ("$100 dress") made mathtext fail the whole figure.
    with matplotlib.rc_context({"text.parse_math": False}):
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _read_json(path: Path) -> Any | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _short(text: str, width: int = 22) -> str:
    text = str(text).replace("_", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _load_image(image: Any) -> np.ndarray | None:
    """An (H, W, 3) uint8 array from a path, a PIL image or an array; None if the file is unreadable."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        return image
    try:
        if isinstance(image, (str, Path)):
            with Image.open(image) as opened:
                return np.asarray(opened.convert("RGB"))
        return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


def _thumbnail(image: Any, size: int = 160) -> np.ndarray | None:
    from PIL import Image

    array = _load_image(image)
    if array is None:
        return None
    picture = Image.fromarray(array)
    picture.thumbnail((size, size))
    return np.asarray(picture)


def _on_square_canvas(picture: np.ndarray | None, size: int) -> np.ndarray | None:
    """Centre a thumbnail on a white size x size canvas, so every tile (and its caption) lines up."""
    if picture is None:
        return None
    if picture.ndim == 2:
        picture = np.stack([picture] * 3, axis=-1)
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    height, width = picture.shape[:2]
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top:top + height, left:left + width] = picture[..., :3]
    return canvas


# ------------------------------------------------------------------------------- training curves


def read_step_losses(csv_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of `train/loss_step` (or `train/loss`) in a Lightning CSVLogger metrics.csv."""
    steps, losses = [], []
    path = Path(csv_path)
    if not path.is_file():
        return np.zeros(0), np.zeros(0)
    with path.open(newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            value = row.get("train/loss_step") or row.get("train/loss")
            if value and row.get("step"):
                try:
                    steps.append(int(float(row["step"])))
                    losses.append(float(value))
                except ValueError:
                    continue
    return np.asarray(steps), np.asarray(losses)


def _validation_keys(history: Sequence[dict]) -> list[str]:
    present = {key for row in history for key in row}
    for group in (["mAP", "CF1", "OF1"], ["category_top3", "category_top5", "attr_top3", "attr_top5"]):
        keys = [key for key in group if key in present]
        if keys:
            return keys
    return [key for key in sorted(present) if key not in ("epoch", "seconds", "train_loss")][:4]


def plot_training_curves(history: Sequence[dict], path: str | Path,
                         step_losses: tuple[np.ndarray, np.ndarray] | None = None,
                         variants: dict[str, Sequence[dict]] | None = None, title: str | None = None) -> Path:
    """Left: training loss per step (thin) and per epoch (dots). Right: validation metrics per epoch.

    With `variants` ({name: history}), the right panel instead draws each variant's main validation
    metric (mAP or category top-3), one line per variant, so baselines and ML-GCN read side by side.
    """
    fig = Figure(figsize=(11, 4))
    loss_ax, val_ax = fig.subplots(1, 2)
    drew_loss = False
    if step_losses is not None and len(step_losses[0]):
        steps, losses = step_losses
        loss_ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="per step")
        if len(losses) >= 10:
            window = max(3, len(losses) // 25)
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            loss_ax.plot(steps[window - 1:], smooth, color="tab:blue", linewidth=1.8, label=f"mean of {window} steps")
        loss_ax.set_xlabel("step")
        drew_loss = True
    epoch_losses = [(row["epoch"] + 1, row["train_loss"]) for row in history if "train_loss" in row]
    if epoch_losses and not drew_loss:
        x, y = zip(*epoch_losses)
        loss_ax.plot(x, y, "o-", color="tab:blue", label="per epoch")
        loss_ax.set_xlabel("epoch")
        drew_loss = True
    if drew_loss:
        loss_ax.set_ylabel("training loss")
        loss_ax.legend(fontsize=9)
        loss_ax.grid(alpha=0.3)
    else:
        loss_ax.text(0.5, 0.5, "no training loss logged", ha="center", va="center", transform=loss_ax.transAxes)
        loss_ax.set_axis_off()
    loss_ax.set_title("training loss")

    if variants:
        key = "mAP" if any("mAP" in row for rows in variants.values() for row in rows) else "category_top3"
        for name, rows in variants.items():
            points = [(row["epoch"] + 1, row[key]) for row in rows if key in row]
            if points:
                x, y = zip(*points)
                val_ax.plot(x, y, "o-", markersize=3, label=name, linewidth=2.2 if "mlgcn" in name else 1.3)
        val_ax.set_ylabel(f"validation {key} (%)")
        val_ax.set_title(f"validation {key} per variant")
    else:
        for key in _validation_keys(history):
            points = [(row["epoch"] + 1, row[key]) for row in history if key in row]
            if points:
                x, y = zip(*points)
                val_ax.plot(x, y, "o-", markersize=4, label=key)
        val_ax.set_ylabel("validation metric (%)")
        val_ax.set_title("validation metrics")
    val_ax.set_xlabel("epoch")
    val_ax.grid(alpha=0.3)
    if val_ax.lines:
        val_ax.legend(fontsize=9)
        val_ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------- per-label AP


def sort_per_label_ap(per_class_ap: dict[str, float | None]) -> list[tuple[str, float]]:
    """(label, AP) pairs, highest AP first; labels without an AP (no known positive) are left out.

    Ties keep the labels' alphabetical order, so the picture does not change between runs.
    """
    rows = [(str(name), float(ap)) for name, ap in per_class_ap.items()
            if ap is not None and not (isinstance(ap, float) and math.isnan(ap))]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def plot_per_label_ap(per_class_ap: dict[str, float | None], path: str | Path, max_labels: int = 60,
                      title: str = "average precision per label") -> Path:
    """Horizontal bars, best label at the top, coloured red (low) to green (high) AP, mean AP dashed.

    With more than `max_labels` labels only the best and worst `max_labels // 2` are drawn (DeepFashion
    has 1000 attributes); the title says so.
    """
    rows = sort_per_label_ap(per_class_ap)
    skipped = len(per_class_ap) - len(rows)
    if not rows:
        raise ValueError("per_class_AP holds no label with an AP (no label had a known positive)")
    mean = float(np.mean([ap for _, ap in rows]))
    shown = rows
    if len(rows) > max_labels:
        half = max_labels // 2
        shown = rows[:half] + [("…", float("nan"))] + rows[-half:]
        title = f"{title} (best and worst {half} of {len(rows)})"
    names = [_short(name, 28) for name, _ in shown]
    values = np.array([ap for _, ap in shown])
    scale = 100.0 if np.nanmax(values) > 1.0 else 1.0
    fig = Figure(figsize=(7.5, 1.2 + 0.24 * len(shown)))
    ax = fig.subplots()
    positions = np.arange(len(shown))[::-1]
    colours = colormaps["RdYlGn"](np.nan_to_num(values / scale, nan=0.5) * 0.85 + 0.075)
    ax.barh(positions, np.nan_to_num(values), color=colours, edgecolor="0.3", linewidth=0.4)
    for y, value in zip(positions, values):
        if not np.isnan(value):
            ax.text(value + scale * 0.01, y, f"{value:.1f}" if scale == 100 else f"{value:.2f}",
                    va="center", fontsize=8)
    ax.axvline(mean, color="0.25", linestyle="--", linewidth=1)
    ax.text(mean, -0.6, f" mean {mean:.1f}", fontsize=8, va="bottom", ha="right", color="0.25",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.8})
    ax.set_yticks(positions, names, fontsize=9)
    ax.set_xlim(0, scale * 1.08)
    ax.set_ylim(-0.8, len(shown) - 0.2)
    ax.set_xlabel("AP (%)" if scale == 100 else "AP")
    if skipped:
        title += f"; {skipped} label(s) without positives left out"
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------- PR curves


def precision_recall_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) down the ranking, from the highest score.

    Tied scores are ranked pessimistically, negatives before positives: the convention of
    ``metrics.multilabel_metrics``' AP, so the area under this curve (``sum(diff(recall) *
    precision[1:])``) is that AP. Both start at recall 0 (precision 1), so the curve is anchored on
    the left edge, and end at the rank that reaches the final recall.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive).astype(bool)
    order = np.lexsort((positive, -scores))  # by score, descending; within a tie, negatives first
    hits = np.cumsum(positive[order])
    predicted = np.arange(1, len(hits) + 1)
    total = max(int(positive.sum()), 1)
    # Ranks past the one that first reaches full recall only add negatives: stop there.
    stop = int(np.argmax(hits)) + 1 if len(hits) else 0
    recall = np.r_[0.0, hits[:stop] / total]
    precision = np.r_[1.0, hits[:stop] / predicted[:stop]]
    return recall, precision


def plot_pr_curves(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, label_names: Sequence[str],
                   path: str | Path, per_class_ap: dict[str, float | None] | None = None, count: int = 3) -> Path:
    """Precision-recall curves of the `count` best and `count` worst labels (unknown entries excluded).

    Labels are ranked by `per_class_ap` when given (the run's own metric), else by the area under
    the curve drawn here.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0.5
    known = np.ones_like(labels) if mask is None else np.asarray(mask) > 0.5
    curves: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    for j in range(scores.shape[1]):
        column_known = known[:, j]
        if not labels[column_known, j].any():
            continue
        recall, precision = precision_recall_curve(scores[column_known, j], labels[column_known, j])
        ap = None if per_class_ap is None else per_class_ap.get(str(label_names[j]))
        if ap is None:
            ap = float(np.sum(np.diff(recall) * precision[1:])) * 100.0
        curves[j] = (recall, precision, float(ap))
    if not curves:
        raise ValueError("no label has a known positive: no precision-recall curve to draw")
    ranked = sorted(curves, key=lambda j: -curves[j][2])
    best = ranked[:count]
    worst = [j for j in ranked[::-1][:count] if j not in best][::-1]
    fig = Figure(figsize=(11, 4.4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, chosen, name in ((axes[0], best, f"best {len(best)} labels"), (axes[1], worst, f"worst {len(worst)} labels")):
        for j in chosen:
            recall, precision, ap = curves[j]
            positives = int(labels[known[:, j], j].sum())
            ax.step(recall, precision, where="pre", linewidth=2,
                    label=f"{_short(label_names[j], 26)}  AP {ap:.1f}  ({positives} pos.)")
        ax.set_title(name)
        ax.set_xlabel("recall")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        if chosen:
            ax.legend(fontsize=8.5, loc="lower left")
    axes[0].set_ylabel("precision")
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------ label graph


def circular_layout(count: int, radius: float = 1.0) -> np.ndarray:
    """(count, 2) positions evenly spaced on a circle of `radius` round the origin.

    The first node sits at the top; the others follow clockwise (the reading order of a clock face).
    """
    angles = np.pi / 2 - 2 * np.pi * np.arange(count) / max(count, 1)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def graph_edges(label_names: Sequence[str], adjacency_or_edges: Any) -> list[tuple[int, int, float]]:
    """Normalise a label graph to (source, target, weight) index triples, self-loops dropped.

    Accepts a (C, C) matrix (entry [i, j] = P(L_j | L_i); zeros are no edge), an iterable of
    (source, target, weight) with indices or label names, the `edges` list of graph.json
    (dicts with source, target, p_target_given_source or weight), or the graph.json dict itself.
    """
    position = {str(name): k for k, name in enumerate(label_names)}

    def index(node: Any) -> int:
        if isinstance(node, (int, np.integer)):
            return int(node)
        if str(node) not in position:
            raise ValueError(f"label graph: edge names label {node!r}, which is not among the {len(position)} labels")
        return position[str(node)]

    if isinstance(adjacency_or_edges, str):
        adjacency_or_edges = json.loads(adjacency_or_edges)
    if isinstance(adjacency_or_edges, dict):
        if "edges" in adjacency_or_edges:
            adjacency_or_edges = adjacency_or_edges["edges"]
        else:
            adjacency_or_edges = adjacency_or_edges.get("adjacency", [])
    if isinstance(adjacency_or_edges, np.ndarray) or (
            isinstance(adjacency_or_edges, list) and adjacency_or_edges
            and isinstance(adjacency_or_edges[0], list) and len(adjacency_or_edges) == len(label_names)
            and len(adjacency_or_edges[0]) == len(label_names)):
        matrix = np.asarray(adjacency_or_edges, dtype=np.float64)
        if matrix.shape != (len(label_names), len(label_names)):
            raise ValueError(f"label graph: adjacency is {matrix.shape}, expected ({len(label_names)}, {len(label_names)})")
        return [(int(i), int(j), float(matrix[i, j])) for i, j in zip(*np.nonzero(matrix)) if i != j]
    triples = []
    for edge in adjacency_or_edges:
        if isinstance(edge, dict):
            weight = edge.get("p_target_given_source")
            if weight is None:
                weight = edge.get("weight", 1.0)
            triples.append((index(edge["source"]), index(edge["target"]), float(weight)))
        else:
            source, target, *rest = edge
            triples.append((index(source), index(target), float(rest[0]) if rest else 1.0))
    return [(i, j, w) for i, j, w in triples if i != j]


def plot_label_graph(label_names: Sequence[str], adjacency_or_edges: Any, path: str | Path,
                     title: str = "label co-occurrence graph", max_edges: int = 400) -> Path:
    """The label graph on a circle: an arrow source -> target for P(target | source), width ∝ probability.

    Arrows bend (to the right of their direction), so i -> j and j -> i stay apart. Node size grows
    with the number of edges a label takes part in; labels are written outward along the radius.
    Only the `max_edges` strongest edges are drawn. Accepts what :func:`graph_edges` accepts.
    """
    names = [str(name) for name in label_names]
    count = len(names)
    edges = sorted(graph_edges(names, adjacency_or_edges), key=lambda edge: edge[2])[-max_edges:]
    xy = circular_layout(count)
    side = float(np.clip(5.5 + count * 0.09, 6.5, 11.0))
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    ax.set_aspect("equal")
    ax.set_axis_off()
    weights = np.array([w for _, _, w in edges]) if edges else np.zeros(0)
    top = max(float(weights.max()) if len(weights) else 1.0, 1e-9)
    low = float(weights.min()) if len(weights) else 0.0
    norm = Normalize(vmin=min(low, top * 0.999), vmax=top)
    cmap = colormaps["viridis_r"]
    for i, j, w in edges:
        arrow = FancyArrowPatch(xy[i], xy[j], connectionstyle="arc3,rad=0.18", arrowstyle="-|>",
                                mutation_scale=7 + 5 * w / top, linewidth=0.4 + 3.2 * w / top,
                                color=cmap(norm(w)), alpha=0.35 + 0.5 * w / top, shrinkA=6, shrinkB=6, zorder=1)
        ax.add_patch(arrow)
    degree = np.zeros(count)
    for i, j, _ in edges:
        degree[i] += 1
        degree[j] += 1
    sizes = 30 + 120 * degree / max(degree.max(), 1)
    ax.scatter(xy[:, 0], xy[:, 1], s=sizes, color="tab:orange", edgecolor="0.2", linewidth=0.6, zorder=3)
    fontsize = float(np.clip(14 - count * 0.12, 7, 11))
    for k, name in enumerate(names):
        angle = math.degrees(math.atan2(xy[k, 1], xy[k, 0]))
        right_side = -90 <= angle <= 90
        ax.text(xy[k, 0] * 1.06, xy[k, 1] * 1.06, _short(name, 24), rotation=angle if right_side else angle - 180,
                rotation_mode="anchor", ha="left" if right_side else "right", va="center", fontsize=fontsize,
                zorder=4)
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.42, 1.42)
    if edges:
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.5, pad=0.02)
        bar.set_label("P(target | source)")
    else:
        ax.text(0, 0, "no edges (identity graph)", ha="center", va="center", fontsize=12, color="0.4")
    ax.set_title(f"{title}: {count} labels, {len(edges)} edges", fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def load_graph_json(path: str | Path) -> dict | None:
    """graph.json as a dict, or None when missing or unreadable.

    `LabelGraph.to_json()` returns a JSON string and the model directory writes it as JSON, so the file
    may hold that string encoded once more; both forms are accepted.
    """
    data = _read_json(Path(path))
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            return None
    return data if isinstance(data, (dict, list)) else None


# ------------------------------------------------------------------------------ confusion matrix


def plot_confusion_matrix(category_logits: np.ndarray, category: np.ndarray, category_names: Sequence[str],
                          path: str | Path) -> Path:
    """Row-normalised confusion matrix (true rows, predicted columns) of the categories that occur.

    Rows are the true categories of the samples; columns add the categories that are only ever
    predicted. Samples without a category (-1) are left out. Cells show the row percentage, with the count when space allows.
    """
    logits = np.asarray(category_logits)
    true = np.asarray(category).astype(int)
    keep = true >= 0
    true, predicted = true[keep], logits[keep].argmax(axis=1)
    if not len(true):
        raise ValueError("no sample has a category")
    # Rows: the true categories present; columns: those plus any category only ever predicted.
    row_ids = np.unique(true)
    column_ids = np.r_[row_ids, np.setdiff1d(np.unique(predicted), row_ids)]
    row_at = {c: k for k, c in enumerate(row_ids)}
    column_at = {c: k for k, c in enumerate(column_ids)}
    counts = np.zeros((len(row_ids), len(column_ids)), dtype=int)
    for t, p in zip(true, predicted):
        counts[row_at[t], column_at[p]] += 1
    rows = counts.sum(axis=1, keepdims=True)
    rates = counts / rows

    def label(c: int) -> str:
        return _short(category_names[c] if c < len(category_names) else str(c), 20)

    dense = max(len(row_ids), len(column_ids)) > 12
    fig = Figure(figsize=(float(np.clip(2.8 + 0.42 * len(column_ids), 5, 18)),
                          float(np.clip(2.2 + 0.42 * len(row_ids), 3.5, 16))))
    ax = fig.subplots()
    image = ax.imshow(rates * 100, cmap="Blues", vmin=0, vmax=100)
    ax.set_xticks(range(len(column_ids)), [label(c) for c in column_ids], rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(len(row_ids)), [f"{label(c)} ({int(r)})" for c, r in zip(row_ids, rows[:, 0])], fontsize=9)
    ax.set_xlabel("predicted category")
    ax.set_ylabel("true category (samples)")
    if len(column_ids) <= 30:
        for r in range(len(row_ids)):
            for c in range(len(column_ids)):
                if counts[r, c]:
                    ax.text(c, r, f"{rates[r, c] * 100:.0f}" if dense else f"{rates[r, c] * 100:.0f}%\n{counts[r, c]}",
                            ha="center", va="center", fontsize=7 if dense else 8,
                            color="white" if rates[r, c] > 0.55 else "black")
    accuracy = float((true == predicted).mean()) * 100
    ax.set_title(f"category confusion (row %), top-1 accuracy {accuracy:.1f}% on {len(true)} samples", fontsize=11)
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of true category")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------------- landmarks


def plot_landmark_overlays(images: Sequence[Any], pred_xy: np.ndarray, true_xy: np.ndarray, visibility: np.ndarray,
                           names: Sequence[str], path: str | Path, titles: Sequence[str] | None = None,
                           columns: int = 5, canvas_sizes: np.ndarray | None = None) -> Path:
    """A grid of photos: true landmarks as circles, predicted as crosses, each pair joined by a line.

    `images`: paths, PIL images, arrays, or None (a plain canvas of `canvas_sizes[k]` = (W, H) is drawn
    instead). `pred_xy`, `true_xy`: (N, K, 2) pixels of those images; `visibility`: (N, K), 0 visible
    (filled circle), 1 occluded (hollow circle), 2 absent (not drawn). One colour per landmark name.
    The title of each tile gives the mean pixel error over its visible landmarks.
    """
    pred_xy = np.asarray(pred_xy, dtype=np.float64)
    true_xy = np.asarray(true_xy, dtype=np.float64)
    visibility = np.asarray(visibility)
    count = len(images)
    if not count:
        raise ValueError("no images to draw landmarks on")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(2.4 * columns, 2.65 * rows + 0.6))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    palette = colormaps["tab10"] if len(names) <= 10 else colormaps["tab20"]
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= count:
            continue
        picture = _load_image(images[k]) if images[k] is not None else None
        if picture is None:
            width, height = (canvas_sizes[k] if canvas_sizes is not None else (true_xy[k].max(axis=0) * 1.1 + 1))
            picture = np.full((int(height), int(width), 3), 235, dtype=np.uint8)
        ax.imshow(picture)
        errors = []
        for m in range(len(names)):
            state = int(visibility[k, m])
            if state == ABSENT or not np.all(np.isfinite(true_xy[k, m])):
                continue
            colour = palette(m % palette.N)
            (tx, ty), (px, py) = true_xy[k, m], pred_xy[k, m]
            ax.plot([tx, px], [ty, py], color=colour, linewidth=1.3, alpha=0.9)
            ax.plot(tx, ty, "o", markersize=7, markeredgewidth=1.6, markeredgecolor=colour,
                    markerfacecolor=colour if state == VISIBLE else "none")
            ax.plot(px, py, "x", markersize=7, markeredgewidth=2.2, color="white")
            ax.plot(px, py, "x", markersize=6, markeredgewidth=1.4, color=colour)
            if state == VISIBLE:
                errors.append(math.hypot(tx - px, ty - py))
        label = _short(titles[k], 20) if titles is not None else f"#{k}"
        error = f"{np.mean(errors):.1f}px" if errors else "none visible"
        ax.set_title(f"{label} · err {error}", fontsize=8, pad=3)
        ax.set_xlim(0, picture.shape[1])
        ax.set_ylim(picture.shape[0], 0)
    from matplotlib.lines import Line2D

    drawn = (visibility[:count] != ABSENT).any(axis=0)
    handles = [Line2D([], [], color=palette(m % palette.N), marker="o", linestyle="-", label=_short(name, 18))
               for m, name in enumerate(names) if drawn[m]]
    handles += [Line2D([], [], color="0.3", marker="o", linestyle="", label="true (filled: visible, hollow: occluded)",
                       markerfacecolor="none"),
                Line2D([], [], color="0.3", marker="x", linestyle="", label="predicted")]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (2.65 * rows + 0.6), 1, 1), h_pad=0.6, w_pad=0.4)
    return _save(fig, path)


# ----------------------------------------------------------------------------------- gallery


@dataclass
class GalleryItem:
    """One thumbnail of the prediction gallery."""

    path: str
    confidence: float
    predicted: list[tuple[str, float, bool | None]]  # (label, probability, correct? None = unknown)
    true: list[str]


@dataclass
class Gallery:
    sections: dict[str, list[GalleryItem]] = field(default_factory=dict)


def style_gallery(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None, paths: Sequence[str],
                  label_names: Sequence[str], per_section: int = 6) -> Gallery:
    """Multi-label samples for the gallery, judged by each sample's top-scoring label.

    Most confident correct: top label is a positive, highest probability first. Least confident: the
    lowest top probability. Errors: top label is a known negative, most confident first.
    """
    probabilities = sigmoid(scores)
    positive = np.asarray(labels) > 0.5
    known = np.ones_like(positive) if mask is None else np.asarray(mask) > 0.5
    top = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(top)), top]
    correct = positive[np.arange(len(top)), top] & known[np.arange(len(top)), top]
    wrong = ~positive[np.arange(len(top)), top] & known[np.arange(len(top)), top]

    def item(n: int) -> GalleryItem:
        order = np.argsort(-probabilities[n])[:3]
        predicted = [(label_names[j], float(probabilities[n, j]), bool(positive[n, j]) if known[n, j] else None)
                     for j in order]
        return GalleryItem(str(paths[n]), float(confidence[n]), predicted,
                           [label_names[j] for j in np.nonzero(positive[n] & known[n])[0]])

    indices = np.arange(len(top))
    return Gallery({
        "most confident correct": [item(n) for n in indices[correct][np.argsort(-confidence[correct])][:per_section]],
        "least confident": [item(n) for n in np.argsort(confidence)[:per_section]],
        "errors (most confident first)": [item(n) for n in indices[wrong][np.argsort(-confidence[wrong])][:per_section]],
    })


def category_gallery(category_logits: np.ndarray, category: np.ndarray, paths: Sequence[str],
                     category_names: Sequence[str], per_section: int = 6) -> Gallery:
    """The gallery for clothing runs, judged by the top-1 category."""
    probabilities = softmax(category_logits)
    true = np.asarray(category).astype(int)
    top = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(top)), top]
    has = true >= 0
    correct, wrong = has & (top == true), has & (top != true)

    def name(c: int) -> str:
        return category_names[c] if 0 <= c < len(category_names) else str(c)

    def item(n: int) -> GalleryItem:
        order = np.argsort(-probabilities[n])[:3]
        predicted = [(name(c), float(probabilities[n, c]), bool(c == true[n]) if has[n] else None) for c in order]
        return GalleryItem(str(paths[n]), float(confidence[n]), predicted, [name(true[n])] if has[n] else [])

    indices = np.arange(len(top))
    return Gallery({
        "most confident correct": [item(n) for n in indices[correct][np.argsort(-confidence[correct])][:per_section]],
        "least confident": [item(n) for n in np.argsort(confidence)[:per_section]],
        "errors (most confident first)": [item(n) for n in indices[wrong][np.argsort(-confidence[wrong])][:per_section]],
    })


def plot_prediction_gallery(gallery: Gallery, path: str | Path, thumbnail: int = 160) -> Path:
    """One row per gallery section: thumbnails with the top-3 predictions (green right, red wrong,
    grey unknown) and the true labels underneath."""
    sections = [(name, items) for name, items in gallery.sections.items()]
    columns = max([len(items) for _, items in sections] + [1])
    fig = Figure(figsize=(2.35 * columns, 3.0 * len(sections)))
    axes = np.asarray(fig.subplots(len(sections), columns, squeeze=False))
    colours = {True: "#1a7f37", False: "#cf222e", None: "0.45"}
    for r, (name, items) in enumerate(sections):
        for c in range(columns):
            ax = axes[r, c]
            ax.set_axis_off()
            if c == 0:
                ax.set_title(f"{name}" + ("" if items else ": none"), loc="left", fontsize=11,
                             fontweight="bold", pad=8)
            if c >= len(items):
                continue
            entry = items[c]
            picture = _on_square_canvas(_thumbnail(entry.path, thumbnail), thumbnail)
            if picture is None:
                picture = np.full((thumbnail, thumbnail, 3), 220, dtype=np.uint8)
                ax.text(0.5, 0.5, "image\nunreadable", transform=ax.transAxes, ha="center", va="center", fontsize=8)
            ax.imshow(picture)
            lines = [(f"{_short(label, 16)} {p:.2f}", colours[ok]) for label, p, ok in entry.predicted]
            truth = ", ".join(_short(t, 13) for t in entry.true[:2]) + (" …" if len(entry.true) > 2 else "")
            lines.append((f"true: {truth or '—'}", "0.15"))
            for k, (text, colour) in enumerate(lines):
                # Captions in points below the tile, so their spacing does not depend on the tile's size.
                ax.annotate(text, xy=(0.0, 0.0), xycoords="axes fraction", xytext=(0, -3 - 11 * k),
                            textcoords="offset points", va="top", ha="left", fontsize=8, color=colour,
                            fontweight="bold" if k == 0 else "normal", annotation_clip=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / fig.get_figheight(), bottom=0.9 / fig.get_figheight(),
                        hspace=0.75, wspace=0.08)
    return _save(fig, path)


# ------------------------------------------------------------------------------ metric table


