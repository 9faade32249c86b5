"""The model directory: everything `evaluate`, `predict`, `serve` and `export` need, and nothing else.

Layout (Hugging Face's `save_pretrained` shape, plus what torchvision's weight enums carry)::

    model/
      config.json         task, architecture and hyperparameters, enough to rebuild the network
      model.safetensors   weights, including the label graph and label-embedding buffers
      labels.json         label names, display names, category names, attribute types
      graph.json          the label graph's edges (for people and reports; the weights hold the matrix)
      preprocessing.json  input size, mean, std

Files are written to a temporary name and renamed, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from fashionlens.calibration import Thresholds
from fashionlens.config import IMAGE_SIZE_RANGE
from fashionlens.data.transforms import build_transforms
from fashionlens.errors import ModelDirError
from fashionlens.fileio import (
    atomic_write_bytes,
    atomic_write_json,
    check_inside,
    file_sha256,
    is_int,
    is_number,
    read_json_object,
    refuse,
)
from fashionlens.models.landmark_net import build_clothing_model
from fashionlens.models.mlgcn import build_style_model
from fashionlens.models.netconfig import MAX_SIZE, ClothingNetConfig, StyleNetConfig

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
# What a manifest covers: every file loading reads (the JSON files and the weights), so that a file
# added after release is noticed too. Documentation (README.md, heldout_images.txt) is left out, so
# that a wording fix in a model card does not stop the model loading; a model.onnx there is run by
# load(runtime="onnx") only when the manifest lists it or, without a manifest, when it names the weights' SHA-256.
COVERED_SUFFIXES = (".json", ".safetensors")
SHA256 = re.compile(r"[0-9a-f]{64}")
REQUIRED_FILES = ("config.json", "model.safetensors", "labels.json", "preprocessing.json")


@dataclass
class ModelBundle:
    """A loaded model directory."""

    model: nn.Module
    config: dict[str, Any]
    labels: dict[str, Any]
    preprocessing: dict[str, Any]
    graph: dict[str, Any] | None = None
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    thresholds: Any = None  # fashionlens.calibration.Thresholds, when the directory has thresholds.json

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def label_names(self) -> list[str]:
        return list(self.labels["label_names"])

    def eval_transform(self):
        """The evaluation transform this model was trained with (the one training and `evaluate`
        apply; the Predictor's ``data.transforms.ImagePreprocess`` gives the same floats, tested): a
        square resize to ``image_size``, then the backbone's mean/std."""
        return eval_transform(self.preprocessing)


def eval_transform(preprocessing: dict[str, Any]):
    """``build_transforms(train=False)`` for a model directory's ``preprocessing.json``."""
    return build_transforms(int(preprocessing["image_size"]), preprocessing["mean"], preprocessing["std"],
                            train=False)


def save_model_dir(path: Path, model: nn.Module, config: dict | StyleNetConfig | ClothingNetConfig, labels: dict,
                   preprocessing: dict, graph: dict | None = None, thresholds: dict | None = None) -> Path:
    """Write a model directory that `load_model_dir` (and nothing else) can turn back into the model;
    ``config`` is the network's config, or a mapping of its keys (the config's own defaults for the
    others); config.json is the whole config's dict, so that no default of a later version changes it."""
    if not dataclasses.is_dataclass(config):
        config = NETWORK_CONFIGS[config["task"]].new(config)
    config = dataclasses.asdict(config)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    config = {**config, "format_version": FORMAT_VERSION}
    atomic_write_bytes(path / "model.safetensors", save(state, metadata={"task": config["task"]}))
    atomic_write_json(path / "config.json", config)
    atomic_write_json(path / "labels.json", labels)
    atomic_write_json(path / "preprocessing.json", preprocessing)
    if graph is not None:
        atomic_write_json(path / "graph.json", graph)
    if thresholds is not None:
        atomic_write_json(path / "thresholds.json", thresholds)
    return path


def read_thresholds(path: Path, label_names: list[str]):
    """The per-label thresholds of a model directory (fashionlens.calibration.Thresholds), or None."""
    file = Path(path) / "thresholds.json"
    if not file.is_file():
        return None
    return Thresholds.from_json(read_json(file), list(label_names), where=str(file))


# ------------------------------------------------------------------------------------------------
# Checking a model directory. Directories come from the internet too: every file is checked against
# what save_model_dir writes (types, ranges, lengths, the format version) before anything is built,
# and each problem is one ModelDirError naming the file and the key.

KNOWN_FORMAT_VERSIONS = (1,)
RESIZE_MODES = ("square",)

NETWORK_CONFIGS = {"style": StyleNetConfig, "clothing": ClothingNetConfig}
BUILDERS = {"style": build_style_model, "clothing": build_clothing_model}


def read_json(path: Path) -> dict[str, Any]:
    """A model directory's JSON file, strictly (:func:`fashionlens.fileio.read_json_object`), then
    checked against its schema (by file name: config.json, labels.json, preprocessing.json)."""
    payload = read_json_object(Path(path))
    check = _FILE_CHECKS.get(Path(path).name)
    if check is not None:
        check(Path(path), payload)
    return payload


def _check_config(path: Path, config: dict[str, Any]) -> None:
    version = config.get("format_version")
    if not is_int(version) or version not in KNOWN_FORMAT_VERSIONS:
        raise refuse(path, "format_version", f"a format version this fashionlens reads "
                      f"({', '.join(map(str, KNOWN_FORMAT_VERSIONS))}; a newer fashionlens may read others)",
                      version)
    task = config.get("task")
    if task not in ("style", "clothing"):
        raise refuse(path, "task", "'style' or 'clothing'", task)
    network_config(path, config)


def network_config(path: Path, config: dict[str, Any]) -> StyleNetConfig | ClothingNetConfig:
    """A config.json's dict as its network's typed config (old keys renamed, every value checked there)."""
    try:
        return NETWORK_CONFIGS[config["task"]].from_dict(config)
    except (ValueError, TypeError) as error:
        raise ModelDirError(f"{path}: {error}") from None


def _check_string_list(path: Path, key: str, value: Any, length: int | None = None, unique: bool = False,
                       per: str = "model output") -> None:
    if not isinstance(value, list):
        raise refuse(path, key, "a list of strings", value)
    if len(value) > MAX_SIZE:  # first: every later check is linear, but a million names is no model
        raise ModelDirError(f"{path}: {key!r}: {len(value)} entries, more than {MAX_SIZE}")
    if not all(isinstance(item, str) for item in value):
        raise refuse(path, key, "a list of strings", value)
    if length is not None and len(value) != length:
        raise ModelDirError(f"{path}: {key!r}: expected {length} entries (one per {per}), found {len(value)}")
    if unique and len(set(value)) != len(value):
        repeated = sorted(item for item, count in Counter(value).items() if count > 1)[:5]
        raise ModelDirError(f"{path}: {key!r}: expected unique names, found repeated {repeated}")


def _check_labels(path: Path, labels: dict[str, Any]) -> None:
    names = labels.get("label_names")
    if not isinstance(names, list) or not names:
        raise refuse(path, "label_names", "a non-empty list of label names", names)
    _check_string_list(path, "label_names", names, unique=True)
    if len(names) > MAX_SIZE:
        raise ModelDirError(f"{path}: 'label_names': {len(names)} labels, more than {MAX_SIZE}")
    for key in ("display_names", "attribute_types", "words"):
        if labels.get(key) is not None:
            _check_string_list(path, key, labels[key], len(names), per="entry of 'label_names'")
    for key in ("category_names", "landmark_names"):
        if labels.get(key) is not None:
            _check_string_list(path, key, labels[key])
    groups = labels.get("attribute_groups") or []
    _check_string_list(path, "attribute_groups", groups, unique=True)
    unknown = sorted(set(groups) - set(labels.get("attribute_types") or []))
    if unknown:
        raise ModelDirError(f"{path}: 'attribute_groups': {unknown[:5]} are not in 'attribute_types'")
    groups_by_name = labels.get("groups") or {}
    if not isinstance(groups_by_name, dict):
        raise refuse(path, "groups", "an object of group name -> label names", groups_by_name)
    grouped: list[str] = []
    for group, members in groups_by_name.items():
        _check_string_list(path, f"groups.{group}", members)
        grouped += members
    unknown = sorted(set(grouped) - set(names))
    if unknown or len(grouped) != len(set(grouped)):
        raise ModelDirError(f"{path}: 'groups': every name must be one of 'label_names', in one group at most "
                            f"({unknown[:5] or 'a repeated name'})")
    applies_to = labels.get("applies_to") or {}
    if not isinstance(applies_to, dict):
        raise refuse(path, "applies_to", "an object of label name -> category label names", applies_to)
    categories = set(groups_by_name.get("category") or [])
    for name, fits in applies_to.items():
        _check_string_list(path, f"applies_to.{name}", fits)
        if name not in names or not set(fits) <= categories:
            raise ModelDirError(f"{path}: 'applies_to.{name}': expected a label and names of the 'category' group")
    exclusive = labels.get("exclusive_groups") or []
    _check_string_list(path, "exclusive_groups", exclusive, unique=True)
    if not set(exclusive) <= set(groups_by_name):
        raise ModelDirError(f"{path}: 'exclusive_groups': {sorted(set(exclusive) - set(groups_by_name))[:5]} are "
                            f"not in 'groups'")
    counts = labels.get("attribute_counts")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(names) or not all(
            isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts)):
        raise refuse(path, "attribute_counts", f"a list of {len(names)} training counts (whole numbers >= 0), one "
                     "per entry of 'label_names'", counts)
    by_category = labels.get("landmarks_by_category") or {}
    if not isinstance(by_category, dict):
        raise refuse(path, "landmarks_by_category", "an object of category name -> landmark names", by_category)
    for category, landmark_names in by_category.items():
        _check_string_list(path, f"landmarks_by_category.{category}", landmark_names)
        unknown = sorted(set(landmark_names) - set(labels.get("landmark_names") or landmark_names))
        if unknown:
            raise ModelDirError(f"{path}: 'landmarks_by_category.{category}': {unknown[:5]} are not in "
                                f"'landmark_names'")


