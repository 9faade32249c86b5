"""`fashionlens predict`: catalogue-sized prediction (part of the CLI).

Photos are decoded and preprocessed by a DataLoader (in its workers, or on a 2-core CPU in the main
process between model calls: ``config.default_predict_workers``) and predicted in batches. Output: text,
JSON lines (``--json``), a CSV (``--csv``), or sharded Parquet (``--out preds.parquet``: a folder of
``part-RRR-NNNNN.parquet`` files, one row per photo). Parquet output is resumable: a rerun skips the
photos already written, and each shard is written beside its final name and renamed, so a crash
loses at most the shard being written. ``--devices N --num-nodes M`` runs it through Lightning,
each rank predicting its own share of the photos and writing its own shards: no photo twice.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from fashionlens.errors import FashionlensError
from fashionlens.inference import (
    TOP_LABELS,
    ClothingPrediction,
    Prediction,
    Predictor,
    StylePrediction,
    collect_image_paths,
    load,
)
from fashionlens.vocabulary import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from fashionlens.data.transforms import ImagePreprocess

ROWS_PER_SHARD = 10_000


# ------------------------------------------------------------------------------------------ the photos


class PhotoDataset(Dataset):
    """Photos decoded (the project's one decoder) and resized, still uint8; a bad file becomes an error
    row. :class:`NormaliseBatch` finishes the evaluation transform once per batch."""

    def __init__(self, paths: Sequence[Path], preprocess: ImagePreprocess):
        self.paths = [str(path) for path in paths]
        self.preprocess = preprocess
        self.size = preprocess.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from fashionlens.inference import to_uint8_chw

        path = self.paths[index]
        try:
            image, _ = to_uint8_chw(path)
        except FashionlensError as error:
            return {"image": torch.zeros(3, *self.size, dtype=torch.uint8), "width": 0, "height": 0, "path": path,
                    "error": str(error)}
        return {"image": self.preprocess.resize(image), "width": int(image.shape[-1]),
                "height": int(image.shape[-2]), "path": path, "error": ""}


class NormaliseBatch:
    """The DataLoader's ``collate_fn``: the default collation, then the batch's uint8 photos to the
    model's normalised floats (where the batch is collated: a worker, or the main process)."""

    def __init__(self, preprocess: ImagePreprocess):
        self.preprocess = preprocess

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(rows)
        batch["image"] = self.preprocess.normalise(batch["image"])
        return batch


def reuse_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel after
    every batch: no ``mmap`` for large blocks (``M_MMAP_MAX`` 0: they come from the heap too) and
    no trimming of the heap.

    A forward pass allocates and frees the same activation tensors batch after batch. By default
    each large one is a fresh ``mmap`` whose pages the kernel faults in and zeroes again; a mmap
    threshold raised to its maximum (32 MiB) is not enough, MobileNetV2's widest activations at
    batch 16 are 77 MB. On the 2-core CPU this made ``fashionlens predict`` about 1.7x faster, and
    the model inside it as fast as the model alone (docs/benchmarks.md, "predict"). Called by the
    batch commands (``predict``, ``embed``), which own their process: the memory of their largest
    batch stays with the process until it ends. A no-op where the C library is not glibc. Returns
    whether it took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1


def loader(paths: Sequence[Path], predictor: Predictor, batch_size: int, workers: int) -> DataLoader:
    """Batches of ``paths`` through the predictor's evaluation transform: ``image`` (B, 3, S, S) float,
    ``width``/``height`` (the photo's own size), ``path`` and ``error`` ("" or why it could not be read)."""
    preprocess = predictor.image_preprocess
    return DataLoader(PhotoDataset(paths, preprocess), batch_size=batch_size, num_workers=workers,
                      collate_fn=NormaliseBatch(preprocess), persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def predict_batch(predictor: Predictor, batch: dict[str, Any], top_k: int, threshold) -> tuple[list, list[str]]:
    """(predictions, errors) of one collated batch."""
    good = [i for i, error in enumerate(batch["error"]) if not error]
    errors = [error for error in batch["error"] if error]
    if not good:
        return [], errors
    sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in good]
    results = predictor.predict_preprocessed(batch["image"][good], sizes, [batch["path"][i] for i in good],
                                             top_k=top_k, threshold=threshold)
    return results, errors


def explain_batch(predictor: Predictor, batch: dict[str, Any], top_k: int, threshold,
                  labels: Sequence[str]) -> tuple[list, list, list[str]]:
    """(predictions, explanations, errors) of one collated batch: one forward pass for both."""
    good = [i for i, error in enumerate(batch["error"]) if not error]
    errors = [error for error in batch["error"] if error]
    if not good:
        return [], [], errors
    sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in good]
    explanations = predictor.explain_preprocessed(batch["image"][good], sizes, [batch["path"][i] for i in good],
                                                  labels=labels, top_k=top_k, threshold=threshold)
    return [explanation.prediction for explanation in explanations], explanations, errors


