"""A small real DeepFashion-layout benchmark built from the real pieces in ``shared/data``.

The full Category & Attribute benchmark (289k images) is not on every machine. This folder, in the
benchmark's own format, holds what is: the 1,083 real benchmark images (16 dress products, weak
attributes parsed from the product names, split by product) and the 17 real upper-body images with
ground-truth landmarks and a category in their file name (landmark error and overlays). Images are
symlinked, not copied.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fashionlens.data.deepfashion import (
    DeepFashionRow,
    read_vocabulary,
    weak_label_rows,
    write_deepfashion_lists,
    write_list_file,
)
from fashionlens.vocabulary import ATTRIBUTE_TYPE_IDS

# landmarks.json names -> DeepFashion upper-body order (collar, sleeve, hem; clothes type 1).
UPPER_BODY_ORDER = ("left_collar", "right_collar", "left_sleeve", "right_sleeve", "left_hem", "right_hem")
LANDMARK_VAL_EVERY = 4  # every 4th landmark image goes to val, the rest to train


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
