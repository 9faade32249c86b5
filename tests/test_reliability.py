"""Reliability: every awkward image a user can hand us, through the dataset reader AND the Predictor.

Each image is either read correctly (same pixels for training and for serving) or refused with a
message naming the file. Cases already proven elsewhere are not repeated here; docs/reliability.md
lists every case and the test that proves it. Also: the same seed gives the same metrics on CPU.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fashionlens.data import read_manifest_csv
from fashionlens.errors import DataError, ModelDirError
from fashionlens.inference import Predictor, load, to_uint8_chw
from fashionlens.modeldir import save_model_dir

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"
REAL_JPEG = "clothing-attributes/images/000002.jpg"  # 213 x 320
NAMES = ["floral", "striped", "plaid"]
# Every readable variant of the same real photo, as the dataset and the Predictor must both see it.
MODE_FILES = ["upright.png", "grey.png", "grey16.png", "alpha.png", "cmyk.jpg", "exif_rotated.png"]
BAD_FILES = ["empty.jpg", "truncated.jpg", "text.jpg"]
TRANSPARENT_COLUMNS = 100  # alpha.png: this many left columns are fully transparent


@pytest.fixture(scope="module")
def photos(tmp_path_factory, shared_data: Path) -> Path:
    """One real photo saved in every mode we claim to read, plus files that are not readable photos."""
    folder = tmp_path_factory.mktemp("photos")
    real = shared_data / REAL_JPEG
    original = Image.open(real).convert("RGB")
    original.save(folder / "upright.png")
    grey = original.convert("L")
    grey.save(folder / "grey.png")
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(folder / "grey16.png")  # full 16-bit range
    rgba = np.asarray(original.convert("RGBA")).copy()
    rgba[:, :TRANSPARENT_COLUMNS, 3] = 0  # the hidden colour under these pixels must not leak through
    Image.fromarray(rgba).save(folder / "alpha.png")
    original.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": undoes the ROTATE_90 below
    original.transpose(Image.Transpose.ROTATE_90).save(folder / "exif_rotated.png", exif=exif)
    # 640 x 960 = 614400 pixels: over the bomb limits the tests set; the mode files (68160 pixels) are under.
    original.resize((640, 960)).save(folder / "bomb.png")
    (folder / "empty.jpg").write_bytes(b"")
    data = real.read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "text.jpg").write_text("this is not an image\n")
    return folder


def _manifest(folder: Path, names: list[str]) -> Path:
    path = folder / f"manifest-{len(names)}.csv"
    path.write_text("image,labels\n" + "".join(f"{name},floral\n" for name in names))
    return path


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": "linear", "num_labels": len(NAMES), "image_size": 64}
    labels = {"label_names": NAMES}
    preprocessing = {"image_size": 64, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "square"}
    directory = save_model_dir(tmp_path_factory.mktemp("model") / "model", build_style_model(config), config,
                               labels, preprocessing)
    # One intra-op thread: a 64 x 64 forward pass gains nothing from two, and on a busy 2-core box
    # OpenMP spinning makes each call take seconds instead of milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    predictor = load(directory)
    yield predictor
    torch.set_num_threads(threads)


def _scores(prediction) -> dict[str, float]:
    return {label.name: label.score for label in prediction.labels}


def _expected_pixels(photos: Path, name: str) -> torch.Tensor:
    """What each mode file must read as, computed independently of the code under test."""
    upright = torch.from_numpy(np.asarray(Image.open(photos / "upright.png").convert("RGB")).copy()).permute(2, 0, 1)
    if name in ("upright.png", "exif_rotated.png", "cmyk.jpg"):
        return upright
    if name in ("grey.png", "grey16.png"):
        grey = torch.from_numpy(np.asarray(Image.open(photos / "grey.png")).copy())
        return grey.expand(3, -1, -1)
    if name == "alpha.png":
        expected = upright.clone()
        expected[:, :, :TRANSPARENT_COLUMNS] = 255  # transparent pixels sit on white
        return expected
    raise AssertionError(name)


@pytest.mark.parametrize("name", MODE_FILES)
def test_every_image_mode_reads_the_same_in_the_dataset_and_the_predictor(photos: Path, predictor: Predictor,
                                                                            name: str) -> None:
    dataset = read_manifest_csv(_manifest(photos, MODE_FILES))
    sample = dataset.load_sample(MODE_FILES.index(name))
    assert sample["path"].endswith(name)
    image = sample["image"].as_subclass(torch.Tensor)
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 320, 213)  # upright: 213 wide, 320 high
    expected = _expected_pixels(photos, name)
    difference = (image.int() - expected.int()).abs()
    if name == "cmyk.jpg":  # lossy JPEG round trip through CMYK: close, not equal
        assert difference.float().mean() < 2.0 and difference.max() < 64
    else:
        assert difference.max() == 0
    # Serving decodes the same file to the same pixels as training did: no train/serve skew.
    served, _ = to_uint8_chw(photos / name)
    assert torch.equal(served, image)
    assert _scores(predictor(photos / name)) == pytest.approx(_scores(predictor(image)), abs=1e-6)


def test_exif_rotation_is_respected_by_both_doors(photos: Path, predictor: Predictor) -> None:
    upright = predictor(photos / "upright.png")
    rotated = predictor(photos / "exif_rotated.png")
    assert (rotated.width, rotated.height) == (213, 320)
    assert _scores(rotated) == pytest.approx(_scores(upright), abs=1e-6)
    # The stored pixels without their tag are sideways and score differently: the tag was what mattered.
    stored = np.asarray(Image.open(photos / "exif_rotated.png").convert("RGB"))
    assert stored.shape[:2] == (213, 320)
    assert _scores(predictor(stored)) != pytest.approx(_scores(upright), abs=1e-4)


def test_decompression_bomb_is_refused_by_the_predictor_naming_the_file(photos: Path, predictor: Predictor,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = photos / "bomb.png"
    # Between 1x and 2x the limit Pillow only warns; the Predictor refuses there already.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)
    with pytest.raises(DataError) as caught:
        predictor(bomb)
    assert str(caught.value).startswith(f"{bomb}: ") and "too large to decode safely" in str(caught.value)
    # Above 2x Pillow raises by itself; still the same kind of error, naming the file.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)
    with pytest.raises(DataError, match="too large to decode safely") as caught:
        predictor(bomb)
    assert str(bomb) in str(caught.value)
    # Under the limit the same file is an ordinary photo.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    assert (predictor(bomb).width, predictor(bomb).height) == (640, 960)


def test_skip_bad_keeps_every_readable_mode_and_lists_each_bad_file(photos: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 400_000)  # bomb.png (614400 pixels) is over it
    names = [*MODE_FILES, *BAD_FILES, "bomb.png"]
    manifest = _manifest(photos, names)
    dataset = read_manifest_csv(manifest, skip_bad=True)
    assert [Path(error.path).name for error in dataset.skipped] == [*BAD_FILES, "bomb.png"]
    reasons = {Path(error.path).name: str(error) for error in dataset.skipped}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "not an image" in reasons["text.jpg"]
    assert "decompression bomb" in reasons["bomb.png"] and "614400 pixels" in reasons["bomb.png"]
    for name, error in reasons.items():
        line = names.index(name) + 2  # header is line 1
        assert error.startswith(f"{photos / name}: ") and f"{manifest.name}:{line})" in error
    assert [Path(dataset[i]["path"]).name for i in range(len(dataset))] == MODE_FILES
    assert dataset.skipped_summary().splitlines()[0] == f"skipped 4 of {len(names)} images:"
    # Without skip_bad the bomb is refused when it is loaded, naming the file and its manifest line.
    strict = read_manifest_csv(manifest)
    with pytest.raises(DataError, match=r"bomb\.png: image too large to decode safely: the header says 640x960 = "
                                        r"614400 pixels") as caught:
        strict[names.index("bomb.png")]
    assert f"{manifest.name}:{len(names) + 1})" in str(caught.value)


# ---------------------------------------------------------------- one decoder behind every door
# The readers, the Predictor (the Python API and `predict`) and the server all decode with
# fashionlens.images: the same file is read the same way, or refused the same way, by each.


@pytest.fixture(scope="module")
def server(predictor: Predictor):
    pytest.importorskip("fastapi", reason="the server needs the 'serve' extra")
    from fastapi.testclient import TestClient

    from fashionlens.server.app import create_app

    with TestClient(create_app(predictor), raise_server_exceptions=False) as client:
        yield client


def _size(prediction) -> tuple[int, int]:
    return prediction.width, prediction.height


def _through_every_door(path: Path, predictor: Predictor, server, capsys) -> dict[str, str]:
    """What each door makes of ``path``: "ok <width>x<height>" or the refusal's message."""
    from fashionlens.cli import main
    from fashionlens.inference import read_image_bytes

    outcomes: dict[str, str] = {}
    doors = {
        "reader": lambda: read_manifest_csv(_manifest(path.parent, [path.name]))[0]["image"].shape[:0:-1],
        "Predictor (path)": lambda: _size(predictor(path)),
        "Predictor (PIL image)": lambda: _size(predictor(Image.open(path))),
        "read_image_bytes": lambda: read_image_bytes(path.read_bytes(), str(path)).size,
    }
    for door, attempt in doors.items():
        try:
            width, height = attempt()
            outcomes[door] = f"ok {width}x{height}"
        except DataError as error:
            outcomes[door] = error.reason.split(" (listed at")[0]
    response = server.post("/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    outcomes["server"] = (f"ok {response.json()['image']['width']}x{response.json()['image']['height']}"
                          if response.status_code == 200 else response.json()["detail"].removeprefix(f"{path.name}: "))
    capsys.readouterr()
    code = main(["predict", str(predictor.model_dir), str(path), "--json"])
    out, err = capsys.readouterr()
    if code == 0:
        image = json.loads(out.splitlines()[0])["image"]
        outcomes["predict"] = f"ok {image['width']}x{image['height']}"
    else:
        outcomes["predict"] = err.splitlines()[0].removeprefix(f"fashionlens: skipped {path}: ")
    return outcomes


