"""GPU training and inference throughput: fashionlens against backbone ceilings and a reference-style loop.

One run measures, in images per second:

(a) ceilings, synthetic tensors already on the GPU, bf16 autocast, channels_last: ResNet-101 at
    448 px training (batch 64; eager, and torch.compile with ``--compile``) and inference (batch
    128); VGG-19 to conv4 (stride 8) at 224 px, training and inference. "Backbone" = the fashionlens
    backbone + global max pooling + a 37-way linear layer (negligible next to the backbone);
(b) fashionlens training with the real data pipeline: a JPEG set made from real photos (resized so
    the short side is >= 448 px, repeated to ``--num-files`` files), read by the clothing-attributes
    reader with the training transform, TrainingData (workers, pinned memory, persistent
    workers), StyleTask with the ML-GCN head, Lightning Trainer with bf16-mixed and channels_last;
(c) a loop written the way the ML-GCN reference trains: fp32, PIL decode in the Dataset, 4
    workers, no pinned memory, no channels_last, a hand-written training loop, same model and batch;
(d) fashionlens inference: the trained model saved as a model directory and loaded with
    ``fashionlens.inference.load(..., device="cuda")``, predicting decoded photos in batches of
    128, and its model call alone.

It prints fashionlens/ceiling (target >= 0.9), fashionlens/reference (target >= 2) and
inference/ceiling (target >= 0.85), and writes ``$OUT/gpu_throughput.json`` when ``$OUT`` is set.

    python benchmarks/gpu_throughput.py --photos examples/clothing-attributes-mini/images [--compile]
    python benchmarks/gpu_throughput.py --smoke          # CPU, tiny sizes, a few steps: checks the code runs

The photos must be inside the repository working tree (examples/ travels to the device machine;
../shared does not).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import EXAMPLE_IMAGES, REPO, image_paths, machine_summary, write_results  # noqa: E402

try:
    import fashionlens  # noqa: F401
except ImportError:  # a bare checkout on the device machine: use the source tree
    sys.path.insert(0, str(REPO / "src"))

NUM_LABELS = 37


# ----------------------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones (GPU work included)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


class _Pooled(nn.Module):
    """Backbone + global max pooling + linear classifier: the ceiling's stand-in for a full model."""

    def __init__(self, backbone: nn.Module, channels: int, num_labels: int = NUM_LABELS):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(channels, num_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(images).amax(dim=(2, 3)))


def _autocast(device: torch.device, enabled: bool = True):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# ------------------------------------------------------------------------------------ (a) ceilings


def ceiling(name: str, stage: str, size: int, batch: int, train: bool, device: torch.device, warmup: int,
            steps: int, compile_model: bool = False) -> float:
    """Images per second of one backbone on synthetic tensors (bf16 autocast, channels_last)."""
    from fashionlens.models.backbones import create_backbone

    backbone = create_backbone(name, pretrained="none", stage=stage)
    model = _Pooled(backbone, backbone.out_channels).to(device).to(memory_format=torch.channels_last)
    runner = torch.compile(model) if compile_model else model
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    if train:
        model.train()
        targets = (torch.rand(batch, NUM_LABELS, device=device) < 0.2).float()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                loss = nn.functional.binary_cross_entropy_with_logits(runner(images).float(), targets)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode(), _autocast(device):
                runner(images)

    seconds = _timed(step, warmup, steps, device)
    del model, runner, images
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return batch * steps / seconds


# ---------------------------------------------------------------------------------- the JPEG set


