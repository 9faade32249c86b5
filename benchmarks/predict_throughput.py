"""``fashionlens predict`` against the model's own batch throughput on preprocessed tensors (issue 17 item 2).

Both in one run, on real photos (default: the 308 photos of
``../shared/data/clothing-dataset-small/test``) and a released model (default
``garment-category-mnv2``):

- ``model``: the photos decoded and preprocessed once, in this process, exactly as ``predict``'s
  loader does (``predictions.PhotoDataset`` and ``NormaliseBatch``); then the model called on them in batches
  of ``--batch-size`` (``Predictor.runtime``, the call ``predict_preprocessed`` makes), photos per
  second. ``model+labels`` is ``Predictor.predict_preprocessed`` (the model plus turning scores
  into labels), for reference.
- ``pipeline``: predict's own DataLoader (``predictions.loader``, its default decoding) feeding the model,
  in this process: the command's steady state without process start, labels or Parquet.
- ``command in-process``: ``fashionlens.cli.main(["predict", ...])`` in this warm process: the whole
  command (model load, DataLoader workers, labels, sharded Parquet) without the interpreter's start
  and the imports of torch and torchvision, which a fresh process pays once (seconds).
- ``preprocess``: the same decoding and preprocessing alone, in this one process. With the CPU
  seconds of ``model`` (all its threads) it gives the bound of a pipeline whose decoding and model
  share the same cores: model CPU / (model CPU + preprocessing CPU) of the model's rate.
- ``command``: ``fashionlens predict MODEL PHOTO... --out DIR`` (sharded Parquet) in a fresh
  process, wall time, on all the photos and on the first ``--small`` of them; the output folder is
  removed before each run (a rerun would skip what is written). ``command`` throughput is all the
  photos over the full wall time (process start, imports and model load included);
  ``command steady`` subtracts the small run: ``(N - n) / (T_N - T_n)``, the rate once started.

``--against SRC`` also times the command of another source tree (say a worktree of the commit before
a change) in the same rounds, and prints the two commands' difference per round.

Each round runs the timings in a rotating order; medians over ``--rounds``. The target
(issue 17): ``command`` >= 0.8 x ``model`` on 2 cores. Quote the ratios (same run); absolute
times on a shared box are noise.

    python benchmarks/predict_throughput.py
    python benchmarks/predict_throughput.py --model garment-attributes-lite0 --rounds 5 --json /tmp/predict_throughput.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, machine_summary, median, write_results  # noqa: E402

DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "clothing-dataset-small" / "test"


def photo_paths(folders: list[Path]) -> list[Path]:
    from fashionlens.vocabulary import IMAGE_EXTENSIONS

    paths = sorted(p for folder in folders for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise SystemExit(f"no photos under {', '.join(map(str, folders))}")
    return paths


def preprocessed(predictor, paths: list[Path]) -> tuple[torch.Tensor, list[tuple[int, int]], list[str]]:
    """The photos through predict's own dataset (decode, EXIF, resize) and normalisation, stacked."""
    from fashionlens.predictions import PhotoDataset

    dataset = PhotoDataset(paths, predictor.image_preprocess)
    items = [dataset[i] for i in range(len(dataset))]
    bad = [item["error"] for item in items if item["error"]]
    if bad:
        raise SystemExit(f"{len(bad)} photos did not decode, first: {bad[0]}")
    return (predictor.image_preprocess.normalise(torch.stack([item["image"] for item in items])),
            [(item["width"], item["height"]) for item in items], [item["path"] for item in items])