def _check_preprocessing(path: Path, preprocessing: dict[str, Any]) -> None:
    low, high = IMAGE_SIZE_RANGE
    for key in ("image_size", "mean", "std"):
        if key not in preprocessing:
            raise ModelDirError(f"{path}: {key!r} is missing; preprocessing.json holds image_size, mean and std "
                                f"(the evaluation transform the model was trained with)")
    size = preprocessing["image_size"]
    if not is_int(size) or not low <= size <= high:
        raise refuse(path, "image_size", f"an integer from {low} to {high} (pixels)", size)
    for key in ("mean", "std"):
        value = preprocessing[key]
        if not isinstance(value, list) or len(value) != 3 or not all(is_number(v) for v in value):
            raise refuse(path, key, "a list of 3 finite numbers (R, G, B)", value)
    if not all(v > 0 for v in preprocessing["std"]):
        raise ModelDirError(f"{path}: 'std': expected 3 numbers above 0, found {preprocessing['std']}")
    resize = preprocessing.get("resize", "square")
    if resize not in RESIZE_MODES:
        raise refuse(path, "resize", " or ".join(repr(mode) for mode in RESIZE_MODES), resize)
    if "crop_to_bbox" in preprocessing and not isinstance(preprocessing["crop_to_bbox"], bool):
        raise refuse(path, "crop_to_bbox", "true or false", preprocessing["crop_to_bbox"])