def build_jpeg_set(photos: Path, out: Path, num_files: int, min_side: int) -> Path:
    """A clothing-attributes layout (``labels.csv`` + ``images/``) of ``num_files`` JPEGs from real photos.

    Each photo is resized so that its short side is ``max(min_side, short side)`` and saved once as
    JPEG (quality 90); the set repeats those files, as separate files, up to ``num_files``. Labels
    come from ``photos/../labels.csv`` when it lists the photo, else from seeded random codes (speed
    does not depend on them).
    """
    from PIL import Image

    from fashionlens.data.clothing_attributes import CSV_COLUMNS

    stamp = out / f"built-{num_files}-{min_side}.txt"
    if stamp.exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    sources = image_paths(photos)
    known: dict[str, dict[str, str]] = {}
    labels_csv = photos.parent / "labels.csv"
    if labels_csv.is_file():
        with labels_csv.open(newline="", encoding="utf-8-sig") as handle:
            known = {row["image"].strip(): row for row in csv.DictReader(handle)}
    columns = ["image"] + sorted(CSV_COLUMNS - {"image"})
    levels = {"sleevelength": 3, "neckline": 3, "category": 7}
    rng = random.Random(0)
    base: list[tuple[Path, dict[str, str]]] = []
    for index, source in enumerate(sources[:num_files]):
        with Image.open(source) as opened:
            image = opened.convert("RGB")
        scale = max(1.0, min_side / min(image.size))
        if scale > 1.0:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        target = out / "images" / f"base{index:05d}.jpg"
        image.save(target, quality=90)
        row = known.get(source.name) or {c: str(rng.randint(1, levels.get(c, 2))) for c in columns}
        base.append((target, row))
    rows = []
    for k in range(num_files):
        source, row = base[k % len(base)]
        name = f"{k:06d}.jpg"
        shutil.copyfile(source, out / "images" / name)
        rows.append({**{c: row.get(c, "") for c in columns}, "image": name})
    for source, _ in base:
        source.unlink()
    with (out / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    stamp.write_text(f"{len(sources)} photos from {photos}\n")
    return out


# ---------------------------------------------------------------------------- (b) fashionlens training


def _style_config(data_root: Path, backbone: str, size: int, batch: int, workers: int):
    """The style run being measured: ML-GCN over GloVe-50 vectors (a missing word gets zeros), the
    reference recipe, channels_last; built by the same `prepare` a training run uses."""
    from fashionlens.config import RECIPES, DataSource, StyleConfig, override

    return override(StyleConfig(recipe=RECIPES["reference"]), {
        "out": Path(os.environ.get("TMPDIR", "/tmp")) / "fashionlens-gpu-throughput",
        "data.sources": [DataSource(data_root, "clothing-attributes")], "data.batch_size": batch,
        "data.workers": workers, "data.drop_empty_labels": True, "backbone.name": backbone,
        "backbone.pretrained": "none", "backbone.image_size": size, "backbone.channels_last": True,
        "head.kind": "mlgcn", "graph.embeddings": "glove50", "graph.embedding_fallback": "zero"})


def _style_model(data_root: Path, backbone: str, size: int = 224, batch: int = 32, workers: int = 0):
    """(data, built) of `_style_config`: the model is built["task"].model, its labels data.columns."""
    from fashionlens.training import prepare

    return prepare(_style_config(data_root, backbone, size, batch, workers))


def fashionlens_training(data_root: Path, backbone: str, size: int, batch: int, workers: int, warmup: int,
                         steps: int, device: torch.device, compile_model: bool) -> tuple[float, dict]:
    """Images per second of fashionlens's own training path (Lightning, bf16-mixed, channels_last)."""
    import lightning as L
    from torch.utils.data import Subset

    data, built = _style_model(data_root, backbone, size, batch, workers)
    task = built["task"]
    if compile_model:
        task.model = torch.compile(task.model)
    data.val_set = Subset(data.train_set, [0])  # validation is not what is measured
    vectors = built["network"].get("embeddings", "onehot")

    class Throughput(L.Callback):
        def __init__(self) -> None:
            self.seen = 0
            self.images = 0
            self.start = self.end = 0.0

        def on_train_batch_start(self, trainer, module, batch_dict, batch_idx) -> None:
            if self.seen == warmup:
                _sync(device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch_dict, batch_idx) -> None:
            self.seen += 1
            if self.seen > warmup:
                self.images += len(batch_dict["image"])
            if self.seen == warmup + steps:
                _sync(device)
                self.end = time.perf_counter()

    meter = Throughput()
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision="bf16-mixed",
                        max_steps=warmup + steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=10.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[meter])
    trainer.fit(task, datamodule=data)
    details = {"workers": data.workers, "pin_memory": device.type == "cuda", "persistent_workers": data.workers > 0,
               "precision": "bf16-mixed", "channels_last": True, "word_vectors": vectors, "compiled": compile_model}
    unwrapped = getattr(task.model, "_orig_mod", task.model)
    return meter.images / (meter.end - meter.start), {"details": details, "model": unwrapped.cpu(),
                                                      "config": built["network"],
                                                      "label_names": built["labels"]["label_names"]}


# ------------------------------------------------------------------------------ (c) reference-style loop


class _ReferenceStyleDataset(torch.utils.data.Dataset):
    """Open with PIL in ``__getitem__``, multi-scale crop, resize, flip, ToTensor, Normalize (fp32)."""

    SCALES = (1.0, 0.875, 0.75, 0.66)

    def __init__(self, records, size: int, mean, std):
        self.records = records
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        from PIL import Image

        record = self.records[index]
        image = Image.open(record.image).convert("RGB")
        short = min(image.size)
        crop_w = int(short * random.choice(self.SCALES))
        crop_h = int(short * random.choice(self.SCALES))
        left = random.randint(0, image.width - crop_w)
        top = random.randint(0, image.height - crop_h)
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((self.size, self.size), Image.BILINEAR)
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (tensor - self.mean) / self.std, torch.as_tensor(record.labels, dtype=torch.float32)


