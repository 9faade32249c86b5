"""K-Fashion (AI-Hub) style labels: one JSON per image, Korean keys, 23 styles.

The style sits at ``데이터셋 정보 → 데이터셋 상세설명 → 라벨링 → 스타일``, a list of
``{"스타일": ..., "서브스타일": ...}`` objects; style and sub-style both count as positives. An entry
of ``[{}]`` means nobody annotated a style: that image is all-unknown (masked), never 23 negatives,
and it is listed in the dataset's ``notes``.

The image is the JSON's stem with ``.jpg`` (or another image extension) beside it, or else the file
named by ``이미지 정보 → 이미지 파일명``. Files ending in ``_extracted.json`` are a derived summary
written by AI-Hub's example script; they are not annotations and are ignored (with a note).

The files are parsed one by one in this process, and the parse is kept in the annotation cache
(``fashionlens.data.cache``) while every JSON file keeps its path, size and ``mtime``. The image
beside each JSON is looked up in its folder's listing on every read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fashionlens.data.base import FashionDataset, LazyRows, Record, force_vocabulary
from fashionlens.data.cache import AnnotationCache
from fashionlens.errors import DataError
from fashionlens.vocabulary import IMAGE_EXTENSIONS

# K-Fashion's 23 styles, in the order the dataset documents them.
STYLES_KO_EN = {
    "클래식": "classic",
    "프레피": "preppy",
    "매니시": "mannish",
    "톰보이": "tomboy",
    "페미닌": "feminine",
    "로맨틱": "romantic",
    "섹시": "sexy",
    "히피": "hippie",
    "웨스턴": "western",
    "오리엔탈": "oriental",
    "모던": "modern",
    "소피스트케이티드": "sophisticated",
    "아방가르드": "avant-garde",
    "컨트리": "country",
    "리조트": "resort",
    "젠더리스": "genderless",
    "스포티": "sporty",
    "레트로": "retro",
    "키치": "kitsch",
    "힙합": "hip-hop",
    "펑크": "punk",
    "밀리터리": "military",
    "스트리트": "street",
}
STYLE_NAMES = tuple(STYLES_KO_EN.values())
GARMENT_KO_EN = {"아우터": "outer", "상의": "top", "하의": "bottom", "원피스": "onepiece"}
_EXTRACTED_SUFFIX = "_extracted.json"
_STYLE_INDEX = {korean: i for i, korean in enumerate(STYLES_KO_EN)}
# Bump when what the reader keeps in the cache changes: older cache files are then ignored.
READER_VERSION = 2
# One garment's box: its English name and (x1, y1, x2, y2).
GarmentBox = tuple[str, tuple[float, float, float, float]]


def _get(node: Any, keys: Sequence[str], path: str | Path) -> Any:
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise DataError(f"expected the key path {' → '.join(keys[: depth + 1])}, it is missing", path=path)
        node = node[key]
    return node


def garment_boxes(document: dict[str, Any], path: str | Path) -> list[GarmentBox]:
    """Per-garment boxes (``렉트좌표``: X, Y, width, height) as ``(garment, xyxy)``; empty ``{}`` skipped."""
    rects = _get(document, ("데이터셋 정보", "데이터셋 상세설명", "렉트좌표"), path)
    boxes = []
    for garment, entries in rects.items():
        for entry in entries if isinstance(entries, list) else []:
            if not entry:
                continue
            try:
                x, y, w, h = (float(entry[k]) for k in ("X좌표", "Y좌표", "가로", "세로"))
            except (KeyError, TypeError, ValueError):
                raise DataError(f"expected X좌표, Y좌표, 가로, 세로 numbers in the {garment} box, found {entry!r}", path=path) from None
            boxes.append((GARMENT_KO_EN.get(garment, garment), (x, y, x + w, y + h)))
    return boxes


def _style_indices(document: Any, path: str | Path) -> list[int]:
    styles = _get(document, ("데이터셋 정보", "데이터셋 상세설명", "라벨링", "스타일"), path)
    if not isinstance(styles, list):
        raise DataError(f"expected 스타일 to be a list of objects, found {styles!r}", path=path)
    found = []
    for entry in styles:
        if not isinstance(entry, dict):
            raise DataError(f"expected each 스타일 entry to be an object, found {entry!r}", path=path)
        for key in ("스타일", "서브스타일"):
            value = entry.get(key)
            if value in (None, ""):
                continue
            if value not in STYLES_KO_EN:
                raise DataError(
                    f"unknown {key} value {value!r}: expected one of the 23 K-Fashion styles ({', '.join(STYLES_KO_EN)})",
                    path=path,
                )
            found.append(_STYLE_INDEX[value])
    return found


def _load_document(path: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"expected a JSON document, found invalid JSON ({exc.msg})", path=path, line=exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"expected UTF-8 JSON, found undecodable bytes ({exc})", path=path) from None
    except RecursionError:
        raise DataError("expected a K-Fashion JSON document, found JSON nested too deeply to parse", path=path) from None


def _parse(root: Path, files: Sequence[str]) -> dict[str, Any]:
    """The cache's columns for ``files`` (relative to ``root``), parsed in order; the first bad file's DataError."""
    labels = np.zeros((len(files), len(STYLE_NAMES)), dtype=np.uint8)
    labeled = np.zeros(len(files), dtype=np.uint8)  # 0 where 스타일 is [{}]
    named, boxes = [], []
    for row, name in enumerate(files):
        path = os.path.join(root, name)
        with open(path, "rb") as handle:
            document = _load_document(path, handle.read())
        found = _style_indices(document, path)
        labels[row, found] = 1
        labeled[row] = bool(found)
        info = document.get("이미지 정보", {})
        image_name = info.get("이미지 파일명") if isinstance(info, dict) else None
        named.append(image_name if isinstance(image_name, str) else "")
        boxes.append([{"garment": garment, "box": list(box)} for garment, box in garment_boxes(document, path)])
    box_type = pa.list_(pa.struct([("garment", pa.string()), ("box", pa.list_(pa.float64()))]))
    return {"labels": labels, "labeled": labeled, "named_images": pa.array(named, type=pa.string()),
            "boxes": pa.array(boxes, type=box_type)}


def _images(root: Path, files: Sequence[str], named: pa.Array) -> list[str]:
    """Each JSON's image: the stem's image, else the file named by 이미지 파일명 beside the JSON, else
    (neither exists) the stem's .jpg, so that the image error names the expected file."""
    listings: dict[str, set[str]] = {}
    images = []
    for row, name in enumerate(files):
        folder, _, file = name.rpartition("/")
        if folder not in listings:
            listings[folder] = set(os.listdir(os.path.join(root, folder)))
        stem = file[:-5]
        image = next((stem + e for extension in IMAGE_EXTENSIONS for e in (extension, extension.upper())
                      if stem + e in listings[folder]), None)
        if image is None:
            other = named[row].as_py()
            image = other if other and other in listings[folder] else stem + ".jpg"
        images.append(f"{folder}/{image}" if folder else image)
    return images


