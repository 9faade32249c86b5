"""DeepFashion list files written in the benchmark's own format, and a small real benchmark built from
the real pieces in ``shared/data``.

The full Category & Attribute benchmark (289k images) is not on every machine. This folder, in the
benchmark's own format, holds what is: the 1,083 real benchmark images (16 dress products, weak
attributes parsed from the product names, split by product) and the 17 real upper-body images with
ground-truth landmarks and a category in their file name (landmark error and overlays). Images are
symlinked, not copied.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from fashionlens.data.deepfashion import CLOTHES_TYPE_NAMES, read_vocabulary
from fashionlens.errors import DataError
from fashionlens.vocabulary import ATTRIBUTE_TYPE_IDS

# landmarks.json names -> DeepFashion upper-body order (collar, sleeve, hem; clothes type 1).
UPPER_BODY_ORDER = ("left_collar", "right_collar", "left_sleeve", "right_sleeve", "left_hem", "right_hem")
LANDMARK_VAL_EVERY = 4  # every 4th landmark image goes to val, the rest to train


@dataclass
class DeepFashionRow:
    """One image to write: names are the vocabulary's own strings, the path is relative to root."""

    image_name: str
    category: str
    attributes: list[str] = field(default_factory=list)  # positives; every other attribute is -1
    unknown_attributes: list[str] = field(default_factory=list)  # written as 0
    bbox: tuple[float, float, float, float] | None = None
    split: str | None = None


