"""Released models by name (fashionlens.hub): the resolution order (a path, the package, the user cache,
the Hub), the Hub path offline against a cache laid out as huggingface_hub writes it, the integrity
manifest, the cards and `fashionlens models`. No test touches the network."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest

import fashionlens
from fashionlens import hub, modeldir
from fashionlens.cli import main
from fashionlens.errors import ModelDirError
from fashionlens.fileio import atomic_write_json
from fashionlens.modeldir import load_model_dir

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
# Held out by garment-attributes-lite0 and garment-category-mnv2, the releases the tests load it with.
PHOTO = REPO / "examples" / "clothing-attributes-mini" / "images" / "000016.jpg"
RELEASED = {"garment-attributes-lite0": "clothing-attributes-lite0", "garment-category-mnv2": "garment-category-mnv2",
            "garment-tagger-lite0": "garment-tagger-lite0", "garment-landmarks-mnv2": "garment-landmarks-mnv2"}
SMALL = "garment-category-mnv2"  # 8.8 MB: the one the tests copy about


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache, the Hub offline, and no configured Hub org, for every test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASHIONLENS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(hub.HUB_ORG_VARIABLE, raising=False)
    return cache


def _copy(name: str, destination: Path) -> Path:
    return Path(shutil.copytree(MODELS / name, destination, ignore=shutil.ignore_patterns("model.onnx")))


def _release_copy(source: Path, name: str) -> Path:
    """What scripts/release_model.py does: a card under ``name``, then the manifest."""
    atomic_write_json(source / hub.CARD_FILE, hub.card_for_release(source, name, "a test release"))
    modeldir.write_manifest(source)
    return source


def _hub_cache(cache: Path, repo_id: str, model: Path, revision: str = "0123456789abcdef0123456789abcdef01234567"
               ) -> Path:
    """A Hub repository in ``cache`` as huggingface_hub's snapshot_download leaves it: files in blobs/ named by
    their hash, the snapshot folder of links into ../../blobs/, refs/main holding the revision."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for file in sorted(model.iterdir()):
        blob = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / blob)
        (snapshot / file.name).symlink_to(Path("..") / ".." / "blobs" / blob)
    return snapshot


# --- names and where they resolve from -------------------------------------------------------------

def test_each_release_answers_to_its_short_name_and_its_folder_name():
    package = {entry.name: entry for entry in hub.released_models() if entry.source == "package"}
    assert set(package) == set(RELEASED)
    # A release answers to its folder name too, and a replaced release's folder name stays an alias.
    aliases = {"garment-attributes-lite0": ("clothing-attributes-lite0",),
               "garment-category-mnv2": ("clothing-category-attributes-mnv2",), "garment-tagger-lite0": (),
               "garment-landmarks-mnv2": ()}
    for name, folder in RELEASED.items():
        assert package[name].aliases == aliases[name]
        for alias in aliases[name]:
            assert hub.resolve_model_dir(alias) == hub.package_models_dir() / folder
        assert hub.resolve_model_dir(name) == hub.resolve_model_dir(folder) == hub.package_models_dir() / folder
        assert (hub.resolve_model_dir(name) / "config.json").samefile(MODELS / folder / "config.json")


def test_the_package_data_is_the_models_folder():
    """The wheel carries fashionlens/released/*/* (pyproject.toml); in the clone that folder is models/."""
    assert hub.package_models_dir().resolve() == MODELS.resolve()
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "released/*/*" in setuptools["package-data"]["fashionlens"]
    assert "released/*/model.onnx" in setuptools["exclude-package-data"]["fashionlens"]


def test_an_existing_path_comes_before_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garment-attributes-lite0").mkdir()
    assert hub.resolve_model_dir("garment-attributes-lite0") == Path("garment-attributes-lite0")
    assert hub.resolve_model_dir(MODELS / SMALL) == MODELS / SMALL


