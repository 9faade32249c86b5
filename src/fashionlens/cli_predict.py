"""`fashionlens predict`: catalogue-sized prediction (part of the CLI).

The photos come from :mod:`fashionlens.cli_paths` (files, folders, globs, ``--files-from LIST``);
:mod:`fashionlens.predictions` decodes them in a DataLoader (in its workers, or on a 2-core CPU in the
main process between model calls: ``config.default_predict_workers``) and this module writes what the
model says: text, JSON lines (``--json``), a CSV (``--csv``), or sharded Parquet (``--out
preds.parquet``: a folder of ``part-RRR-NNNNN.parquet`` files, one row per photo, resumable; see
:mod:`fashionlens.predictions` for what the folder guarantees). ``--devices N --num-nodes M`` runs it
through Lightning, each rank predicting its own share of the photos and writing its own shards;
``--engine ray`` maps the photos over Ray Data actors and writes the same rows here.
"""
from __future__ import annotations

import argparse
import csv
import errno
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from fashionlens.cli_paths import photos_of
from fashionlens.config import default_predict_workers
from fashionlens.errors import FashionlensError
from fashionlens.explain import draw_landmarks, overlay
from fashionlens.fileio import atomic_write_bytes, resolved_file, weights_sha256
from fashionlens.inference import (
    TOP_LABELS,
    ClothingPrediction,
    Prediction,
    Predictor,
    StylePrediction,
    load,
    read_image,
)
from fashionlens.predictions import (
    OutputError,
    PredictPhotos,
    ShardWriter,
    check_output_folder,
    finite,
    loader,
    parquet_row,
    predict_batch,
    reuse_freed_memory,
    written_files,
)
from fashionlens.progress import progress_bar

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
        if not result.landmarks:
            return None
        path = self.folder / f"{self._stem(result.source)}.landmarks.png"
        buffer = io.BytesIO()
        draw_landmarks(read_image(result.source), result.landmarks).save(buffer, format="PNG")
        atomic_write_bytes(path, buffer.getvalue())
        self.written += 1
        return path


# --------------------------------------------------------------------------------------- output rows


def text_block(result: Prediction) -> str:
    lines = [result.source]
    if isinstance(result, StylePrediction) and result.category is not None:
        # A garment tagger: the garment first, then what is predicted of each group.
        lines.append(f"  {result.category.name} {result.category.score:.3f}  (category)")
        for group, labels in result.groups.items():
            shown = [label for label in labels if label.predicted is not False]
            if shown:
                lines.append(f"  {group}: " + ", ".join(f"{label.name} {label.score:.2f}" for label in shown))
        if any(label.predicted is not None for label in result.labels):
            lines.append("  (labels above their calibrated thresholds; --json gives every score)")
        return "\n".join(lines)
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
        header = ["path"] + (["category", "category_score"] if predictor.category_indices else [])
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
        if result.category is not None:
            row["category"], row["category_score"] = result.category.name, f"{result.category.score:.6f}"
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


class CsvOutput:
    """``--csv``: the header, then each batch's rows in one write. A write that fails (a full disk) cuts
    the file back to the rows before it, so it holds whole rows only, and says where it stopped."""

    def __init__(self, path: Path, header: list[str]):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self.rows = 0
        self.kept = 0  # bytes of whole rows on disk
        self.write([header], None)
        self.rows = 0

    def write(self, rows: list[list[Any]], first: str | None) -> None:
        if not rows:
            return
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        try:
            self.stream.write(text.getvalue())
            self.stream.flush()
        except OSError as error:
            self.stream = None
            with open(self.path, "r+b") as stream:  # noqa: SIM115
                stream.truncate(self.kept)
            why = "the disk is full" if error.errno == errno.ENOSPC else error.strerror or str(error)
            raise OutputError(f"--csv {self.path}: cannot write it ({why}); stopped at {first}: the file keeps the "
                              f"{self.rows} rows before it") from None
        self.kept = self.stream.tell()
        self.rows += len(rows)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def _output_record(model_dir: Path | None, model_name: str, top_k: int, threshold) -> dict[str, Any]:
    """What ``--out``'s ``_fashionlens.json`` records: the rows of one model and one set of options."""
    return {"kind": "predictions", "model": model_name,
            "model_sha256": weights_sha256(model_dir) if model_dir else "", "top_k": top_k, "threshold": threshold}