def test_a_jpeg_with_junk_exif_is_read_the_same_by_every_door(photos: Path, predictor: Predictor, server,
                                                               capsys) -> None:
    from test_images import JUNK_SUBIFDS, SHORT, exif_block

    # Stored sideways with orientation 6, plus a tag Pillow reads but cannot write back.
    path = photos / "junk_exif.jpg"
    upright = Image.open(photos / "upright.png")
    exif = b"Exif\x00\x00" + exif_block((SHORT, b"\x00\x06\x00\x00"), JUNK_SUBIFDS)
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    outcomes = _through_every_door(path, predictor, server, capsys)
    assert outcomes == dict.fromkeys(outcomes, "ok 213x320"), outcomes  # accepted, turned upright, by all
    # And the same pixels: the reader's sample is what the Predictor scores.
    sample = read_manifest_csv(_manifest(photos, [path.name]))[0]["image"].as_subclass(torch.Tensor)
    assert torch.equal(to_uint8_chw(path)[0], sample)
    served = server.post("/predict", files={"file": ("a.jpg", path.read_bytes(), "image/jpeg")}).json()
    assert {item["name"]: item["score"] for item in served["labels"]} == pytest.approx(_scores(predictor(sample)),
                                                                                        abs=1e-6)


@pytest.mark.parametrize("case", ["declared 9000x9000", "scan cut short", "EPS"])
def test_a_refused_file_is_refused_the_same_by_every_door(photos: Path, predictor: Predictor, server, capsys,
                                                          case: str) -> None:
    from test_images import cut_scan, declare_size

    buffer = io.BytesIO()
    Image.open(photos / "upright.png").save(buffer, format="EPS" if case == "EPS" else "JPEG", quality=90)
    real = buffer.getvalue()
    data = {"declared 9000x9000": lambda: declare_size(real, 9000, 9000), "scan cut short": lambda: cut_scan(real),
            "EPS": lambda: real}[case]()
    path = photos / f"{case.replace(' ', '_')}.jpg"
    path.write_bytes(data)
    expected = {
        "declared 9000x9000": "image too large to decode safely: the header says 9000x9000 = 81000000 pixels, "
                              "more than the limit of 40000000 (possible decompression bomb)",
        "scan cut short": "corrupt or truncated image (the JPEG scan data ends early: libjpeg would fill the rest "
                          "of the picture with grey)",
        "EPS": "not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF data, found a PostScript/EPS file",
    }[case]
    outcomes = _through_every_door(path, predictor, server, capsys)
    assert outcomes == dict.fromkeys(outcomes, expected), outcomes