def read_kfashion(
    path_or_folder: str | Path,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
    cache: bool = True,
) -> FashionDataset:
    """Read one K-Fashion JSON or every ``*.json`` under a folder (recursively, in ``sorted(rglob)`` order).

    Labels: the 23 styles (always all 23, in ``STYLE_NAMES`` order unless ``label_names`` forces
    one). ``dataset.garment_boxes[i]`` holds record i's per-garment boxes. ``cache=False`` neither
    reads nor writes the annotation cache.
    """
    path_or_folder = Path(path_or_folder)
    if path_or_folder.is_dir():
        root = path_or_folder
        top = os.path.join(root, "")  # os.walk, like Path.rglob, does not follow links to folders
        json_files = sorted((os.path.join(folder, name)[len(top) :] for folder, _, names in os.walk(root)
                             for name in names if name.endswith(".json")), key=lambda name: name.split("/"))
    elif path_or_folder.exists():
        root, json_files = path_or_folder.parent, [path_or_folder.name]
    else:
        raise DataError("expected a K-Fashion JSON file or a folder of them, found nothing", path=path_or_folder)
    notes: list[str] = []
    files = [name for name in json_files if not name.endswith(_EXTRACTED_SUFFIX)]
    if len(files) < len(json_files):
        notes.append(f"ignored {len(json_files) - len(files)} derived *{_EXTRACTED_SUFFIX} file(s) (not annotations)")
    if not files:
        raise DataError("expected K-Fashion *.json annotation files, found none", path=path_or_folder)

    store = AnnotationCache("kfashion", root, [os.path.join(root, name) for name in files], READER_VERSION, enabled=cache)
    cached = store.load()
    if cached is not None:
        columns = cached[1]
    else:
        columns = _parse(root, files)
        note = store.store({}, columns)
        notes += [note] if note else []
    labeled = columns["labeled"].astype(bool)
    mask = np.repeat(labeled[:, None], len(STYLE_NAMES), axis=1).astype(np.uint8)
    unlabeled = np.flatnonzero(~labeled)
    if len(unlabeled):
        shown = ", ".join(files[i].rpartition("/")[2] for i in unlabeled[:10].tolist()) + (" ..." if len(unlabeled) > 10 else "")
        notes.append(f"{len(unlabeled)} of {len(files)} image(s) have no style annotated (all 23 labels unknown): {shown}")

    labels, mask, vocabulary = force_vocabulary(columns["labels"], mask, STYLE_NAMES, label_names, path_or_folder,
                                                absent_is_unknown=True)
    images = _images(root, files, columns["named_images"])

    def record(row: int) -> Record:
        return Record(image=root / images[row], labels=labels[row], label_mask=mask[row], source=root / files[row])

    def garment_boxes_of(row: int) -> list[GarmentBox]:
        return [(box["garment"], tuple(box["box"])) for box in columns["boxes"][row].as_py()]

    rows = np.arange(len(files))
    # The English style names are single GloVe tokens already ("hip-hop", "avant-garde" included).
    dataset = FashionDataset(LazyRows(record, rows), vocabulary, has_bbox=False, has_landmarks=False,
                                 label_words=vocabulary, transform=transform, skip_bad=skip_bad, notes=notes)
    if dataset.skipped:  # keep boxes aligned with the records that survived validation
        kept = {record.source for record in dataset.records}
        rows = np.array([row for row in rows if root / files[row] in kept], dtype=np.int64)
    dataset.garment_boxes = LazyRows(garment_boxes_of, rows)
    return dataset