_FILE_CHECKS = {"config.json": _check_config, "labels.json": _check_labels,
                "preprocessing.json": _check_preprocessing}


def _check_outputs(path: Path, config: dict[str, Any], labels: dict[str, Any]) -> None:
    """labels.json must name every output of the network config.json describes, no more, no fewer."""
    names = labels["label_names"]
    labels_file = path / "labels.json"
    if config["task"] == "style":
        expected = config["num_labels"]
    else:
        expected = config["num_attributes"]
        if labels.get("category_names") is not None:
            _check_string_list(labels_file, "category_names", labels["category_names"], config["num_categories"])
        if labels.get("landmark_names") is not None and config.get("landmarks", "glem") != "none":
            _check_string_list(labels_file, "landmark_names", labels["landmark_names"],
                               config.get("num_landmarks", 8))
    if expected != len(names):
        raise ModelDirError(f"{path}: config.json says {expected} labels, labels.json lists {len(names)}")


# ------------------------------------------------------------------------------------------------
# The integrity manifest of a release (scripts/release_model.py writes it; loading checks it).

def _covered(directory: Path) -> list[str]:
    return sorted(item.name for item in Path(directory).iterdir()
                  if item.suffix in COVERED_SUFFIXES and item.name != MANIFEST_FILE and not item.name.startswith("."))