def test_declared_9000x9000_jpegs_from_100_threads_never_get_through(photos: Path, predictor: Predictor, server,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal is a plain check of the header's size: nothing a concurrent request does (the old
    check toggled process-wide warning filters) can let one through."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from PIL import ImageFile
    from test_images import declare_size

    from fashionlens.inference import read_image_bytes

    buffer = io.BytesIO()
    Image.open(photos / "upright.png").save(buffer, format="JPEG", quality=90)
    bomb = declare_size(buffer.getvalue(), 9000, 9000)
    path = photos / "bomb9000.jpg"
    path.write_bytes(bomb)
    dataset = read_manifest_csv(_manifest(photos, [path.name]))
    decoded, lock = [], threading.Lock()
    load = ImageFile.ImageFile.load

    def counting_load(self, *args, **kwargs):
        with lock:
            decoded.append(self.size)
        return load(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)

    def attempt(index: int) -> str:
        door = index % 4
        try:
            if door == 0:
                dataset[0]
            elif door == 1:
                predictor(path)
            elif door == 2:
                read_image_bytes(bomb, "bomb9000.jpg")
            else:
                response = server.post("/predict", files={"file": ("bomb9000.jpg", bomb, "image/jpeg")})
                return "refused" if response.status_code == 400 and "too large" in response.json()["detail"] \
                    else f"server: {response.status_code}"
        except DataError as error:
            return "refused" if "too large to decode safely" in str(error) else str(error)
        return f"door {door}: got through"

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(attempt, range(100)))
    assert outcomes == ["refused"] * 100
    assert decoded == []  # not one of them had its pixels decoded


