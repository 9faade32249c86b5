"""Using a model: every input kind, EXIF, image modes, bad files, the predict command, ONNX parity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import PREPROCESSING, clothing_model_dir

from fashionlens.errors import FashionlensError
from fashionlens.inference import (
    ClothingPrediction,
    Predictor,
    StylePrediction,
    export_onnx,
    to_uint8_chw,
    load,
)
from fashionlens.modeldir import save_model_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PHOTOS = sorted((DATA / "clothing-attributes" / "images").glob("*.jpg"))[:6] or \
    sorted((REPO / "examples" / "clothing-attributes-mini" / "images").glob("*.jpg"))[:6]
LANDMARK_PHOTOS = sorted((DATA / "landmarks" / "img").glob("*.jpg"))[:2]
STYLE_NAMES = ["floral", "striped", "plaid", "solid_color", "spotted", "graphics"]

pytestmark = pytest.mark.skipif(len(PHOTOS) < 4, reason=f"real photos not found under {DATA} or examples/")


def _style_model_dir(path: Path, head: str) -> Path:
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": head, "num_labels": len(STYLE_NAMES), "image_size": 128, "residual": False,
              "hidden_dim": 64, "embedding_dim": 16}
    embeddings = adjacency = None
    if head == "mlgcn":
        embeddings = torch.randn(len(STYLE_NAMES), 16)
        adjacency = torch.rand(len(STYLE_NAMES), len(STYLE_NAMES))
        adjacency = adjacency / adjacency.sum(dim=1, keepdim=True)
    model = build_style_model(config, embeddings=embeddings, adjacency=adjacency)
    labels = {"label_names": STYLE_NAMES, "display_names": [n.replace("_", " ").title() for n in STYLE_NAMES]}
    return save_model_dir(path, model, config, labels, PREPROCESSING)


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory) -> Path:
    return _style_model_dir(tmp_path_factory.mktemp("style") / "model", "linear")


@pytest.fixture(scope="module")
def predictor(style_dir) -> Predictor:
    return load(style_dir, batch_size=4)


def _scores(result: StylePrediction) -> dict[str, float]:
    return {label.name: label.score for label in result.labels}


def _assert_same(a: StylePrediction, b: StylePrediction, atol: float = 0.0) -> None:
    sa, sb = _scores(a), _scores(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name] == pytest.approx(sb[name], abs=atol), name


# ---------------------------------------------------------------- input kinds


def test_every_input_kind_gives_the_same_scores(predictor):
    path = PHOTOS[0]
    rgb = np.array(Image.open(path).convert("RGB"))
    from_path = predictor(path)
    assert isinstance(from_path, StylePrediction)
    assert from_path.source == str(path)
    assert (from_path.width, from_path.height) == (rgb.shape[1], rgb.shape[0])
    scores = [label.score for label in from_path.labels]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    for label in from_path.labels:
        assert label.score == pytest.approx(1 / (1 + np.exp(-label.logit)), abs=1e-6)

    variants = [str(path), Image.open(path), rgb, torch.from_numpy(rgb).permute(2, 0, 1),
                torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0]
    for variant in variants:
        _assert_same(predictor(variant), from_path)
    # A list (longer than the batch size, to cross batch boundaries) keeps the order.
    listed = predictor([PHOTOS[1], rgb, PHOTOS[2], Image.open(path), PHOTOS[3]])
    assert isinstance(listed, list) and len(listed) == 5
    _assert_same(listed[1], from_path, atol=1e-6)
    _assert_same(listed[3], from_path, atol=1e-6)
    _assert_same(listed[0], predictor(PHOTOS[1]), atol=1e-6)
    # Different photos give different scores (the comparison above can fail).
    assert _scores(listed[0]) != pytest.approx(_scores(from_path), abs=1e-4)


def test_to_dict_is_json_and_top_k_threshold_trim(predictor):
    result = predictor(PHOTOS[0])
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["task"] == "style"
    assert [item["name"] for item in payload["labels"]] == [label.name for label in result.labels]
    assert {item["display_name"] for item in payload["labels"]} >= {"Floral"}
    top2 = predictor(PHOTOS[0], top_k=2)
    assert [l.name for l in top2.labels] == [l.name for l in result.labels[:2]]
    cut = result.labels[2].score
    above = predictor(PHOTOS[0], threshold=cut)
    assert [l.name for l in above.labels] == [l.name for l in result.labels if l.score >= cut]


# ---------------------------------------------------------------- EXIF and image modes


def test_exif_rotated_photo_gives_the_original_scores(predictor, tmp_path):
    original = Image.open(PHOTOS[0]).convert("RGB")
    stored = original.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": exif_transpose undoes ROTATE_90
    rotated_path = tmp_path / "rotated.png"
    stored.save(rotated_path, exif=exif)
    plain_path = tmp_path / "plain.png"
    original.save(plain_path)

    upright = predictor(rotated_path)
    assert (upright.width, upright.height) == original.size
    _assert_same(upright, predictor(plain_path))
    _assert_same(predictor(Image.open(rotated_path)), upright)
    # Without the tag the same pixels give other scores: the test would catch a missing transpose.
    sideways = predictor(np.array(stored))
    assert _scores(sideways) != pytest.approx(_scores(upright), abs=1e-4)


def test_image_modes_are_converted(predictor, tmp_path):
    original = Image.open(PHOTOS[1]).convert("RGB")
    reference = predictor(original)
    grey8 = original.convert("L")
    grey_reference = predictor(grey8.convert("RGB"))

    grey8.save(tmp_path / "grey.png")
    _assert_same(predictor(tmp_path / "grey.png"), grey_reference)

    sixteen = Image.fromarray(np.array(grey8).astype(np.uint16) * 257)  # full 16-bit range
    sixteen.save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    _assert_same(predictor(tmp_path / "grey16.png"), grey_reference)
    _assert_same(predictor(np.array(grey8).astype(np.uint16) * 257), grey_reference)

    rgba = original.convert("RGBA")
    rgba.save(tmp_path / "opaque.png")
    _assert_same(predictor(tmp_path / "opaque.png"), reference)
    transparent = rgba.copy()
    transparent.putalpha(0)
    white = predictor(Image.new("RGB", original.size, (255, 255, 255)))
    _assert_same(predictor(transparent), white)  # transparent pixels sit on white

    original.convert("CMYK").save(tmp_path / "cmyk.tif")
    assert Image.open(tmp_path / "cmyk.tif").mode == "CMYK"
    _assert_same(predictor(tmp_path / "cmyk.tif"), reference)
    original.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    _assert_same(predictor(tmp_path / "cmyk.jpg"), reference, atol=0.05)

    palette = original.convert("P")
    assert isinstance(predictor(palette), StylePrediction)


def test_bad_files_raise_errors_naming_the_file(predictor, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a photo\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(PHOTOS[0].read_bytes()[:200])
    for path, reason in ((empty, "empty"), (text, "not an image"), (truncated, "truncated"),
                         (tmp_path / "missing.jpg", "no such file")):
        with pytest.raises(FashionlensError) as caught:
            predictor(path)
        assert str(path) in str(caught.value)
        assert reason in str(caught.value)
    with pytest.raises(FashionlensError, match="channels"):
        predictor(np.zeros((8, 8, 5), dtype=np.uint8))
    with pytest.raises(TypeError, match="path, a PIL image"):
        predictor(12345)


# ---------------------------------------------------------------- clothing models


def test_clothing_landmarks_map_back_to_original_pixels(tmp_path):
    directory = clothing_model_dir(tmp_path / "clothing")
    real = load(directory)
    photo = LANDMARK_PHOTOS[0] if LANDMARK_PHOTOS else PHOTOS[0]
    result = real(photo)
    assert isinstance(result, ClothingPrediction)
    assert [l.name for l in result.category_top_k] == sorted(
        [l.name for l in result.category_top_k], key=lambda n: -next(x.score for x in result.category_top_k if x.name == n))
    assert sum(l.score for l in real(photo, top_k=4).category_top_k) == pytest.approx(1.0, abs=1e-6)  # softmax
    assert set(result.attributes_by_type) == {"texture", "fabric", "shape"}
    assert all(len(labels) == 2 for labels in result.attributes_by_type.values())
    assert [lm.name for lm in result.landmarks][:2] == ["left_collar", "right_collar"]
    json.dumps(result.to_dict())

    # A known heatmap peak: cell (u, v) = (24, 8) of a 32 x 32 map on a 128 px input.
    def fake_runtime(batch: torch.Tensor) -> dict[str, np.ndarray]:
        heatmaps = np.zeros((batch.shape[0], 8, 32, 32), dtype=np.float32)
        heatmaps[:, :, 8, 24] = 0.9
        heatmaps[:, 3, 8, 24] = 0.1  # a weak peak: not visible
        return {"category_logits": np.zeros((batch.shape[0], 4), np.float32),
                "attribute_logits": np.zeros((batch.shape[0], 6), np.float32), "heatmaps": heatmaps}

    fake = Predictor(fake_runtime, real.config, real.labels, real.preprocessing)
    width, height = 300, 200
    landmark = fake(np.zeros((height, width, 3), dtype=np.uint8)).landmarks[0]
    # Cell centre in input pixels: (u + 0.5) * 128 / 32 - 0.5; then scaled to the original size.
    x_input, y_input = (24 + 0.5) * 4 - 0.5, (8 + 0.5) * 4 - 0.5
    assert landmark.x == pytest.approx((x_input + 0.5) * width / 128 - 0.5, abs=1e-4)
    assert landmark.y == pytest.approx((y_input + 0.5) * height / 128 - 0.5, abs=1e-4)
    assert landmark.visible and landmark.confidence == pytest.approx(0.9)
    assert not fake(np.zeros((height, width, 3), dtype=np.uint8)).landmarks[3].visible


# ---------------------------------------------------------------- the predict command


def test_predict_command_skips_a_bad_file_and_exits_1(style_dir, tmp_path, capsys):
    from fashionlens.cli import main

    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for photo in PHOTOS[:2]:
        shutil.copy(photo, folder / photo.name)
    shutil.copy(PHOTOS[2], folder / "nested" / PHOTOS[2].name)
    (folder / "broken.jpg").write_text("not a jpeg")
    (folder / "readme.txt").write_text("ignored: not an image extension")

    code = main(["predict", str(style_dir), str(folder), "--json", "--top-k", "3"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "broken.jpg" in err and "not an image" in err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted(Path(line["source"]).name for line in lines) == sorted(p.name for p in PHOTOS[:3])
    assert all(len(line["labels"]) == 3 for line in lines)

    code = main(["predict", str(style_dir), str(folder / "*.jpg"), "--csv", str(tmp_path / "out.csv"),
                 "--threshold", "0.0", "--top-k", "2"])
    capsys.readouterr()
    assert code == 1
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "path,label_1,score_1,label_2,score_2,predicted"
    assert len(rows) == 3  # the two good top-level photos; the glob is not recursive

    code = main(["predict", str(style_dir), str(PHOTOS[0])])
    out, err = capsys.readouterr()
    assert code == 0
    assert str(PHOTOS[0]) in out and "  floral " in out and "Floral" not in out  # the name, as --json and --csv give it

    assert main(["predict", str(style_dir), str(tmp_path / "nothing-here")]) == 2
    assert "no images found" in capsys.readouterr().err


# ---------------------------------------------------------------- ONNX


@pytest.mark.slow  # the fast suite checks ONNX against torch with the query head (test_query_head.py)
@pytest.mark.parametrize("head", ["linear", "mlgcn"])
def test_onnx_matches_torch_on_real_photos(head, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHIONLENS_CACHE", str(tmp_path / "cache"))
    directory = _style_model_dir(tmp_path / head, head)
    torch_predictor = load(directory)
    onnx_predictor = load(directory, runtime="onnx")  # exports on demand, into the cache
    assert not (directory / "model.onnx").exists()
    exported = onnx_predictor.runtime.path
    assert exported.parent == tmp_path / "cache" / ".onnx" and exported.name.endswith("-128px-opset17.onnx")
    photos = list(PHOTOS[:5])
    expected = torch_predictor(photos)
    got = onnx_predictor(photos)  # a batch of 5 through the dynamic batch axis
    for a, b in zip(expected, got):
        logits_a = {l.name: l.logit for l in a.labels}
        logits_b = {l.name: l.logit for l in b.labels}
        assert max(abs(logits_a[n] - logits_b[n]) for n in logits_a) < 1e-4

    import onnx

    model = onnx.load(str(exported))
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 17


@pytest.mark.slow  # three ONNX exports (3 s)
def test_the_onnx_runtime_runs_only_files_exported_from_the_weights_and_writes_nothing_into_the_model(
        tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file, save_file

    from fashionlens import fileio, modeldir
    from fashionlens.cli import main

    monkeypatch.setenv("FASHIONLENS_CACHE", str(tmp_path / "cache"))
    mine = _style_model_dir(tmp_path / "mine", "linear")
    other = Path(shutil.copytree(mine, tmp_path / "other"))
    weights = load_file(other / "model.safetensors")
    save_file({name: value + 0.5 if value.ndim == 2 else value for name, value in weights.items()},
              other / "model.safetensors")
    planted = export_onnx(other, tmp_path / "other.onnx")
    photo = str(PHOTOS[0])
    expected = {label.name: label.logit for label in load(mine)(photo).labels}

    def logits(predictor) -> dict[str, float]:
        return {label.name: label.logit for label in predictor(photo).labels}

    # Nothing given: an export of its own in the cache, named by the weights' and the config's SHA-256;
    # the second load reuses it.
    assert main(["predict", str(mine), photo, "--runtime", "onnx", "--json"]) == 0
    cached = tmp_path / "cache" / ".onnx" / (f"{fileio.file_sha256(mine / 'model.safetensors')}-"
                                             f"{fileio.file_sha256(mine / 'config.json')[:16]}-128px-opset17.onnx")
    assert capsys.readouterr().err.splitlines() == [f"onnx: running {cached}, exported from {mine} into the cache"]
    assert not (mine / "model.onnx").exists()
    modified = cached.stat().st_mtime_ns
    assert load(mine, runtime="onnx").runtime.path == cached and cached.stat().st_mtime_ns == modified
    # A model.onnx exported from other weights, in a directory without a manifest: not used.
    shutil.copyfile(planted, mine / "model.onnx")
    predictor = load(mine, runtime="onnx")
    assert predictor.runtime.source.endswith(f"; {mine / 'model.onnx'} was exported from other weights, so it is "
                                             f"not used")
    assert max(abs(expected[name] - value) for name, value in logits(predictor).items()) < 1e-4
    # A file exported from these weights (as `export --onnx` writes it) in its own model directory is used.
    shutil.copyfile(cached, mine / "model.onnx")
    assert load(mine, runtime="onnx").runtime.source == f"onnx: running {mine / 'model.onnx'}, exported from these weights"
    # A released directory (with a manifest) runs model.onnx only when the manifest lists it.
    modeldir.write_manifest(mine)
    shutil.copyfile(planted, mine / "model.onnx")
    predictor = load(mine, runtime="onnx")
    assert predictor.runtime.source.endswith(f"; {mine / 'model.onnx'} is not in {mine / 'manifest.json'}, so it is "
                                             f"not used")
    assert max(abs(expected[name] - value) for name, value in logits(predictor).items()) < 1e-4
    # `serve --runtime onnx` says the same line.
    import uvicorn

    from fashionlens.server.app import serve

    monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: None)
    capsys.readouterr()
    assert serve(mine, runtime="onnx") == 0
    assert capsys.readouterr().out.splitlines()[0] == predictor.runtime.source
    # --onnx FILE: run when it was exported from these weights, else one line saying so.
    assert main(["predict", str(mine), photo, "--onnx", str(planted)]) == 2
    assert capsys.readouterr().err == (f"fashionlens: error: {planted}: exported from the weights "
                                       f"{fileio.file_sha256(other / 'model.safetensors')[:12]}, not from those of {mine} "
                                       f"({fileio.file_sha256(mine / 'model.safetensors')[:12]}): export it again with "
                                       f"`fashionlens export {mine} --onnx {planted}`\n")
    assert load(other, onnx=planted).runtime.source == f"onnx: running {planted}, exported from the weights of {other}"


@pytest.mark.slow
def test_onnx_export_of_a_clothing_model(tmp_path):
    directory = clothing_model_dir(tmp_path / "clothing", flip_test=True)  # the mirrored pass exports too
    out = export_onnx(directory, tmp_path / "clothing.onnx")
    import onnx

    assert [o.name for o in onnx.load(str(out)).graph.output] == ["category_logits", "attribute_logits", "heatmaps"]
    photo = LANDMARK_PHOTOS[0] if LANDMARK_PHOTOS else PHOTOS[0]
    torch_predictor, onnx_predictor = load(directory), load(directory, runtime="onnx")
    a, b = torch_predictor(photo), onnx_predictor(photo)
    assert [l.name for l in a.category_top_k] == [l.name for l in b.category_top_k]
    # The outputs themselves (the flip test's mirrored pass included): an untrained network's heatmaps
    # have near-ties that a 1e-7 difference can move by a cell, so the decoded places are not compared.
    batch = torch_predictor.preprocess_batch([to_uint8_chw(photo)[0]])
    for key, value in torch_predictor.runtime(batch).items():
        np.testing.assert_allclose(onnx_predictor.runtime(batch)[key], value, atol=1e-4)


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(FashionlensError, match=str(tmp_path / "nope")):
        load(tmp_path / "nope")
    with pytest.raises(ValueError, match="runtime"):
        load(tmp_path, runtime="tensorrt")


def test_predict_on_a_folder_reports_every_skipped_input(style_dir, tmp_path, capsys):
    import os

    from fashionlens.cli import main
    from fashionlens.cli_paths import collect_image_paths

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(PHOTOS[0], folder / "a.jpg")
    shutil.copy(PHOTOS[1], folder / "b.jpg")
    for index in range(3):
        (folder / f"copy{index}.jpg").symlink_to(folder / "a.jpg")
    os.link(folder / "b.jpg", folder / "sub" / "hard.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    os.mkfifo(folder / "pipe.jpg")  # opening it would wait for a writer forever
    (folder / "sub" / "up").symlink_to(folder)  # a folder link back to an ancestor
    (folder / "notes.txt").write_text("not an image extension")

    paths, skipped = collect_image_paths([folder, folder])
    assert paths == [folder / "a.jpg", folder / "b.jpg"]
    assert [(str(item), item.failed) for item in skipped] == [
        ((f"{folder / 'gone.jpg'}: skipped: a dangling symbolic link (to {tmp_path / 'deleted.jpg'}, which does not "
         f"exist)"), True),
        (f"{folder / 'loop1.jpg'}: skipped: a symbolic link loop", True),
        (f"{folder / 'loop2.jpg'}: skipped: a symbolic link loop", True),
        (f"{folder / 'pipe.jpg'}: skipped: a FIFO (named pipe), not an image file", True),
        (f"{folder / 'sub' / 'up'}: skipped: a symbolic link loop (it leads back to {folder}, which contains it)",
         False),
        (f"{folder}: ignored 1 file without an image extension (notes.txt)", False),
        (f"{folder}: skipped: the same folder as {folder}, searched already", False),
        ((f"{folder / 'a.jpg'}: predicted once; 3 other paths lead to the same file, skipped as duplicates: "
         f"{folder / 'copy0.jpg'}, {folder / 'copy1.jpg'}, {folder / 'copy2.jpg'}"), False),
        ((f"{folder / 'b.jpg'}: predicted once; 1 other path leads to the same file, skipped as a duplicate: "
         f"{folder / 'sub' / 'hard.jpg'}"), False),
    ]

    code = main(["predict", str(style_dir), str(folder), "--json"])
    out, err = capsys.readouterr()
    assert code == 1  # the dangling link, the two loops and the FIFO were inputs that could not be read
    assert len([line for line in out.splitlines() if line.startswith("{")]) == 2
    for item in skipped[:6] + skipped[7:]:
        assert f"fashionlens: {item}" in err
    assert "fashionlens: 4 of 6 inputs failed, 2 predicted" in err

    # Duplicates alone lose nothing: reported, and the exit code stays 0.
    for name in ("gone.jpg", "loop1.jpg", "loop2.jpg", "pipe.jpg"):
        (folder / name).unlink()
    assert main(["predict", str(style_dir), str(folder), "--json"]) == 0
    assert "3 other paths lead to the same file, skipped as duplicates" in capsys.readouterr().err


def test_predict_names_a_wrong_kind_of_output_path_in_one_line(tmp_path, capsys):
    """Issue 27 item 13: --out EXISTING_FILE was a FileExistsError traceback, --csv A_FOLDER an
    IsADirectoryError; --explain with --devices was never refused (the check came after the return)."""
    from fashionlens.cli import main

    photo = sorted((REPO / "examples" / "clothing-attributes-mini" / "images").glob("*.jpg"))[0]
    (tmp_path / "preds.parquet").write_text("not a folder")
    assert main(["predict", "garment-attributes-lite0", str(photo), "--out", str(tmp_path / "preds.parquet")]) == 2
    assert "a file is there; --out names a folder" in capsys.readouterr().err
    assert main(["predict", "garment-attributes-lite0", str(photo), "--csv", str(tmp_path)]) == 2
    assert "a folder is there; --csv names the file" in capsys.readouterr().err
    assert main(["predict", "garment-attributes-lite0", str(photo), "--explain", "top", "--devices", "2",
                 "--out", str(tmp_path / "shards")]) == 2
    assert "--explain runs on one device" in capsys.readouterr().err
