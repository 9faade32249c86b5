"""A garment tagger's first tag and its attribute filter, on photos no model chose anything on.

    python benchmarks/catalogue_tags.py MODEL_DIR [MODEL_DIR...] --config configs/release-garment-tagger.yaml [--write]
    # the same on clothing-dataset-rest's photos of the ten catalogue classes (never trained on either)
    python benchmarks/catalogue_tags.py MODEL_DIR --data ../shared/data/clothing-dataset-rest \\
        --format clothing-dataset --classes dress hat longsleeve outwear pants shirt shoes shorts skirt t-shirt \\
        --catalogue-only

``--write`` first gives a model trained before fashionlens wrote them the labels.json keys ``groups``
and ``applies_to`` (fashionlens.catalogue, from the training rows of ``--config``'s split) and
rewrites its manifest; training writes them itself now.

Then, on the catalogue's unseen ``test/`` split (clothing-dataset-small, never trained on):
- **first thing read**: how often the first tag a user reads is the photo's garment, before (the
  highest-scored label, the old output) and after (the ``category``); a match is by name through
  configs/garment-aliases.yaml;
- **attribute filter**: the attribute tags marked (above their calibrated thresholds) that the filter
  removes, split by whether the photo's true garment can have them at all (sleeves on shoes: a wrong
  tag removed) or can (removed only because the category was wrong: a tag that may have been right);
  and the impossible tags (the true garment's region never had them in training) before and after.
And on the Clothing Attribute Dataset photos the model held out (its attributes are annotated): the
marked attribute tags the filter removes that were right, and those that were wrong.

With several models, each later one's category figure is also compared with the first's on the same
photos: the difference in points, its 95 % interval from resampling the photos, and how many photos
only one of the two gets right.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import Counter
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared" / "data"


def write_catalogue_labels(model_dir: Path, config_path: Path) -> None:
    from fashionlens.catalogue import catalogue_labels
    from fashionlens.config import StyleConfig, load_yaml
    from fashionlens.modeldir import write_manifest
    from fashionlens.training.data import TrainingData

    config = load_yaml(StyleConfig, config_path)
    data = TrainingData(config, (0.5,) * 3, (0.5,) * 3)
    labels_path = model_dir / "labels.json"
    labels = json.loads(labels_path.read_text())
    names = list(data.label_names)
    columns = [names.index(name) for name in labels["label_names"]]
    train, mask = data.train_label_matrix()
    labels.update(catalogue_labels(labels["label_names"], data.train_full.category_names or [],
                                   train[:, columns], mask[:, columns]))
    labels_path.write_text(json.dumps(labels, indent=2) + "\n")
    write_manifest(model_dir)
    print(f"wrote groups {list(labels['groups'])} and applies_to ({len(labels['applies_to'])} labels) "
          f"into {labels_path}")


def _marked(result) -> set[str]:
    return {label.name for label in result.labels if label.predicted}


def garment_name(name: str, aliases: dict[str, str]) -> str:
    """A garment name as the aliases file merges it (``outwear`` and ``outerwear`` compare equal)."""
    from fashionlens.data.merge import normalise_name

    return normalise_name(aliases.get(normalise_name(name), name))


def children_flags(data: Path, images: list) -> list[bool | None] | None:
    """Per photo, whether Grigorev's full release marks it as children's clothes (its ``kids`` column);
    None for a dataset without that table."""
    if not (data / "images.csv").is_file():
        return None
    with open(data / "images.csv", newline="") as table:
        kids = {row["image"]: row["kids"] == "True" for row in csv.DictReader(table)}
    return [kids.get(Path(image).stem) for image in images]


def catalogue_test(predictor, aliases: dict[str, str], data: Path, format: str = "folders",
                   classes: list[str] | None = None) -> dict:
    from fashionlens.catalogue import GARMENT_REGIONS
    from fashionlens.data import open_dataset

    def canonical(name: str) -> str:
        return garment_name(name, aliases)

    dataset = open_dataset(data, format)
    if classes:  # only the photos of these classes (by canonical name)
        keep = {canonical(name) for name in classes}
        dataset.records = [r for r in dataset.records if canonical(dataset.label_names[r.category]) in keep]
    regions = {name: region for region, names in GARMENT_REGIONS.items() for name in names}
    applies = predictor.labels.get("applies_to") or {}
    restricted = dict(predictor.applies_to)
    first_old = first_new = 0
    hits: list[bool] = []  # per photo, in the dataset's order: the category right
    per_class: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    removed_wrong = removed_maybe_right = marked_before = impossible_before = impossible_after = 0
    for start in range(0, len(dataset.records), 32):
        chunk = dataset.records[start:start + 32]
        predictor.applies_to = {}
        before = predictor([record.image for record in chunk])
        predictor.applies_to = restricted
        after = predictor([record.image for record in chunk])
        for record, old, new in zip(chunk, before, after):
            truth = dataset.label_names[record.category]
            totals[truth] += 1
            first_old += canonical(old.labels[0].name) == canonical(truth)
            hit = canonical(new.category.name) == canonical(truth)
            first_new += hit
            hits.append(bool(hit))
            per_class[truth] += hit
            true_name = next((n for n in predictor.label_names if canonical(n) == canonical(truth)), truth)
            marked_attributes = {name for name in _marked(old) if name in applies}
            marked_before += len(marked_attributes)
            impossible = {name for name in marked_attributes
                          if regions.get(true_name) is not None and true_name not in applies[name]}
            impossible_before += len(impossible)
            impossible_after += len(impossible & _marked(new))
            for name in marked_attributes - _marked(new):
                if name in impossible:
                    removed_wrong += 1
                else:
                    removed_maybe_right += 1
    photos = sum(totals.values())
    by_kids = {}
    flags = children_flags(data, [record.image for record in dataset.records])
    if flags is not None:
        for name, wanted in (("adults", False), ("children", True)):
            chosen = [hit for hit, flag in zip(hits, flags) if flag is wanted]
            by_kids[name] = {"photos": len(chosen), "category_right": 100.0 * sum(chosen) / max(1, len(chosen))}
    return {"photos": photos, "first_tag_right_before": 100.0 * first_old / photos,
            "category_right": 100.0 * first_new / photos,
            "per_class": {name: 100.0 * per_class[name] / totals[name] for name in sorted(totals)},
            "attribute_tags_marked_before": marked_before, "impossible_before": impossible_before,
            "impossible_after": impossible_after, "removed_wrong": removed_wrong,
            "removed_maybe_right": removed_maybe_right, "hits": hits, **by_kids}


def paired(first: list[bool], other: list[bool], draws: int = 2000) -> dict:
    """``other`` - ``first`` on the same photos, in points, with a 95 % interval from resampling the photos."""
    import numpy as np

    difference = np.asarray(other, dtype=float) - np.asarray(first, dtype=float)
    rows = np.random.default_rng(0).integers(0, len(difference), size=(draws, len(difference)))
    low, high = np.percentile(100.0 * difference[rows].mean(axis=1), [2.5, 97.5])
    return {"difference": 100.0 * difference.mean(), "interval": [float(low), float(high)],
            "right_only_first": int((difference < 0).sum()), "right_only_other": int((difference > 0).sum())}


def attributes_heldout(predictor, model_dir: Path) -> dict:
    """The held-out Clothing Attribute Dataset photos: marked attribute tags removed, right and wrong."""
    from fashionlens.data import open_dataset

    heldout = set((model_dir / "heldout_images.txt").read_text().split())
    dataset = open_dataset(SHARED / "clothing-attributes", "clothing-attributes")
    records = [r for r in dataset.records if Path(r.image).name in heldout]
    applies = predictor.labels.get("applies_to") or {}
    restricted = dict(predictor.applies_to)
    column = {name: j for j, name in enumerate(dataset.label_names)}
    counts: Counter[str] = Counter()
    for start in range(0, len(records), 32):
        chunk = records[start:start + 32]
        predictor.applies_to = {}
        before = predictor([r.image for r in chunk])
        predictor.applies_to = restricted
        after = predictor([r.image for r in chunk])
        for record, old, new in zip(chunk, before, after):
            for name in {n for n in _marked(old) if n in applies and n in column}:
                j = column[name]
                if not record.label_mask[j]:
                    continue
                right = bool(record.labels[j])
                counts["marked_right" if right else "marked_wrong"] += 1
                if name not in _marked(new):
                    counts["removed_right" if right else "removed_wrong"] += 1
    return {"photos": len(records), **counts}


def main(argv: list[str] | None = None) -> int:
    from fashionlens.data.merge import load_aliases, normalise_name
    from fashionlens.inference import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="one or more model directories; the later ones "
                        "are also compared with the first, photo by photo")
    parser.add_argument("--config", type=Path, default=REPO / "configs/release-garment-tagger.yaml")
    parser.add_argument("--write", action="store_true", help="write groups/applies_to into the model first")
    parser.add_argument("--data", type=Path, default=SHARED / "clothing-dataset-small/test")
    parser.add_argument("--format", default="folders", help="--data's format (clothing-dataset: -rest's layout)")
    parser.add_argument("--classes", nargs="+", help="score only the photos of these classes")
    parser.add_argument("--aliases", type=Path, default=REPO / "configs/garment-aliases.yaml")
    parser.add_argument("--catalogue-only", action="store_true", help="skip the held-out Clothing Attribute photos")
    args = parser.parse_args(argv)
    aliases = {normalise_name(k): v for k, v in load_aliases(args.aliases).items()}
    results = []
    for model in args.models:
        if args.write:
            write_catalogue_labels(model, args.config)
        predictor = load(model, batch_size=32)
        figures = {"model": str(model), "data": str(args.data),
                   "catalogue_test": catalogue_test(predictor, aliases, args.data, args.format, args.classes)}
        if not args.catalogue_only:
            figures["attributes_heldout"] = attributes_heldout(predictor, model)
        results.append(figures)
    for figures in results[1:]:
        figures["category_right_against_first"] = paired(results[0]["catalogue_test"]["hits"],
                                                         figures["catalogue_test"]["hits"])
    for figures in results:
        del figures["catalogue_test"]["hits"]
    print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