# ------------------------------------------------------------------------------------- overlays (PNG)


class OverlayWriter:
    """Writes ``DIR/<photo name>.<label>.png``; photos of the same name in other folders get ``-2``, ``-3``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stems: dict[str, str] = {}  # photo path -> its file-name stem here
        self.taken: set[str] = set()
        self.written = 0

    def _stem(self, source: str) -> str:
        if source not in self.stems:
            base = Path(source).stem or "photo"
            stem, n = base, 1
            while stem in self.taken:
                n += 1
                stem = f"{base}-{n}"
            self.taken.add(stem)
            self.stems[source] = stem
        return self.stems[source]

    def write(self, explanation) -> list[Path]:
        from fashionlens.explain import overlay
        from fashionlens.inference import read_image
        from fashionlens.modeldir import atomic_write_bytes

        photo = read_image(explanation.source)
        paths = []
        for label_map in explanation.maps:
            safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label_map.name)
            path = self.folder / f"{self._stem(explanation.source)}.{safe}.png"
            buffer = io.BytesIO()
            overlay(photo, label_map).save(buffer, format="PNG")
            atomic_write_bytes(path, buffer.getvalue())
            paths.append(path)
        self.written += len(paths)
        return paths

    def write_landmarks(self, result: ClothingPrediction) -> Path | None:
        """``DIR/<photo name>.landmarks.png``: the photo with its visible landmarks; None without any."""
        from fashionlens.explain import draw_landmarks
        from fashionlens.inference import read_image
        from fashionlens.modeldir import atomic_write_bytes

        if not result.landmarks:
            return None
        path = self.folder / f"{self._stem(result.source)}.landmarks.png"
        buffer = io.BytesIO()
        draw_landmarks(read_image(result.source), result.landmarks).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
        self.written += 1
        return path


# --------------------------------------------------------------------------------------- output rows


def parquet_row(result: Prediction, model: str) -> dict[str, Any]:
    """One photo's Parquet row: flat columns for the common questions, JSON for the nested rest."""
    row: dict[str, Any] = {"path": result.source, "model": model, "task": result.task,
                           "width": result.width, "height": result.height}
    if isinstance(result, StylePrediction):
        row.update(labels=[label.name for label in result.labels], scores=[label.score for label in result.labels],
                   predicted=[label.name for label in result.predicted], category=None, category_score=None,
                   attributes=None, attribute_groups=None, landmarks=None)
    else:
        top = result.category_top_k[0] if result.category_top_k else None
        row.update(labels=[label.name for labels in result.attributes_by_type.values() for label in labels],
                   scores=[label.score for labels in result.attributes_by_type.values() for label in labels],
                   predicted=[label.name for labels in result.attributes_by_type.values() for label in labels
                              if label.predicted],
                   category=top.name if top else None, category_score=top.score if top else None,
                   attributes=json.dumps({kind: [label.to_dict() for label in labels]
                                          for kind, labels in result.attributes_by_type.items()}),
                   attribute_groups=json.dumps(result.to_dict()["attribute_groups"]) if result.attribute_groups
                   else None,
                   landmarks=json.dumps([landmark.to_dict() for landmark in result.landmarks]))
    return row


