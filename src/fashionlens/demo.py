"""`fashionlens demo`: train, evaluate and compare on real photos that ship with the project, offline.

It trains the plain CNN + linear head baseline and the ML-GCN head (label graph over GloVe vectors)
on the bundled Clothing Attribute subset (examples/clothing-attributes-mini, 495 real photos), with
the offline ImageNet EfficientNet-Lite0 weights, on one fixed split, and prints what they learned.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fashionlens.compare import comparison_table, train_variants
from fashionlens.config import DataSource, StyleConfig, override
from fashionlens.data.clothing_attributes import read_clothing_attributes
from fashionlens.explain import draw_landmarks
from fashionlens.hub import package_models_dir
from fashionlens.inference import load, read_image
from fashionlens.rundir import RunDir

DEMO_DATA = "examples/clothing-attributes-mini"


def find_demo_data() -> Path:
    here = Path(__file__).resolve()
    for root in (here.parents[2], Path.cwd()):
        candidate = root / DEMO_DATA
        if (candidate / "labels.csv").is_file():
            return candidate
    raise FileNotFoundError(f"the demo photos ({DEMO_DATA}) were not found beside the package or in the current "
                            f"folder; run the demo from a clone of the fashionlens repository")


DEMO_VARIANTS = ("linear-max", "mlgcn-glove", "mlgcn-onehot")


def run_demo(out: Path = Path("runs/demo"), epochs: int = 30, image_size: int = 224, quick: bool = False) -> int:
    data = find_demo_data()
    out = Path(out)
    if quick:
        epochs, image_size = 3, 96
    print(f"fashionlens demo: real photos from {data} (Clothing Attribute Dataset, Chen et al. ECCV 2012)")
    print(f"backbone: EfficientNet-Lite0 with offline ImageNet weights, frozen (transfer learning: its pooled "
          f"features are computed once); {image_size} px; heads trained {epochs} epochs on 75% of the photos, "
          f"evaluated on the other 25%\n")
    started = time.perf_counter()
    base = override(StyleConfig(), {
        "out": out, "data.sources": [DataSource(data, "clothing-attributes")], "data.val_split": 0.25,
        "data.limit": 96 if quick else None, "data.drop_empty_labels": quick,
        "backbone.name": "tf_efficientnet_lite0", "backbone.pretrained": "shipped", "backbone.image_size": image_size,
        "recipe.optimizer": "adamw", "recipe.lr": 1e-3, "recipe.epochs": epochs, "recipe.cache_features": True,
        "recipe.final_weights": "last", "trainer.progress": "none"})
    results = train_variants(base, list(DEMO_VARIANTS))
    print("\nHeld-out results (percent; mAP is the mean over labels of average precision):\n")
    print(comparison_table(results))
    print("\nlinear-max: CNN + linear head (the baseline). mlgcn-glove: ML-GCN, label graph over GloVe vectors of "
          "the label names. mlgcn-onehot: the same graph over one-hot label inputs. See docs/results.md for why "
          "GloVe-50d inputs trail the linear head here.")
    _print_what_it_learned(out / "mlgcn-glove", results["mlgcn-glove"]["metrics"])
    _print_released_models(data)
    _show_landmarks(data, out / "landmarks")
    elapsed = time.perf_counter() - started
    print(f"\ndemo finished in {elapsed / 60:.1f} min. Models: {out}/<variant>/model")
    print(f"try: fashionlens evaluate {out}/mlgcn-glove/model --data {data} --format clothing-attributes")
    return 0


def _print_what_it_learned(run_dir: Path, metrics: dict) -> None:
    per_class = {name: ap for name, ap in (metrics.get("per_class_AP") or {}).items() if ap is not None}
    if per_class:
        ranked = sorted(per_class.items(), key=lambda item: item[1], reverse=True)
        print("\nML-GCN: best recognised labels (AP): " + ", ".join(f"{n} {ap:.0f}" for n, ap in ranked[:5]))
        print("ML-GCN: hardest labels (AP):          " + ", ".join(f"{n} {ap:.0f}" for n, ap in ranked[-5:]))
    graph_file = RunDir(run_dir).model_dir / "graph.json"
    if graph_file.is_file():
        graph = json.loads(graph_file.read_text())
        edges = graph.get("edges", [])
        print(f"\nlabel graph from the training labels: {len(edges)} edges at t = {graph.get('t')}; for example")
        for source in ("category_dress", "necktie", "sleeve_none"):
            targets = sorted((e for e in edges if e["source"] == source),
                             key=lambda e: e.get("p_target_given_source") or 0, reverse=True)
            if targets:
                shown = ", ".join(f"{e['target']} {e['p_target_given_source']:.2f}" for e in targets[:5])
                print(f"  P(. | {source}) >= t: {shown}")
    _print_predictions(run_dir)


def _print_predictions(run_dir: Path, count: int = 3) -> None:
    """Top labels of the trained model for a few held-out photos, beside their true labels."""
    import numpy as np

    predictions = RunDir(run_dir).predictions()
    predictor = load(run_dir / "model")
    names = predictor.label_names if hasattr(predictor, "label_names") else None
    print("\nheld-out photos, top-4 predicted labels (true labels in brackets):")
    for row in range(min(count, len(predictions["paths"]))):
        path = str(predictions["paths"][row])
        result = predictor(path)
        top = ", ".join(f"{label.name} {label.score:.2f}" for label in result.labels[:4])
        truth = [names[j] for j in np.flatnonzero(predictions["labels"][row] * predictions["mask"][row])] if names \
            else []
        print(f"  {Path(path).name}: {top}  [{', '.join(truth)}]")


def released_model_dirs() -> list[Path]:
    """The released model directories: the package's own (``models/`` in a clone, package data in a wheel)."""
    root = package_models_dir()
    return sorted(d for d in root.iterdir() if (d / "config.json").is_file()) if root.is_dir() else []


