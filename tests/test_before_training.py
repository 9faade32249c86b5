"""Mistakes caught before training (issue 32 item 4, issue 27 items 4, 10 and 13): a wrong --format,
split folders taken for labels, bad photos, folder links, the same photo twice, a --resume on other
data or another model, odd config values. Each is found before anything is written."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

from fashionlens.cli import main
from fashionlens.config import ConfigError, DataSource, StyleConfig, override, to_dict, validate
from fashionlens.data import open_dataset, read_class_folders
from fashionlens.data.check import check_dataset
from fashionlens.data.merge import MergedDataset
from fashionlens.errors import DataError

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"


@pytest.fixture()
def photos(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "clothing-dataset-small" / "train" / "dress").glob("*.jpg"))[:4]


def _class_folders(root: Path, photos: list[Path], labels=("dress", "shirt")) -> Path:
    for k, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for photo in photos[2 * k: 2 * k + 2]:
            shutil.copyfile(photo, root / label / photo.name)
    return root


@pytest.fixture(autouse=True)
def photo_cache(tmp_path: Path, monkeypatch) -> Path:
    """Each test its own cache of checked photos (``data.cache.cache_dir``), empty at the start."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FASHIONLENS_ANNOTATION_CACHE", str(folder))
    return folder


# ------------------------------------------------------------------------------------- wrong --format