def predict_command(args: argparse.Namespace) -> int:
    """``fashionlens predict``: 0 when every image was predicted, 1 when some failed, 2 when none found."""
    reuse_freed_memory()

    photos = photos_of(args)
    if photos is None:
        return 2
    paths, problems = photos
    try:
        threshold = _threshold(getattr(args, "threshold", None))
    except FashionlensError as error:
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 2
    top_k = getattr(args, "top_k", 5)
    batch_size = max(1, int(getattr(args, "batch_size", 16) or 16))
    workers = getattr(args, "workers", None)
    if workers is None:
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
    lost = sum(1 for problem in problems if getattr(problem, "failed", True))
    ray_engine = getattr(args, "engine", "local") == "ray"
    if ray_engine:
        if out is None or explain or getattr(args, "csv", None) or _distributed(args):
            print("fashionlens: error: --engine ray writes Parquet shards: give --out preds.parquet, without "
                  "--csv, --explain or --devices/--num-nodes", file=sys.stderr)
            return 2
    elif _distributed(args) and out is None:
        print("fashionlens: error: --devices/--num-nodes > 1 write Parquet shards: give --out preds.parquet",
              file=sys.stderr)
        return 2
    try:
        if ray_engine:
            return _predict_ray(args, paths, lost, top_k, threshold, batch_size)
        if _distributed(args):
            return _predict_distributed(args, paths, top_k, threshold, batch_size, workers)
    except OutputError as error:
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 2

    predictor = load(args.model_dir, runtime=getattr(args, "runtime", "torch"), batch_size=batch_size,
                     onnx=getattr(args, "onnx", None), balanced_groups=getattr(args, "balanced_groups", False))
    if getattr(predictor.runtime, "source", ""):
        print(predictor.runtime.source, file=sys.stderr)
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
    model_name = Path(args.model_dir).name
    failed, done = lost, 0
    todo = list(paths)
    writer = None
    if out is not None:
        try:
            writer = ShardWriter(Path(out), _output_record(predictor.model_dir, model_name, top_k, threshold))
        except OutputError as error:
            print(f"fashionlens: error: {error}", file=sys.stderr)
            return 2
        todo = [path for path in paths if resolved_file(path) not in writer.done]
        if len(todo) < len(paths):
            print(f"fashionlens: {out}: {len(paths) - len(todo)} photos already predicted; {len(todo)} to go",
                  file=sys.stderr)
    csv_output = None
    header: list[str] = []
    stopped = None
    progress = progress_bar(total=len(todo), desc="predicting", unit="photo", disable=len(todo) <= 4)
    try:
        if getattr(args, "csv", None):
            header = csv_header(predictor, top_k)
            csv_output = CsvOutput(Path(args.csv), header)
        for batch in (loader(todo, predictor, batch_size, workers) if todo else []):
            results, explanations, errors = predict_batch(predictor, batch, top_k, threshold, explain)
            for error in errors:
                print(f"fashionlens: skipped {error}", file=sys.stderr)
            failed += len(errors)
            csv_rows = []
            for row, result in enumerate(results):
                if not finite(result):
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
                if csv_output is not None:
                    csv_rows.append(csv_row(result, header))
                if args.json:
                    print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
                elif csv_output is None and writer is None:
                    print(text_block(result), flush=True)
            if csv_output is not None:
                csv_output.write(csv_rows, results[0].source if results else None)
            progress.update(len(batch["path"]))
        if writer is not None:
            writer.flush()
    except OutputError as error:
        stopped = error
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if csv_output is not None:
            csv_output.close()
    if stopped is not None:
        print(f"fashionlens: error: {stopped}", file=sys.stderr)
        return 1
    if csv_output is not None:
        print(f"wrote {args.csv} ({csv_output.rows} rows)", file=sys.stderr)
    if writer is not None:
        print(f"wrote {writer.written} rows to {out}", file=sys.stderr)
    if overlays is not None:
        print(f"wrote {overlays.written} overlays to {overlays.folder}", file=sys.stderr)
    if failed:
        print(f"fashionlens: {failed} of {len(paths) + lost} inputs failed, {done} predicted", file=sys.stderr)
        return 1
    return 0