def _print_released_models(data: Path, count: int = 3) -> None:
    """What the released models (trained on the full dataset) say about demo photos they never saw."""
    dataset = read_clothing_attributes(data)  # records in labels.csv order
    for model_dir in released_model_dirs():
        heldout_file = model_dir / "heldout_images.txt"
        if not heldout_file.is_file():
            continue
        heldout = set(heldout_file.read_text().split())
        records = [r for r in dataset.records if Path(r.image).name in heldout][:count]
        if not records:
            continue
        predictor = load(model_dir)
        print(f"\nreleased model {model_dir.name} ({predictor.task}; no training needed), on demo photos it was "
              f"not trained on (true labels in brackets):")
        for record, result in zip(records, predictor([r.image for r in records])):
            if result.task == "style":
                said = ", ".join(f"{label.name} {label.score:.2f}" for label in result.labels[:4])
            else:
                category = result.category_top_k[0]
                ranked = sorted(((label.score, label.name, kind) for kind, labels in result.attributes_by_type.items()
                                 for label in labels), reverse=True)
                tops = [f"{name} ({kind}) {score:.2f}" for score, name, kind in ranked[:4]]
                said = f"category {category.name} {category.score:.2f}; " + ", ".join(tops)
            truth = [name for name, y, known in zip(dataset.label_names, record.labels, record.label_mask) if y and known]
            print(f"  {Path(record.image).name}: {said}  [{', '.join(truth)}]")


def _show_landmarks(data: Path, folder: Path) -> None:
    """The released landmark model on one demo photo (a whole street photo it never saw): its garment
    type, attribute groups and landmarks, drawn into ``folder``."""
    photo = sorted((data / "images").glob("*.jpg"))[:1]
    for model_dir in released_model_dirs():
        config = json.loads((model_dir / "config.json").read_text())
        if not photo or config.get("task") != "clothing" or config.get("landmarks", "none") == "none":
            continue
        result = load(model_dir)(photo[0])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{photo[0].stem}.{model_dir.name}.png"
        draw_landmarks(read_image(photo[0]), result.landmarks).save(path)
        groups = ", ".join(f"{group} {label.name} {label.score:.2f}" for group, label in result.attribute_groups.items())
        seen = ", ".join(f"{lm.name} ({lm.x:.0f}, {lm.y:.0f})" for lm in result.landmarks if lm.visible)
        print(f"\nreleased model {model_dir.name} on {photo[0].name}: {result.category_top_k[0].name} "
              f"{result.category_top_k[0].score:.2f}; {groups}\n  landmarks: {seen or 'none visible'}\n  drawn: {path}")
