"""The typed configuration: defaults, overrides, YAML round trips, unknown keys, and the CLI edge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fashionlens import cli
from fashionlens.compare import VARIANTS, variant_config
from fashionlens.config import (
    RECIPES,
    ClothingConfig,
    ConfigError,
    DataConfig,
    DataSource,
    StyleConfig,
    dump_yaml,
    load_yaml,
    override,
    to_dict,
    validate,
)
from fashionlens.models.knobs import network_fields, with_network_defaults

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "examples" / "clothing-attributes-mini"


def _parse(*argv: str):
    return cli.training_config(cli.build_parser().parse_args(list(argv)))


def test_configs_are_frozen_and_override_returns_a_new_one():
    config = StyleConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.recipe.lr = 1.0  # type: ignore[misc]
    changed = override(config, {"recipe.lr": "0.01", "head": {"kind": "linear"}, "backbone.image_size": "96"})
    assert changed.recipe.lr == 0.01 and changed.head.kind == "linear" and changed.backbone.image_size == 96
    assert config.recipe.lr is None and config.head.kind is None


def test_the_network_knobs_take_the_networks_defaults():
    # backbone, head and model default to None: the network's config (models/) holds the default, once.
    style, clothing = with_network_defaults(StyleConfig()), with_network_defaults(ClothingConfig())
    assert (style.backbone.name, style.backbone.image_size, style.head.kind, style.head.pool, style.head.hidden_dim,
            style.head.bias) == ("tf_efficientnet_lite0", 224, "mlgcn", "max", 1024, True)
    assert (clothing.backbone.name, clothing.model.stage, clothing.head.kind, clothing.model.heatmap_size) == \
        ("mobilenet_v2", "stride16", "linear", 56)
    given = with_network_defaults(override(StyleConfig(), {"head.kind": "linear", "backbone.image_size": 96}))
    assert (given.head.kind, given.backbone.image_size, given.head.pool) == ("linear", 96, "max")


@pytest.mark.parametrize("changes, message", [
    ({"recipe.lrr": 0.1}, r"recipe.lrr: unknown key; RecipeConfig has optimizer, lr, lrp"),
    ({"heads": {"kind": "linear"}}, r"heads: unknown key; StyleConfig has out, data, backbone"),
    ({"recipe.epochs": "ten"}, r"recipe.epochs: expected an integer, found 'ten'"),
    ({"head.bias": "yes"}, r"head.bias: expected true or false, found 'yes'"),
])
def test_unknown_keys_and_bad_values_are_errors_that_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        override(StyleConfig(), changes)


def test_validate_names_the_field_with_a_bad_choice_or_range(tmp_path: Path):
    base = override(StyleConfig(), {"out": tmp_path, "data.sources": [DataSource(MINI, "clothing-attributes")]})
    assert validate(base) is base
    with pytest.raises(ConfigError, match=r"recipe.optimizer: 'lamb' is not one of sgd, adamw, adam"):
        validate(override(base, {"recipe.optimizer": "lamb"}))
    with pytest.raises(ConfigError, match=r"data.val_split: must be between 0 and 1, got 1.5"):
        validate(override(base, {"data.val_split": 1.5}))
    with pytest.raises(ConfigError, match=r"data.sources: no dataset given"):
        validate(override(base, {"data.sources": []}))


def test_yaml_round_trip_is_exact(tmp_path: Path):
    config = override(ClothingConfig(), {"out": tmp_path / "run", "data.sources": [DataSource(MINI, "clothing-attributes")],
                                         "model.lambdas": [1.0, 10.0, 5.0], "graph.min_lift": 1.25})
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(config))
    assert load_yaml(ClothingConfig, path) == config


def test_a_config_file_with_a_typo_names_the_file_and_the_key(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("recipe:\n  epochs: 3\n  leraning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: recipe.leraning_rate: unknown key"):
        load_yaml(StyleConfig, path)
    path.write_text("recipe: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:\d+: not valid YAML"):
        load_yaml(StyleConfig, path)
    path.write_text(dump_yaml(ClothingConfig()))
    with pytest.raises(ConfigError, match=r"task: this config is for `train clothing`, not `train style`"):
        load_yaml(StyleConfig, path)


def test_cli_flags_override_the_config_file_which_overrides_the_defaults(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(override(StyleConfig(), {"out": tmp_path / "a", "recipe.epochs": 3, "recipe.lr": 0.5,
                                                       "data.sources": [DataSource(MINI, "clothing-attributes")]})))
    config = _parse("train", "style", "--config", str(path), "--lr", "0.02", "--head", "linear")
    assert config.recipe.epochs == 3 and config.recipe.lr == 0.02 and config.head.kind == "linear"
    assert config.data.sources == (DataSource(MINI, "clothing-attributes"),)
    assert config.backbone == StyleConfig().backbone  # untouched: the defaults


def test_cli_recipes_and_repeated_data(tmp_path: Path):
    config = _parse("train", "style", "--data", str(MINI), "--data", str(tmp_path), "--format", "clothing-attributes",
                    "--format", "folders", "--out", str(tmp_path / "r"), "--recipe", "reference", "--epochs", "2")
    assert config.recipe == dataclasses.replace(RECIPES["reference"], epochs=2)
    assert [s.format for s in config.data.sources] == ["clothing-attributes", "folders"]
    with pytest.raises(ConfigError, match=r"--format: give one format for all --data, or one per --data"):
        _parse("train", "style", "--data", str(MINI), "--data", str(tmp_path), "--data", str(tmp_path),
               "--format", "manifest", "--format", "folders", "--out", str(tmp_path))
    clothing = _parse("train", "clothing", "--data", str(tmp_path), "--out", str(tmp_path / "c"), "--no-glem",
                      "--attr-head", "plain")
    assert clothing.data.format == "deepfashion" and clothing.model.landmarks == "convs"
    assert clothing.head.kind == "linear"
    query = _parse("train", "clothing", "--data", str(tmp_path), "--out", str(tmp_path / "q"), "--attr-head", "query",
                   "--query-init", "gcn", "--query-dim", "64")
    assert network_fields(query) | {"query_init": "gcn", "query_dim": 64, "attr_head": "query"} == network_fields(query)


def test_every_compare_variant_is_a_valid_override(tmp_path: Path):
    base = override(StyleConfig(), {"out": tmp_path, "data.sources": [DataSource(MINI, "clothing-attributes")]})
    for name in VARIANTS:
        config = validate(variant_config(base, name))
        assert config.out == tmp_path / name
    assert variant_config(base, "linear-max-scratch").backbone.pretrained == "none"
    with pytest.raises(ValueError, match="unknown variant 'linear-mx'"):
        variant_config(base, "linear-mx")


@pytest.mark.slow
def test_a_saved_config_yaml_reproduces_its_run(tmp_path: Path):
    """Train from flags, then twice from the run's own config.yaml: the same metrics each time."""
    first = tmp_path / "first"
    code = cli.main(["train", "style", "--data", str(MINI), "--format", "clothing-attributes", "--out", str(first),
                     "--image-size", "64", "--epochs", "2", "--limit", "80", "--val-split", "0.25",
                     "--batch-size", "16", "--workers", "0", "--drop-empty-labels", "--head", "mlgcn",
                     "--embeddings", "onehot", "--seed", "3"])
    assert code == 0
    saved = load_yaml(StyleConfig, first / "config.yaml")
    assert saved.recipe.seed == 3 and saved.graph.embeddings == "onehot"
    runs = []
    for name in ("again", "and-again"):
        out = tmp_path / name
        assert cli.main(["train", "style", "--config", str(first / "config.yaml"), "--out", str(out)]) == 0
        assert to_dict(load_yaml(StyleConfig, out / "config.yaml")) == {**to_dict(saved), "out": str(out)}
        runs.append(json.loads((out / "metrics.json").read_text()))
    original = json.loads((first / "metrics.json").read_text())
    assert runs[0] == runs[1] == original
    assert 0.0 < original["mAP"] <= 100.0


