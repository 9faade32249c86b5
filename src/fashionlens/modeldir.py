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

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fashionlens.config import IMAGE_SIZE_RANGE
from fashionlens.errors import ModelDirError

FORMAT_VERSION = 1
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
    from fashionlens.data.transforms import build_transforms

    return build_transforms(int(preprocessing["image_size"]), preprocessing["mean"], preprocessing["std"],
                            train=False)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; a model directory is meant to be shared
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def save_model_dir(path: Path, model: nn.Module, config: dict, labels: dict, preprocessing: dict,
                   graph: dict | None = None, thresholds: dict | None = None) -> Path:
    """Write a model directory that `load_model_dir` (and nothing else) can turn back into the model."""
    from safetensors.torch import save

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
    from fashionlens.calibration import Thresholds

    file = Path(path) / "thresholds.json"
    if not file.is_file():
        return None
    return Thresholds.from_json(_read_json(file), list(label_names), where=str(file))


# ------------------------------------------------------------------------------------------------
# Checking a model directory. Directories come from the internet too: every file is checked against
# what save_model_dir writes (types, ranges, lengths, the format version) before anything is built,
# and each problem is one ModelDirError naming the file and the key.

KNOWN_FORMAT_VERSIONS = (1,)
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_SIZE = 65536  # any width, count or embedding size; the real ones are at most a few thousand
RESIZE_MODES = ("square",)

# config.json keys by kind; keys not listed are kept as they are (the model builders read them).
_CONFIG_SIZES = {  # key: (lowest, highest, may be null)
    "num_labels": (1, MAX_SIZE, False), "num_categories": (1, MAX_SIZE, False),
    "num_attributes": (1, MAX_SIZE, False), "num_landmarks": (1, 256, False),
    "embedding_dim": (1, MAX_SIZE, False), "hidden_dim": (1, MAX_SIZE, False), "mlgcn_hidden": (1, MAX_SIZE, False),
    "attr_embedding_dim": (1, MAX_SIZE, True), "landmark_width": (1, MAX_SIZE, True),
    "upsample_width": (1, MAX_SIZE, False), "head_width": (1, MAX_SIZE, False), "num_glem": (0, 64, False),
    "image_size": (*IMAGE_SIZE_RANGE, False), "heatmap_size": (1, IMAGE_SIZE_RANGE[1], False),
}
_CONFIG_NUMBERS = ("t", "p", "dropout", "negative_slope", "mlgcn_negative_slope")
_CONFIG_FLAGS = ("residual", "bias", "mlgcn_bias")
_CONFIG_TEXT = ("backbone", "pretrained", "pool", "head", "attr_head", "landmarks", "stage", "upsample", "graph",
                "embeddings")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{value[:40]!r} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(path: Path, key: str | None, expected: str, found: Any) -> ModelDirError:
    where = f"{path}: " + (f"{key!r}: " if key is not None else "")
    return ModelDirError(f"{where}expected {expected}, found {_kind(found)}")


def _check_inside(directory: Path, path: Path) -> None:
    """Refuse a file whose real location (after symbolic links) is outside its model directory."""
    try:
        real, root = path.resolve(strict=True), directory.resolve(strict=True)
    except (OSError, RuntimeError) as error:  # a link loop, or a dangling link
        raise ModelDirError(f"{path}: cannot resolve the file ({error})") from None
    if real != root and root not in real.parents:
        raise ModelDirError(f"{path}: a symbolic link to {real}, outside the model directory {root}; a model "
                            f"directory must hold its own files (copy the file in instead of linking it)")


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if deepest > MAX_JSON_DEPTH:
                return deepest
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _no_constants(name: str) -> Any:
    raise ValueError(f"the non-finite number {name}, which JSON does not have")


def _read_json(path: Path) -> Any:
    """A model directory's JSON file, strictly: inside the directory, UTF-8, a JSON object, finite
    numbers, nested at most MAX_JSON_DEPTH levels; then checked against its schema (by file name)."""
    path = Path(path)
    _check_inside(path.parent, path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelDirError(f"{path}: {size} bytes, more than the {MAX_JSON_BYTES} a model directory's JSON "
                                f"file may have")
        data = path.read_bytes()
    except OSError as error:
        raise ModelDirError(f"{path}: cannot read it ({error.strerror or error})") from error
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelDirError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at position {error.start}); "
                            f"save_model_dir writes UTF-8 JSON") from None
    try:
        payload = json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as error:
        raise ModelDirError(f"{path}: corrupt JSON ({error.msg} at line {error.lineno})") from error
    except RecursionError:
        raise ModelDirError(f"{path}: JSON nested too deep (more than {MAX_JSON_DEPTH} levels)") from None
    except ValueError as error:
        raise ModelDirError(f"{path}: corrupt JSON ({error})") from None
    if not isinstance(payload, dict):
        raise _refuse(path, None, "a JSON object {...}", payload)
    if _depth(payload) > MAX_JSON_DEPTH:
        raise ModelDirError(f"{path}: JSON nested too deep (more than {MAX_JSON_DEPTH} levels)")
    check = _FILE_CHECKS.get(path.name)
    if check is not None:
        check(path, payload)
    return payload


