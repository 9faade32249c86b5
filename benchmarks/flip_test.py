"""A landmark model with and without its flip test, on DeepFashion-fine's validation photos.

    python benchmarks/flip_test.py garment-landmarks-mnv2 [--data ../shared/data/deepfashion-fine] [--split val]

Evaluates the model twice through `fashionlens evaluate`'s own path (box crops, the model's decoder):
once as it is with ``flip_test`` off and once with it on (a copy of the directory with config.json's
``flip_test`` changed, nothing else). Prints a Markdown table: landmark NE on average and per name,
mean class accuracy (argmax, and the balanced decision when the model has training counts), the mean
group accuracy and the garment type.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

KEYS = ["normalized_error", "mean_class_accuracy", "balanced_mean_class_accuracy", "mean_group_accuracy",
        "category_top1"]


def with_flip_test(model_dir: Path, flip_test: bool, scratch: Path) -> Path:
    """A copy of ``model_dir`` (without its manifest) whose config.json says ``flip_test``."""
    copy = scratch / f"flip-{flip_test}"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("manifest.json", "*.onnx"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "flip_test": flip_test}))
    return copy


def main(argv: list[str] | None = None) -> int:
    from fashionlens.hub import resolve_model_dir
    from fashionlens.training.evaluate import evaluate_model_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=str)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/deepfashion-fine")
    parser.add_argument("--split", default="val")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    model_dir = resolve_model_dir(args.model)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for flip_test in (False, True):
            rows[flip_test] = evaluate_model_dir(with_flip_test(model_dir, flip_test, Path(scratch)), args.data,
                                                 "deepfashion-fine", split=args.split, batch_size=50)
    names = [key.removeprefix("normalized_error_") for key in rows[False] if key.startswith("normalized_error_")]
    print("| flip test | " + " | ".join(KEYS) + " | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * (len(KEYS) + len(names)))
    for flip_test, metrics in rows.items():
        values = [metrics.get(key) for key in KEYS] + [metrics.get(f"normalized_error_{name}") for name in names]
        print(f"| {'on' if flip_test else 'off'} | "
              + " | ".join("-" if v is None else f"{v:.4f}" if v < 1 else f"{v:.1f}" for v in values) + " |")
    print(f"\n{rows[False]['num_images']} photos ({args.data}, split {args.split}), model {model_dir}")
    if args.json:
        args.json.write_text(json.dumps({"on" if k else "off": v for k, v in rows.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
