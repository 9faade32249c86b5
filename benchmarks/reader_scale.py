"""Readers at full size: DeepFashion list files, 100,000 K-Fashion JSON files, million-row manifests.

Writes the inputs into ``--workdir`` (default ``/tmp/fashionlens_reader_scale``; about 1.5 GB for
DeepFashion, 0.6 GB for K-Fashion, 0.2 GB for the manifests, deleted at the end unless ``--keep``),
then times, each in its own fresh Python process (the time of the call only; peak RSS of the
whole process from ``ru_maxrss``):

- ``bare``: a bare Python pass over the same files that only splits every line into its tokens,
  the floor of a line-by-line reader: DeepFashion ``line.split()``; CSV the image, then the labels
  cell split at ``;``; JSON Lines ``json.loads`` of every line; K-Fashion ``rglob`` plus
  ``json.loads`` of every file.
- ``first``: the reader with an empty annotation cache (it parses and writes the cache);
- ``second``: the same call again (the cache is used);
- ``nocache``: the reader with ``cache=False`` (parsing alone, no cache written).

DeepFashion: ``read_deepfashion(root, split="train")``; K-Fashion: ``read_kfashion(folder)``;
manifests: ``read_manifest_csv`` / ``read_manifest_jsonl``. The inputs are generated from real
vocabularies: DeepFashion's ``list_category_cloth.txt`` / ``list_attr_cloth.txt`` (289,222 rows,
``list_attr_img.txt`` 1000 columns of 1/-1/0 as the benchmark writes them, about 880 MB), K-Fashion's
3 real JSON files varied (image id, file name, style, boxes), and K-Fashion's 23 style names for the
manifests. The readers never open the images; K-Fashion gets hard links to its 3 real JPEGs
beside each JSON, because its reader looks for them.

Ratios, measured in one run, are what to quote on a shared box (benchmarks/README.md); with
``--rounds N`` the four steps run N times in a rotating order and medians are reported. Peak RSS
is each process's ``VmHWM`` (``ru_maxrss`` is printed too: Linux carries the parent's size at fork
into it, which is why the parent only launches processes). Target (DeepFashion, issue 31): first
<= 1.0x bare, second <= 0.05x bare, peak RSS <= 1.5 GiB. K-Fashion and the manifests are measured
for reference only: their second-read targets were dropped for a simpler cache (one file keyed on
each source file's path, size and mtime; K-Fashion ``stat``s every JSON file on a cached read).

    python benchmarks/reader_scale.py                      # all three, full size
    python benchmarks/reader_scale.py --parts deepfashion --json /tmp/reader_scale.json
    python benchmarks/reader_scale.py --rows 20000 --kfashion-files 5000 --manifest-rows 50000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEEPFASHION_ROWS = 289_222
SPLIT_SIZES = (209_222, 40_000, 40_000)  # the benchmark's train / val / test

KFASHION_STYLES = (
    "클래식", "프레피", "매니시", "톰보이", "페미닌", "로맨틱", "섹시", "히피", "웨스턴", "오리엔탈", "모던", "소피스트케이티드",
    "아방가르드", "컨트리", "리조트", "젠더리스", "스포티", "레트로", "키치", "힙합", "펑크", "밀리터리", "스트리트",
)


# ------------------------------------------------------------------------------------------------
# Inputs


def _vocabulary(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()[2:]
    return [(name.strip(), int(kind)) for name, kind in (line.rstrip().rsplit(None, 1) for line in lines if line.strip())]


def write_deepfashion(root: Path, rows: int, vocabulary: Path, seed: int = 0) -> None:
    """The benchmark's seven list files for ``rows`` images, from the real vocabulary files."""
    rng = np.random.default_rng(seed)
    (root / "Anno").mkdir(parents=True)
    (root / "Eval").mkdir()
    for name in ("list_category_cloth.txt", "list_attr_cloth.txt"):
        shutil.copyfile(vocabulary / "Anno" / name, root / "Anno" / name)
    categories = _vocabulary(vocabulary / "Anno" / "list_category_cloth.txt")
    attributes = [name for name, _ in _vocabulary(vocabulary / "Anno" / "list_attr_cloth.txt")]
    num_attrs = len(attributes)

    # Products of ~50 photos each, named like the benchmark's folders: two attributes and a category.
    per_product = 50
    products = (rows + per_product - 1) // per_product
    product_category = rng.integers(0, len(categories), products)
    product_attrs = rng.integers(0, num_attrs, (products, 2))

    def word(name: str) -> str:
        return "-".join(part.capitalize() for part in name.split())

    folders, used = [], set()
    for p, c in enumerate(product_category):
        while True:  # product folders are unique in the benchmark: draw again on a clash
            a, b = product_attrs[p]
            folder = f"img/{word(attributes[a])}_{word(attributes[b])}_{categories[c][0]}"
            if folder not in used:
                break
            product_attrs[p] = rng.integers(0, num_attrs, 2)
        used.add(folder)
        folders.append(folder)
    product = np.arange(rows) // per_product
    names = [f"{folders[p]}/img_{i % per_product + 1:08d}.jpg" for i, p in enumerate(product)]
    padded = [name.ljust(63) + " " for name in names]
    category = product_category[product]
    kinds = np.array([kind for _, kind in categories])[category]

    def write(path: Path, header: str, lines: list[str]) -> None:
        with path.open("w", encoding="utf-8") as handle:
            handle.write(f"{len(lines)}\n{header}\n")
            handle.writelines(lines)

    write(root / "Anno" / "list_category_img.txt", "image_name  category_label",
          [f"{n}{c + 1}\n" for n, c in zip(padded, category)])

    # 1000 values per row, each written as the benchmark does: "-1", " 1", " 0", space separated.
    codes = np.frombuffer(b"-1  1  0 ", dtype=np.uint8).reshape(3, 3)
    with (root / "Anno" / "list_attr_img.txt").open("wb") as handle:
        handle.write(f"{rows}\nimage_name  attribute_labels\n".encode())
        block = 2000
        for begin in range(0, rows, block):
            end = min(rows, begin + block)
            m = end - begin
            values = np.zeros((m, num_attrs), dtype=np.int64)  # 0 -> "-1"
            values[np.arange(m)[:, None], product_attrs[product[begin:end]]] = 1
            extra = rng.integers(0, num_attrs, (m, 2))
            values[np.arange(m)[:, None], extra] = np.where(rng.random((m, 2)) < 0.8, 1, 0)
            unknown = rng.random(m) < 0.01
            values[unknown, rng.integers(0, num_attrs, int(unknown.sum()))] = 2  # -> " 0"
            text = codes[values].reshape(m, 3 * num_attrs)
            text[:, -1] = ord("\n")
            handle.write(b"".join(n.encode() + t.tobytes() for n, t in zip(padded[begin:end], text)))

    x1 = rng.integers(0, 100, rows)
    y1 = rng.integers(0, 100, rows)
    x2 = x1 + rng.integers(50, 200, rows)
    y2 = y1 + rng.integers(50, 200, rows)
    write(root / "Anno" / "list_bbox.txt", "image_name  x_1  y_1  x_2  y_2",
          [f"{n}{a} {b} {c} {d}\n" for n, a, b, c, d in zip(padded, x1, y1, x2, y2)])

    counts = {1: 6, 2: 4, 3: 8}
    header = "image_name  clothes_type  variation_type  " + "  ".join(
        f"landmark_visibility_{k}  landmark_location_x_{k}  landmark_location_y_{k}" for k in range(1, 9))
    visibility = rng.choice(3, size=(rows, 8), p=(0.8, 0.15, 0.05))
    xy = rng.integers(0, 300, (rows, 8, 2))
    variation = rng.integers(1, 6, rows)
    lines = []
    for i in range(rows):
        kind = int(kinds[i])
        triples = " ".join(f"{visibility[i, k]} {xy[i, k, 0]} {xy[i, k, 1]}" for k in range(counts[kind]))
        lines.append(f"{padded[i]}{kind} {variation[i]} {triples}\n")
    write(root / "Anno" / "list_landmarks.txt", header, lines)

    # Split by product, never within one, in the benchmark's proportions.
    order = rng.permutation(products)
    split_of_product = np.zeros(products, dtype=np.int64)
    split_of_product[order[int(products * SPLIT_SIZES[0] / rows):]] = 1
    split_of_product[order[int(products * (SPLIT_SIZES[0] + SPLIT_SIZES[1]) / rows):]] = 2
    split_names = ("train", "val", "test")
    write(root / "Eval" / "list_eval_partition.txt", "image_name  evaluation_status",
          [f"{n}{split_names[split_of_product[p]]}\n" for n, p in zip(padded, product)])