@pytest.mark.parametrize("argv, message", [
    (["predict", "garment-tagger-lite0", "x.jpg", "--top-k", "0"], "argument --top-k: must be at least 1, got 0"),
    (["predict", "garment-tagger-lite0", "x.jpg", "--top-k", "-1"], "argument --top-k: must be at least 1, got -1"),
    (["predict", "garment-tagger-lite0", "x.jpg", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["search", "x.index", "y.jpg", "--k", "-1"], "argument --k: must be at least 1, got -1"),
    (["train", "style", "--data", "x", "--lr", "inf"], "argument --lr: must be a finite number above 0, got inf"),
    (["train", "style", "--data", "x", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["evaluate", "m", "--data", "x", "--batch-size", "two"], "argument --batch-size: expected a whole number, got 'two'"),
])
def test_numbers_on_the_command_line_are_checked_where_they_are_read(argv, message, capsys):
    """Issue 27 item 13: --top-k 0/-1 and search --k -1 were accepted (search returned 1 result), batch
    size 0 did not name the flag, --lr inf trained until the loss was NaN."""
    from fashionlens.cli import main

    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("changes, message", [
    ({"data.limit": -5}, "data.limit: must be at least 1, got -5"),
    ({"data.batch_size": 0}, "data.batch_size: must be at least 1, got 0"),
    ({"data.workers": -1}, "data.workers: must be at least 0, got -1"),
    ({"recipe.lr": float("inf")}, "recipe.lr: must be a finite number, got inf"),
    ({"recipe.weight_decay": float("nan")}, "recipe.weight_decay: must be a finite number, got nan"),
])
def test_numbers_in_a_config_file_meet_the_flags_bounds(changes, message):
    """Issue 27 item 13: the flags checked these, but `--config` with data.limit -5, batch_size 0 or lr inf
    was accepted."""
    config = override(StyleConfig(out=Path("run"), data=DataConfig(sources=(DataSource(REPO, "folders"),))), changes)
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_an_image_size_past_1024_is_refused_before_training(tmp_path, capsys):
    """Issue 27 item 9: --image-size 4096 trained into an allocator traceback after 36 s."""
    from fashionlens.cli import main

    code = main(["train", "style", "--data", str(REPO / "examples" / "clothing-attributes-mini"), "--format",
                 "clothing-attributes", "--image-size", "4096", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "backbone.image_size: must be from 16 to 1024 px, got 4096" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
