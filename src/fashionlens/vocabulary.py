"""The vocabulary of the data, written once: landmark names and visibility codes, image file
extensions, DeepFashion attribute types and the dataset formats. Every module imports these names
from here (docs/design-contract.md describes the sample dict they appear in).
"""

from __future__ import annotations

#: The 8 DeepFashion landmarks, in the order of the annotation files and of the sample dict.
LANDMARK_NAMES: tuple[str, ...] = (
    "left_collar",
    "right_collar",
    "left_sleeve",
    "right_sleeve",
    "left_waistline",
    "right_waistline",
    "left_hem",
    "right_hem",
)
NUM_LANDMARKS = len(LANDMARK_NAMES)
#: Where each landmark slot goes when the photo is mirrored: left and right swap.
FLIP_PERMUTATION: tuple[int, ...] = (1, 0, 3, 2, 5, 4, 7, 6)

#: Landmark visibility codes of DeepFashion's list files (and of the sample dict).
VISIBLE, OCCLUDED, CUT_OFF = 0, 1, 2

#: File name endings that are read as photos (folders, globs, `predict`).
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

#: DeepFashion attribute types, in the order of their ids 1..5 in ``list_attr_cloth.txt``.
ATTRIBUTE_TYPES: tuple[str, ...] = ("texture", "fabric", "shape", "part", "style")
ATTRIBUTE_TYPE_IDS: dict[int, str] = {index + 1: name for index, name in enumerate(ATTRIBUTE_TYPES)}

#: Every dataset format `open_dataset` reads, and the subsets each task trains on.
FORMATS: tuple[str, ...] = ("deepfashion", "manifest", "jsonl", "kfashion", "clothing-attributes", "folders",
                            "clothing-co-parsing", "deepfashion-fine", "clothing-dataset")
#: The formats with their own partition (``split``): the clothing network's benchmarks, not style data.
SPLIT_FORMATS: tuple[str, ...] = ("deepfashion", "deepfashion-fine")
STYLE_FORMATS: tuple[str, ...] = tuple(name for name in FORMATS if name not in SPLIT_FORMATS)
#: The clothing network trains on typed attributes (all but folders); class folders may join them as
#: photos that only name a category.
CLOTHING_FORMATS: tuple[str, ...] = ("deepfashion", "clothing-attributes", "folders", "deepfashion-fine",
                                     "clothing-dataset")
TYPED_ATTRIBUTE_FORMATS: tuple[str, ...] = ("deepfashion", "clothing-attributes", "deepfashion-fine")