def write_kfashion(folder: Path, count: int, source: Path, seed: int = 0) -> None:
    """``count`` K-Fashion JSON files varied from the 3 real ones, each with a hard-linked real JPEG."""
    rnd = random.Random(seed)
    stems = ("100026", "1070263", "1092253")
    documents = [json.loads((source / f"{s}.json").read_text(encoding="utf-8-sig")) for s in stems]
    folder.mkdir(parents=True)
    photos = []
    for copy in range(count // 30_000 + 1):  # ext4 allows 65,000 links to one file
        for stem in stems:
            photo = folder / f".photo_{stem}_{copy}.jpg"
            shutil.copyfile(source / f"{stem}.jpg", photo)
            photos.append(photo)
    for style in KFASHION_STYLES:
        (folder / style).mkdir()
    for i in range(count):
        document = json.loads(json.dumps(documents[i % 3]))
        identifier = 3_000_000 + i
        info = document["이미지 정보"]
        info["이미지 식별자"] = identifier
        info["이미지 파일명"] = f"kf_{identifier}.jpg"
        document["데이터셋 정보"]["파일 번호"] = identifier
        document["데이터셋 정보"]["파일 이름"] = f"kf_{identifier}.jpg"
        detail = document["데이터셋 정보"]["데이터셋 상세설명"]
        style = rnd.choice(KFASHION_STYLES)
        if rnd.random() < 0.1:
            detail["라벨링"]["스타일"] = [{}]
        elif rnd.random() < 0.5:
            detail["라벨링"]["스타일"] = [{"스타일": style, "서브스타일": rnd.choice(KFASHION_STYLES)}]
        else:
            detail["라벨링"]["스타일"] = [{"스타일": style}]
        for entries in detail["렉트좌표"].values():
            for entry in entries:
                for key in list(entry):
                    entry[key] = round(float(entry[key]) * rnd.uniform(0.9, 1.1), 3)
        path = folder / style / f"{identifier}.json"
        path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
        os.link(photos[i % len(photos)], path.with_suffix(".jpg"))


def write_manifests(folder: Path, rows: int, seed: int = 0) -> None:
    """``manifest.csv`` and ``manifest.jsonl`` with the same ``rows`` rows over K-Fashion's 23 English styles."""
    from fashionlens.data.kfashion import STYLE_NAMES

    rnd = random.Random(seed)
    folder.mkdir(parents=True)
    with (folder / "manifest.csv").open("w", encoding="utf-8") as csv_file, \
            (folder / "manifest.jsonl").open("w", encoding="utf-8") as jsonl_file:
        csv_file.write("image,labels\n")
        for i in range(rows):
            image = f"images/{i // 1000:04d}/{i:07d}.jpg"
            labels = rnd.sample(STYLE_NAMES, rnd.randint(0, 3))
            unknown = [name for name in rnd.sample(STYLE_NAMES, 1) if name not in labels] if rnd.random() < 0.1 else []
            csv_file.write(f"{image},{';'.join(labels + ['?' + name for name in unknown])}\n")
            row = {"image": image, "labels": labels}
            if unknown:
                row["unknown"] = unknown
            jsonl_file.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------
# What each child process times


def _bare(kind: str, path: Path) -> int:
    count = 0
    if kind == "deepfashion":
        for name in ("Anno/list_category_cloth.txt", "Anno/list_attr_cloth.txt", "Anno/list_category_img.txt",
                     "Anno/list_attr_img.txt", "Anno/list_bbox.txt", "Anno/list_landmarks.txt",
                     "Eval/list_eval_partition.txt"):
            with (path / name).open(encoding="utf-8") as handle:
                for line in handle:
                    count += len(line.split())
    elif kind == "csv":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                _image, _, cell = line.partition(",")  # the image, then each label: every token of the row
                count += 1 + len(cell.split(";"))
    elif kind == "jsonl":
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                count += len(json.loads(line))
    elif kind == "kfashion":
        for file in sorted(path.rglob("*.json")):
            count += len(json.loads(file.read_text(encoding="utf-8")))
    return count


def _read(kind: str, path: Path, cache: bool) -> int:
    if kind == "deepfashion":
        from fashionlens.data import read_deepfashion

        dataset = read_deepfashion(path, split="train", cache=cache)
    elif kind == "csv":
        from fashionlens.data import read_manifest_csv

        dataset = read_manifest_csv(path, cache=cache)
    elif kind == "jsonl":
        from fashionlens.data import read_manifest_jsonl

        dataset = read_manifest_jsonl(path, cache=cache)
    else:
        from fashionlens.data import read_kfashion

        dataset = read_kfashion(path, cache=cache)
    assert dataset.records[len(dataset) - 1].labels.shape == (dataset.num_labels,)
    return len(dataset)


def _peak_rss_mib() -> tuple[float, float]:
    """(VmHWM, ru_maxrss) in MiB. ru_maxrss keeps the parent's size at fork across exec, so the
    parent stays small (it generates nothing itself); VmHWM is this program's own peak."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        with open("/proc/self/status") as handle:
            hwm = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        hwm = maxrss
    return hwm, maxrss


def child(kind: str, step: str, path: Path) -> None:
    if step != "bare":
        import fashionlens.data  # noqa: F401 - imports (torch) are not part of the read
    start = time.perf_counter()
    count = _bare(kind, path) if step == "bare" else _read(kind, path, cache=step != "nocache")
    seconds = time.perf_counter() - start
    hwm, maxrss = _peak_rss_mib()
    print(json.dumps({"seconds": seconds, "max_rss_mib": hwm, "ru_maxrss_mib": maxrss, "count": count}))


def _environment(cache_dir: Path | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if cache_dir is not None:
        env["FASHIONLENS_ANNOTATION_CACHE"] = str(cache_dir)
    return env


def _run_child(kind: str, step: str, path: Path, cache_dir: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, step, str(path)], env=_environment(cache_dir),
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {step} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def generate(part: str, root: Path, size: int, shared: Path) -> None:
    """Write one part's inputs (run in a child process, so that the measuring parent stays small)."""
    if part == "deepfashion":
        write_deepfashion(root, size, shared / "deepfashion")
    elif part == "kfashion":
        write_kfashion(root, size, shared / "kfashion")
    else:
        write_manifests(root, size)


def measure(kind: str, path: Path, workdir: Path, rounds: int) -> dict:
    """bare, first, second, nocache for one reader; ``rounds`` times in a rotating order, medians."""
    runs: dict[str, list[dict]] = {"bare": [], "first": [], "second": [], "nocache": []}
    for round_index in range(rounds):
        cache_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="cache-"))
        # first must come before second; bare and nocache move around it from round to round.
        order = [["bare", "first", "second", "nocache"], ["nocache", "first", "second", "bare"],
                 ["first", "second", "bare", "nocache"]][round_index % 3]
        for step in order:
            runs[step].append(_run_child(kind, step, path, cache_dir))
        if round_index == 0:
            cache_bytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        shutil.rmtree(cache_dir)
    result = {step: {"seconds": float(np.median([r["seconds"] for r in values])),
                     "max_rss_mib": float(max(r["max_rss_mib"] for r in values)),
                     "ru_maxrss_mib": float(max(r["ru_maxrss_mib"] for r in values)),
                     "all_seconds": [round(r["seconds"], 3) for r in values]} for step, values in runs.items()}
    bare = result["bare"]["seconds"]
    result["first_over_bare"] = result["first"]["seconds"] / bare
    result["second_over_bare"] = result["second"]["seconds"] / bare
    result["nocache_over_bare"] = result["nocache"]["seconds"] / bare
    result["images"] = runs["first"][0]["count"]
    result["cache_mib"] = cache_bytes / 2**20
    return result


