"""What the benchmark scripts share: the default style model directory, real photos, interleaved timing.

Run the scripts as ``python benchmarks/<script>.py`` from the repository root (the scripts import
this file as a sibling module).

Timing rule of the project: compare variants *within one run*, alternating them and taking
medians, because the CPU dev boxes are shared with other jobs; quote absolute times only from a GPU.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_ROOT = REPO / "examples" / "clothing-attributes-mini"
EXAMPLE_IMAGES = EXAMPLE_ROOT / "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def image_paths(folder: Path, limit: int | None = None) -> list[Path]:
    """The photos of a folder in name order (not recursive); an error naming the folder if none."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not paths:
        raise SystemExit(f"{folder}: no .jpg/.png photos found (expected a folder of real photos)")
    return paths[:limit] if limit else paths


def build_default_style_model_dir(out: Path, image_size: int = 224, data_root: Path = EXAMPLE_ROOT,
                                  head: str = "mlgcn") -> tuple[Path, str]:
    """Write the offline default style model (shipped tf_efficientnet_lite0, untrained head) to ``out``.

    The ML-GCN head gets its graph and GloVe vectors from ``data_root``'s labels, as `train style`
    builds them; when that fails (no word vectors, unreadable labels) the head is linear. Speed does
    not depend on the head's trained values, so no training is done. Returns (model dir, head used).
    """
    from fashionlens.config import DataSource, StyleConfig, override
    from fashionlens.training import prepare, save_built_model

    out = Path(out)
    if (out / "model.safetensors").is_file():
        import json

        return out, json.loads((out / "config.json").read_text())["head"]
    config = override(StyleConfig(), {
        "out": out.parent / f"{out.name}-run", "data.sources": [DataSource(data_root, "clothing-attributes")],
        "data.val_split": 0.2, "data.drop_empty_labels": True, "backbone.name": "tf_efficientnet_lite0",
        "backbone.pretrained": "shipped", "backbone.image_size": image_size, "head.kind": head,
        "graph.embeddings": "glove50", "graph.embedding_fallback": "zero"})
    try:
        _, built = prepare(config)
    except Exception as error:  # the benchmark still measures the backbone with a linear head
        print(f"ML-GCN head unavailable ({type(error).__name__}: {error}); using a linear head")
        head = "linear"
        _, built = prepare(override(config, {"head.kind": head}))
    built["task"].model.eval()
    save_built_model(out, built)
    return out, head


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 2, block: int = 1,
                settle: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each variant; each round runs every variant in a rotating order.

    Rotating the order spreads slow spells of a shared machine over all variants alike. Each turn of a
    variant is ``settle`` untimed calls, then ``block`` timed ones: with ``settle`` > 0 a variant is not
    timed right after another one whose worker threads may still be spinning on the cores.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            for _ in range(settle):
                variants[name]()
            for _ in range(block):
                start = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def p90(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 90))


def machine_summary() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu_cores": cores,
            "torch_threads": torch.get_num_threads(), "machine": platform.machine()}
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_results(results: dict, name: str, explicit: Path | None = None) -> Path | None:
    """Write `results` as JSON to `explicit`, else to $OUT/<name> when OUT is set (the device tool's folder)."""
    import json
    import os

    target = explicit or (Path(os.environ["OUT"]) / name if os.environ.get("OUT") else None)
    if target:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(results, indent=2))
        print(f"wrote {target}")
    return target
