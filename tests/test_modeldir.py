"""Model directories from anywhere: every file is checked against what save_model_dir writes, and
each problem is one ModelDirError naming the file and the key; what the project writes still loads."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import PREPROCESSING, clothing_model_dir

from fashionlens.errors import ModelDirError
from fashionlens.inference import load
from fashionlens.modeldir import load_model_dir, save_model_dir

NAMES = ["floral", "striped", "plaid", "solid_color", "spotted"]


@pytest.fixture(scope="module")
def style_dir(tmp_path_factory) -> Path:
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": "mlgcn", "num_labels": len(NAMES), "image_size": 64, "hidden_dim": 32, "embedding_dim": 8}
    model = build_style_model(config, embeddings=torch.randn(len(NAMES), 8), adjacency=torch.eye(len(NAMES)))
    labels = {"label_names": NAMES, "display_names": [name.title() for name in NAMES], "words": NAMES}
    return save_model_dir(tmp_path_factory.mktemp("style") / "model", model, config, labels,
                          {**PREPROCESSING, "image_size": 64}, graph={"nodes": NAMES, "edges": []})


@pytest.fixture(scope="module")
def clothing_dir(tmp_path_factory) -> Path:
    return clothing_model_dir(tmp_path_factory.mktemp("clothing") / "model")


def _copy(directory: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(directory, copy)
    return copy


def _edit(directory: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / name
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.pop(key)


def _shorten(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.__setitem__(key, payload[key][:-1])


def test_what_the_project_writes_loads(style_dir: Path, clothing_dir: Path) -> None:
    for directory in (style_dir, clothing_dir):
        bundle = load_model_dir(directory)
        assert bundle.labels == json.loads((directory / "labels.json").read_text())



def test_a_mapping_of_keys_is_a_new_network_and_config_json_is_the_whole_config(style_dir: Path) -> None:
    """Old files' defaults (deconv upsampler, no flip test, no ML-GCN bias) apply to a config.json
    lacking a key, never to a new network built or saved from a few keys."""
    from fashionlens.models.landmark_net import build_clothing_model
    from fashionlens.models.netconfig import ClothingNetConfig, StyleNetConfig

    model = build_clothing_model({"pretrained": "none", "num_categories": 3, "num_attributes": 4, "image_size": 64})
    assert model.config.upsample == "bilinear" and model.config.flip_test
    assert ClothingNetConfig.from_dict({}).upsample == "deconv" and not ClothingNetConfig.from_dict({}).flip_test
    with pytest.raises(ValueError, match=r"'upsampler': not a key of a clothing model's config \(it has "):
        build_clothing_model({"num_categories": 3, "upsampler": "bilinear"})
    written = json.loads((style_dir / "config.json").read_text())  # saved from a 9-key mapping
    assert set(written) == {field.name for field in dataclasses.fields(StyleNetConfig)} | {"format_version"}
    assert written["bias"] is True and load_model_dir(style_dir).config["bias"] is True


STYLE_CASES = [
    ("display_names too short", "labels.json", _shorten("display_names"),
     r"labels\.json: 'display_names': expected 5 entries \(one per entry of 'label_names'\), found 4"),
    ("words too long", "labels.json", _set("words", [*NAMES, "extra"]), r"labels\.json: 'words': expected 5 entries"),
    ("label names repeated", "labels.json", _set("label_names", ["floral"] * 5),
     r"labels\.json: 'label_names': expected unique names, found repeated \['floral'\]"),
    ("a label that is not text", "labels.json", _set("label_names", [*NAMES[:4], 5]),
     r"labels\.json: 'label_names': expected a list of strings"),
    ("labels for another model", "labels.json",
     lambda labels: labels.update({key: labels[key][:3] for key in ("label_names", "display_names", "words")}),
     r"config.json says 5 labels, labels.json lists 3"),
    ("preprocessing without mean", "preprocessing.json", _drop("mean"),
     r"preprocessing\.json: 'mean' is missing; preprocessing\.json holds image_size, mean and std"),
    ("preprocessing without image_size", "preprocessing.json", _drop("image_size"),
     r"preprocessing\.json: 'image_size' is missing"),
    ("image_size 100000", "preprocessing.json", _set("image_size", 100000),
     r"preprocessing\.json: 'image_size': expected an integer from 16 to 1024 \(pixels\), found 100000 \(a number\)"),
    ("image_size 2048", "preprocessing.json", _set("image_size", 2048),  # issue 27 item 9: 2.5 GB for one photo
     r"preprocessing\.json: 'image_size': expected an integer from 16 to 1024 \(pixels\), found 2048"),
    ("image_size 2048 in config.json", "config.json", _set("image_size", 2048), r"config\.json: .*'image_size'"),
    ("image_size 0", "preprocessing.json", _set("image_size", 0), r"'image_size': expected an integer from 16"),
    ("image_size -5", "preprocessing.json", _set("image_size", -5), r"'image_size': expected an integer from 16"),
    ("image_size as text", "preprocessing.json", _set("image_size", "224"), r"found '224' \(a string\)"),
    ("mean of length 1", "preprocessing.json", _set("mean", [0.5]),
     r"preprocessing\.json: 'mean': expected a list of 3 finite numbers \(R, G, B\), found a list of 1"),
    ("std of zero", "preprocessing.json", _set("std", [0.5, 0.0, 0.5]),
     r"preprocessing\.json: 'std': expected 3 numbers above 0"),
    ("an unknown resize", "preprocessing.json", _set("resize", "letterbox"), r"'resize': expected 'square'"),
    ("hidden_dim 1e9", "config.json", _set("hidden_dim", 1e9),
     r"config\.json: 'hidden_dim': expected an integer from 1 to 65536, found 1000000000\.0 \(a number\)"),
    ("hidden_dim 10 million", "config.json", _set("hidden_dim", 10_000_000), r"'hidden_dim': expected an integer"),
    ("format_version 99", "config.json", _set("format_version", 99),
     r"config\.json: 'format_version': expected a format version this fashionlens reads \(1; .*\), found 99"),
    ("no format_version", "config.json", _drop("format_version"), r"'format_version': expected .* found null"),
    ("an unknown task", "config.json", _set("task", "detection"), r"'task': expected 'style' or 'clothing'"),
    ("a flag that is not one", "config.json", _set("residual", "yes"), r"'residual': expected true or false"),
    ("a pool that is not one", "config.json", _set("pool", "sum"),
     r"config\.json: 'pool': expected 'max' or 'avg', found 'sum' \(a string\)"),
    ("a key no network has", "config.json", _set("heads", 3),
     r"config\.json: 'heads': not a key of a style model's config\.json \(it has num_labels, task, "),
    ("a non-finite number", "config.json", _set("p", float("inf")),
     r"corrupt JSON \(the non-finite number Infinity, which JSON does not have\)"),
    ("an unknown backbone", "config.json", _set("backbone", "no_such_net"),
     r"config\.json: cannot build the network it describes"),
]


@pytest.mark.parametrize("case, name, change, message", STYLE_CASES, ids=[case[0] for case in STYLE_CASES])
def test_each_bad_value_is_refused_naming_the_file_and_key(style_dir: Path, tmp_path: Path, case: str, name: str,
                                                           change: Callable, message: str) -> None:
    broken = _copy(style_dir, tmp_path)
    _edit(broken, name, change)
    with pytest.raises(ModelDirError, match=message) as caught:
        load_model_dir(broken)
    assert str(broken) in str(caught.value)


CLOTHING_CASES = [
    ("attribute_types too short", _shorten("attribute_types"),
     r"labels\.json: 'attribute_types': expected 6 entries \(one per entry of 'label_names'\), found 5"),
    ("category_names too short", _shorten("category_names"),
     r"labels\.json: 'category_names': expected 4 entries \(one per model output\), found 3"),
    ("landmark_names too short", _shorten("landmark_names"), r"labels\.json: 'landmark_names': expected 8 entries"),
]


@pytest.mark.parametrize("case, change, message", CLOTHING_CASES, ids=[case[0] for case in CLOTHING_CASES])
def test_clothing_names_must_cover_every_output(clothing_dir: Path, tmp_path: Path, case: str, change: Callable,
                                                message: str) -> None:
    broken = _copy(clothing_dir, tmp_path)
    _edit(broken, "labels.json", change)
    with pytest.raises(ModelDirError, match=message):
        load(broken)  # the Predictor's door: it used to truncate predictions to the shorter list


@pytest.mark.parametrize("case, content, message", [
    ("a list", b"[]", r"labels\.json: expected a JSON object \{\.\.\.\}, found a list of 0"),
    ("100,000 levels deep", b'{"label_names": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     r"labels\.json: JSON nested too deep \(more than 32 levels\)"),
    ("40 levels deep", b'{"label_names": ' + b"[" * 40 + b"]" * 40 + b"}", r"labels\.json: JSON nested too deep"),
    ("Latin-1", '{"label_names": ["café"]}'.encode("latin-1"),
     r"labels\.json: not UTF-8 text \(byte 0xe9 at position 21\)"),
    ("UTF-16", '{"label_names": ["floral"]}'.encode("utf-16"), r"labels\.json: not UTF-8 text \(byte 0xff"),
    ("NaN", b'{"label_names": NaN}', r"labels\.json: corrupt JSON \(the non-finite number NaN"),
])
def test_malformed_json_names_the_file(style_dir: Path, tmp_path: Path, case: str, content: bytes,
                                       message: str) -> None:
    broken = _copy(style_dir, tmp_path)
    (broken / "labels.json").write_bytes(content)
    with pytest.raises(ModelDirError, match=message) as caught:
        load(broken)
    assert str(caught.value).startswith(str(broken / "labels.json"))


def test_a_huge_network_is_refused_by_its_shapes_before_any_allocation(style_dir: Path, tmp_path: Path) -> None:
    broken = _copy(style_dir, tmp_path)
    # In range on its own, but 65536 x 1280 floats in the graph head alone: the shapes are compared
    # with the weights' header on the meta device, so nothing of that size is ever allocated.
    _edit(broken, "config.json", _set("hidden_dim", 65536))
    with pytest.raises(ModelDirError, match=r"model\.safetensors: weights do not match config\.json "
                                            r"\(.*where config\.json needs \(.*65536"):
        load_model_dir(broken)


def test_non_finite_weights_are_refused_at_load(style_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = _copy(style_dir, tmp_path)
    state = load_file(str(broken / "model.safetensors"))
    name = next(key for key, tensor in state.items() if key.startswith("head") and tensor.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[:3] = float("nan")
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(ModelDirError, match=rf"model\.safetensors: tensor '{name}' holds 3 non-finite values "
                                            r"\(NaN or infinity\)"):
        load(broken)


@pytest.mark.parametrize("name", ["labels.json", "model.safetensors"])
def test_a_symbolic_link_leading_outside_the_directory_is_refused(style_dir: Path, tmp_path: Path,
                                                                  name: str) -> None:
    broken = _copy(style_dir, tmp_path)
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    (broken / name).rename(outside)
    (broken / name).symlink_to(outside)
    with pytest.raises(ModelDirError, match=rf"{name}: a symbolic link to {outside}, outside the model directory"):
        load_model_dir(broken)
    # A link inside the directory is the directory's own file.
    inside = broken / "files" / name
    inside.parent.mkdir()
    outside.rename(inside)
    (broken / name).unlink()
    (broken / name).symlink_to(Path("files") / name)
    assert load_model_dir(broken).labels["label_names"] == NAMES


def test_a_model_directory_reached_through_a_link_loads(style_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "latest").symlink_to(style_dir)  # e.g. models/latest -> runs/x/model
    assert load_model_dir(tmp_path / "latest").labels["label_names"] == NAMES


def test_a_repeated_label_in_a_huge_labels_json_is_refused_at_once(tmp_path):
    """Issue 27 item 7: 10^6 labels with one repeat ran past 120 s (a count per name); 40,000 labels
    with a repeat took 30 s. Sizes are checked first and repeats found in linear time."""
    import time

    from fashionlens.errors import ModelDirError
    from fashionlens.modeldir import _check_labels

    names = [f"label_{i}" for i in range(40_000)] + ["label_7"]
    start = time.perf_counter()
    with pytest.raises(ModelDirError, match=r"expected unique names, found repeated \['label_7'\]"):
        _check_labels(tmp_path / "labels.json", {"label_names": names})
    with pytest.raises(ModelDirError, match=r"'label_names': 1000001 entries, more than 65536"):
        _check_labels(tmp_path / "labels.json", {"label_names": [f"x{i}" for i in range(1_000_000)] + ["x1"]})
    assert time.perf_counter() - start < 5.0