def write_list_file(path: Path, header: str, lines: Sequence[str]) -> None:
    """A list file in the benchmark's format: the row count, the header, the rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{len(lines)}\n{header}\n" + "".join(line + "\n" for line in lines), encoding="utf-8")


def write_deepfashion_lists(
    root: str | Path,
    rows: Sequence[DeepFashionRow],
    vocabulary_root: str | Path | None = None,
) -> None:
    """Write ``Anno/list_{category,attr,bbox}_img.txt`` and ``Eval/list_eval_partition.txt`` under ``root``.

    The vocabulary files are copied from ``vocabulary_root/Anno`` unless ``root/Anno`` already has
    them. ``list_bbox.txt`` is written when any row has a box, the partition when any has a split.
    No landmark file is written: weak labels have no landmarks.
    """
    root = Path(root)
    anno = root / "Anno"
    anno.mkdir(parents=True, exist_ok=True)
    for name in ("list_category_cloth.txt", "list_attr_cloth.txt"):
        if not (anno / name).exists():
            if vocabulary_root is None:
                raise FileNotFoundError(f"{anno / name} is missing and no vocabulary_root was given to copy it from")
            shutil.copyfile(Path(vocabulary_root) / "Anno" / name, anno / name)
    category_names, _ = read_vocabulary(anno / "list_category_cloth.txt", CLOTHES_TYPE_NAMES)
    attribute_names, _ = read_vocabulary(anno / "list_attr_cloth.txt", ATTRIBUTE_TYPE_IDS)
    category_index = {name: i + 1 for i, name in enumerate(category_names)}
    attribute_index = {name: i for i, name in enumerate(attribute_names)}

    category_lines, attr_lines, bbox_lines, split_lines = [], [], [], []
    for row in rows:
        if row.category not in category_index:
            raise ValueError(f"{row.image_name}: category {row.category!r} is not in list_category_cloth.txt")
        values = ["-1"] * len(attribute_names)
        for names, value in ((row.unknown_attributes, "0"), (row.attributes, "1")):
            for attribute in names:
                if attribute not in attribute_index:
                    raise ValueError(f"{row.image_name}: attribute {attribute!r} is not in list_attr_cloth.txt")
                values[attribute_index[attribute]] = value
        category_lines.append(f"{row.image_name} {category_index[row.category]}")
        attr_lines.append(f"{row.image_name} " + " ".join(values))
        if row.bbox is not None:
            bbox_lines.append(f"{row.image_name} " + " ".join(f"{v:g}" for v in row.bbox))
        if row.split is not None:
            split_lines.append(f"{row.image_name} {row.split}")
    write_list_file(anno / "list_category_img.txt", "image_name  category_label", category_lines)
    write_list_file(anno / "list_attr_img.txt", "image_name  attribute_labels", attr_lines)
    if bbox_lines:
        write_list_file(anno / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2", bbox_lines)
    if split_lines:
        if len(split_lines) != len(rows):
            raise ValueError("either every row or no row must have a split")
        write_list_file(root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status", split_lines)


def weak_label_rows(deepfashion_dir: str | Path, with_bbox: bool = True, with_split: bool = True) -> list[DeepFashionRow]:
    """Rows for the real images that ship with ``weak_labels_from_product_names.csv``.

    Box = the whole image (the weak labels have none). Split by product, never within one, because
    the photos of one product are near-duplicates: products in sorted order, every 8th from the 7th
    is val and every 8th from the 8th is test (16 products: 12 train, 2 val, 2 test).
    """
    deepfashion_dir = Path(deepfashion_dir)
    csv_path = deepfashion_dir / "weak_labels_from_product_names.csv"
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader)
        entries = [(reader.line_num, row) for row in reader if row]
    products = sorted({row[0].split("/")[1] for _, row in entries if row[0].count("/") >= 2})
    split_of = {p: ("val" if i % 8 == 6 else "test" if i % 8 == 7 else "train") for i, p in enumerate(products)}
    rows = []
    for line, row in entries:
        if len(row) != 3:
            raise DataError(f"expected 3 columns (image_name, category, attributes), found {len(row)}", path=csv_path, line=line)
        name, category, attributes = row
        bbox = None
        if with_bbox:
            with Image.open(deepfashion_dir / name) as img:
                bbox = (0.0, 0.0, float(img.width), float(img.height))
        rows.append(
            DeepFashionRow(
                image_name=name,
                category=category,
                attributes=[a for a in attributes.split(";") if a],
                bbox=bbox,
                split=split_of[name.split("/")[1]] if with_split else None,
            )
        )
    return rows


def build_deepfashion_sample(shared_data: str | Path, out: str | Path, landmarks_only: bool = False) -> Path:
    """Write the sample benchmark under ``out`` (Anno/, Eval/, img/) and return ``out``.

    ``landmarks_only`` keeps just the photos with ground-truth landmarks (a landmark-localisation set).
    """
    shared_data, out = Path(shared_data).resolve(), Path(out)
    deepfashion = shared_data / "deepfashion"
    (out / "img").mkdir(parents=True, exist_ok=True)
    rows = [] if landmarks_only else weak_label_rows(deepfashion)
    for product in [] if landmarks_only else sorted((deepfashion / "img").iterdir()):
        link = out / "img" / product.name
        if not link.exists():
            os.symlink(product, link, target_is_directory=True)
    # The landmark photos carry no attribute annotation: every attribute is unknown, not negative.
    attribute_names, _ = read_vocabulary(deepfashion / "Anno" / "list_attr_cloth.txt", ATTRIBUTE_TYPE_IDS)

    annotations = json.loads((shared_data / "landmarks" / "landmarks.json").read_text())
    landmark_lines = []
    (out / "img" / "landmarks").mkdir(exist_ok=True)
    usable = [item for item in annotations["items"] if item.get("category_from_filename")]
    for k, item in enumerate(usable):
        source = shared_data / "landmarks" / item["file"]
        name = f"img/landmarks/{source.name}"
        if not (out / name).exists():
            os.symlink(source, out / name)
        split = "val" if k % LANDMARK_VAL_EVERY == LANDMARK_VAL_EVERY - 1 else "train"
        rows.append(DeepFashionRow(image_name=name, category=item["category_from_filename"],
                                   unknown_attributes=list(attribute_names), bbox=(0.0, 0.0, float(item["width"]),
                                                                   float(item["height"])), split=split))
        by_name = {landmark["name"]: landmark for landmark in item["landmarks"]}
        triples = []
        for slot in UPPER_BODY_ORDER:
            landmark = by_name[slot]
            triples += [str(int(landmark["visibility"])), f"{landmark['x']:.1f}", f"{landmark['y']:.1f}"]
        landmark_lines.append(f"{name} 1 " + " ".join(triples))
    write_deepfashion_lists(out, rows, vocabulary_root=deepfashion)
    header = "image_name  clothes_type  " + "  ".join(
        f"landmark_visibility_{k} landmark_location_x_{k} landmark_location_y_{k}" for k in range(1, 7))
    write_list_file(out / "Anno" / "list_landmarks.txt", header, landmark_lines)
    return out