def reference_loop(data_root: Path, backbone: str, size: int, batch: int, workers: int, warmup: int, steps: int,
                   device: torch.device) -> float:
    """Images per second of a plain fp32 loop shaped like the ML-GCN reference's training."""
    from torch.utils.data import DataLoader

    from fashionlens.data import open_dataset

    dataset = open_dataset(data_root, "clothing-attributes")
    data, built = _style_model(data_root, backbone)
    model, kept = built["task"].model.to(device).train(), data.columns
    loader = DataLoader(_ReferenceStyleDataset(dataset.records, size, model.backbone.mean, model.backbone.std),
                        batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = nn.MultiLabelSoftMarginLoss()
    kept_index = torch.as_tensor(kept)
    done = images = 0
    start = 0.0
    while done < warmup + steps:
        for inputs, targets in loader:
            if done == warmup:
                _sync(device)
                start = time.perf_counter()
            inputs, targets = inputs.to(device), targets[:, kept_index].to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs)["logits"], targets)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            optimizer.step()
            done += 1
            if done > warmup:
                images += len(inputs)
            if done == warmup + steps:
                break
    _sync(device)
    return images / (time.perf_counter() - start)


# ------------------------------------------------------------------------------ (d) fashionlens inference


def fashionlens_inference(trained: dict, photos: list[Path], work: Path, size: int, batch: int,
                          device: torch.device, warmup: int, steps: int) -> dict:
    """Images per second of ``Predictor.predict_loaded`` (decoded photos) and of its model call alone."""
    from fashionlens.inference import Predictor, _TorchRuntime, load, to_uint8_chw

    config = {**trained["config"], "image_size": size}
    labels = {"label_names": trained["label_names"], "display_names": trained["label_names"]}
    preprocessing = {"image_size": size, "mean": list(trained["model"].backbone.mean),
                     "std": list(trained["model"].backbone.std), "resize": "square"}
    try:
        from fashionlens.modeldir import save_model_dir

        model_dir = save_model_dir(work / "model", trained["model"], config, labels, preprocessing)
        predictor = load(model_dir, runtime="torch", device=str(device), batch_size=batch)
        how = "load(model_dir)"
    except ImportError:  # no safetensors on this machine: the same Predictor around the same model
        predictor = Predictor(_TorchRuntime(trained["model"], device), config, labels, preprocessing,
                              batch_size=batch)
        how = "Predictor(_TorchRuntime) (safetensors missing)"
    decoded = [to_uint8_chw(path)[0] for path in photos[:batch]]
    while len(decoded) < batch:
        decoded = decoded + decoded[:batch - len(decoded)]
    sources = [f"photo{i}" for i in range(batch)]
    end_to_end = _timed(lambda: predictor.predict_loaded(decoded, sources), warmup, steps, device)
    stacked = torch.stack([predictor.preprocess(image) for image in decoded])
    model_only = _timed(lambda: predictor.runtime(stacked), warmup, steps, device)
    return {"predictor_img_per_s": batch * steps / end_to_end, "model_call_img_per_s": batch * steps / model_only,
            "loaded_with": how}


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=EXAMPLE_IMAGES, help="folder of real photos (in the repo)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fashionlens_gpu_bench")
    parser.add_argument("--num-files", type=int, default=3000, help="JPEGs in the training set")
    parser.add_argument("--min-side", type=int, default=512, help="short side of the JPEGs (>= 448)")
    parser.add_argument("--size", type=int, default=448, help="training input size (ResNet-101 parts)")
    parser.add_argument("--backbone", default="resnet101", help="backbone of the ResNet parts (a, b, c, d)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--inference-batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=None, help="fashionlens DataLoader workers (default: cores - 1)")
    parser.add_argument("--reference-workers", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (ceiling and fashionlens)")
    parser.add_argument("--parts", default="a,b,c,d", help="which parts to run (a ceilings, b fashionlens "
                                                           "training, c reference loop, d inference)")
    parser.add_argument("--smoke", action="store_true", help="CPU-sized: tiny images and batches, a few steps")
    parser.add_argument("--json", type=Path, default=None, help="default $OUT/gpu_throughput.json")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        # bf16 on a CPU is slow: a small ResNet keeps the smoke run to a minute. Its ratios mean nothing.
        args.num_files, args.min_side, args.size, args.batch, args.inference_batch = 24, 96, 64, 4, 4
        args.backbone = "resnet18"
        args.warmup, args.steps = 1, 2
        args.workers = 1 if args.workers is None else args.workers
        args.reference_workers = 1
        vgg_size = 64
    else:
        vgg_size = 224
        if device.type != "cuda":
            print("warning: no GPU; these numbers are not the GPU measurement (use --smoke to check the code)")
    if args.workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        args.workers = max(1, cores - 1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    parts = set(args.parts.split(","))
    results: dict = {"machine": machine_summary(), "date": time.strftime("%Y-%m-%d"), "smoke": args.smoke,
                     "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "img_per_s": {}}
    out = results["img_per_s"]
    report = lambda key, value: (out.__setitem__(key, value), print(f"{key:<40} {value:10.1f} img/s", flush=True))
    started = time.perf_counter()

    if "a" in parts:
        w, s = args.warmup, args.steps
        report("ceiling_resnet101_train", ceiling(args.backbone, "final", args.size, args.batch, True, device, w, s))
        if args.compile:
            report("ceiling_resnet101_train_compiled",
                   ceiling(args.backbone, "final", args.size, args.batch, True, device, w, s, compile_model=True))
        report("ceiling_resnet101_inference",
               ceiling(args.backbone, "final", args.size, args.inference_batch, False, device, w, s))
        report("ceiling_vgg19_conv4_train", ceiling("vgg19", "stride8", vgg_size, args.batch, True, device, w, s))
        report("ceiling_vgg19_conv4_inference",
               ceiling("vgg19", "stride8", vgg_size, args.inference_batch, False, device, w, s))

    trained = None
    if parts & {"b", "c", "d"}:
        t = time.perf_counter()
        data_root = build_jpeg_set(args.photos, args.work / "jpegs", args.num_files, args.min_side)
        results["jpeg_set"] = {"root": str(data_root), "files": args.num_files, "min_side": args.min_side,
                               "build_s": time.perf_counter() - t}
    if parts & {"b", "d"}:
        value, trained = fashionlens_training(data_root, args.backbone, args.size, args.batch, args.workers,
                                              args.warmup, args.steps, device, compile_model=False)
        report("fashionlens_train", value)
        results["fashionlens_train_settings"] = trained["details"]
        if args.compile and "b" in parts:
            value, _ = fashionlens_training(data_root, args.backbone, args.size, args.batch, args.workers,
                                            args.warmup, args.steps, device, compile_model=True)
            report("fashionlens_train_compiled", value)
    if "c" in parts:
        report("reference_style_train", reference_loop(data_root, args.backbone, args.size, args.batch,
                                                       args.reference_workers, args.warmup, args.steps, device))
    if "d" in parts and trained is not None:
        inference = fashionlens_inference(trained, image_paths(data_root / "images", limit=args.inference_batch),
                                          args.work, args.size, args.inference_batch, device,
                                          max(1, args.warmup // 5), max(2, args.steps // 3))
        report("fashionlens_inference_predictor", inference["predictor_img_per_s"])
        report("fashionlens_inference_model_call", inference["model_call_img_per_s"])
        results["inference_loaded_with"] = inference["loaded_with"]

    ratios = {}
    if "fashionlens_train" in out and "ceiling_resnet101_train" in out:
        ratios["fashionlens_over_ceiling"] = out["fashionlens_train"] / out["ceiling_resnet101_train"]
    if "fashionlens_train_compiled" in out and "ceiling_resnet101_train_compiled" in out:
        ratios["fashionlens_compiled_over_ceiling_compiled"] = (out["fashionlens_train_compiled"]
                                                                / out["ceiling_resnet101_train_compiled"])
    if "fashionlens_train" in out and "reference_style_train" in out:
        ratios["fashionlens_over_reference"] = out["fashionlens_train"] / out["reference_style_train"]
    if "fashionlens_inference_predictor" in out and "ceiling_resnet101_inference" in out:
        ratios["inference_over_ceiling"] = out["fashionlens_inference_predictor"] / out["ceiling_resnet101_inference"]
        ratios["inference_model_call_over_ceiling"] = (out["fashionlens_inference_model_call"]
                                                       / out["ceiling_resnet101_inference"])
    results["ratios"] = ratios
    results["targets"] = {"fashionlens_over_ceiling": 0.9, "fashionlens_over_reference": 2.0,
                          "inference_over_ceiling": 0.85}
    results["wall_s"] = time.perf_counter() - started
    for key, value in ratios.items():
        target = results["targets"].get(key)
        print(f"{key:<40} {value:10.2f}" + (f"   (target >= {target})" if target else ""))
    write_results(results, "gpu_throughput.json", args.json)
    return results


if __name__ == "__main__":
    main()