class ShardWriter:
    """Parquet shards of one rank, written whole: ``part-RRR-NNNNN.parquet`` via a temporary file."""

    def __init__(self, folder: Path, rank: int = 0, rows_per_shard: int = ROWS_PER_SHARD):
        self.folder = Path(folder)
        self.rank = rank
        self.rows_per_shard = rows_per_shard
        self.rows: list[dict[str, Any]] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        taken = [int(p.stem.split("-")[2]) for p in self.folder.glob(f"part-{rank:03d}-*.parquet")]
        self.next_index = max(taken, default=-1) + 1
        self.written = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        from fashionlens.modeldir import atomic_write_bytes

        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(self.rows), sink)
        name = f"part-{self.rank:03d}-{self.next_index:05d}.parquet"
        atomic_write_bytes(self.folder / name, sink.getvalue().to_pybytes())
        self.next_index += 1
        self.written += len(self.rows)
        self.rows = []


def already_written(folder: Path) -> set[str]:
    """Paths of the photos in a Parquet output folder's complete shards (temporary files are ignored)."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for shard in sorted(Path(folder).glob("part-*.parquet")):
        try:
            done.update(pq.read_table(shard, columns=["path"]).column("path").to_pylist())
        except Exception as error:  # noqa: BLE001 - an unreadable shard is redone, loudly
            print(f"fashionlens: {shard} is unreadable ({type(error).__name__}); its photos are predicted again",
                  file=sys.stderr)
            shard.rename(shard.with_suffix(".parquet.bad"))
    return done


def text_block(result: Prediction) -> str:
    lines = [result.source]
    if isinstance(result, StylePrediction):
        width = max((len(label.name) for label in result.labels), default=0)
        for label in result.labels:
            mark = "" if label.predicted is None else ("  *" if label.predicted else "")
            lines.append(f"  {label.name:<{width}}  {label.score:6.3f}{mark}")
        if not result.labels:
            lines.append("  (no label above the threshold)")
        if any(label.predicted is not None for label in result.labels):
            lines.append("  (* above its calibrated threshold)")
        return "\n".join(lines)
    lines.append("  category:")
    lines += [f"    {label.name:<24} {label.score:6.3f}" for label in result.category_top_k]
    for kind, labels in result.attributes_by_type.items():
        lines.append(f"  {kind}: " + (", ".join(f"{label.name} {label.score:.2f}"
                                                 + ("*" if label.predicted else "") for label in labels) or "-"))
    if result.landmarks:
        lines.append("  landmarks: " + ", ".join(
            f"{lm.name} ({lm.x:.0f}, {lm.y:.0f}){'' if lm.visible else ' ?'}" for lm in result.landmarks))
    return "\n".join(lines)


def csv_header(predictor: Predictor, top_k: int) -> list[str]:
    if predictor.task == "style":
        header = ["path"]
        for rank in range(1, top_k + 1):
            header += [f"label_{rank}", f"score_{rank}"]
        return header + ["predicted"]
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"category_{rank}", f"category_score_{rank}"]
    types = list(dict.fromkeys(predictor.attribute_types or ["attribute"]))
    header += [f"attributes_{kind}" for kind in types]
    header += [f"{name}_{axis}" for name in predictor.landmark_names for axis in ("x", "y", "visible")]
    return header


def csv_row(result: Prediction, header: list[str]) -> list[Any]:
    row: dict[str, Any] = {"path": result.source}
    if isinstance(result, StylePrediction):
        for rank, label in enumerate(result.labels, start=1):
            row[f"label_{rank}"], row[f"score_{rank}"] = label.name, f"{label.score:.6f}"
        row["predicted"] = "; ".join(label.name for label in result.predicted)
    else:
        assert isinstance(result, ClothingPrediction)
        for rank, label in enumerate(result.category_top_k, start=1):
            row[f"category_{rank}"], row[f"category_score_{rank}"] = label.name, f"{label.score:.6f}"
        for kind, labels in result.attributes_by_type.items():
            row[f"attributes_{kind}"] = "; ".join(f"{label.name}:{label.score:.4f}" for label in labels)
        for landmark in result.landmarks:
            row[f"{landmark.name}_x"], row[f"{landmark.name}_y"] = f"{landmark.x:.1f}", f"{landmark.y:.1f}"
            row[f"{landmark.name}_visible"] = int(landmark.visible)
    return [row.get(column, "") for column in header]


# ------------------------------------------------------------------------------------------ the command


def _finite(result: Prediction) -> bool:
    import math

    if isinstance(result, StylePrediction):
        labels = result.labels
    else:
        labels = result.category_top_k + [label for group in result.attributes_by_type.values() for label in group]
    return all(math.isfinite(label.score) for label in labels)


def _threshold(value: str | None):
    if value is None or value == "auto":
        return "auto"
    try:
        number = float(value)
    except ValueError:
        raise FashionlensError(f"--threshold: expected auto or a probability in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise FashionlensError(f"--threshold is a probability in [0, 1], got {value}")
    return number


def _distributed(args: argparse.Namespace) -> bool:
    devices = str(getattr(args, "devices", "1"))
    return (devices.isdigit() and int(devices) > 1) or int(getattr(args, "num_nodes", 1)) > 1


def predict_command(args: argparse.Namespace) -> int:
    """``fashionlens predict``: 0 when every image was predicted, 1 when some failed, 2 when none found."""
    from fashionlens.progress import progress_bar

    reuse_freed_memory()

    paths, problems = collect_image_paths(args.paths)
    for problem in problems:
        print(f"fashionlens: {problem}", file=sys.stderr)
    if not paths:
        print("fashionlens: error: no images found (give image files, folders or globs; extensions: "
              + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")", file=sys.stderr)
        return 2
    try:
        threshold = _threshold(getattr(args, "threshold", None))
    except FashionlensError as error:
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 2
    top_k = getattr(args, "top_k", 5)
    batch_size = max(1, int(getattr(args, "batch_size", 16) or 16))
    workers = getattr(args, "workers", None)
    if workers is None:
        from fashionlens.config import default_predict_workers

        workers = default_predict_workers()
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        print(f"fashionlens: error: --out {out}: a file is there; --out names a folder of Parquet shards",
              file=sys.stderr)
        return 2
    if getattr(args, "csv", None) and Path(args.csv).is_dir():
        print(f"fashionlens: error: --csv {args.csv}: a folder is there; --csv names the file to write",
              file=sys.stderr)
        return 2
    explain = getattr(args, "explain", None)
    if explain and _distributed(args):
        print("fashionlens: error: --explain runs on one device; drop --devices/--num-nodes", file=sys.stderr)
        return 2
    if _distributed(args):
        if out is None:
            print("fashionlens: error: --devices/--num-nodes > 1 write Parquet shards: give --out preds.parquet",
                  file=sys.stderr)
            return 2
        return _predict_distributed(args, paths, top_k, threshold, batch_size, workers)

    predictor = load(args.model_dir, runtime=getattr(args, "runtime", "torch"), batch_size=batch_size)
    overlays = None
    if explain:
        try:
            for name in explain:
                if name != TOP_LABELS:
                    predictor.label_index(name)
            predictor.torch_model("--explain")
        except FashionlensError as error:
            print(f"fashionlens: error: {error}", file=sys.stderr)
            return 2
    draw = getattr(args, "draw_landmarks", False)
    if draw and (predictor.task != "clothing" or predictor.config.get("landmarks", "glem") == "none"):
        print(f"fashionlens: error: --draw-landmarks: {args.model_dir} predicts no landmarks", file=sys.stderr)
        return 2
    if explain or draw:
        overlays = OverlayWriter(Path(getattr(args, "explain_dir", None) or "explain"))
    lost = sum(1 for problem in problems if getattr(problem, "failed", True))
    failed, done = lost, 0
    todo = list(paths)
    writer = None
    if out is not None:
        written = already_written(Path(out))
        todo = [path for path in paths if str(path) not in written]
        if len(todo) < len(paths):
            print(f"fashionlens: {out}: {len(paths) - len(todo)} photos already predicted; {len(todo)} to go",
                  file=sys.stderr)
        writer = ShardWriter(Path(out))
    csv_stream = csv_writer = None
    header: list[str] = []
    if getattr(args, "csv", None):
        csv_path = Path(args.csv)
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        csv_stream = open(csv_path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in finally
        csv_writer = csv.writer(csv_stream)
        header = csv_header(predictor, top_k)
        csv_writer.writerow(header)
    model_name = Path(args.model_dir).name
    progress = progress_bar(total=len(todo), desc="predicting", unit="photo", disable=len(todo) <= 4)
    try:
        for batch in (loader(todo, predictor, batch_size, workers) if todo else []):
            if explain:
                results, explanations, errors = explain_batch(predictor, batch, top_k, threshold, explain)
            else:
                (results, errors), explanations = predict_batch(predictor, batch, top_k, threshold), []
            for error in errors:
                print(f"fashionlens: skipped {error}", file=sys.stderr)
            failed += len(errors)
            for row, result in enumerate(results):
                if not _finite(result):
                    print(f"fashionlens: skipped {result.source}: the model gave non-finite scores (NaN or inf); "
                          f"its weights are broken", file=sys.stderr)
                    failed += 1
                    continue
                done += 1
                if overlays is not None:
                    try:
                        if explain:
                            overlays.write(explanations[row])
                        if draw and isinstance(result, ClothingPrediction):
                            overlays.write_landmarks(result)
                    except FashionlensError as error:  # the photo changed or went away since it was predicted
                        print(f"fashionlens: no overlay for {result.source}: {error}", file=sys.stderr)
                if writer is not None:
                    writer.add(parquet_row(result, model_name))
                if csv_writer is not None:
                    csv_writer.writerow(csv_row(result, header))
                if args.json:
                    print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
                elif csv_writer is None and writer is None:
                    print(text_block(result), flush=True)
            progress.update(len(batch["path"]))
    finally:
        progress.close()
        if writer is not None:
            writer.flush()
        if csv_stream is not None:
            csv_stream.close()
    if csv_writer is not None:
        print(f"wrote {args.csv} ({done} rows)", file=sys.stderr)
    if writer is not None:
        print(f"wrote {writer.written} rows to {out}", file=sys.stderr)
    if overlays is not None:
        print(f"wrote {overlays.written} overlays to {overlays.folder}", file=sys.stderr)
    if failed:
        print(f"fashionlens: {failed} of {len(paths) + lost} inputs failed, {done} predicted", file=sys.stderr)
        return 1
    return 0


def _predict_distributed(args: argparse.Namespace, paths: list[Path], top_k: int, threshold, batch_size: int,
                         workers: int) -> int:
    """Each Lightning rank predicts paths[rank::world] and writes its own shards."""
    import lightning as L

    out = Path(args.out)
    written = already_written(out) if out.is_dir() else set()
    todo = [path for path in paths if str(path) not in written]

    class _Photos(L.LightningDataModule):
        def predict_dataloader(self):
            rank, world = self.trainer.global_rank, self.trainer.world_size
            predictor = load(args.model_dir, batch_size=batch_size)
            return loader(todo[rank::world], predictor, batch_size, workers)

    class _Writer(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # Lightning wants a module with parameters
            self.predictor = None
            self.writer = None
            self.failed = 0

        def on_predict_start(self) -> None:
            self.predictor = load(args.model_dir, runtime=getattr(args, "runtime", "torch"), batch_size=batch_size)
            self.writer = ShardWriter(out, rank=self.global_rank)

        def predict_step(self, batch, batch_idx):
            results, errors = predict_batch(self.predictor, batch, top_k, threshold)
            for error in errors:
                print(f"fashionlens: skipped {error}", file=sys.stderr)
            self.failed += len(errors)
            for result in results:
                self.writer.add(parquet_row(result, Path(args.model_dir).name))

        def on_predict_end(self) -> None:
            self.writer.flush()
            print(f"fashionlens: rank {self.global_rank}: wrote {self.writer.written} rows, {self.failed} failed",
                  file=sys.stderr)

    devices = str(getattr(args, "devices", "1"))
    trainer = L.Trainer(accelerator=getattr(args, "accelerator", "auto"),
                        devices=int(devices) if devices.isdigit() else devices,
                        num_nodes=int(getattr(args, "num_nodes", 1)), strategy="ddp", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.predict(_Writer(), datamodule=_Photos(), return_predictions=False)
    if trainer.is_global_zero:
        print(f"fashionlens: {out}: {len(already_written(out))} photos in all", file=sys.stderr)
    return 0
