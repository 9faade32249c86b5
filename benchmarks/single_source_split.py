"""One source of a multi-dataset run as CSV manifests with the same held-out photos.

    python benchmarks/single_source_split.py runs/release-tagger \\
        --data ../shared/data/clothing-co-parsing --format clothing-co-parsing --out /tmp/ccp-split
    fashionlens train style --data /tmp/ccp-split/train.csv --format manifest \\
        --val /tmp/ccp-split/heldout.csv --out runs/ccp-only ...

A model trained on several datasets is fairly compared with one trained on a single dataset only on
the same held-out photos. This reads the run's held-out photos (val_predictions.npz), opens the one
source again, and writes ``train.csv`` (its photos the run trained on) and ``heldout.csv`` (its
photos the run held out) in the manifest format (``?label`` = not annotated). The photos are reached
through a link ``OUT/photos`` to the source's image folder, so the manifests' paths stay inside
their own folder.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def manifest_row(image: Path, photos: Path, names: list[str], labels, mask) -> list[str]:
    cells = [name for name, on, known in zip(names, labels, mask) if known and on]
    cells += [f"?{name}" for name, known in zip(names, mask) if not known]
    return [f"photos/{image.relative_to(photos).as_posix()}", ";".join(cells)]


def main(argv: list[str] | None = None) -> int:
    from fashionlens.data import open_dataset
    from fashionlens.rundir import RunDir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the multi-dataset run directory")
    parser.add_argument("--data", type=Path, required=True, help="the one source (as the run's config gives it)")
    parser.add_argument("--format", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    heldout = {os.path.realpath(p) for p in RunDir(args.run).predictions()["paths"].tolist()}
    dataset = open_dataset(args.data, args.format)
    images = [Path(os.path.realpath(record.image)) for record in dataset.records]
    photos = Path(os.path.commonpath([str(image.parent) for image in images]))
    args.out.mkdir(parents=True, exist_ok=True)
    link = args.out / "photos"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(photos, target_is_directory=True)
    counts = {}
    for name, keep in (("train.csv", False), ("heldout.csv", True)):
        with (args.out / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "labels"])
            rows = [manifest_row(image, photos, list(dataset.label_names), record.labels, record.label_mask)
                    for image, record in zip(images, dataset.records) if (str(image) in heldout) == keep]
            writer.writerows(rows)
            counts[name] = len(rows)
    if counts["heldout.csv"] == 0:
        raise SystemExit(f"{args.run}: none of its held-out photos comes from {args.data}")
    print(f"{args.out}: train.csv {counts['train.csv']} photos, heldout.csv {counts['heldout.csv']} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
