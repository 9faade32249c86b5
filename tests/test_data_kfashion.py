"""K-Fashion reader on the 3 real AI-Hub files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fashionlens.data import STYLE_NAMES, read_kfashion
from fashionlens.data.kfashion import STYLES_KO_EN as STYLES_KO
from fashionlens.errors import DataError

ROMANTIC = 5


def test_real_folder(shared_data: Path) -> None:
    dataset = read_kfashion(shared_data / "kfashion")
    assert len(STYLE_NAMES) == 23 and STYLE_NAMES[ROMANTIC] == "romantic" and STYLE_NAMES[-1] == "street"
    assert dataset.label_names == list(STYLE_NAMES)
    assert [r.image.name for r in dataset.records] == ["100026.jpg", "1070263.jpg", "1092253.jpg"]
    first = dataset[0]
    assert first["labels"].nonzero().flatten().tolist() == [ROMANTIC]
    assert first["label_mask"].sum().item() == 23.0
    assert tuple(first["image"].shape) == (3, 800, 800)
    # The other two have "스타일": [{}]: all-unknown, and said so.
    for sample in (dataset[1], dataset[2]):
        assert sample["label_mask"].sum().item() == 0.0 and sample["labels"].sum().item() == 0.0
    assert dataset.notes == [
        "ignored 3 derived *_extracted.json file(s) (not annotations)",
        "2 of 3 image(s) have no style annotated (all 23 labels unknown): 1070263.json, 1092253.json",
    ]
    # 렉트좌표 하의 (321.06, 288.216, w 183, h 330) and 상의 (260.144, 59.4236, 295, 335).
    assert dataset.garment_boxes[0] == [
        ("bottom", pytest.approx((321.06, 288.216, 504.06, 618.216))),
        ("top", pytest.approx((260.144, 59.4236, 555.144, 394.4236))),
    ]


def _copy(tmp_path: Path, shared_data: Path, styles: list) -> Path:
    document = json.loads((shared_data / "kfashion" / "100026.json").read_text(encoding="utf-8"))
    document["데이터셋 정보"]["데이터셋 상세설명"]["라벨링"]["스타일"] = styles
    path = tmp_path / "100026.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    shutil.copyfile(shared_data / "kfashion" / "100026.jpg", tmp_path / "100026.jpg")
    return path


def test_style_and_substyle_are_both_positive(tmp_path: Path, shared_data: Path) -> None:
    path = _copy(tmp_path, shared_data, [{"스타일": "스트리트", "서브스타일": "힙합"}])
    sample = read_kfashion(path)[0]
    assert sample["labels"].nonzero().flatten().tolist() == [STYLE_NAMES.index("hip-hop"), STYLE_NAMES.index("street")]


def test_unknown_korean_style(tmp_path: Path, shared_data: Path) -> None:
    _copy(tmp_path, shared_data, [{"스타일": "기타"}])
    with pytest.raises(DataError, match=r"100026.json: unknown 스타일 value '기타': expected one of the 23 K-Fashion styles"):
        read_kfashion(tmp_path)


def test_image_found_by_its_recorded_file_name(tmp_path: Path, shared_data: Path) -> None:
    path = _copy(tmp_path, shared_data, [{"스타일": "로맨틱"}])
    (tmp_path / "100026.jpg").rename(tmp_path / "Ave29th_160_02.jpg")  # 이미지 파일명 in the JSON
    assert read_kfashion(path).records[0].image == tmp_path / "Ave29th_160_02.jpg"


def test_forced_vocabulary(tmp_path: Path, shared_data: Path) -> None:
    path = _copy(tmp_path, shared_data, [{"스타일": "로맨틱"}])
    dataset = read_kfashion(path, label_names=["street", "romantic", "retro", "sexy", "modern"])
    assert dataset[0]["labels"].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(DataError, match=r"labels not in the forced vocabulary of 2 labels: expected only those, found romantic"):
        read_kfashion(path, label_names=["street", "retro"])


def test_broken_json(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text('{"이미지 정보": {', encoding="utf-8")
    with pytest.raises(DataError, match=r"1.json:1: expected a JSON document, found invalid JSON"):
        read_kfashion(tmp_path)
    (tmp_path / "1.json").write_text('{"이미지 정보": {}}', encoding="utf-8")
    with pytest.raises(DataError, match=r"1.json: expected the key path 데이터셋 정보, it is missing"):
        read_kfashion(tmp_path)


# --------------------------------------------------------------------------------------------------
# Many files: their order, the cache, hostile nesting (issues 17, 13 and 31).


def _folder_of_variants(tmp_path: Path, shared_data: Path, count: int = 40) -> Path:
    """``count`` JSON files varied from the real 100026.json in two subfolders; images for every other one."""
    document = json.loads((shared_data / "kfashion" / "100026.json").read_text(encoding="utf-8"))
    styles = list(STYLES_KO)
    folder = tmp_path / "kf"
    for i in range(count):
        sub = folder / ("a" if i % 2 else "a-b")
        sub.mkdir(parents=True, exist_ok=True)
        document["데이터셋 정보"]["데이터셋 상세설명"]["라벨링"]["스타일"] = [{}] if i % 7 == 0 else [{"스타일": styles[i % 23]}]
        document["데이터셋 정보"]["데이터셋 상세설명"]["렉트좌표"]["상의"] = [{"X좌표": i, "Y좌표": 2 * i, "가로": 10, "세로": 20}]
        (sub / f"{1000 + i}.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        if i % 2:
            shutil.copyfile(shared_data / "kfashion" / "100026.jpg", sub / f"{1000 + i}.jpg")
    (folder / "a" / "1001_extracted.json").write_text("{}", encoding="utf-8")
    return folder


def _summary(dataset) -> list:
    return [(r.image, r.source, r.labels.tolist(), r.label_mask.tolist(), boxes)
            for r, boxes in zip(dataset.records, dataset.garment_boxes)]


def test_a_folder_reads_in_rglob_order_and_names_the_first_bad_file(tmp_path: Path, shared_data: Path) -> None:
    folder = _folder_of_variants(tmp_path, shared_data)
    dataset = read_kfashion(folder, cache=False)
    assert len(dataset) == 40 and dataset.notes[0] == "ignored 1 derived *_extracted.json file(s) (not annotations)"
    # Sorted as Path.rglob sorts: by path parts ("a" before "a-b").
    assert [r.source.parent.name for r in dataset.records[:2]] == ["a", "a"]
    assert dataset.records[0].image.name == "1001.jpg" and dataset.records[-1].image.name == "1038.jpg"  # the expected name, not found
    assert dataset.garment_boxes[0][-1] == ("top", (1.0, 2.0, 11.0, 22.0))
    for name in ("a-b/1010.json", "a/1003.json"):
        (folder / name).write_text('{"이미지 정보": {', encoding="utf-8")
    with pytest.raises(DataError, match=r"a/1003.json:1: expected a JSON document, found invalid JSON"):
        read_kfashion(folder, cache=False)


def test_the_cache_is_used_until_a_file_changes(tmp_path: Path, shared_data: Path, monkeypatch) -> None:
    from fashionlens.data import cache, kfashion

    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    folder = _folder_of_variants(tmp_path, shared_data)
    first = read_kfashion(folder)
    assert len(list((tmp_path / "cache").glob("kfashion-*.arrow"))) == 1
    parse = kfashion._parse

    def no_parse(*args):
        raise AssertionError("parsed again")

    monkeypatch.setattr(kfashion, "_parse", no_parse)
    again = read_kfashion(folder)
    assert _summary(again) == _summary(first) and again.notes == first.notes
    # An image that appears later is found: images are looked up on every read, not cached.
    shutil.copyfile(shared_data / "kfashion" / "100026.jpg", folder / "a-b" / "1000.png")
    assert read_kfashion(folder).records[20].image == folder / "a-b" / "1000.png"
    path = folder / "a" / "1001.json"
    path.write_text(path.read_text(encoding="utf-8").replace('"스타일": "프레피"', '"스타일": "로맨틱"'), encoding="utf-8")
    monkeypatch.setattr(kfashion, "_parse", parse)
    assert read_kfashion(folder)[0]["labels"].nonzero().flatten().tolist() == [ROMANTIC]
    # A new annotation file is read too; one removed is gone.
    shutil.copyfile(folder / "a" / "1001.json", folder / "a" / "2001.json")
    (folder / "a-b" / "1002.json").unlink()
    sources = [r.source.name for r in read_kfashion(folder).records]
    assert "2001.json" in sources and "1002.json" not in sources and len(sources) == 40


def test_json_nested_too_deeply_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text("[" * 50_000 + "]" * 50_000, encoding="utf-8")
    with pytest.raises(DataError, match=r"1.json: expected a K-Fashion JSON document, found JSON nested too deeply to parse"):
        read_kfashion(tmp_path)