# ---------------------------------------------------------------- model directories


def _copy_model_dir(predictor: Predictor, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(predictor.model_dir, copy)
    return copy


def test_model_dir_with_corrupt_json_names_the_file_and_line(predictor: Predictor, tmp_path: Path) -> None:
    broken = _copy_model_dir(predictor, tmp_path)
    text = (broken / "preprocessing.json").read_text()
    (broken / "preprocessing.json").write_text(text[: len(text) // 2])  # cut mid-write, by hand
    with pytest.raises(ModelDirError, match=r"preprocessing\.json: corrupt JSON \(.* at line \d+\)") as caught:
        load(broken)
    assert str(broken / "preprocessing.json") in str(caught.value)


def test_model_dir_whose_labels_disagree_with_the_config_is_refused(predictor: Predictor, tmp_path: Path) -> None:
    broken = _copy_model_dir(predictor, tmp_path)
    (broken / "labels.json").write_text(json.dumps({"label_names": [*NAMES, "spotted"]}))
    with pytest.raises(ModelDirError, match=r"config.json says 3 labels, labels.json lists 4") as caught:
        load(broken)
    assert str(broken) in str(caught.value)


# ---------------------------------------------------------------- determinism


def _train(out: Path) -> Path:
    from fashionlens.config import DataSource, StyleConfig, override
    from fashionlens.training import train_style

    config = override(StyleConfig(), {
        "out": out, "data.sources": [DataSource(MINI, "clothing-attributes")], "backbone.name": "tf_efficientnet_lite0",
        "backbone.pretrained": "shipped", "backbone.image_size": 64, "recipe.epochs": 2, "data.batch_size": 16,
        "data.limit": 60, "data.val_split": 0.25, "head.kind": "linear", "head.pool": "max", "data.workers": 0,
        "recipe.cache_features": True, "data.drop_empty_labels": True, "recipe.seed": 7})
    return Path(train_style(config))


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_on_cpu(tmp_path: Path) -> None:
    first = _train(tmp_path / "a")
    second = _train(tmp_path / "b")
    metrics_a = json.loads((first / "metrics.json").read_text())
    metrics_b = json.loads((second / "metrics.json").read_text())
    assert 0.0 < metrics_a["mAP"] <= 100.0
    assert metrics_a["mAP"] == metrics_b["mAP"]
    assert metrics_a == metrics_b
    for run in (first, second):
        record = json.loads((run / "run.json").read_text())
        assert record["seed"] == 7
        assert record["train_size"] + record["val_size"] == 60
    scores_a = np.load(first / "val_predictions.npz")["scores"]
    scores_b = np.load(second / "val_predictions.npz")["scores"]
    np.testing.assert_array_equal(scores_a, scores_b)