def write_manifest(directory: str | os.PathLike) -> Path:
    """Write ``manifest.json``: the SHA-256 and size of every JSON and weights file of the directory."""
    directory = Path(directory)
    files = {name: {"sha256": file_sha256(directory / name), "size": (directory / name).stat().st_size}
             for name in _covered(directory)}
    path = directory / MANIFEST_FILE
    atomic_write_json(path, {"manifest_version": MANIFEST_VERSION, "algorithm": "sha256", "files": files})
    return path


def _manifest_files(path: Path) -> dict[str, dict[str, Any]]:
    manifest = read_json(path)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise refuse(path, "manifest_version", f"{MANIFEST_VERSION} (a newer fashionlens may read others)",
                      manifest.get("manifest_version"))
    if manifest.get("algorithm") != "sha256":
        raise refuse(path, "algorithm", "'sha256'", manifest.get("algorithm"))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise refuse(path, "files", "an object of file name: {sha256, size}", files)
    for name, entry in files.items():
        if "/" in name or "\\" in name or name in ("", ".", "..") or name.startswith("."):
            raise ModelDirError(f"{path}: 'files': {name[:60]!r} is not a plain file name of the model directory")
        if not isinstance(entry, dict) or not SHA256.fullmatch(str(entry.get("sha256"))) \
                or not is_int(entry.get("size")) or entry["size"] < 0:
            raise refuse(path, f"files.{name}", "{\"sha256\": 64 lowercase hex digits, \"size\": bytes}", entry)
    return files


def verify_manifest(directory: str | os.PathLike) -> None:
    """Check a model directory against its ``manifest.json``; nothing to check without one.

    Raises ModelDirError naming the file that is missing, changed, or not in the manifest.
    """
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not (path.exists() or path.is_symlink()):
        return
    again = ("copy or download the model again; if you changed it on purpose, delete manifest.json "
             "(a directory without one is not checked)")
    files = _manifest_files(path)
    for name, expected in files.items():
        file = directory / name
        if not file.is_file():
            raise ModelDirError(f"{file}: missing; {path} lists it ({expected['size']} bytes): {again}")
        check_inside(directory, file)
        size = file.stat().st_size
        if size != expected["size"]:
            raise ModelDirError(f"{file}: {size} bytes where {path} says {expected['size']}: the file changed "
                                f"since release (a truncated download, or an edit); {again}")
        digest = file_sha256(file)
        if digest != expected["sha256"]:
            raise ModelDirError(f"{file}: SHA-256 {digest[:16]}... where {path} says {expected['sha256'][:16]}...: "
                                f"the file changed since release; {again}")
    unlisted = [name for name in _covered(directory) if name not in files]
    if unlisted:
        raise ModelDirError(f"{directory / unlisted[0]}: not in {path}, which lists every file loading reads: added "
                            f"after release (remove it; or, releasing, rerun scripts/release_model.py)")



