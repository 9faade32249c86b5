"""CSV and JSON Lines manifests on real images."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from fashionlens.data import open_dataset, read_manifest_csv, read_manifest_jsonl
from fashionlens.errors import DataError


@pytest.fixture()
def folder(tmp_path: Path, shared_data: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in ("000002.jpg", "000003.jpg", "000005.jpg"):
        shutil.copyfile(shared_data / "clothing-attributes" / "images" / name, tmp_path / "img" / name)
    return tmp_path


def test_csv_labels_unknowns_and_sorted_vocabulary(folder: Path) -> None:
    path = folder / "train.csv"
    path.write_text("image,labels\nimg/000002.jpg,street;casual\nimg/000003.jpg,\nimg/000005.jpg,romantic;?street\n")
    dataset = read_manifest_csv(path)
    assert dataset.label_names == ["casual", "romantic", "street"]
    assert [s["labels"].tolist() for s in (dataset[0], dataset[1], dataset[2])] == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert dataset[2]["label_mask"].tolist() == [1.0, 1.0, 0.0]
    assert dataset[1]["label_mask"].tolist() == [1.0, 1.0, 1.0]  # empty cell: known negatives
    assert dataset[0]["path"] == str(folder / "img" / "000002.jpg")  # relative to the manifest's folder
    assert tuple(dataset[0]["image"].shape) == (3, 320, 213)


def test_csv_images_root_and_forced_vocabulary(folder: Path) -> None:
    (folder / "lists").mkdir()
    path = folder / "lists" / "val.csv"
    path.write_text("image,labels\n000003.jpg,street\n")
    dataset = read_manifest_csv(path, images_root=folder / "img", label_names=["street", "retro"])
    assert dataset.label_names == ["street", "retro"]
    assert dataset[0]["labels"].tolist() == [1.0, 0.0] and dataset[0]["label_mask"].tolist() == [1.0, 1.0]


def test_csv_label_outside_forced_vocabulary(folder: Path) -> None:
    path = folder / "m.csv"
    path.write_text("image,labels\nimg/000002.jpg,street\nimg/000003.jpg,punk;?goth\n")
    with pytest.raises(DataError) as info:
        read_manifest_csv(path, label_names=["street", "retro"])
    assert str(info.value).startswith(f"{path}:3: label(s) 'punk', 'goth' not in the forced vocabulary of 2 labels")


@pytest.mark.parametrize(
    "content, message",
    [
        ("img,labels\na.jpg,x\n", r"m.csv:1: expected the header 'image,labels', found 'img,labels'"),
        ("image,labels\nimg/000002.jpg,x,y\n", r"m.csv:2: expected 2 columns \(image,labels\), found 3"),
        ("image,labels\nimg/000002.jpg,x\nimg/000002.jpg,y\n", r"m.csv:3: duplicate row for image .* first listed on line 2"),
        ("image,labels\nimg/000002.jpg,x;?x\n", r"m.csv:2: label\(s\) \['x'\] are both positive and unknown"),
        ("image,labels\n,x\n", r"m.csv:2: expected an image path, found an empty value"),
    ],
)
def test_csv_malformed(folder: Path, content: str, message: str) -> None:
    path = folder / "m.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest_csv(path)


def test_jsonl(folder: Path) -> None:
    path = folder / "m.jsonl"
    rows = [
        {"image": "img/000002.jpg", "labels": ["street"], "unknown": ["retro"]},
        {"image": str(folder / "img" / "000005.jpg"), "labels": []},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    dataset = open_dataset(path, "jsonl")
    assert dataset.label_names == ["retro", "street"]
    assert dataset[0]["labels"].tolist() == [0.0, 1.0] and dataset[0]["label_mask"].tolist() == [0.0, 1.0]
    assert dataset[1]["labels"].tolist() == [0.0, 0.0] and dataset[1]["label_mask"].tolist() == [1.0, 1.0]
    assert dataset[1]["path"] == str(folder / "img" / "000005.jpg")


@pytest.mark.parametrize(
    "line2, message",
    [
        ('{"image": "b.jpg", "labels": ["x"]', r"m.jsonl:2: expected one JSON object per line, found invalid JSON"),
        ('{"labels": ["x"]}', r"m.jsonl:2: expected an object with a string 'image'"),
        ('{"image": "b.jpg", "labels": "x"}', r"m.jsonl:2: expected 'labels' to be a list of non-empty strings, found 'x'"),
        ('{"image": "b.jpg", "label": ["x"]}', r"m.jsonl:2: expected only the keys image, labels, unknown, found also \['label'\]"),
        ('{"image": "b.jpg", "labels": ["punk"]}', r"m.jsonl:2: label\(s\) 'punk' not in the forced vocabulary"),
    ],
)
def test_jsonl_malformed(folder: Path, line2: str, message: str) -> None:
    path = folder / "m.jsonl"
    path.write_text('{"image": "a.jpg", "labels": ["x"]}\n' + line2 + "\n")
    with pytest.raises(DataError, match=message):
        read_manifest_jsonl(path, label_names=["x"])


# --------------------------------------------------------------------------------------------------
# Paths, encodings and nesting (issue 13, items 9 and 10); pyarrow against the row-by-row reading.


def _write_manifest(folder: Path, kind: str, images: list[str], name: str = "m") -> Path:
    path = folder / f"{name}.{kind}"
    if kind == "csv":
        path.write_text("image,labels\n" + "".join(f"{image},street\n" for image in images), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps({"image": image, "labels": ["street"]}, ensure_ascii=False) + "\n" for image in images),
                        encoding="utf-8")
    return path


READERS = {"csv": read_manifest_csv, "jsonl": read_manifest_jsonl}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("image", ["/etc/shadow", "../../x.jpg", "img/../../x.jpg", "./../img/000003.jpg"])
def test_paths_outside_the_root_are_refused_unless_allowed(folder: Path, kind: str, image: str) -> None:
    path = _write_manifest(folder, kind, ["img/000002.jpg", image])
    line = 3 if kind == "csv" else 2
    with pytest.raises(DataError) as info:
        READERS[kind](path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: image path {image!r} leaves the dataset root {folder}"), message
    assert message.endswith("pass allow_outside_root=True to read it anyway")
    dataset = READERS[kind](path, allow_outside_root=True)
    assert dataset.records[1].image == Path(os.path.normpath(os.path.join(folder, image)))
    assert dataset.records[1].line == line


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_absolute_paths_inside_the_root_are_fine(folder: Path, kind: str) -> None:
    path = _write_manifest(folder, kind, [str(folder / "img" / "000002.jpg"), "img/000003.jpg"])
    assert [r.image for r in READERS[kind](path).records] == [folder / "img" / "000002.jpg", folder / "img" / "000003.jpg"]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("twin", ["img/../img/000002.jpg", "img/./000002.jpg", "./img//000002.jpg", "ABSOLUTE"])
def test_the_same_image_spelled_differently_is_a_duplicate(folder: Path, kind: str, twin: str) -> None:
    twin = str(folder / "img" / "000002.jpg") if twin == "ABSOLUTE" else twin
    path = _write_manifest(folder, kind, ["img/000002.jpg", "img/000003.jpg", twin])
    first, line = (2, 4) if kind == "csv" else (1, 3)
    with pytest.raises(DataError) as info:
        READERS[kind](path)
    assert str(info.value) == (f"{path}:{line}: duplicate row for image {str(folder / 'img' / '000002.jpg')!r}: "
                               f"first listed on line {first}")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_manifest_that_is_not_utf8_names_the_line_and_the_encoding_expected(folder: Path, kind: str) -> None:
    rows = ["img/000002.jpg", "img/café.jpg"]
    path = _write_manifest(folder, kind, rows)
    path.write_bytes(path.read_text(encoding="utf-8").encode("latin-1"))
    line, column = (3, 8) if kind == "csv" else (2, 19)
    with pytest.raises(DataError) as info:
        READERS[kind](path)
    assert str(info.value) == (f"{path}:{line}: expected UTF-8 text (or UTF-16 starting with a byte-order mark), found the "
                               f"byte 0xe9 at column {column}, which is not UTF-8: save the manifest as UTF-8")


def test_utf16_without_a_byte_order_mark_is_refused_at_its_first_line(folder: Path) -> None:
    path = folder / "m.csv"
    path.write_bytes("image,labels\nimg/000002.jpg,street\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=r"m.csv:1: expected UTF-8 text, found a NUL byte at column 2 \(UTF-16 without a byte-order mark\?\)"):
        read_manifest_csv(path)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("bom, encoding", [(b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")],
                         ids=["utf-8-bom", "utf-16-le-bom", "utf-16-be-bom"])
def test_a_byte_order_mark_is_decoded(folder: Path, kind: str, bom: bytes, encoding: str) -> None:
    path = _write_manifest(folder, kind, ["img/000002.jpg", "img/000003.jpg"])
    text = path.read_text(encoding="utf-8").replace("street", "café")
    path.write_bytes(bom + text.encode(encoding))
    dataset = READERS[kind](path)
    assert dataset.label_names == ["café"] and [r.line for r in dataset.records] == ([2, 3] if kind == "csv" else [1, 2])
    assert dataset[0]["labels"].tolist() == [1.0]


@pytest.mark.parametrize("nested", ['{"image": "img/000003.jpg", "labels": ' + "[" * 50_000 + "]" * 50_000 + "}",
                                    "[" * 50_000 + "]" * 50_000], ids=["in-labels", "whole-line"])
def test_jsonl_nested_50000_deep_is_a_data_error_naming_the_line(folder: Path, nested: str) -> None:
    path = folder / "m.jsonl"
    path.write_text('{"image": "img/000002.jpg"}\n' + nested + "\n")
    with pytest.raises(DataError, match=r"m.jsonl:2: expected one JSON object per line, found JSON nested too deeply to parse"):
        read_manifest_jsonl(path)


def _varied_rows(count: int) -> list[tuple[str, list[str], list[str]]]:
    rnd = random.Random(7)
    names = ["street", "casual", "retro", "romantic", "punk", "sporty"]
    rows = []
    for i in range(count):
        image = rnd.choice(["img/{i}.jpg", "img/sub/../{i}.jpg", "./img/{i}.jpg", "img//x/{i}.jpg", "ABS/img/{i}.png"]).format(i=i)
        positives = rnd.sample(names, rnd.randint(0, 3))
        unknown = [n for n in rnd.sample(names, rnd.randint(0, 2)) if n not in positives]
        rows.append((image, positives, unknown))
    return rows


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@pytest.mark.parametrize("variant", ["plain", "spaces-crlf-blank-lines", "no-final-newline", "few-label-sets"])
def test_pyarrow_reads_what_the_row_by_row_reading_reads(folder: Path, kind: str, variant: str, monkeypatch) -> None:
    """What pyarrow does not take is read row by row (where the messages come from): both give the same rows."""
    import pyarrow as pa

    from fashionlens.data import manifest

    rows = [(image.replace("ABS", str(folder)), p, u) for image, p, u in _varied_rows(300)]
    if variant == "few-label-sets":  # the CSV reader splits each distinct cell once (else every row's)
        rows = [(image, *rows[i % 7][1:]) for i, (image, _, _) in enumerate(rows)]
    odd = variant == "spaces-crlf-blank-lines"
    newline = "\r\n" if odd else "\n"
    path = folder / f"varied.{kind}"
    if kind == "csv":
        cells = [";".join([*p, *(f"?{n}" for n in u)]) if not odd else " ; ".join([*p, *(f" ? {n}" for n in u)] + [""])
                 for _, p, u in rows]
        lines = ["image,labels"] + [f"{' ' if odd else ''}{image},{cell}" for (image, _, _), cell in zip(rows, cells)]
    else:
        lines = [json.dumps({"image": image, "labels": p, **({"unknown": u} if u else {})}) for image, p, u in rows]
    if odd:
        lines[5:5] = ["", ""]
    path.write_bytes(newline.join(lines).encode() + (b"" if variant == "no-final-newline" else newline.encode()))

    rows_read = []
    row_reader = manifest._ROW_READERS[kind]
    monkeypatch.setitem(manifest._ROW_READERS, kind, lambda *a: rows_read.append(1) or row_reader(*a))
    quick = READERS[kind](path)
    assert not rows_read, "pyarrow did not read the file"

    def refuse(*args, **kwargs):
        raise pa.ArrowInvalid("refused")

    monkeypatch.setattr(manifest.pa_csv if kind == "csv" else manifest.pa_json, "read_csv" if kind == "csv" else "read_json", refuse)
    exact = READERS[kind](path)
    assert len(rows_read) >= 300
    assert quick.label_names == exact.label_names and len(quick) == len(exact) == 300

    def summary(dataset):
        return [(r.image, r.labels.tolist(), r.label_mask.tolist(), r.line, r.source) for r in dataset.records]

    assert summary(quick) == summary(exact)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_large_manifest_is_cached_and_an_edit_is_seen(folder: Path, kind: str, monkeypatch, tmp_path: Path) -> None:
    from fashionlens.data import cache, manifest

    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    path = _write_manifest(folder, kind, [f"img/{i}.jpg" for i in range(50)])
    first = READERS[kind](path)
    assert len(list((tmp_path / "cache").glob("manifest-*.arrow"))) == 1

    def no_parse(*args):
        raise AssertionError("parsed again")

    monkeypatch.setattr(manifest, "_utf8", no_parse)
    again = READERS[kind](path)
    assert [(r.image, r.labels.tolist(), r.line) for r in again.records] == [(r.image, r.labels.tolist(), r.line) for r in first.records]
    monkeypatch.undo()
    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)
    path.write_text(path.read_text().replace("street", "retro"))
    assert READERS[kind](path).label_names == ["retro"]


def test_a_cache_that_cannot_be_written_is_a_note_and_leaves_nothing(folder: Path, tmp_path: Path, monkeypatch) -> None:
    from fashionlens.data import cache

    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_CACHED_BYTES", 0)

    def no_space(*args) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.os, "replace", no_space)
    path = _write_manifest(folder, "csv", [f"img/{i}.jpg" for i in range(50)])
    dataset = READERS["csv"](path)
    assert len(dataset) == 50 and not list((tmp_path / "cache").iterdir())
    assert dataset.notes == ["annotation cache not written ([Errno 28] No space left on device); "
                             "set FASHIONLENS_ANNOTATION_CACHE to a writable folder, or to 'off'"]


def test_a_photo_that_links_out_of_the_root_is_not_followed(folder: Path, tmp_path_factory) -> None:
    """Issue 27 item 10: the manifest checked each path's text only, so `img/evil.jpg -> /elsewhere/x.jpg`
    was read as a photo of the dataset."""
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "x.jpg"
    shutil.copyfile(folder / "img" / "000002.jpg", elsewhere)
    (folder / "img" / "evil.jpg").symlink_to(elsewhere)
    (folder / "data").symlink_to(folder / "img")  # a link that stays inside is fine
    path = folder / "train.csv"
    path.write_text("image,labels\nimg/000003.jpg,street\nimg/evil.jpg,punk\ndata/000005.jpg,street\n")
    problems = read_manifest_csv(path, cache=False).validate_images(full_decode=False)
    assert [str(problem) for problem in problems] == [
        f"{path}:3: {folder / 'img' / 'evil.jpg'}: a link to {elsewhere}, outside the dataset root {folder}: "
        f"not followed (--allow-outside-root reads it)"]
    dataset = read_manifest_csv(path, cache=False)
    dataset.validate_images(full_decode=False, drop=True)
    assert [Path(sample["path"]).name for sample in (dataset[0], dataset[1])] == ["000003.jpg", "000005.jpg"]
    assert read_manifest_csv(path, cache=False, allow_outside_root=True).validate_images(full_decode=False) == []
