"""Using a trained model: load a model directory, predict photos, export to ONNX.

One door for the Python API, the ``predict`` command and the HTTP server::

    from fashionlens.inference import load
    predictor = load("runs/style/model")            # or runtime="onnx"
    result = predictor("photo.jpg")                  # a path, PIL image, numpy array or tensor
    results = predictor(["a.jpg", "b.png"])          # a list gives a list
    print(result.to_dict())

Every input becomes the same thing before the model sees it: an 8-bit RGB image, turned upright
with its EXIF orientation, resized to the model's square input with the transform used to
evaluate it (``preprocessing.json``), then normalised. Landmarks come back in the pixel
coordinates of the upright original photo.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from fashionlens.calibration import sigmoid, softmax
from fashionlens.catalogue import CATEGORY, GARMENTS
from fashionlens.data.transforms import ImagePreprocess
from fashionlens.errors import DataError, FashionlensError, ModelDirError
from fashionlens.explain import Explanation, LabelMap
from fashionlens.fileio import atomic_write_bytes, file_sha256
from fashionlens.heatmaps import decode_heatmaps
from fashionlens.hub import derived_path, resolve_model_dir
from fashionlens.images import decode_image, load_opened, pil_to_rgb, upright
from fashionlens.metrics import group_columns, group_log_priors
from fashionlens.modeldir import MANIFEST_FILE, check_model_dir, load_model_dir, read_thresholds, verify_manifest
from fashionlens.vocabulary import LANDMARK_NAMES

# A heatmap peak below this is reported as not visible. Training targets peak at 1 on visible
# landmarks, so half of that is a neutral cut.
LANDMARK_VISIBLE_THRESHOLD = 0.5
ONNX_FILENAME = "model.onnx"
ONNX_OPSET = 17
# The SHA-256 of the weights an ONNX file was exported from, in its metadata: an exported file is run
# only for the weights it was made from.
ONNX_WEIGHTS_KEY = "fashionlens.weights_sha256"
# Predictor.explain: the keyword for each photo's highest-scoring labels, and the prefix that names a
# label whatever it is called (Clothing Co-Parsing has a label "top": "label:top").
TOP_LABELS = "top"
LABEL_PREFIX = "label:"

ImageInput = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class LabelScore:
    """One label: ``score`` is a probability (sigmoid for multi-label, softmax for the category)."""

    name: str
    display_name: str
    score: float
    logit: float
    #: The cut-off the label was decided with (its calibrated threshold, or the number asked for)
    #: and the decision; None where no threshold applies (the category, or no threshold at all).
    threshold: float | None = None
    predicted: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "display_name": self.display_name, "score": self.score,
                               "logit": self.logit}
        if self.threshold is not None:
            out.update(threshold=self.threshold, predicted=bool(self.predicted))
        return out


@dataclass
class Landmark:
    """A clothing landmark in pixels of the upright original image (pixel centres at integers)."""

    name: str
    x: float
    y: float
    confidence: float
    visible: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "x": self.x, "y": self.y, "confidence": self.confidence, "visible": self.visible}


@dataclass
class StylePrediction:
    """Style (multi-label) prediction for one image; ``labels`` sorted by score, highest first.

    A model that knows its garment classes (labels.json ``groups``, see :mod:`fashionlens.catalogue`)
    also names the ``category`` (the best-scored garment class, whatever its threshold) and lists the
    other labels by ``groups`` (``garments``, ``color``, ``sleeve``, ...); an attribute that applies to
    none of the photo's garments (the category and the garment classes above their thresholds:
    sleeves on shoes) is never ``predicted``, and of an exclusive group (the sleeve length) only the
    best-scored label is.
    """

    source: str
    labels: list[LabelScore]
    width: int
    height: int
    category: LabelScore | None = None
    groups: dict[str, list[LabelScore]] = field(default_factory=dict)
    task: str = field(default="style", init=False)

    @property
    def predicted(self) -> list[LabelScore]:
        """The labels above their thresholds (calibrated per label, or the number asked for)."""
        return [label for label in self.labels if label.predicted]

    def to_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "source": self.source, "image": {"width": self.width, "height": self.height},
               "labels": [label.to_dict() for label in self.labels],
               "predicted": [label.name for label in self.predicted]}
        if self.category is not None:
            out["category"] = {"name": self.category.name, "display_name": self.category.display_name,
                               "score": self.category.score}
            out["groups"] = {group: [label.to_dict() for label in labels] for group, labels in self.groups.items()}
        return out


@dataclass
class ClothingPrediction:
    """Category, attributes (top-k per attribute type) and landmarks for one image.

    ``attribute_groups`` holds, for each group of "exactly one of these" attributes (a model trained
    on DeepFashion-fine has six: texture, sleeve, length, neckline, fabric, fit), the group's best
    label with its softmax score; those groups' lists in ``attributes_by_type`` carry softmax scores too.
    """

    source: str
    category_top_k: list[LabelScore]
    attributes_by_type: dict[str, list[LabelScore]]
    landmarks: list[Landmark]
    width: int
    height: int
    attribute_groups: dict[str, LabelScore] = field(default_factory=dict)
    task: str = field(default="clothing", init=False)

    def to_dict(self) -> dict[str, Any]:
        out = {"task": self.task, "source": self.source, "image": {"width": self.width, "height": self.height},
               "category_top_k": [label.to_dict() for label in self.category_top_k],
               "attributes_by_type": {kind: [label.to_dict() for label in labels]
                                      for kind, labels in self.attributes_by_type.items()},
               "landmarks": [landmark.to_dict() for landmark in self.landmarks]}
        if self.attribute_groups:
            out["attribute_groups"] = {group: label.to_dict() for group, label in self.attribute_groups.items()}
        return out


Prediction = Union[StylePrediction, ClothingPrediction]


# --------------------------------------------------------------------------------------------
# Images


def _source_name(image: Any) -> str:
    if isinstance(image, (str, Path)):
        return str(image)
    filename = getattr(image, "filename", None)  # PIL images opened from a file
    if isinstance(filename, str) and filename:
        return filename
    return f"<{type(image).__name__}>"


def read_image_bytes(data: bytes, source: str = "<upload>") -> Image.Image:
    """Decode an encoded image (JPEG, PNG, ...) to an upright RGB PIL image; DataError if it is not one.

    Every check of :mod:`fashionlens.images` applies (accepted formats, pixel limit, truncation).
    """
    return decode_image(data, source).image


def read_image(path: str | Path) -> Image.Image:
    """Open an image file as an upright RGB PIL image; DataError naming the file if it cannot.

    Every pixel is decoded (no JPEG draft mode), so landmarks and sizes are in the photo's own pixels.
    """
    return decode_image(Path(path)).image


def _array_to_uint8_chw(array: np.ndarray, source: str, channels_first: bool) -> torch.Tensor:
    if array.ndim == 2:
        array = array[None] if channels_first else array[..., None]
    if array.ndim != 3:
        raise DataError(f"expected an image array of shape {'(C, H, W)' if channels_first else '(H, W, C)'}, "
                        f"got shape {tuple(array.shape)}", path=source)
    if not channels_first:
        array = np.moveaxis(array, -1, 0)
    channels = array.shape[0]
    if channels not in (1, 3, 4):
        raise DataError(f"expected 1, 3 or 4 channels (grey, RGB, RGBA), got {channels} "
                        f"(shape {tuple(array.shape)})", path=source)
    if array.dtype == np.uint8:
        out = array
    elif array.dtype == np.uint16:
        out = np.clip(array.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype == np.bool_:
        out = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        # Floats are read as [0, 1]; quantised to 8 bits so every input kind takes the same path.
        out = np.clip(np.nan_to_num(array.astype(np.float64)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        out = np.clip(array, 0, 255).astype(np.uint8)
    else:
        raise DataError(f"unsupported image array dtype {array.dtype}", path=source)
    if channels == 1:
        out = np.repeat(out, 3, axis=0)
    elif channels == 4:
        alpha = out[3:4].astype(np.float64) / 255.0
        out = (out[:3].astype(np.float64) * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(out))


def _pil_to_chw(pil: Image.Image) -> torch.Tensor:
    """An RGB PIL image as ``(3, H, W)`` uint8 in channels-last memory (the ``HWC`` pixels, permuted,
    not copied again): the layout the resize is fastest on."""
    return torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)


def to_uint8_chw(image: ImageInput) -> tuple[torch.Tensor, str]:
    """Turn any supported input into an upright 8-bit RGB ``(3, H, W)`` tensor and a source name.

    - path (str / Path): decoded with Pillow, EXIF orientation applied;
    - PIL image: EXIF orientation applied, any mode converted to RGB;
    - numpy array: ``(H, W, C)`` RGB (or ``(H, W)`` grey), uint8, uint16 or float in [0, 1];
    - tensor: ``(C, H, W)`` float in [0, 1] or uint8.
    """
    source = _source_name(image)
    if isinstance(image, (str, Path)):
        return _pil_to_chw(read_image(image)), source
    if isinstance(image, Image.Image):
        load_opened(image, source)
        return _pil_to_chw(pil_to_rgb(upright(image), source)), source
    if isinstance(image, np.ndarray):
        return _array_to_uint8_chw(image, source, channels_first=False), source
    if isinstance(image, torch.Tensor):
        array = image.detach().to("cpu")
        if array.dtype == torch.bfloat16 or array.dtype == torch.float16:
            array = array.float()
        return _array_to_uint8_chw(array.numpy(), source, channels_first=True), source
    raise TypeError(f"cannot predict on a {type(image).__name__}: pass a path, a PIL image, a numpy array "
                    f"(H, W, 3) or a tensor (3, H, W)")


# --------------------------------------------------------------------------------------------
# Runtimes: a callable from a normalised batch (B, 3, S, S) to the model's outputs dict as numpy


def _load_inputs(images: ImageInput | Sequence[ImageInput]) -> tuple[bool, list[torch.Tensor], list[str]]:
    """Whether ``images`` is one photo, and the photos as upright uint8 tensors with their names."""
    single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.ndim == 4)
    loaded = [to_uint8_chw(item) for item in ([images] if single else images)]
    return single, [tensor for tensor, _ in loaded], [name for _, name in loaded]


class _TorchRuntime:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str | torch.device):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = self.model(batch.to(self.device))
        return {key: value.float().cpu().numpy() for key, value in outputs.items()}


class _OnnxRuntime:
    name = "onnx"

    def __init__(self, onnx_path: Path, source: str = ""):
        import onnxruntime as ort  # the optional "serve" extra; only runtime="onnx" needs it

        self.path, self.source = Path(onnx_path), source  # source: the line that says where it came from

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # onnxruntime's worker threads busy-wait after each run by default; between runs this process
        # decodes and resizes with PIL/torch on the same cores, which the spinning threads would starve.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own (non-exported) exception classes
            raise ModelDirError(f"{onnx_path}: onnxruntime cannot load it ({error}); re-create it with "
                                f"`fashionlens export MODEL_DIR --onnx {onnx_path}`") from error
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        self.weights_sha256 = self.session.get_modelmeta().custom_metadata_map.get(ONNX_WEIGHTS_KEY)

    def __call__(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {self.input_name: batch.cpu().numpy().astype(np.float32)})
        return dict(zip(self.output_names, values))


# --------------------------------------------------------------------------------------------
# Predictor


def _ranked(names: Sequence[str], display: Sequence[str], scores: np.ndarray, logits: np.ndarray,
            indices: Iterable[int], top_k: int | None, threshold: float | str | None,
            per_label: Sequence[float] | None = None) -> list[LabelScore]:
    """Labels by score. A number ``threshold`` keeps those at or above it; ``"auto"`` keeps all and marks
    each with its calibrated threshold (``per_label``; nothing marked without one); ``top_k`` trims."""
    indices = sorted(indices, key=lambda i: (-float(scores[i]), i))
    if threshold is not None and threshold != "auto":
        indices = [i for i in indices if float(scores[i]) >= float(threshold)]
    if top_k is not None:
        indices = indices[:max(0, int(top_k))]
    out = []
    for i in indices:
        if threshold is None:
            cut = None
        elif threshold == "auto":
            cut = float(per_label[i]) if per_label is not None else None
        else:
            cut = float(threshold)
        out.append(LabelScore(names[i], display[i], float(scores[i]), float(logits[i]), cut,
                              None if cut is None else float(scores[i]) >= cut))
    return out


class Predictor:
    """A loaded model that turns images into typed predictions. Build it with :func:`load`.

    Calling it with one image returns one prediction; with a list (or a 4-D tensor batch), a list.
    ``top_k`` trims the label lists; by default a style prediction lists every label and a clothing
    prediction the top 5 categories and top 5 attributes per type. ``threshold="auto"`` (the
    default) marks each label ``predicted`` against its own threshold, chosen on validation photos
    at the end of training (``thresholds.json``; none in older directories); a number (a
    probability) is one cut-off for all and drops the labels below it. Thread-safe: calls are
    serialised by a lock.
    """

    def __init__(self, runtime: Callable[[torch.Tensor], dict[str, np.ndarray]], config: dict[str, Any],
                 labels: dict[str, Any], preprocessing: dict[str, Any], model_dir: Path | None = None,
                 batch_size: int = 16, thresholds: Any = None, balanced_groups: bool = False):
        self.runtime = runtime
        self.thresholds = thresholds  # fashionlens.calibration.Thresholds or None
        self.per_label_thresholds = list(thresholds.values) if thresholds is not None else None
        self.config = dict(config)
        self.labels = dict(labels)
        self.preprocessing = dict(preprocessing)
        self.model_dir = model_dir
        self.batch_size = max(1, int(batch_size))
        self.task: str = str(self.config.get("task", "style"))
        if self.task not in ("style", "clothing"):
            raise ModelDirError(f"{model_dir}/config.json: unknown task {self.task!r} (expected 'style' or 'clothing')")
        self.image_size = int(self.preprocessing.get("image_size", self.config.get("image_size", 224)))
        # The evaluation transform in two steps (resize a photo, normalise a batch), for loaders too.
        self.image_preprocess = ImagePreprocess(self.image_size,
                                                self.preprocessing.get("mean", (0.485, 0.456, 0.406)),
                                                self.preprocessing.get("std", (0.229, 0.224, 0.225)))
        self.mean, self.std = self.image_preprocess.mean, self.image_preprocess.std  # (3, 1, 1) float32
        self.label_names: list[str] = [str(name) for name in self.labels["label_names"]]
        display = self.labels.get("display_names") or self.label_names
        self.display_names: list[str] = [str(name) for name in display]
        self.category_names: list[str] = [str(n) for n in self.labels.get("category_names") or []]
        self.attribute_types: list[str] = [str(t) for t in self.labels.get("attribute_types") or []]
        self.attribute_groups: list[str] = [str(g) for g in self.labels.get("attribute_groups") or []]
        # Garment type -> the landmarks it has (DeepFashion: no collar on trousers): a model that knows
        # them reports exactly the predicted type's landmarks visible (the heatmap loss never sees an
        # absent landmark, so its peak heights say nothing about absence).
        self.landmarks_by_category: dict[str, list[str]] = dict(self.labels.get("landmarks_by_category") or {})
        self.landmark_names: list[str] = [str(n) for n in self.labels.get("landmark_names") or LANDMARK_NAMES]
        # A style model's garment classes and which attributes apply to which (fashionlens.catalogue).
        self.label_groups: dict[str, list[str]] = {str(g): list(m) for g, m in (self.labels.get("groups") or {}).items()}
        self.label_position = index = {name: i for i, name in enumerate(self.label_names)}
        self.category_indices = [index[name] for name in self.label_groups.get(CATEGORY, [])]
        self.group_of = {name: group for group, members in self.label_groups.items() for name in members}
        self.applies_to = {index[name]: set(fits) for name, fits in (self.labels.get("applies_to") or {}).items()}
        self.exclusive_groups = set(self.labels.get("exclusive_groups") or [])
        # balanced_groups: each attribute group's answer maximises the mean of its classes' recalls (the
        # DeepFashion challenge's figure) rather than the accuracy: the logits less log p(class) in training.
        self.group_log_prior: np.ndarray | None = None
        if balanced_groups:
            counts = self.labels.get("attribute_counts")
            if not self.attribute_groups or counts is None:
                raise ModelDirError(f"{model_dir}: balanced groups need a model with attribute groups and their "
                                    f"training counts (labels.json 'attribute_groups' and 'attribute_counts')")
            columns = group_columns(self.attribute_types, self.attribute_groups)
            self.group_log_prior = group_log_priors(counts, columns).astype(np.float32)
        self._lock = threading.Lock()

    @property
    def runtime_name(self) -> str:
        return getattr(self.runtime, "name", "custom")

    def info(self) -> dict[str, Any]:
        """What the model is, for people and for the server's ``/health``."""
        info: dict[str, Any] = {"task": self.task, "runtime": self.runtime_name, "image_size": self.image_size,
                                "num_labels": len(self.label_names), "backbone": self.config.get("backbone"),
                                "head": self.config.get("head", self.config.get("attr_head")),
                                "model_dir": str(self.model_dir) if self.model_dir else None}
        if self.task == "clothing":
            info["num_categories"] = len(self.category_names)
            info["landmark_names"] = self.landmark_names
        return info

    def labels_info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "labels": [
            {"name": n, "display_name": d} for n, d in zip(self.label_names, self.display_names)]}
        if self.attribute_types:
            for item, kind in zip(out["labels"], self.attribute_types):
                item["type"] = kind
        if self.task == "clothing":
            out["categories"] = self.category_names
            out["landmarks"] = self.landmark_names
        return out

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Upright uint8 ``(3, H, W)`` -> normalised float ``(3, S, S)``, the evaluation transform."""
        return self.image_preprocess(image)

    def preprocess_batch(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`preprocess` of several photos, stacked: ``(B, 3, S, S)``."""
        return self.image_preprocess.normalise(torch.stack([self.image_preprocess.resize(image) for image in images]))

    def __call__(self, images: ImageInput | Sequence[ImageInput], top_k: int | None = None,
                 threshold: float | str | None = "auto") -> Prediction | list[Prediction]:
        single, loaded, names = _load_inputs(images)
        results = self.predict_loaded(loaded, names, top_k, threshold)
        return results[0] if single else results

    def predict_loaded(self, images: Sequence[torch.Tensor], sources: Sequence[str], top_k: int | None = None,
                       threshold: float | str | None = "auto") -> list[Prediction]:
        """Predict upright uint8 ``(3, H, W)`` tensors (see :func:`to_uint8_chw`), in batches."""
        return self._in_batches(images, sources, lambda batch, sizes, names: self.predict_preprocessed(
            batch, sizes, names, top_k, threshold))

    def _in_batches(self, images: Sequence[torch.Tensor], sources: Sequence[str], run: Callable[..., list]) -> list:
        """``run(batch, sizes, sources)`` over ``images`` preprocessed in batches of ``batch_size``, joined."""
        results: list = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            sizes = [(int(image.shape[-1]), int(image.shape[-2])) for image in chunk]
            results += run(self.preprocess_batch(chunk), sizes, sources[start:start + len(chunk)])
        return results

    def predict_preprocessed(self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]], sources: Sequence[str],
                             top_k: int | None = None, threshold: float | str | None = "auto") -> list[Prediction]:
        """Predict a batch already through :meth:`preprocess` (e.g. by DataLoader workers); ``sizes``
        are the original (width, height), for the landmarks."""
        with self._lock:
            outputs = self.runtime(batch)
        return [self._interpret({key: value[row] for key, value in outputs.items()}, sources[row], width, height,
                                top_k, threshold) for row, (width, height) in enumerate(sizes)]

    # ---------------------------------------------------------------- activation maps and embeddings

    def torch_model(self, what: str) -> torch.nn.Module:
        """The torch module behind this predictor; FashionlensError naming ``what`` needs it otherwise."""
        model = getattr(self.runtime, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise FashionlensError(f"{what} needs the torch runtime (this predictor runs {self.runtime_name!r}): "
                                   f"load the model directory with runtime='torch'")
        return model

    def label_index(self, name: str) -> int:
        """The index of a label (style) or attribute (clothing) by its name or display name; a
        ``label:`` prefix is allowed (``label:top`` is the label called top, not the keyword)."""
        name = name.removeprefix(LABEL_PREFIX)
        for names in (self.label_names, self.display_names):
            if name in names:
                return names.index(name)
        import difflib

        close = difflib.get_close_matches(name, self.label_names + self.display_names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
            f"; it has {len(self.label_names)} labels: {', '.join(self.label_names[:8])}" + \
            (", ..." if len(self.label_names) > 8 else "")
        what = "attribute" if self.task == "clothing" else "label"
        raise FashionlensError(f"the model has no {what} {name!r}{hint}")

    def explain(self, images: ImageInput | Sequence[ImageInput], labels: str | Sequence[str] = "top",
                num_top: int = 1, top_k: int | None = None, threshold: float | str | None = "auto"):
        """Predict and return the activation maps of ``labels``: :class:`fashionlens.explain.Explanation`
        (a list for a list of images).

        ``labels`` is a label name (an attribute's, for a clothing model), a list of names, or ``"top"``:
        the ``num_top`` highest-scoring labels of each photo (a label that is itself called top, as in
        Clothing Co-Parsing, is ``"label:top"``; any name may carry that prefix). Each map comes as
        :class:`fashionlens.explain.LabelMap`: ``grid`` at the feature resolution covering the whole
        photo, ``photo()`` in the photo's pixel coordinates. Needs the torch runtime.
        """
        single, loaded, names = _load_inputs(images)
        results = self.explain_loaded(loaded, names, labels, num_top, top_k, threshold)
        return results[0] if single else results

    def explain_loaded(self, images: Sequence[torch.Tensor], sources: Sequence[str],
                       labels: str | Sequence[str] = "top", num_top: int = 1, top_k: int | None = None,
                       threshold: float | str | None = "auto") -> list:
        """:meth:`explain` for upright uint8 ``(3, H, W)`` tensors (see :func:`to_uint8_chw`), in batches."""
        return self._in_batches(images, sources, lambda batch, sizes, names: self.explain_preprocessed(
            batch, sizes, names, labels, num_top, top_k, threshold))

    def explain_preprocessed(self, batch: torch.Tensor, sizes: Sequence[tuple[int, int]], sources: Sequence[str],
                             labels: str | Sequence[str] = "top", num_top: int = 1, top_k: int | None = None,
                             threshold: float | str | None = "auto") -> list:
        """:meth:`explain` for a batch already through :meth:`preprocess`; ``sizes`` are (width, height).

        One forward pass gives the prediction and every label's map (the maps are one matrix
        product on the feature map the pooling would have seen)."""
        wanted = [labels] if isinstance(labels, str) else list(labels)
        named = [self.label_index(name) for name in wanted if name != TOP_LABELS]
        model = self.torch_model("explain")
        device = getattr(self.runtime, "device", torch.device("cpu"))
        with self._lock, torch.inference_mode():
            if self.task == "style":
                raw = model.forward_label_maps(batch.to(device))
                all_maps = raw.pop("label_maps")
            else:
                raw = model.forward_attribute_maps(batch.to(device))
                all_maps = raw.pop("attribute_maps")
        outputs = {key: value.float().cpu().numpy() for key, value in raw.items()}
        grids = all_maps.float().cpu().numpy()
        logits = outputs["logits"] if self.task == "style" else outputs["attribute_logits"]
        single_label = self.task == "style" and self.config.get("activation") == "softmax"
        results = []
        for row, (width, height) in enumerate(sizes):
            prediction = self._interpret({key: value[row] for key, value in outputs.items()}, sources[row], width,
                                         height, top_k, threshold)
            scores = softmax(logits[row]) if single_label else sigmoid(logits[row])
            chosen = list(named)
            if TOP_LABELS in wanted:
                ranked = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
                category = getattr(prediction, "category", None)
                if category is not None:  # the garment first: it is what a catalogue asks about
                    first = self.label_position[category.name]
                    ranked = [first] + [i for i in ranked if i != first]
                chosen += [i for i in ranked[:max(0, int(num_top))] if i not in chosen]
            maps = [LabelMap(self.label_names[i], self.display_names[i], float(scores[i]), float(logits[row][i]),
                             grids[row, i].astype(np.float32), width, height) for i in chosen]
            results.append(Explanation(sources[row], width, height, prediction, maps))
        return results

    @property
    def embedding_dim(self) -> int:
        """The length of :meth:`embed`'s vectors."""
        return self.torch_model("embed").embedding_dim

    def embed(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised embeddings ``(N, D)`` float32 (``(D,)`` for one image): the pooled feature the
        head sees (style: the backbone's pooled feature; clothing: the category and attribute
        branches' pooled features, concatenated, or the category branch's alone with the query attribute
        head). Needs the torch runtime."""
        single, loaded, _ = _load_inputs(images)
        vectors = [self.embed_preprocessed(self.preprocess_batch(loaded[start:start + self.batch_size]))
                   for start in range(0, len(loaded), self.batch_size)]
        out = np.concatenate(vectors) if vectors else np.zeros((0, self.embedding_dim), dtype=np.float32)
        return out[0] if single else out

    def embed_preprocessed(self, batch: torch.Tensor) -> np.ndarray:
        """:meth:`embed` for a batch already through :meth:`preprocess`: ``(B, D)`` float32, unit length."""
        model = self.torch_model("embed")
        device = getattr(self.runtime, "device", torch.device("cpu"))
        with self._lock, torch.inference_mode():
            vectors = torch.nn.functional.normalize(model.forward_embedding(batch.to(device)).float(), dim=1)
        return vectors.cpu().numpy().astype(np.float32)

    def _interpret(self, outputs: dict[str, np.ndarray], source: str, width: int, height: int,
                   top_k: int | None, threshold: float | str | None) -> Prediction:
        if self.task == "style":
            logits = outputs["logits"]
            # A single-label model (trained with a softmax) reports probabilities that sum to 1.
            probabilities = softmax(logits) if self.config.get("activation") == "softmax" else sigmoid(logits)
            ranked = _ranked(self.label_names, self.display_names, probabilities, logits, range(len(logits)), top_k,
                             threshold, self.per_label_thresholds)
            if not self.category_indices:
                return StylePrediction(source, ranked, width, height)
            best = max(self.category_indices, key=lambda i: (float(probabilities[i]), -i))
            category = _ranked(self.label_names, self.display_names, probabilities, logits, [best], None,
                               None if threshold is None else "auto", self.per_label_thresholds)[0]
            # The garments the photo shows: the category and every garment class above its threshold (a
            # street photo's sleeves belong to its shirt, not to the shoes that scored highest).
            garments = {self.label_names[best]} | {label.name for label in ranked
                                                    if label.predicted and self.group_of.get(label.name) == CATEGORY}
            groups: dict[str, list[LabelScore]] = {}
            for label in ranked:
                i = self.label_position[label.name]
                if label.predicted and i in self.applies_to and not garments & self.applies_to[i]:
                    label.predicted = False
                if i != best:
                    group = self.group_of.get(label.name, GARMENTS)
                    group = GARMENTS if group == CATEGORY else group
                    if label.predicted and group in self.exclusive_groups and any(
                            other.predicted for other in groups.get(group, [])):
                        label.predicted = False  # one of these: only the best-scored is marked
                    groups.setdefault(group, []).append(label)
            return StylePrediction(source, ranked, width, height, category, groups)
        k = 5 if top_k is None else top_k
        category_logits = outputs["category_logits"]
        names = self.category_names or [f"category_{i}" for i in range(len(category_logits))]
        numeric = None if threshold in (None, "auto") else threshold  # categories: a softmax, no calibration
        categories = _ranked(names, names, softmax(category_logits), category_logits, range(len(names)), k, numeric)
        attribute_logits = outputs["attribute_logits"]
        attribute_scores = sigmoid(attribute_logits)
        types = self.attribute_types or ["attribute"] * len(self.label_names)
        by_type: dict[str, list[int]] = {}
        for index, kind in enumerate(types):
            by_type.setdefault(kind, []).append(index)
        attributes: dict[str, list[LabelScore]] = {}
        groups: dict[str, LabelScore] = {}
        for kind, indices in by_type.items():
            if kind in self.attribute_groups:  # one of these: a softmax over the group, its best is the answer
                scores = np.zeros_like(attribute_scores)
                logits = attribute_logits[indices]
                if self.group_log_prior is not None:
                    logits = logits - self.group_log_prior[indices]
                scores[indices] = softmax(logits)
                ranked = _ranked(self.label_names, self.display_names, scores, attribute_logits, indices, None, None)
                for rank, label in enumerate(ranked):
                    label.predicted = rank == 0
                groups[kind] = ranked[0]
                attributes[kind] = ranked[:max(0, k)]
            else:
                attributes[kind] = _ranked(self.label_names, self.display_names, attribute_scores, attribute_logits,
                                           indices, k, threshold, self.per_label_thresholds)
        landmarks: list[Landmark] = []
        if "heatmaps" in outputs:
            size = self.image_size
            xy, confidence = decode_heatmaps(torch.from_numpy(outputs["heatmaps"][None]).float(), (size, size),
                                             subpixel=True)
            # Input pixels of the square resize -> pixels of the original (same pixel-centre convention).
            scale = torch.tensor([width / size, height / size])
            original = (xy[0] + 0.5) * scale - 0.5
            has = self.landmarks_by_category.get(names[int(np.argmax(category_logits))])  # the predicted type
            for index, (x, y) in enumerate(original.tolist()):
                name = self.landmark_names[index] if index < len(self.landmark_names) else f"landmark_{index}"
                score = float(confidence[0, index])
                # With the garment types' landmarks known, the type decides: the heatmap loss never saw an
                # absent landmark, so a low peak means an unsure place, not an absent one (the DeepFashion-fine
                # model's peaks are mostly 0.2-0.5). Without them, the peak height is all there is.
                visible = score >= LANDMARK_VISIBLE_THRESHOLD if has is None else name in has
                landmarks.append(Landmark(name, float(x), float(y), score, visible))
        return ClothingPrediction(source, categories, attributes, landmarks, width, height, groups)


# --------------------------------------------------------------------------------------------
# Loading and ONNX export


def load(model_dir: str | Path, runtime: str = "torch", device: str = "cpu", batch_size: int = 16,
         onnx: str | Path | None = None, balanced_groups: bool = False) -> Predictor:
    """Load a model directory as a :class:`Predictor` (``runtime`` ``"torch"`` or ``"onnx"``).

    ``balanced_groups``: a clothing model's attribute groups answer with the class that maximises the
    mean of the classes' recalls, not the accuracy (:func:`fashionlens.metrics.group_log_priors`).

    ``model_dir`` may also be a released model's name (``fashionlens models`` lists them) or
    ``hf://ORG/NAME``; see :func:`fashionlens.hub.resolve_model_dir`. The ONNX runtime runs, in this
    order: ``onnx`` (a file ``fashionlens export`` wrote; giving it implies ``runtime="onnx"``), which
    must have been exported from these weights; ``MODEL_DIR/model.onnx`` where the directory's manifest
    lists it, or, in a directory without a manifest, where it was exported from these weights; else
    an export of its own in the user cache, named by the weights' and config.json's SHA-256 (never
    written into the model directory). ``predictor.runtime.source`` says which, in one line.
    """
    model_dir = resolve_model_dir(model_dir)
    runtime = "onnx" if onnx is not None else runtime
    if runtime == "torch":
        bundle = load_model_dir(model_dir, map_location="cpu")
        return Predictor(_TorchRuntime(bundle.model, device), bundle.config, bundle.labels, bundle.preprocessing,
                         model_dir, batch_size, thresholds=bundle.thresholds, balanced_groups=balanced_groups)
    if runtime == "onnx":
        if device != "cpu":
            raise FashionlensError(f"runtime='onnx' runs on the CPU only (device={device!r} was asked for)")
        # The same checks as the torch runtime's load (the manifest, every file, the files against each other).
        verify_manifest(model_dir)
        config, labels, preprocessing, _ = check_model_dir(model_dir)
        return Predictor(_onnx_runtime(Path(model_dir), preprocessing, onnx), config, labels, preprocessing, model_dir,
                         batch_size, thresholds=read_thresholds(model_dir, list(labels["label_names"])),
                         balanced_groups=balanced_groups)
    raise ValueError(f"runtime must be 'torch' or 'onnx', got {runtime!r}")


def _onnx_runtime(model_dir: Path, preprocessing: dict[str, Any], given: str | Path | None) -> _OnnxRuntime:
    """The ONNX file :func:`load` runs (see there), checked against the weights' SHA-256."""

    weights = file_sha256(model_dir / "model.safetensors")
    if given is not None:
        runtime = _OnnxRuntime(Path(given), f"onnx: running {given}, exported from the weights of {model_dir}")
        if runtime.weights_sha256 != weights:
            raise ModelDirError(f"{given}: exported from the weights {(runtime.weights_sha256 or 'unknown')[:12]}, not "
                                f"from those of {model_dir} ({weights[:12]}): export it again with `fashionlens export "
                                f"{model_dir} --onnx {given}`")
        return runtime
    inside = model_dir / ONNX_FILENAME
    note = ""
    if inside.is_file():
        manifest = model_dir / MANIFEST_FILE
        if manifest.is_file():
            listed = ONNX_FILENAME in json.loads(manifest.read_text(encoding="utf-8"))["files"]
            if listed:  # verify_manifest has checked its SHA-256
                return _OnnxRuntime(inside, f"onnx: running {inside}, listed in {manifest}")
            note = f"; {inside} is not in {manifest}, so it is not used"
        else:
            runtime = _OnnxRuntime(inside, f"onnx: running {inside}, exported from these weights")
            if runtime.weights_sha256 == weights:
                return runtime
            note = f"; {inside} was exported from other weights, so it is not used"
    size = int(preprocessing["image_size"])
    # The graph is the weights and the config (config.json's flip_test adds a mirrored pass, same weights).
    config = file_sha256(model_dir / "config.json")[:16]
    cached = derived_path("onnx", f"{weights}-{config}-{size}px-opset{ONNX_OPSET}.onnx")
    source = f"onnx: running {cached}, exported from {model_dir} into the cache{note}"
    if cached.is_file():
        info = cached.stat()
        if info.st_uid == os.geteuid() and not info.st_mode & stat.S_IWOTH:  # not one someone else put there
            runtime = _OnnxRuntime(cached, source)
            if runtime.weights_sha256 == weights:
                return runtime
    export_onnx(model_dir, cached)
    return _OnnxRuntime(cached, source)


class _TupleOutputs(torch.nn.Module):
    """The model with its outputs dict flattened to a tuple in a fixed key order (ONNX has no dicts)."""

    def __init__(self, model: torch.nn.Module, keys: Sequence[str]):
        super().__init__()
        self.model = model
        self.keys = tuple(keys)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(images)
        return tuple(outputs[key] for key in self.keys)


def export_onnx(model_dir: str | Path, onnx_path: str | Path, opset: int = ONNX_OPSET,
                tolerance: float = 1e-3) -> Path:
    """Export a model directory to ONNX with a dynamic batch axis, then check it with onnxruntime.

    The input is ``images`` ``(batch, 3, S, S)`` (normalised, S from preprocessing.json); the outputs
    are named after the model's outputs dict (``logits``, or ``category_logits``,
    ``attribute_logits``, ``heatmaps``). Raises ModelDirError if onnxruntime disagrees with torch.
    """
    bundle = load_model_dir(resolve_model_dir(model_dir), map_location="cpu")
    model = bundle.model.eval()
    size = int(bundle.preprocessing.get("image_size", bundle.config.get("image_size", 224)))
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, size, size, generator=generator)
    with torch.inference_mode():
        reference = model(example)
    keys = list(reference.keys())
    wrapper = _TupleOutputs(model, keys).eval()
    dynamic_axes = {"images": {0: "batch"}, **{key: {0: "batch"} for key in keys}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, (example,), buffer, input_names=["images"], output_names=keys,
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
        except Exception as error:  # the exporter raises many unrelated types; say which model failed
            raise ModelDirError(f"{model_dir}: ONNX export failed ({type(error).__name__}: {error})") from error
    import onnx


    proto = onnx.load_from_string(buffer.getvalue())
    proto.metadata_props.add(key=ONNX_WEIGHTS_KEY, value=file_sha256(Path(bundle.path or model_dir) /
                                                                     "model.safetensors"))
    data = proto.SerializeToString()
    _check_onnx(data, example, {key: value.numpy() for key, value in reference.items()}, tolerance, model_dir)
    onnx_path = Path(onnx_path)
    try:
        atomic_write_bytes(onnx_path, data)
    except OSError as error:
        raise FashionlensError(f"{onnx_path}: cannot write the ONNX file ({error.strerror})") from error
    return onnx_path


def _check_onnx(data: bytes, example: torch.Tensor, reference: dict[str, np.ndarray], tolerance: float,
                model_dir: str | Path) -> None:
    import onnx  # the optional "serve" extra, as onnxruntime
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load_from_string(data))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    # A batch of one checks the dynamic batch axis too (the export traced a batch of two).
    for rows in (slice(0, 2), slice(1, 2)):
        values = session.run(names, {"images": example[rows].numpy()})
        for name, value in zip(names, values):
            expected = reference[name][rows]
            worst = float(np.max(np.abs(value - expected))) if value.size else 0.0
            if value.shape != expected.shape or not math.isfinite(worst) or worst > tolerance:
                raise ModelDirError(f"{model_dir}: the ONNX export disagrees with torch on {name!r} "
                                    f"(max |difference| {worst:.3g} > {tolerance}, shapes {value.shape} "
                                    f"vs {expected.shape})")
