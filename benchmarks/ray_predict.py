"""`fashionlens predict --files-from LIST --out` on this machine against `--engine ray` with 1 and 2 actors.

Each command runs in a fresh process from start to end (for Ray: starting a local Ray instance with
``ray.init(num_cpus=2)``, the actors, loading a model in each), over the same list of real catalogue
photos, into a new output folder; the variants alternate in a rotating order, round after round.
A run over ``--small`` photos first gives each command's start-up, so the steady rate is
``(photos - small) / (time - small run's time)``. The rows of every Ray run are checked against the
local command's: the same photos, scores within ``--tolerance``.

    python benchmarks/ray_predict.py                       # the 3,038 photos of clothing-dataset-small
    python benchmarks/ray_predict.py --limit 1000 --rounds 2 --json /tmp/ray_predict.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "clothing-dataset-small"
RAY_SCRIPT = """
import sys, ray
from fashionlens.cli import main
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
code = main(sys.argv[1:])
ray.shutdown()
sys.exit(code)
"""


def command(variant: str, model: str, listing: Path, out: Path, batch_size: int) -> list[str]:
    args = ["predict", model, "--files-from", str(listing), "--out", str(out), "--batch-size", str(batch_size)]
    if variant == "local":
        return [sys.executable, "-m", "fashionlens.cli", *args]
    actors = variant.split()[-1]
    return [sys.executable, "-c", RAY_SCRIPT, *args, "--engine", "ray", "--ray-actors", actors]


def rows(folder: Path) -> dict[str, list[float]]:
    import pyarrow.parquet as pq

    return {row["path"]: row["scores"] for shard in sorted(folder.glob("part-*.parquet"))
            for row in pq.read_table(shard, columns=["path", "scores"]).to_pylist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, nargs="+", default=[DATA / "train", DATA / "validation", DATA / "test"])
    parser.add_argument("--model", default="garment-category-mnv2")
    parser.add_argument("--limit", type=int, default=None, help="the first N photos (name order) only")
    parser.add_argument("--small", type=int, default=64, help="photos of the start-up run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    photos = sorted(str(p) for folder in args.photos for p in folder.rglob("*.jpg"))[:args.limit]
    work = Path(tempfile.mkdtemp(prefix="ray_predict_"))
    lists = {"full": work / "full.txt", "small": work / "small.txt"}
    lists["full"].write_text("".join(f"{p}\n" for p in photos))
    lists["small"].write_text("".join(f"{p}\n" for p in photos[:args.small]))
    variants = ["local", "ray 1", "ray 2"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    times: dict[tuple[str, str], list[float]] = {}
    reference: dict[str, list[float]] | None = None
    worst: dict[str, float] = {}
    for round_index in range(args.rounds):
        order = variants[round_index % 3:] + variants[:round_index % 3]
        for size in ("small", "full"):
            for variant in order:
                out = work / f"{variant.replace(' ', '')}-{size}-{round_index}.parquet"
                started = time.perf_counter()
                done = subprocess.run(command(variant, args.model, lists[size], out, args.batch_size), env=env,
                                      capture_output=True, text=True)
                elapsed = time.perf_counter() - started
                if done.returncode != 0:
                    raise SystemExit(f"{variant} failed ({done.returncode}):\n{done.stderr[-3000:]}")
                times.setdefault((variant, size), []).append(elapsed)
                print(f"round {round_index + 1} {variant:6} {size:5} {elapsed:7.1f} s", file=sys.stderr, flush=True)
                if size == "full":
                    got = rows(out)
                    if sorted(got) != sorted(photos):
                        raise SystemExit(f"{variant}: {len(got)} rows for {len(photos)} photos")
                    if variant == "local" and reference is None:
                        reference = got
                    elif reference is not None:
                        diff = max(max((abs(a - b) for a, b in zip(got[p], reference[p])), default=0.0) for p in got)
                        worst[variant] = max(worst.get(variant, 0.0), diff)
                shutil.rmtree(out)
    shutil.rmtree(work)

    full, small = len(photos), min(args.small, len(photos))
    local = statistics.median(times[("local", "full")])
    results = []
    print(f"\n{full} photos, model {args.model}, batch {args.batch_size}, {args.rounds} round(s), "
          f"{os.cpu_count()} CPUs\n")
    print("| command | whole run (s) | photos/s | speed vs local | start-up (s) | steady photos/s | steady speed vs local "
          "| max score difference from local |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    local_steady = (full - small) / (local - statistics.median(times[("local", "small")]))
    for variant in variants:
        whole = statistics.median(times[(variant, "full")])
        start = statistics.median(times[(variant, "small")])
        steady = (full - small) / (whole - start)
        results.append({"variant": variant, "photos": full, "whole_s": whole, "small_s": start,
                        "photos_per_s": full / whole, "steady_photos_per_s": steady,
                        "max_score_difference": worst.get(variant, 0.0)})
        print(f"| {variant} | {whole:.1f} | {full / whole:.1f} | {local / whole:.2f} | {start:.1f} | {steady:.1f} | "
              f"{steady / local_steady:.2f} | {worst.get(variant, 0.0):.1e} |")
    if args.json or os.environ.get("OUT"):
        path = args.json or Path(os.environ["OUT"]) / "ray_predict.json"
        path.write_text(json.dumps({"photos": full, "model": args.model, "rounds": args.rounds,
                                    "times": {f"{v} {s}": t for (v, s), t in times.items()},
                                    "results": results}, indent=2))


if __name__ == "__main__":
    main()
