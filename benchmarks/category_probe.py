"""Do a tagger's own features name the catalogue garment better than its category does?

    pip install scikit-learn   # the one benchmark that needs it
    python benchmarks/category_probe.py models/garment-tagger-lite0

A softmax over the catalogue's ten classes (scikit-learn's logistic regression, its default C = 1,
nothing tuned) is fitted on the tagger's pooled features (``Predictor.embed``) of clothing-dataset-
small's ``train/`` photos, and scored on photos neither saw: that dataset's ``test/`` split and
clothing-dataset-rest's photos of the ten classes (adults' and children's apart, by its ``kids``
column). Beside it, the tagger's own category on the same photos, paired photo by photo (the
difference and its photo-bootstrap interval, catalogue_tags.paired). Results: docs/results.md 7a.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared" / "data"
CLASSES = ("dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt")


def photos(data: Path, format: str) -> tuple[list[Path], list[str]]:
    """The photos of the ten classes in ``data`` and their class names (the catalogue's spelling)."""
    from fashionlens.data import open_dataset

    dataset = open_dataset(data, format)
    rows = [(Path(r.image), dataset.label_names[r.category]) for r in dataset.records]
    rows = [(image, name) for image, name in rows if name in CLASSES]
    return [image for image, _ in rows], [name for _, name in rows]


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression

    from fashionlens.data.merge import load_aliases, normalise_name
    from fashionlens.inference import load

    spec = importlib.util.spec_from_file_location("catalogue_tags", REPO / "benchmarks" / "catalogue_tags.py")
    catalogue_tags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(catalogue_tags)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    args = parser.parse_args(argv)
    aliases = {normalise_name(k): v for k, v in load_aliases(REPO / "configs/garment-aliases.yaml").items()}

    def same_garment(predicted: str, true: str) -> bool:
        return catalogue_tags.garment_name(predicted, aliases) == catalogue_tags.garment_name(true, aliases)

    predictor = load(args.model, batch_size=32)
    train_images, train_names = photos(SHARED / "clothing-dataset-small/train", "folders")
    probe = LogisticRegression(max_iter=2000).fit(predictor.embed(train_images), train_names)
    figures = {"model": str(args.model), "train_photos": len(train_images)}
    for label, data, format in (("test", SHARED / "clothing-dataset-small/test", "folders"),
                                ("rest", SHARED / "clothing-dataset-rest", "clothing-dataset")):
        images, names = photos(data, format)
        probe_hits = list(probe.predict(predictor.embed(images)) == np.array(names))
        category_hits = [same_garment(result.category.name, name) for result, name in zip(predictor(images), names)]
        row = {"photos": len(images), "category": 100.0 * np.mean(category_hits), "probe": 100.0 * np.mean(probe_hits),
               "probe_against_category": catalogue_tags.paired(category_hits, probe_hits)}
        children = catalogue_tags.children_flags(data, images)
        if children is not None:
            adults = [flag is False for flag in children]
            row["adults"] = {"photos": sum(adults),
                             "category": 100.0 * np.mean([h for h, a in zip(category_hits, adults) if a]),
                             "probe": 100.0 * np.mean([h for h, a in zip(probe_hits, adults) if a])}
        figures[label] = row
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
