"""K-Fashion (AI-Hub) style labels: one JSON per image, Korean keys, 23 styles.

The style sits at ``데이터셋 정보 → 데이터셋 상세설명 → 라벨링 → 스타일``, a list of
``{"스타일": ..., "서브스타일": ...}`` objects; style and sub-style both count as positives. An entry
of ``[{}]`` means nobody annotated a style: that image is all-unknown (masked), never 23 negatives,
and it is listed in the dataset's ``notes``.

The image is the JSON's stem with ``.jpg`` (or another image extension) beside it, or else the file
named by ``이미지 정보 → 이미지 파일명``. Files ending in ``_extracted.json`` are a derived summary
written by AI-Hub's example script; they are not annotations and are ignored (with a note).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashionlens.data.base import FashionDataset, Record, force_vocabulary
from fashionlens.vocabulary import IMAGE_EXTENSIONS
from fashionlens.errors import DataError

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


def _get(node: Any, keys: Sequence[str], path: Path) -> Any:
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise DataError(f"expected the key path {' → '.join(keys[: depth + 1])}, it is missing", path=path)
        node = node[key]
    return node


def _find_image(json_path: Path, info: dict[str, Any]) -> Path:
    for extension in IMAGE_EXTENSIONS:
        for candidate in (json_path.with_suffix(extension), json_path.with_suffix(extension.upper())):
            if candidate.exists():
                return candidate
    named = info.get("이미지 파일명") if isinstance(info, dict) else None
    if isinstance(named, str) and named and (json_path.parent / named).exists():
        return json_path.parent / named
    # Not found either way: point at the stem's .jpg so the image error names the expected file.
    return json_path.with_suffix(".jpg")


def garment_boxes(document: dict[str, Any], path: Path) -> list[tuple[str, tuple[float, float, float, float]]]:
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


def read_kfashion(
    path_or_folder: str | Path,
    *,
    skip_bad: bool = False,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    label_names: Sequence[str] | None = None,
) -> FashionDataset:
    """Read one K-Fashion JSON or every ``*.json`` under a folder (recursively).

    Labels: the 23 styles (always all 23, in ``STYLE_NAMES`` order unless ``label_names`` forces
    one). ``dataset.garment_boxes[i]`` holds record i's per-garment boxes.
    """
    path_or_folder = Path(path_or_folder)
    if path_or_folder.is_dir():
        files = sorted(path_or_folder.rglob("*.json"))
    elif path_or_folder.exists():
        files = [path_or_folder]
    else:
        raise DataError("expected a K-Fashion JSON file or a folder of them, found nothing", path=path_or_folder)
    notes: list[str] = []
    extracted = [f for f in files if f.name.endswith(_EXTRACTED_SUFFIX)]
    files = [f for f in files if not f.name.endswith(_EXTRACTED_SUFFIX)]
    if extracted:
        notes.append(f"ignored {len(extracted)} derived *{_EXTRACTED_SUFFIX} file(s) (not annotations)")
    if not files:
        raise DataError("expected K-Fashion *.json annotation files, found none", path=path_or_folder)

    index = {name: i for i, name in enumerate(STYLE_NAMES)}
    labels = np.zeros((len(files), len(STYLE_NAMES)), dtype=np.uint8)
    mask = np.ones((len(files), len(STYLE_NAMES)), dtype=np.uint8)
    images: list[Path] = []
    boxes: list[list[tuple[str, tuple[float, float, float, float]]]] = []
    unlabeled: list[str] = []
    for row, json_path in enumerate(files):
        try:
            document = json.loads(json_path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise DataError(f"expected a JSON document, found invalid JSON ({exc.msg})", path=json_path, line=exc.lineno) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"expected UTF-8 JSON, found undecodable bytes ({exc})", path=json_path) from None
        styles = _get(document, ("데이터셋 정보", "데이터셋 상세설명", "라벨링", "스타일"), json_path)
        if not isinstance(styles, list):
            raise DataError(f"expected 스타일 to be a list of objects, found {styles!r}", path=json_path)
        found = []
        for entry in styles:
            if not isinstance(entry, dict):
                raise DataError(f"expected each 스타일 entry to be an object, found {entry!r}", path=json_path)
            for key in ("스타일", "서브스타일"):
                value = entry.get(key)
                if value in (None, ""):
                    continue
                if value not in STYLES_KO_EN:
                    raise DataError(
                        f"unknown {key} value {value!r}: expected one of the 23 K-Fashion styles ({', '.join(STYLES_KO_EN)})",
                        path=json_path,
                    )
                found.append(STYLES_KO_EN[value])
        if found:
            labels[row, [index[name] for name in found]] = 1
        else:
            mask[row] = 0
            unlabeled.append(json_path.name)
        images.append(_find_image(json_path, document.get("이미지 정보", {})))
        boxes.append(garment_boxes(document, json_path))
    if unlabeled:
        shown = ", ".join(unlabeled[:10]) + (" ..." if len(unlabeled) > 10 else "")
        notes.append(f"{len(unlabeled)} of {len(files)} image(s) have no style annotated (all 23 labels unknown): {shown}")

    labels, mask, vocabulary = force_vocabulary(labels, mask, STYLE_NAMES, label_names, path_or_folder, absent_is_unknown=True)
    records = [
        Record(image=image, labels=labels[i], label_mask=mask[i], source=json_path)
        for i, (image, json_path) in enumerate(zip(images, files))
    ]
    dataset = FashionDataset(
        records,
        vocabulary,
        # The English style names are single GloVe tokens already ("hip-hop", "avant-garde" included).
        label_words=vocabulary,
        transform=transform,
        skip_bad=skip_bad,
        notes=notes,
    )
    # Keep boxes aligned with the records that survived validation.
    kept = {id(r) for r in dataset.records}
    dataset.garment_boxes = [b for r, b in zip(records, boxes) if id(r) in kept]
    return dataset