def machine() -> dict:
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "numpy": np.__version__,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "platform": platform.platform()}
    try:
        import pyarrow

        info["pyarrow"] = pyarrow.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as handle:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="deepfashion,kfashion,manifest")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fashionlens_reader_scale"))
    parser.add_argument("--rows", type=int, default=DEEPFASHION_ROWS)
    parser.add_argument("--kfashion-files", type=int, default=100_000)
    parser.add_argument("--manifest-rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--shared-data", type=Path, default=SHARED)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    results: dict = {"machine": machine(), "load_average_start": os.getloadavg(), "command": " ".join(sys.argv)}
    try:
        for part in parts:
            start = time.perf_counter()
            if part not in ("deepfashion", "kfashion", "manifest"):
                raise SystemExit(f"unknown part {part!r}: expected deepfashion, kfashion or manifest")
            root = args.workdir / part
            size = {"deepfashion": args.rows, "kfashion": args.kfashion_files, "manifest": args.manifest_rows}[part]
            subprocess.run([sys.executable, __file__, "--generate", part, str(root), str(size), str(args.shared_data)],
                           env=_environment(), check=True)
            if part == "deepfashion":
                targets = {"deepfashion": root}
                sizes = {name: (root / name).stat().st_size for name in ("Anno/list_attr_img.txt", "Anno/list_landmarks.txt")}
            elif part == "kfashion":
                targets = {"kfashion": root}
                sizes = {}
            else:
                targets = {"csv": root / "manifest.csv", "jsonl": root / "manifest.jsonl"}
                sizes = {name: path.stat().st_size for name, path in targets.items()}
            print(f"{part}: inputs written in {time.perf_counter() - start:.0f} s {sizes}", flush=True)
            for kind, path in targets.items():
                results[kind] = measure(kind, path, args.workdir, args.rounds)
                results[kind]["input_bytes"] = sizes
                r = results[kind]
                print(f"{kind:12s} images {r['images']:>9,}  bare {r['bare']['seconds']:7.2f} s  "
                      f"first {r['first']['seconds']:7.2f} s ({r['first_over_bare']:.2f}x)  "
                      f"second {r['second']['seconds']:6.3f} s ({r['second_over_bare']:.3f}x)  "
                      f"nocache {r['nocache']['seconds']:7.2f} s ({r['nocache_over_bare']:.2f}x)  "
                      f"peak RSS first {r['first']['max_rss_mib']:.0f} MiB, second {r['second']['max_rss_mib']:.0f} MiB, "
                      f"bare {r['bare']['max_rss_mib']:.0f} MiB (ru_maxrss first {r['first']['ru_maxrss_mib']:.0f} MiB); "
                      f"cache {r['cache_mib']:.0f} MiB", flush=True)
            if not args.keep:
                shutil.rmtree(root)
    finally:
        results["load_average_end"] = os.getloadavg()
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    target = args.json or (Path(os.environ["OUT"]) / "reader_scale.json" if os.environ.get("OUT") else None)
    if target:
        target.write_text(json.dumps(results, indent=2))
        print(f"wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
    elif len(sys.argv) == 6 and sys.argv[1] == "--generate":
        generate(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    else:
        main()