def test_a_manifest_format_on_a_folder_names_what_it_found_and_leaves_no_run_directory(tmp_path, photos, capsys):
    """`train style --data FOLDER --format manifest` ended in an IsADirectoryError traceback and left
    a run directory behind."""
    data = _class_folders(tmp_path / "styles", photos)
    code = main(["train", "style", "--data", str(data), "--format", "manifest", "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert error == (f"fashionlens: error: {data}: --format manifest expects a CSV file (image,labels), found a "
                     f"folder; it looks like --format folders")
    assert not (tmp_path / "run").exists()


def test_a_jsonl_format_on_a_folder_and_a_folder_format_on_a_file(tmp_path, photos):
    data = _class_folders(tmp_path / "styles", photos)
    with pytest.raises(DataError, match=r"--format jsonl expects a JSON Lines file .*, found a folder; it looks "
                                        r"like --format folders$"):
        open_dataset(data, "jsonl")
    with pytest.raises(DataError, match=r"labels.csv: --format folders expects a dataset folder, found a file; "
                                        r"it looks like --format manifest$"):
        open_dataset(MINI / "labels.csv", "folders")
    with pytest.raises(DataError, match=r"--format folders expects one sub-folder per label, found the labels.csv "
                                        r"of another layout; it looks like --format clothing-attributes$"):
        open_dataset(MINI, "folders")
    with pytest.raises(DataError, match=r"--format clothing-attributes expects labels.csv in the folder, found "
                                        r"none; it looks like --format folders$"):
        open_dataset(data, "clothing-attributes")


def test_class_folders_named_like_splits_are_a_warning_with_the_fix_and_data_check_reports_it(tmp_path, photos):
    """`--format folders` on a root of train/ validation/ made the split names the labels, and
    `data check` said "problems: 0"."""
    root = tmp_path / "shop"
    for split, chosen in (("train", photos[:2]), ("validation", photos[2:])):
        (root / split / "dress").mkdir(parents=True)
        for photo in chosen:
            shutil.copyfile(photo, root / split / "dress" / photo.name)
    fix = f"--data {root / 'train'} --val {root / 'validation'}"
    with pytest.warns(UserWarning, match=f"label folder\\(s\\) named like splits: train, validation; .*: {fix}$"):
        read_class_folders(root)
    report = check_dataset(root, "folders")
    assert len(report.warnings) == 1 and report.warnings[0].endswith(fix)
    assert "warnings: 1\n" in report.to_text()


# ------------------------------------------------------------------------------------------ bad photos


def _with_bad_photos(root: Path, photos: list[Path]) -> list[Path]:
    _class_folders(root, photos)
    text = root / "dress" / "notes.jpg"
    text.write_text("not a photo")
    cut = root / "shirt" / "cut.jpg"
    cut.write_bytes(photos[0].read_bytes()[:3000])
    return [text, cut]


def _tiny(out: Path, data: Path, **changes) -> StyleConfig:
    return override(StyleConfig(), {"out": out, "data.sources": [DataSource(data, "folders")], "data.workers": 0,
                                    "backbone.image_size": 32, "head.kind": "linear", "recipe.epochs": 1,
                                    **changes})


def test_every_bad_photo_is_listed_before_the_first_epoch_with_skip_bad_suggested(tmp_path, photos):
    """A corrupt JPEG stopped training only once reached, inside a DataLoader worker, naming one file."""
    from fashionlens.training import prepare

    bad = _with_bad_photos(tmp_path / "data", photos)
    with pytest.raises(DataError) as caught:
        prepare(_tiny(tmp_path / "run", tmp_path / "data"))
    lines = str(caught.value).splitlines()
    assert lines[0] == ("2 of 6 photos cannot be read; fix or remove them, or pass --skip-bad to train without "
                        "them:")
    assert [line.split(":")[0].strip() for line in lines[1:]] == [str(path) for path in bad]
    assert not (tmp_path / "run").exists()


def test_skip_bad_says_what_it_left_out_and_a_second_check_decodes_nothing(tmp_path, photos, capsys, monkeypatch):
    from fashionlens.data import base
    from fashionlens.training.data import check_photos

    bad = _with_bad_photos(tmp_path / "data", photos)
    dataset = read_class_folders(tmp_path / "data")
    check_photos(dataset, skip_bad=True)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "fashionlens: --skip-bad: left out 2 of 6 photos that cannot be read:"
    assert [line.split(":")[0].strip() for line in printed[1:]] == [str(path) for path in bad]
    assert len(dataset) == 4
    decoded = []
    original = base._check_image_quickly
    monkeypatch.setattr(base, "_check_image_quickly", lambda r, full: decoded.append(r.image) or original(r, full))
    again = read_class_folders(tmp_path / "data")
    check_photos(again, skip_bad=True, announce=False)
    assert sorted(decoded) == sorted(bad)  # the four good photos are remembered; only the bad ones again
    assert len(again) == 4


# ------------------------------------------------------------------------ folder links, the same photo twice


def test_folder_links_out_of_the_root_and_loops_are_not_followed(tmp_path, photos):
    """A `loop -> .` link gave every photo a second label, and a link to /etc was walked."""
    root = _class_folders(tmp_path / "data", photos)
    (root / "loop").symlink_to(".")
    (root / "etc").symlink_to("/etc")
    (root / "dress" / "again").symlink_to("..")
    with pytest.warns(UserWarning, match=r"not followed 3 folder link\(s\) that lead out of the dataset root or "
                                         r"back into a folder above them \(a loop\): \['etc', 'loop', 'dress/again'\]"):
        dataset = read_class_folders(root)
    assert dataset.label_names == ["dress", "shirt"] and len(dataset) == 4


def test_the_same_photos_given_twice_count_once(tmp_path, photos):
    """`--data X --data X` gave 60 samples from 30 photos (validation photos also in training)."""
    root = _class_folders(tmp_path / "data", photos)
    (tmp_path / "alias").symlink_to(root)
    with pytest.warns(UserWarning, match=r"left out 4 photo\(s\) already read from an earlier --data"):
        merged = MergedDataset([read_class_folders(root), read_class_folders(tmp_path / "alias")])
    assert len(merged) == 4
    assert any(note.startswith("left out 4 photo(s) already read from an earlier --data") for note in merged.notes)


# ----------------------------------------------------------------------------------- manifests outside root


def test_allow_outside_root_is_a_flag(tmp_path, photos, capsys):
    manifest = tmp_path / "list" / "m.csv"
    manifest.parent.mkdir()
    manifest.write_text("image,labels\n" + "".join(f"{photo},dress\n" for photo in photos))
    assert main(["data", "check", str(manifest), "--format", "manifest"]) == 1
    assert "expected a path inside it" in capsys.readouterr().out
    assert main(["data", "check", str(manifest), "--format", "manifest", "--allow-outside-root"]) == 0
    assert "images: 4 readable, 0 unreadable" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- --resume


def _earlier_run(run: Path, config: StyleConfig, labels: list[str]) -> dict[str, bytes]:
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": to_dict(config), "labels": labels}))
    (run / "config.yaml").write_text("# the earlier run's\n")
    return {name: (run / name).read_bytes() for name in ("run.json", "config.yaml")}


def test_resume_on_another_label_set_is_refused_before_anything_is_written(tmp_path, photos):
    from fashionlens.training import train_style

    data = _class_folders(tmp_path / "data", photos)
    run = tmp_path / "run"
    before = _earlier_run(run, _tiny(run, data), ["dress", "jeans"])
    with pytest.raises(ConfigError, match=r"^--resume: .*run was trained on 2 labels, this data gives 2 \(new: "
                                          r"shirt; gone: jeans\); resume on the same data, or train into a new --out$"):
        train_style(_tiny(run, data, **{"trainer.resume": True}))
    assert {name: (run / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "run.json"]


def test_resume_with_another_backbone_is_refused_before_anything_is_written(tmp_path, photos):
    from fashionlens.training import train_style

    data = _class_folders(tmp_path / "data", photos)
    run = tmp_path / "run"
    before = _earlier_run(run, _tiny(run, data, **{"backbone.name": "mobilenet_v2"}), ["dress", "shirt"])
    with pytest.raises(ConfigError, match=r"was trained with backbone.name 'mobilenet_v2', not "
                                          r"'tf_efficientnet_lite0'; resume with the run's own settings"):
        train_style(_tiny(run, data, **{"trainer.resume": True}))
    assert {name: (run / name).read_bytes() for name in before} == before


# ---------------------------------------------------------------------------------- odd config values


def test_a_hidden_dim_of_zero_is_a_one_line_error_naming_the_key(tmp_path, capsys):
    """`head: {hidden_dim: 0}` in a config ended in a ZeroDivisionError traceback."""
    config = tmp_path / "config.yaml"
    config.write_text("head:\n  hidden_dim: 0\n")
    code = main(["train", "style", "--config", str(config), "--data", str(MINI), "--format", "clothing-attributes",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == "fashionlens: error: head.hidden_dim: must be from 1 to 65536, got 0\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("devices", ["1.5", "two", "-2"])
def test_odd_devices_are_a_one_line_error_naming_the_key(devices):
    config = override(StyleConfig(), {"out": "run", "data.sources": [DataSource(MINI, "clothing-attributes")],
                                      "trainer.devices": devices})
    with pytest.raises(ConfigError, match=rf"^trainer.devices: expected auto, a number of devices \(1, 2, ...\), "
                                          rf"-1 \(all\) or device indices such as 0,1; found '{devices}'$"):
        validate(config)


@pytest.mark.skipif(os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "") or __import__("torch").cuda.is_available(),
                    reason="device indices are valid with a GPU")
def test_device_indices_on_a_cpu_are_a_one_line_error_before_the_run_directory(tmp_path, photos):
    from fashionlens.training import train_style

    data = _class_folders(tmp_path / "data", photos)
    with pytest.raises(ConfigError, match=r"^trainer.devices: --devices 0,1 --accelerator auto --num-nodes 1: "
                                          r"`devices` selected with `CPUAccelerator` should be an int > 0.$"):
        train_style(_tiny(tmp_path / "run", data, **{"trainer.devices": "0,1"}))
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="device indices are valid with a GPU")
def test_the_command_prints_a_warning_as_one_line(tmp_path, photos, capsys):
    """Python's warning format printed the library's file, line and source line under each warning."""
    root = tmp_path / "shop"
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True)
        for photo in photos[:2]:
            shutil.copyfile(photo, root / split / photo.name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("default", UserWarning)
        code = main(["train", "style", "--data", str(root), "--format", "folders", "--out", str(tmp_path / "run"),
                     "--devices", "0,1", "--image-size", "32"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fashionlens:")]  # not Lightning's logging
    assert code == 2 and len(lines) == 2 and "UserWarning" not in err
    assert lines[0].startswith(f"fashionlens: warning: {root}: label folder(s) named like splits: train, validation;")
    assert lines[1].startswith("fashionlens: error: trainer.devices: --devices 0,1")


# -------------------------------------------------------------------------------------------- label names


def _manifest(folder: Path, photos: list[Path], cells: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for photo in photos:
        shutil.copyfile(photo, folder / photo.name)
    manifest = folder / "labels.csv"
    manifest.write_text("image,labels\n" + "".join(f"{p.name},{cell}\n" for p, cell in zip(photos, cells)),
                        encoding="utf-8")
    return manifest


def test_label_names_are_normalised_and_look_alikes_warned_about(tmp_path, photos):
    """"drеss" (Cyrillic е), "pants\\u200b" and "\\u202epants" became labels of their own, 0 problems."""
    manifest = _manifest(tmp_path / "m", photos, ["dress", "dr\u0435ss", "pants\u200b", "\u202eskirt"])
    with pytest.warns(UserWarning) as caught:
        dataset = open_dataset(manifest, "manifest")
    assert dataset.label_names == ["dress", "dr\u0435ss", "pants", "skirt"]
    messages = [str(w.message) for w in caught]
    assert ("label names normalised (NFKC, format characters removed): 'pants\\u200b' -> 'pants', "
            "'\\u202eskirt' -> 'skirt'") in messages
    assert ("label names 'dress' ('dress'), 'drеss' ('dr\\u0435ss') look alike: write them one way (or map one to "
            "the other with --aliases)") in messages
    report = check_dataset(manifest, "manifest")
    assert any("look alike" in warning for warning in report.warnings)


def test_two_labels_that_normalise_to_one_name_are_an_error_naming_the_file(tmp_path, photos):
    manifest = _manifest(tmp_path / "m", photos, ["pants", "pants\u200b", "dress", "dress"])
    with pytest.raises(DataError, match=re.escape(
            f"{manifest}: labels 'pants', 'pants\\u200b' are one name once normalised (NFKC, format characters such "
            f"as zero-width spaces removed): write them the same way, 'pants'")):
        open_dataset(manifest, "manifest")
