"""Released models on unseen catalogue photos: top-1 over the catalogue's ten classes.

    python benchmarks/release_eval.py MODEL_DIR [MODEL_DIR ...] [--data ../shared/data/clothing-dataset-small/test]

For each model, every photo of the catalogue's test split (never trained on) is predicted, and the
model's guess is its best-scored class among the ten catalogue classes it can name (a clothing
network's categories, a tagger's labels), matched by name through configs/garment-aliases.yaml.
A class the model cannot name counts as a miss for its photos (so a 7-category model is judged on
all ten). Prints a Markdown table: top-1 overall, over the classes the model knows, and per class.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def class_columns(names: list[str], classes: list[str], aliases: dict[str, str]) -> dict[str, int]:
    """Catalogue class -> the model's output index of the same name (after aliases), where it has one."""
    from fashionlens.data.merge import normalise_name

    def canonical(name: str) -> str:
        key = normalise_name(name)
        return normalise_name(aliases.get(key, name))

    index = {canonical(name): i for i, name in enumerate(names)}
    return {cls: index[canonical(cls)] for cls in classes if canonical(cls) in index}


def evaluate(model_dir: Path, data: Path, aliases: dict[str, str]) -> dict:
    from fashionlens.data import open_dataset
    from fashionlens.inference import load

    predictor = load(model_dir, batch_size=32)
    dataset = open_dataset(data, "folders")
    classes = list(dataset.label_names)
    names = predictor.category_names if predictor.task == "clothing" else predictor.label_names
    columns = class_columns(list(names), classes, aliases)
    truth, guesses = [], []
    records = dataset.records
    for start in range(0, len(records), 32):
        chunk = records[start:start + 32]
        results = predictor([r.image for r in chunk], top_k=10_000, threshold=None)
        for record, result in zip(chunk, results):
            scores = {label.name: label.score for label in
                      (result.category_top_k if predictor.task == "clothing" else result.labels)}
            known = {cls: scores[names[i]] for cls, i in columns.items()}
            truth.append(classes[int(np.argmax(record.labels))])
            guesses.append(max(known, key=known.get) if known else None)
    truth_a, guess_a = np.array(truth), np.array(guesses, dtype=object)
    hits = truth_a == guess_a
    known_rows = np.isin(truth_a, list(columns))
    return {"model": model_dir.name, "photos": len(truth), "classes_known": len(columns),
            "top1": 100.0 * hits.mean(), "top1_known": 100.0 * hits[known_rows].mean() if known_rows.any() else 0.0,
            "per_class": {cls: 100.0 * hits[truth_a == cls].mean() for cls in classes}}


def main(argv: list[str] | None = None) -> int:
    from fashionlens.data.merge import load_aliases, normalise_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/clothing-dataset-small/test")
    parser.add_argument("--aliases", type=Path, default=REPO / "configs/garment-aliases.yaml")
    args = parser.parse_args(argv)
    aliases = {normalise_name(k): v for k, v in load_aliases(args.aliases).items()}
    rows = [evaluate(model, args.data, aliases) for model in args.models]
    classes = list(rows[0]["per_class"])
    print("| model | classes it names | top-1 (10 classes) | top-1 (classes it names) | "
          + " | ".join(classes) + " |")
    print("|---|---|---|---|" + "---|" * len(classes))
    for row in rows:
        print(f"| {row['model']} | {row['classes_known']} | {row['top1']:.1f} | {row['top1_known']:.1f} | "
              + " | ".join(f"{row['per_class'][c]:.0f}" for c in classes) + " |")
    print(f"\n{rows[0]['photos']} unseen catalogue photos ({args.data})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