def _predict_ray(args: argparse.Namespace, paths: list, lost: int, top_k: int, threshold, batch_size: int) -> int:
    """``--engine ray``: Ray Data maps :class:`PredictPhotos` over the photos (one model per actor: one
    per GPU of the cluster, else one per CPU, or ``--ray-actors``); this process writes the rows into
    ``--out`` as the local command does, so a rerun of either resumes the other."""
    try:
        import ray
    except ImportError:
        print("fashionlens: error: --engine ray needs Ray: pip install 'fashionlens[ray]'", file=sys.stderr)
        return 2
    from fashionlens.hub import resolve_model_dir

    model_dir = resolve_model_dir(args.model_dir)
    model_name = Path(args.model_dir).name
    out = Path(args.out)
    writer = ShardWriter(out, _output_record(model_dir, model_name, top_k, threshold))
    failed = lost
    try:
        todo = [str(path) for path in paths if resolved_file(path) not in writer.done]
        if len(todo) < len(paths):
            print(f"fashionlens: {out}: {len(paths) - len(todo)} photos already predicted; {len(todo)} to go",
                  file=sys.stderr)
        if todo:
            if not ray.is_initialized():
                ray.init(address=getattr(args, "address", None))
            cpus, gpus = (int(ray.cluster_resources().get(kind, 0)) for kind in ("CPU", "GPU"))
            actors = getattr(args, "ray_actors", None) or gpus or max(1, cpus)
            # A GPU actor decodes with the CPUs that fall to it (at most 8, leaving the Ray tasks some).
            decode = max(1, min(8, (cpus - 1) // actors)) if gpus else 1
            rows = ray.data.from_items([{"path": path} for path in todo]).map_batches(
                PredictPhotos, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                num_gpus=1 if gpus else 0, num_cpus=decode,
                fn_constructor_kwargs={"model": str(model_dir), "top_k": top_k, "threshold": threshold,
                                       "runtime": getattr(args, "runtime", "torch"), "model_name": model_name,
                                       "decode_threads": decode, "balanced_groups": args.balanced_groups})
            for table in rows.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in table.to_pylist():
                    error = row.pop("error")
                    if error:
                        print(f"fashionlens: skipped {error}", file=sys.stderr)
                        failed += 1
                    else:
                        writer.add(row)
        writer.flush()
    except OutputError as error:
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 1
    finally:
        writer.close()
    print(f"wrote {writer.written} rows to {out}", file=sys.stderr)
    if failed:
        print(f"fashionlens: {failed} of {len(paths) + lost} inputs failed, {writer.written} predicted",
              file=sys.stderr)
        return 1
    return 0


def _predict_distributed(args: argparse.Namespace, paths: list, top_k: int, threshold, batch_size: int,
                         workers: int) -> int:
    """Each Lightning rank predicts paths[rank::world] and writes its own shards."""
    import lightning as L  # here: importing Lightning costs 4-6 s, which predict on one device never pays

    from fashionlens.hub import resolve_model_dir

    out = Path(args.out)
    model_name = Path(args.model_dir).name
    record = _output_record(resolve_model_dir(args.model_dir), model_name, top_k, threshold)
    if out.is_dir():
        check_output_folder(out, record)
    written = written_files(out) if out.is_dir() else set()
    todo = [path for path in paths if resolved_file(path) not in written]

    class _Photos(L.LightningDataModule):
        def predict_dataloader(self):
            rank, world = self.trainer.global_rank, self.trainer.world_size
            predictor = load(args.model_dir, batch_size=batch_size)  # its preprocessing only
            return loader(todo[rank::world], predictor, batch_size, workers)

    class _Writer(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # Lightning wants a module with parameters
            self.predictor = None
            self.writer = None
            self.failed = 0

        def on_predict_start(self) -> None:
            self.predictor = load(args.model_dir, runtime=getattr(args, "runtime", "torch"), batch_size=batch_size,
                                  onnx=getattr(args, "onnx", None), balanced_groups=args.balanced_groups)
            self.writer = ShardWriter(out, record, rank=self.global_rank)

        def predict_step(self, batch, batch_idx):
            results, _, errors = predict_batch(self.predictor, batch, top_k, threshold)
            for error in errors:
                print(f"fashionlens: skipped {error}", file=sys.stderr)
            self.failed += len(errors)
            for result in results:
                self.writer.add(parquet_row(result, model_name))

        def on_predict_end(self) -> None:
            self.writer.flush()
            self.writer.close()
            print(f"fashionlens: rank {self.global_rank}: wrote {self.writer.written} rows, {self.failed} failed",
                  file=sys.stderr)

    devices = str(getattr(args, "devices", "1"))
    trainer = L.Trainer(accelerator=getattr(args, "accelerator", "auto"),
                        devices=int(devices) if devices.isdigit() else devices,
                        num_nodes=int(getattr(args, "num_nodes", 1)), strategy="ddp", logger=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    trainer.predict(_Writer(), datamodule=_Photos(), return_predictions=False)
    if trainer.is_global_zero:
        print(f"fashionlens: {out}: {len(written_files(out))} photos in all", file=sys.stderr)
    return 0