def test_the_user_cache_answers_after_the_package(_isolated: Path):
    mine = _copy(SMALL, _isolated / "my-model")
    assert hub.resolve_model_dir("my-model") == mine
    _release_copy(mine, "sleeve-tagger")
    assert hub.resolve_model_dir("sleeve-tagger") == mine  # by its card's name too
    modeldir.verify_manifest(hub.resolve_model_dir("sleeve-tagger"))
    shadowed = _copy(SMALL, _isolated / "garment-attributes-lite0")
    assert hub.resolve_model_dir("garment-attributes-lite0") == hub.package_models_dir() / RELEASED[
        "garment-attributes-lite0"]
    shadowed_row = next(line for line in hub.format_models(hub.released_models()).splitlines()
                        if "shadowed" in line)
    assert shadowed_row.startswith("garment-category-mnv2 ") and hub.read_card(shadowed)["name"] in shadowed_row


def test_the_default_cache_is_under_the_home_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("FASHIONLENS_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.cache_dir() == tmp_path / ".cache" / "fashionlens" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "fashionlens" / "models"


@pytest.mark.parametrize("given", ["street-tagger", "models/clothing-attributes-lite0"])
def test_an_unknown_name_lists_the_known_names(given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # outside the clone, where models/... is not a path
    with pytest.raises(ModelDirError) as error:
        hub.resolve_model_dir(given)
    message = str(error.value)
    for name, folder in RELEASED.items():
        assert name in message and folder in message
    assert "hf://ORG/NAME" in message
    if "/" in given:
        assert "no such model directory" in message and "Did you mean 'garment-attributes-lite0'?" in message


def test_the_cli_says_the_known_names_for_an_unknown_one(capsys: pytest.CaptureFixture[str]):
    assert main(["predict", "street-tagger", str(PHOTO)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fashionlens: error: 'street-tagger' is neither a model directory")
    assert "garment-attributes-lite0" in err and "garment-category-mnv2" in err


def test_load_takes_a_name_and_predicts():
    result = fashionlens.load("garment-category-mnv2")(str(PHOTO))
    assert result.task == "clothing" and len(result.category_top_k) == 5


# --- the Hub, offline -----------------------------------------------------------------------------

def test_a_hub_model_loads_offline_from_a_cache_laid_out_as_huggingface_hub_writes_it(
        _isolated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    model = _release_copy(_copy(SMALL, tmp_path / "upload"), "hub-garments")
    snapshot = _hub_cache(_isolated, "someone/hub-garments", model)
    predictor = fashionlens.load("hf://someone/hub-garments")
    assert predictor(str(PHOTO)).task == "clothing"
    # Loaded from a folder of the snapshot's own files (a model directory refuses links out of itself).
    loaded = Path(predictor.model_dir)
    assert loaded.parent.parent == _isolated / hub.LINKED_SNAPSHOTS and loaded.name == snapshot.name
    assert not any(item.is_symlink() for item in loaded.iterdir())
    assert sorted(item.name for item in loaded.iterdir()) == sorted(item.name for item in snapshot.iterdir())
    # The CLI: argparse's Path turns hf://someone/... into hf:/someone/...; a revision; the card's name.
    assert main(["predict", "hf://someone/hub-garments", str(PHOTO), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["task"] == "clothing"
    assert hub.resolve_model_dir(f"hf://someone/hub-garments@{snapshot.name}") == loaded
    assert hub.resolve_model_dir("hub-garments") == loaded
    listed = {entry.name: entry for entry in hub.released_models()}
    assert listed["hub-garments"].source == "hub" and "hf://someone/hub-garments" in listed["hub-garments"].aliases


def test_a_configured_hub_org_answers_plain_names(_isolated: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    snapshot = _hub_cache(_isolated, "ourlab/collar-finder", _copy(SMALL, tmp_path / "upload"))  # no card
    monkeypatch.setenv(hub.HUB_ORG_VARIABLE, "ourlab")
    assert hub.resolve_model_dir("collar-finder").name == snapshot.name


def test_a_hub_model_not_in_the_cache_is_an_error_saying_so(_isolated: Path):
    with pytest.raises(ModelDirError, match=r"hf://someone/absent: not in the cache .* HF_HUB_OFFLINE=1"):
        hub.resolve_model_dir("hf://someone/absent")
    with pytest.raises(ModelDirError, match="hf://ORG/NAME"):
        hub.resolve_model_dir("hf:/just-a-name")


def test_a_tampered_hub_blob_is_caught_by_the_manifest(_isolated: Path, tmp_path: Path):
    model = _release_copy(_copy(SMALL, tmp_path / "upload"), "hub-garments")
    snapshot = _hub_cache(_isolated, "someone/hub-garments", model)
    blob = (snapshot / "labels.json").resolve()
    blob.write_bytes(blob.read_bytes().replace(b"collar", b"collie"))
    with pytest.raises(ModelDirError, match=r"labels\.json: SHA-256 .* the file changed since release"):
        load_model_dir(hub.resolve_model_dir("hf://someone/hub-garments"))


def _as_another_user(script: str) -> None:
    """Run a shell script as the user nobody where this test runs as root (a second user on the machine),
    else as this user: the attacker's side of a shared cache."""
    import os
    import subprocess

    command = ["su", "nobody", "-s", "/bin/sh", "-c", script] if os.geteuid() == 0 and shutil.which("su") \
        else ["sh", "-c", script]
    subprocess.run(command, check=True, timeout=30)


def test_a_planted_link_in_a_shared_cache_never_reaches_outside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import tempfile
    import warnings

    victim = tmp_path / "victim"
    (victim / "0123456789abcdef0123456789abcdef01234567").mkdir(parents=True)
    (victim / "0123456789abcdef0123456789abcdef01234567" / "precious.txt").write_text("mine")
    model = _copy(SMALL, tmp_path / "upload")
    shared = Path(tempfile.mkdtemp(prefix="fashionlens-shared-cache-"))
    try:
        shared.chmod(0o1777)
        monkeypatch.setenv("FASHIONLENS_CACHE", str(shared))
        # The attacker: a Hub-style snapshot of links into blobs/, and .snapshots/models--evil--m linking to the
        # victim's folder, so that building the folder of hard links would rmtree the victim's one of that name.
        stage = Path(tempfile.mkdtemp(prefix="fashionlens-attacker-"))
        stage.chmod(0o755)
        _hub_cache(stage, "evil/m", model)
        _as_another_user(f"cp -a {stage}/models--evil--m {shared}/ && mkdir {shared}/.snapshots && "
                         f"ln -s {victim} {shared}/.snapshots/models--evil--m")
        shutil.rmtree(stage)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # A package model never reads the cache: no warning, nothing written.
            assert hub.resolve_model_dir("garment-category-mnv2") == hub.package_models_dir() / SMALL
            assert not caught
            assert main(["models"]) == 0
            with pytest.raises(ModelDirError, match=r"models--evil--m/0123456789abcdef0123456789abcdef01234567: "
                                                    r"a link to .*victim.*, outside the model cache .*: not followed"):
                hub.resolve_model_dir("hf://evil/m")
        assert [str(w.message) for w in caught][0].startswith(f"{shared}: the model cache is writable by other "
                                                              f"users (mode drwxrwxrwt")
        assert sorted(path.name for path in victim.rglob("*")) == ["0123456789abcdef0123456789abcdef01234567",
                                                                   "precious.txt"]
        assert (victim / "0123456789abcdef0123456789abcdef01234567" / "precious.txt").read_text() == "mine"
    finally:
        shutil.rmtree(shared)


def test_a_cache_folder_linking_out_of_the_cache_is_listed_not_loaded(_isolated: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]):
    outside = _copy(SMALL, tmp_path / "elsewhere")
    _isolated.mkdir()
    (_isolated / "linked-model").symlink_to(outside)
    assert main(["models"]) == 0
    assert f"linked-model: {_isolated / 'linked-model'}: a link to {outside}, outside the cache: not used" in \
        capsys.readouterr().out
    with pytest.raises(ModelDirError, match="outside the cache: not used"):
        hub.resolve_model_dir("linked-model")


def test_a_ref_naming_a_path_is_not_a_snapshot(_isolated: Path, tmp_path: Path):
    snapshot = _hub_cache(_isolated, "someone/hub-garments", _copy(SMALL, tmp_path / "upload"))
    _copy(SMALL, tmp_path / "outside")  # models--someone--hub-garments/snapshots/../../../outside
    (snapshot.parents[1] / "refs" / "main").write_text("../../../outside")
    assert [entry.name for entry in hub.released_models() if entry.source == "hub"] == []


# --- the integrity manifest -----------------------------------------------------------------------

def test_the_released_manifests_and_cards_are_up_to_date():
    """scripts/release_model.py --check: rerun the script after changing a release or its card's metrics."""
    for folder in RELEASED.values():
        directory = MODELS / folder
        modeldir.verify_manifest(directory)
        card = hub.read_card(directory)
        assert card == {**card, **hub.card_for_release(directory, card["name"], card["summary"],
                                                       tuple(card["aliases"]))}
        assert card["heldout"]["images"] == {"garment-attributes-lite0": 297, "garment-category-mnv2": 843,
                                             "garment-tagger-lite0": 1178, "garment-landmarks-mnv2": 500}[card["name"]]


@pytest.mark.parametrize("case", ["changed", "truncated", "missing", "added"])
def test_a_changed_missing_or_added_file_is_refused_naming_it(case: str, tmp_path: Path):
    directory = _copy(SMALL, tmp_path / "model")
    if case == "changed":  # same size, other bytes
        labels = directory / "labels.json"
        labels.write_bytes(labels.read_bytes().replace(b"collar", b"collie"))
        expected = r"labels\.json: SHA-256 .* where .*manifest\.json says"
    elif case == "truncated":
        weights = directory / "model.safetensors"
        size = weights.stat().st_size
        weights.write_bytes(weights.read_bytes()[:1000])
        expected = rf"model\.safetensors: 1000 bytes where .*manifest\.json says {size}"
    elif case == "missing":
        (directory / "preprocessing.json").unlink()
        expected = r"preprocessing\.json: missing; .*manifest\.json lists it"
    else:
        (directory / "graph.json").write_text("{}")
        expected = r"graph\.json: not in .*manifest\.json"
    with pytest.raises(ModelDirError, match=expected):
        load_model_dir(directory)


def test_documentation_files_may_change_and_a_directory_without_a_manifest_loads(tmp_path: Path):
    directory = _copy(SMALL, tmp_path / "model")
    with open(directory / "README.md", "a") as card:
        card.write("\nA wording fix.\n")
    (directory / "model.onnx").write_bytes(b"an export cache")
    modeldir.verify_manifest(directory)
    (directory / "preprocessing.json").write_text(
        (directory / "preprocessing.json").read_text().replace('"resize": "square"', '"resize":  "square"'))
    (directory / modeldir.MANIFEST_FILE).unlink()
    load_model_dir(directory)  # the changed file is not checked against a manifest that is not there


@pytest.mark.parametrize("files, expected", [
    ({"../config.json": {"sha256": "0" * 64, "size": 1}}, "not a plain file name"),
    ({"config.json": {"sha256": "abc", "size": 1}}, "64 lowercase hex digits"),
    ({}, "'files'"),
])
def test_a_malformed_manifest_is_refused(files: dict, expected: str, tmp_path: Path):
    directory = _copy(SMALL, tmp_path / "model")
    atomic_write_json(directory / modeldir.MANIFEST_FILE, {"manifest_version": 1, "algorithm": "sha256", "files": files})
    with pytest.raises(ModelDirError, match=expected):
        modeldir.verify_manifest(directory)


# --- cards and `fashionlens models` -------------------------------------------------------------------

def test_models_lists_name_task_outputs_size_and_heldout_figures(capsys: pytest.CaptureFixture[str]):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lite0 = next(line for line in out.splitlines() if line.startswith("garment-attributes-lite0 "))
    for cell in ("style", "37 labels", "19.1 MB", "mAP 70.9, CF1 58.5, OF1 75.6 (297 images)", "package"):
        assert cell in lite0
    mnv2 = next(line for line in out.splitlines() if line.startswith("garment-category-mnv2 "))
    for cell in ("clothing", "13 categories, 30 attributes", "8.8 MB",
                 "category top-1 75.9, catalogue top-1 77.9, attr mAP 60.9 (843 images)"):
        assert cell in mnv2
    tagger = next(line for line in out.splitlines() if line.startswith("garment-tagger-lite0 "))
    for cell in ("style", "83 labels", "catalogue top-1 85.1, street mAP 20.7 (1178 images)"):
        assert cell in tagger
    assert "garment-category-mnv2 also answers to clothing-category-attributes-mnv2" in out
    assert "garment-attributes-lite0 also answers to clothing-attributes-lite0" in out
    assert main(["models", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["garment-category-mnv2"]["heldout"]["metrics"]["category top-3"] == 92.4
    assert listed["garment-attributes-lite0"]["outputs"] == {"labels": 37}
    assert listed["garment-attributes-lite0"]["size_bytes"] > 19_000_000


def test_a_broken_card_in_the_cache_is_shown_not_fatal(_isolated: Path, capsys: pytest.CaptureFixture[str]):
    mine = _copy(SMALL, _isolated / "my-model")
    (mine / hub.CARD_FILE).write_text('{"card_version": 1, "name": "Bad Name"}')
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "my-model" in out and "'name': expected a model name" in out
    assert hub.resolve_model_dir("my-model") == mine


def test_the_release_script_writes_card_and_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    import runpy

    directory = _copy(SMALL, tmp_path / "model")
    (directory / hub.CARD_FILE).unlink()
    (directory / modeldir.MANIFEST_FILE).unlink()
    script = runpy.run_path(str(REPO / "scripts" / "release_model.py"))
    assert script["main"]([str(directory), "--check"]) == 1
    assert script["main"]([str(directory), "--name", "my-garments", "--summary", "one line"]) == 0
    assert script["main"]([str(directory), "--check"]) == 0
    card = hub.read_card(directory)
    assert (card["name"], card["aliases"], card["summary"]) == ("my-garments", ["model"], "one line")
    assert card["outputs"] == {"categories": 13, "attributes": 30}
    assert set(json.loads((directory / modeldir.MANIFEST_FILE).read_text())["files"]) == {
        "card.json", "config.json", "labels.json", "model.safetensors", "preprocessing.json", "thresholds.json"}
    # The figures live in card.json: given with --metric, kept by a later release, never read from README.md.
    assert script["main"]([str(directory), "--images", "297", "--metric", "mAP=76.0", "--metric", "top-3 (%)=52.5"]) == 0
    card = hub.read_card(directory)
    assert card["heldout"] == {"images": 297, "metrics": {"mAP": 76.0, "top-3 (%)": 52.5}, "headline": ["mAP"]}
    (directory / "README.md").write_text("# no metrics table at all\n")
    assert script["main"]([str(directory)]) == 0 and hub.read_card(directory)["heldout"] == card["heldout"]
    assert script["main"]([str(directory), "--check"]) == 0
    capsys.readouterr()
    assert script["main"]([str(directory), "--metric", "mAP=n/a"]) == 2
    assert "--metric 'mAP=n/a': expected NAME=NUMBER" in capsys.readouterr().err
    # A card edited by hand after release no longer matches the manifest.
    (directory / hub.CARD_FILE).write_text((directory / hub.CARD_FILE).read_text().replace("76.0", "77.0"))
    assert script["main"]([str(directory), "--check"]) == 1
    assert "card.json" in capsys.readouterr().out