def command(model: str, paths: list[Path], out: Path, batch_size: int, workers: int | None,
            src: Path = REPO / "src") -> float:
    """Wall seconds of one ``fashionlens predict`` process over ``paths``, running the package in ``src``."""
    shutil.rmtree(out, ignore_errors=True)
    arguments = [str(Path(sys.executable).parent / "fashionlens"), "predict", model, *map(str, paths), "--out", str(out),
                 "--batch-size", str(batch_size)]
    if workers is not None:
        arguments += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    done = subprocess.run(arguments, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fashionlens predict failed ({done.returncode}):\n{done.stderr[-3000:]}")
    if f"wrote {len(paths)} rows" not in done.stderr:
        raise SystemExit(f"fashionlens predict did not write {len(paths)} rows:\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="garment-category-mnv2")
    parser.add_argument("--photos", type=Path, nargs="+", default=[DEFAULT_PHOTOS])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="predict's --workers (default: its own)")
    parser.add_argument("--small", type=int, default=32, help="photos of the small run (startup subtracted)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", nargs="+", help="only these steps (default: all; model is always timed)")
    parser.add_argument("--against", type=Path, metavar="SRC",
                        help="also time the command of another source tree (its src/ folder, e.g. a git worktree of "
                             "an older commit) in the same rounds: steps 'command (against)' and 'command small "
                             "(against)'")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from fashionlens.predictions import reuse_freed_memory
    from fashionlens.inference import load

    # The same allocator settings as the command's process, so that model and command compare fairly.
    reuse_freed_memory()
    paths = photo_paths(args.photos)
    predictor = load(args.model, batch_size=args.batch_size)
    batch, sizes, sources = preprocessed(predictor, paths)
    starts = range(0, len(paths), args.batch_size)

    def model_alone() -> None:
        with torch.inference_mode():
            for start in starts:
                predictor.runtime(batch[start:start + args.batch_size])

    def model_and_labels() -> None:
        for start in starts:
            end = start + args.batch_size
            predictor.predict_preprocessed(batch[start:end], sizes[start:end], sources[start:end])

    from fashionlens.predictions import NormaliseBatch, PhotoDataset

    dataset = PhotoDataset(paths, predictor.image_preprocess)
    collate = NormaliseBatch(predictor.image_preprocess)

    def preprocess_alone() -> None:  # what the loader does per batch, without the DataLoader
        for start in starts:
            collate([dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))])

    from fashionlens.predictions import loader
    from fashionlens.config import default_predict_workers

    workers = default_predict_workers() if args.workers is None else args.workers

    def pipeline() -> None:  # predict's own DataLoader feeding the model, in this process (no start-up)
        with torch.inference_mode():
            for item in loader(paths, predictor, args.batch_size, workers):
                predictor.runtime(item["image"])

    def command_in_process() -> None:  # the whole command (model load, labels, Parquet) in this warm process
        import contextlib
        import io

        from fashionlens.cli import main as cli_main

        target = out / "in-process.parquet"
        shutil.rmtree(target, ignore_errors=True)
        arguments = ["predict", args.model, *map(str, paths), "--out", str(target),
                     "--batch-size", str(args.batch_size)]
        if args.workers is not None:
            arguments += ["--workers", str(args.workers)]
        with contextlib.redirect_stderr(io.StringIO()):
            if cli_main(arguments) != 0:
                raise SystemExit("fashionlens predict (in process) failed")

    out = Path(tempfile.mkdtemp(prefix="fashionlens_predict_throughput_"))
    steps = {
        "preprocess": preprocess_alone,
        "model": model_alone,
        "model+labels": model_and_labels,
        "pipeline": pipeline,
        "command in-process": command_in_process,
        "command": lambda: command(args.model, paths, out / "all.parquet", args.batch_size, args.workers),
        "command small": lambda: command(args.model, paths[:args.small], out / "small.parquet", args.batch_size,
                                         args.workers),
    }
    if args.against:
        steps["command (against)"] = lambda: command(args.model, paths, out / "against.parquet", args.batch_size,
                                                     args.workers, args.against)
        steps["command small (against)"] = lambda: command(args.model, paths[:args.small],
                                                           out / "against-small.parquet", args.batch_size,
                                                           args.workers, args.against)
    if args.steps:
        unknown = set(args.steps) - set(steps)
        if unknown:
            raise SystemExit(f"unknown steps {sorted(unknown)}; steps: {', '.join(steps)}")
        steps = {name: step for name, step in steps.items() if name in {"model", *args.steps}}
    model_alone()  # warm-up: first calls allocate
    times: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}  # CPU seconds of this process (all threads)
    try:
        for round_index in range(args.rounds):
            names = list(steps)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                start, start_cpu = time.perf_counter(), time.process_time()
                steps[name]()
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
                print(f"round {round_index + 1} {name}: {times[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU of this process", flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)

    n, small = len(paths), min(args.small, len(paths))
    seconds = {name: median(values) for name, values in times.items()}
    rate = {("preprocess (1 process)" if name == "preprocess" else name): n / seconds[name]
            for name in steps if not name.startswith("command small")}
    for suffix in ("", " (against)"):
        if f"command{suffix}" in seconds and f"command small{suffix}" in seconds:
            rate[f"command steady{suffix}"] = (n - small) / (seconds[f"command{suffix}"]
                                                             - seconds[f"command small{suffix}"])
    results = {
        "model": args.model, "photos": n, "photo_folders": [str(p) for p in args.photos], "batch_size": args.batch_size,
        "workers": args.workers, "small": small, "rounds": args.rounds, "machine": machine_summary(),
        "seconds": {name: [round(t, 3) for t in values] for name, values in times.items()},
        "photos_per_second": rate,
        "cpu_seconds": {name: [round(t, 3) for t in values] for name, values in cpu.items() if not name.startswith("command")},
        "over_model": {name: value / rate["model"] for name, value in rate.items()},
        "target": 0.8,
    }
    print(f"{args.model}, {n} photos, batch {args.batch_size}, medians of {args.rounds} rounds:")
    for name, value in rate.items():
        print(f"  {name:26s} {value:7.1f} photos/s  ({value / rate['model']:.2f} x model)")
    if "preprocess" in cpu:
        # On C cores a pipeline that decodes and runs the model on the same cores can reach at most
        # model CPU / (model CPU + preprocessing CPU) of the model's own rate.
        results["bound_from_cpu"] = median(cpu["model"]) / (median(cpu["model"]) + median(cpu["preprocess"]))
        print(f"  CPU seconds: model {median(cpu['model']):.2f}, preprocessing {median(cpu['preprocess']):.2f}: "
              f"bound on 2 shared cores {results['bound_from_cpu']:.2f} x model")
    if "command" in times and "command (against)" in times:
        # Both commands ran in every round, minutes apart: their difference per round is the change,
        # free of the machine's drift between rounds.
        results["command_minus_against_s"] = [round(a - b, 3) for a, b in zip(times["command"],
                                                                              times["command (against)"])]
        print(f"  command - command (against), per round: {results['command_minus_against_s']} s")
    write_results(results, "predict_throughput.json", args.json)


if __name__ == "__main__":
    main()