def _check_config(path: Path, config: dict[str, Any]) -> None:
    version = config.get("format_version")
    if not _is_int(version) or version not in KNOWN_FORMAT_VERSIONS:
        raise _refuse(path, "format_version", f"a format version this fashionlens reads "
                      f"({', '.join(map(str, KNOWN_FORMAT_VERSIONS))}; a newer fashionlens may read others)",
                      version)
    task = config.get("task")
    if task not in ("style", "clothing"):
        raise _refuse(path, "task", "'style' or 'clothing'", task)
    required = ("num_labels",) if task == "style" else ("num_categories", "num_attributes")
    for key in required:
        if key not in config:
            raise ModelDirError(f"{path}: {key!r} is missing; a {task} model's config.json holds it")
    for key, (low, high, nullable) in _CONFIG_SIZES.items():
        if key not in config or (nullable and config[key] is None):
            continue
        value = config[key]
        if not _is_int(value) or not low <= value <= high:
            raise _refuse(path, key, f"an integer from {low} to {high}" + (" or null" if nullable else ""), value)
    for key in _CONFIG_NUMBERS:
        if key in config and not _is_number(config[key]):
            raise _refuse(path, key, "a finite number", config[key])
    for key in _CONFIG_FLAGS:
        if key in config and not isinstance(config[key], bool):
            raise _refuse(path, key, "true or false", config[key])
    for key in _CONFIG_TEXT:
        if key in config and config[key] is not None and not isinstance(config[key], str):
            raise _refuse(path, key, "a string", config[key])


def _check_string_list(path: Path, key: str, value: Any, length: int | None = None, unique: bool = False,
                       per: str = "model output") -> None:
    if not isinstance(value, list):
        raise _refuse(path, key, "a list of strings", value)
    if len(value) > MAX_SIZE:  # first: every later check is linear, but a million names is no model
        raise ModelDirError(f"{path}: {key!r}: {len(value)} entries, more than {MAX_SIZE}")
    if not all(isinstance(item, str) for item in value):
        raise _refuse(path, key, "a list of strings", value)
    if length is not None and len(value) != length:
        raise ModelDirError(f"{path}: {key!r}: expected {length} entries (one per {per}), found {len(value)}")
    if unique and len(set(value)) != len(value):
        from collections import Counter

        repeated = sorted(item for item, count in Counter(value).items() if count > 1)[:5]
        raise ModelDirError(f"{path}: {key!r}: expected unique names, found repeated {repeated}")


def _check_labels(path: Path, labels: dict[str, Any]) -> None:
    names = labels.get("label_names")
    if not isinstance(names, list) or not names:
        raise _refuse(path, "label_names", "a non-empty list of label names", names)
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
        raise _refuse(path, "groups", "an object of group name -> label names", groups_by_name)
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
        raise _refuse(path, "applies_to", "an object of label name -> category label names", applies_to)
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
    by_category = labels.get("landmarks_by_category") or {}
    if not isinstance(by_category, dict):
        raise _refuse(path, "landmarks_by_category", "an object of category name -> landmark names", by_category)
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
    if not _is_int(size) or not low <= size <= high:
        raise _refuse(path, "image_size", f"an integer from {low} to {high} (pixels)", size)
    for key in ("mean", "std"):
        value = preprocessing[key]
        if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value):
            raise _refuse(path, key, "a list of 3 finite numbers (R, G, B)", value)
    if not all(v > 0 for v in preprocessing["std"]):
        raise ModelDirError(f"{path}: 'std': expected 3 numbers above 0, found {preprocessing['std']}")
    resize = preprocessing.get("resize", "square")
    if resize not in RESIZE_MODES:
        raise _refuse(path, "resize", " or ".join(repr(mode) for mode in RESIZE_MODES), resize)
    if "crop_to_bbox" in preprocessing and not isinstance(preprocessing["crop_to_bbox"], bool):
        raise _refuse(path, "crop_to_bbox", "true or false", preprocessing["crop_to_bbox"])


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


def check_model_dir(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Read and check the JSON files of a model directory: (config, labels, preprocessing, graph)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a model directory (expected a folder with {', '.join(REQUIRED_FILES)})")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelDirError(f"{path}: missing {', '.join(missing)}; a model directory holds {', '.join(REQUIRED_FILES)}")
    config = _read_json(path / "config.json")
    labels = _read_json(path / "labels.json")
    preprocessing = _read_json(path / "preprocessing.json")
    graph = _read_json(path / "graph.json") if (path / "graph.json").is_file() else None
    _check_outputs(path, config, labels)
    return config, labels, preprocessing, graph


def build_model_from_config(config: dict) -> nn.Module:
    """Rebuild a network from its config, with placeholder buffers that the saved weights overwrite."""
    config = {**config, "pretrained": "none"}
    task = config.get("task")
    if task == "style":
        from fashionlens.models.mlgcn import build_style_model

        return build_style_model(config)
    if task == "clothing":
        from fashionlens.models.landmark_net import build_clothing_model

        return build_clothing_model(config)
    raise ModelDirError(f"config.json: unknown task {task!r} (expected 'style' or 'clothing')")


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
    from safetensors import SafetensorError, safe_open

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

    ``path`` may also be a released model's name or ``hf://ORG/NAME`` (fashionlens.hub resolves it);
    a directory with a ``manifest.json`` (a release) is checked against it first.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fashionlens.hub import resolve_model_dir, verify_manifest

    path = resolve_model_dir(path)
    verify_manifest(path)
    config, labels, preprocessing, graph = check_model_dir(path)
    weights = path / "model.safetensors"
    _check_inside(path, weights)
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
