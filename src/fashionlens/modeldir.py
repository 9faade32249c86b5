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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def label_names(self) -> list[str]:
        return list(self.labels["label_names"])

    def eval_transform(self):
        """The evaluation transform this model was trained with (the one training, `evaluate` and the
        Predictor all apply): a square resize to ``image_size``, then the backbone's mean/std."""
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
                   graph: dict | None = None) -> Path:
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
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelDirError(f"{path}: corrupt JSON ({error.msg} at line {error.lineno})") from error


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


def load_model_dir(path: Path, map_location: str | torch.device = "cpu") -> ModelBundle:
    """Load a model directory, checking every file; any problem is a ModelDirError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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

    names = labels.get("label_names")
    if not isinstance(names, list) or not names:
        raise ModelDirError(f"{path / 'labels.json'}: expected a non-empty list under 'label_names'")
    expected = config.get("num_labels", config.get("num_attributes"))
    if expected is not None and expected != len(names):
        raise ModelDirError(f"{path}: config.json says {expected} labels, labels.json lists {len(names)}")

    try:
        state = load_file(str(path / "model.safetensors"), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelDirError(f"{path / 'model.safetensors'}: corrupt or truncated weights file ({error})") from error
    model = build_model_from_config(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelDirError(f"{path / 'model.safetensors'}: weights do not match config.json "
                            f"({str(error).splitlines()[0]}; {str(error)[:400]})") from error
    model.eval()
    return ModelBundle(model=model, config=config, labels=labels, preprocessing=preprocessing, graph=graph, path=path)