def check_model_dir(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Read and check the JSON files of a model directory: (config, labels, preprocessing, graph)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a model directory (expected a folder with {', '.join(REQUIRED_FILES)})")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelDirError(f"{path}: missing {', '.join(missing)}; a model directory holds {', '.join(REQUIRED_FILES)}")
    config = dataclasses.asdict(network_config(path / "config.json", read_json(path / "config.json")))
    labels = read_json(path / "labels.json")
    preprocessing = read_json(path / "preprocessing.json")
    graph = read_json(path / "graph.json") if (path / "graph.json").is_file() else None
    _check_outputs(path, config, labels)
    return config, labels, preprocessing, graph


def build_model_from_config(config: dict) -> nn.Module:
    """Rebuild a network from a config.json's dict (keys it lacks take the values of the files written
    before them: ``from_dict``), with placeholder buffers that the saved weights overwrite."""
    task = config.get("task")
    if task not in BUILDERS:
        raise ModelDirError(f"config.json: unknown task {task!r} (expected 'style' or 'clothing')")
    return BUILDERS[task](NETWORK_CONFIGS[task].from_dict({**config, "pretrained": "none"}))


def _build(path: Path, config: dict[str, Any]) -> nn.Module:
    try:
        return build_model_from_config(config)
    except ModelDirError:
        raise
    except (ValueError, KeyError, TypeError) as error:  # the builders' own checks of config values
        raise ModelDirError(f"{path / 'config.json'}: cannot build the network it describes ({error})") from error
    except Exception as error:  # e.g. timm's RuntimeError for an unknown backbone name
        raise ModelDirError(f"{path / 'config.json'}: cannot build the network it describes "
                            f"({type(error).__name__}: {error})") from error


def _check_weight_shapes(path: Path, config: dict[str, Any]) -> None:
    """Compare the network config.json describes with the weights' header before allocating it.

    The network is built on the meta device (shapes only, no memory), so a config asking for a huge
    network is refused by the shapes it would need instead of trying to allocate them.
    """
    weights = path / "model.safetensors"
    with torch.device("meta"):
        planned = {name: tuple(tensor.shape) for name, tensor in _build(path, config).state_dict().items()}
    try:
        with safe_open(str(weights), framework="pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelDirError(f"{weights}: corrupt or truncated weights file ({error})") from error
    missing = [name for name in planned if name not in stored]
    unexpected = [name for name in stored if name not in planned]
    wrong = [f"{name} {stored[name]} where config.json needs {shape}" for name, shape in planned.items()
             if name in stored and stored[name] != shape]
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:5])}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:5])}"] if unexpected else []) + wrong[:5]
        raise ModelDirError(f"{weights}: weights do not match config.json ({'; '.join(parts)})")


def _check_finite(weights: Path, state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelDirError(f"{weights}: tensor {name!r} holds {bad} non-finite values (NaN or infinity); "
                                f"these weights would give NaN scores (retrain, or re-save a good checkpoint)")


def load_model_dir(path: Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Load a model directory, checking every file; any problem is a ModelDirError naming the file.

    ``path`` is a folder: a released model's name or ``hf://ORG/NAME`` is resolved to one first
    (:func:`fashionlens.hub.resolve_model_dir`, which ``fashionlens.load`` and every command call). A
    directory with a ``manifest.json`` (a release) is checked against it first.
    """
    path = Path(path)
    verify_manifest(path)
    config, labels, preprocessing, graph = check_model_dir(path)
    weights = path / "model.safetensors"
    check_inside(path, weights)
    _check_weight_shapes(path, config)
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelDirError(f"{weights}: corrupt or truncated weights file ({error})") from error
    _check_finite(weights, state)
    model = _build(path, config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelDirError(f"{weights}: weights do not match config.json "
                            f"({str(error).splitlines()[0]}; {str(error)[:400]})") from error
    model.eval()
    return ModelBundle(model=model, config=config, labels=labels, preprocessing=preprocessing, graph=graph, path=path,
                       thresholds=read_thresholds(path, list(labels["label_names"])))
