"""CPU prediction speed: the Predictor with runtime "torch" (eager) against runtime "onnx", on real photos.

In one run, alternating the variants (rotating order, medians), on the photos of a folder:

- single-image latency of ``predictor(path)`` (decode + preprocess + model + labels), median and p90;
- batch throughput of ``predictor([16 paths])`` in images per second;
- the same two with the model call alone (preprocessed tensors), so that the preprocessing share and
  the runtime's own speed are seen apart; the decode and the preprocessing are timed separately too;
- onnxruntime variants that explain the gap: intra-op threads set to torch's thread count, graph
  optimisations off, and int8 quantisation (dynamic, and static QDQ calibrated on real photos), with
  the drift of the scores against fp32 on every photo;
- the peak RSS of a separate ``fashionlens predict MODEL_DIR FOLDER`` process per runtime.

Target: ONNX single-image latency <= 0.5 x eager. Quote the ratios (same run); absolute CPU times on
a shared machine are noise.

    python benchmarks/cpu_predict.py                       # builds the default model in /tmp
    python benchmarks/cpu_predict.py --model-dir runs/style/model --rounds 60 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (EXAMPLE_IMAGES, EXAMPLE_ROOT, build_default_style_model_dir, image_paths,  # noqa: E402
                          interleaved, machine_summary, median, p90, write_results)


def _session(path: Path, threads: int = 0, optimise: bool = True, spinning: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    # Spinning worker threads (onnxruntime's default) keep burning the cores after a run returns and
    # slow whatever runs next: here, the next variant. Off everywhere except the variant that measures it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _quantise(fp32: Path, out_dir: Path, kind: str, calibration: list[np.ndarray]) -> Path:
    """int8 copies of the exported model: ``dynamic`` (weights only) or ``static`` (QDQ, calibrated)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out_dir / "model.pre.onnx"
    if not prepared.exists():
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    target = out_dir / f"model.int8-{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
        return target

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"images": item}

    quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return target


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def _drift(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far ``other``'s label probabilities are from ``reference``'s, over the same photos."""
    p, q = _sigmoid(reference), _sigmoid(other)
    top = min(5, p.shape[1])
    top_p = np.argsort(-p, axis=1)[:, :top]
    top_q = np.argsort(-q, axis=1)[:, :top]
    overlap = np.mean([len(set(a) & set(b)) / top for a, b in zip(top_p, top_q)])
    return {"max_abs_prob_diff": float(np.abs(p - q).max()), "mean_abs_prob_diff": float(np.abs(p - q).mean()),
            "top1_agreement": float(np.mean(top_p[:, 0] == top_q[:, 0])), "top5_overlap": float(overlap),
            "decision_flips_at_0.5": float(np.mean((p >= 0.5) != (q >= 0.5)))}


def _map_against_labels(scores: dict[str, np.ndarray], paths: list[Path], label_names: list[str],
                        data_root: Path) -> dict[str, float] | None:
    """mAP of each variant's scores on the labelled photos (labels matched by name); None if unlabelled."""
    try:
        from fashionlens.data import open_dataset
        from fashionlens.metrics import multilabel_metrics

        dataset = open_dataset(data_root, "clothing-attributes")
    except Exception:
        return None
    by_name = {Path(str(record.image)).name: record for record in dataset.records}
    rows = [i for i, path in enumerate(paths) if path.name in by_name]
    columns = [dataset.label_names.index(n) if n in dataset.label_names else -1 for n in label_names]
    if not rows or all(c < 0 for c in columns):
        return None
    labels = np.zeros((len(rows), len(label_names)), dtype=np.float32)
    mask = np.zeros_like(labels)
    for r, i in enumerate(rows):
        record = by_name[paths[i].name]
        for j, c in enumerate(columns):
            if c >= 0:
                labels[r, j] = record.labels[c]
                mask[r, j] = record.label_mask[c]
    out = {}
    for name, values in scores.items():
        metrics = multilabel_metrics(torch.as_tensor(values[rows]), torch.as_tensor(labels), torch.as_tensor(mask))
        out[name] = float(metrics["mAP"])
    return out


def _peak_rss(model_dir: Path, folder: Path, runtime: str) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of ``fashionlens predict`` run as its own process.

    A small parent process runs it and reads ``RUSAGE_CHILDREN``, so no other child of this
    benchmark can be counted in the peak.
    """
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
             "w = time.perf_counter() - t; "
             "sys.exit(r.stderr[-2000:]) if r.returncode else "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, w)")
    command = [sys.executable, "-m", "fashionlens.cli", "predict", str(model_dir), str(folder),
               "--runtime", runtime, "--json"]
    result = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"fashionlens predict --runtime {runtime} failed:\n{result.stderr}")
    kib, wall = result.stdout.split()
    return int(kib) / 1024.0, float(wall)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a style model directory (default: build the offline default model in /tmp)")
    parser.add_argument("--images", type=Path, default=EXAMPLE_IMAGES, help="folder of real photos")
    parser.add_argument("--labels-root", type=Path, default=EXAMPLE_ROOT,
                        help="clothing-attributes root whose labels give the mAP of each variant (optional)")
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per variant (single image)")
    parser.add_argument("--batch-rounds", type=int, default=8, help="timed calls per variant (batch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--int8", default="dynamic,static", help="int8 variants to try: dynamic,static or none")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocess runs")
    parser.add_argument("--rss-images", type=int, default=128,
                        help="photos given to each `fashionlens predict` process (0 = the whole folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default $OUT/cpu_predict.json)")
    args = parser.parse_args(argv)

    from fashionlens.inference import load, to_uint8_chw

    work = Path(tempfile.gettempdir()) / "fashionlens_bench"
    work.mkdir(exist_ok=True)
    if args.model_dir is None:
        model_dir, head = build_default_style_model_dir(work / "style224")
    else:
        model_dir = args.model_dir
        head = json.loads((model_dir / "config.json").read_text()).get("head")
    paths = image_paths(args.images)
    torch_threads = torch.get_num_threads()
    eager = load(model_dir, runtime="torch")
    onnx = load(model_dir, runtime="onnx")  # exports model.onnx on first use
    onnx_path = model_dir / "model.onnx"
    size = eager.image_size
    print(f"model {model_dir} (head {head}, {size} px), {len(paths)} photos from {args.images}, "
          f"torch threads {torch_threads}")

    results: dict = {"machine": machine_summary(), "model_dir": str(model_dir), "head": head, "image_size": size,
                     "photos": len(paths), "date": time.strftime("%Y-%m-%d")}

    # Preprocessing alone: decode (JPEG -> upright uint8) and resize + normalise, per photo.
    decoded = [to_uint8_chw(path)[0] for path in paths]
    cycle_paths = itertools.cycle(paths)
    cycle_images = itertools.cycle(decoded)
    pre = interleaved({"decode": lambda: to_uint8_chw(next(cycle_paths)),
                       "resize_normalise": lambda: eager.preprocess(next(cycle_images))}, rounds=args.rounds * 2)

    # Model call alone, batch of one and batch of B, on preprocessed real photos.
    single = eager.preprocess(decoded[0])[None]
    batch = torch.stack([eager.preprocess(image) for image in decoded[:args.batch_size]])
    runtimes = {"eager": lambda x: eager.runtime(x), "onnx": lambda x: onnx.runtime(x)}
    sessions = {f"onnx_threads{torch_threads}": _session(onnx_path, threads=torch_threads),
                "onnx_threads1": _session(onnx_path, threads=1),
                "onnx_spinning": _session(onnx_path, spinning=True),
                "onnx_no_graph_opt": _session(onnx_path, optimise=False)}
    calibration = [eager.preprocess(image)[None].numpy() for image in decoded[:: max(1, len(decoded) // 32)][:32]]
    int8_kinds = [k for k in args.int8.split(",") if k and k != "none"]
    for kind in int8_kinds:
        try:
            sessions[f"onnx_int8_{kind}"] = _session(_quantise(onnx_path, work, kind, calibration))
        except Exception as error:  # report, keep measuring the rest
            print(f"int8 {kind}: quantisation failed ({type(error).__name__}: {error})")
            results[f"int8_{kind}_error"] = str(error)
    for name, session in sessions.items():
        runtimes[name] = (lambda s: lambda x: s.run(None, {"images": x.numpy()}))(session)
    # Torch with one thread: to tell a threading difference from a kernel difference.
    def eager_one_thread(x):
        torch.set_num_threads(1)
        try:
            return eager.runtime(x)
        finally:
            torch.set_num_threads(torch_threads)
    runtimes["eager_threads1"] = eager_one_thread

    # Blocks of 5 timed calls after one untimed call: no variant is timed while the previous one's
    # threads still spin (onnxruntime's spinning variant, torch's OpenMP pool).
    blocks = max(1, args.rounds // 5)
    model_single = interleaved({name: (lambda f: lambda: f(single))(f) for name, f in runtimes.items()},
                               rounds=blocks, block=5, settle=1)
    model_batch = interleaved({name: (lambda f: lambda: f(batch))(f) for name, f in runtimes.items()},
                              rounds=args.batch_rounds, warmup=1)

    # End to end through the Predictor: one path, then a list of B paths.
    per_variant = {name: itertools.cycle(paths) for name in ("eager", "onnx")}
    predictors = {"eager": eager, "onnx": onnx}
    e2e_single = interleaved({name: (lambda n: lambda: predictors[n](next(per_variant[n])))(name)
                              for name in predictors}, rounds=blocks, block=5, settle=1)
    chunks = [paths[i:i + args.batch_size] for i in range(0, len(paths) - args.batch_size + 1, args.batch_size)]
    per_chunk = {name: itertools.cycle(chunks) for name in predictors}
    e2e_batch = interleaved({name: (lambda n: lambda: predictors[n](next(per_chunk[n])))(name)
                             for name in predictors}, rounds=args.batch_rounds, warmup=1)

    def summary(times: dict[str, list[float]], images: int) -> dict:
        return {name: {"median_ms": 1e3 * median(t), "p90_ms": 1e3 * p90(t), "img_per_s": images / median(t)}
                for name, t in times.items()}

    results["preprocessing"] = summary(pre, 1)
    results["model_single"] = summary(model_single, 1)
    results["model_batch"] = summary(model_batch, args.batch_size)
    results["e2e_single"] = summary(e2e_single, 1)
    results["e2e_batch"] = summary(e2e_batch, args.batch_size)
    e2e = results["e2e_single"]
    results["ratio_onnx_over_eager"] = {
        "e2e_single_latency": e2e["onnx"]["median_ms"] / e2e["eager"]["median_ms"],
        "e2e_single_p90": e2e["onnx"]["p90_ms"] / e2e["eager"]["p90_ms"],
        "e2e_batch_time": results["e2e_batch"]["onnx"]["median_ms"] / results["e2e_batch"]["eager"]["median_ms"],
        "model_single_latency": {name: v["median_ms"] / results["model_single"]["eager"]["median_ms"]
                                 for name, v in results["model_single"].items()},
        "model_batch_time": {name: v["median_ms"] / results["model_batch"]["eager"]["median_ms"]
                             for name, v in results["model_batch"].items()},
    }
    preprocessing_ms = results["preprocessing"]["decode"]["median_ms"] + \
        results["preprocessing"]["resize_normalise"]["median_ms"]
    results["preprocessing_share_of_e2e_single"] = {
        name: preprocessing_ms / e2e[name]["median_ms"] for name in ("eager", "onnx")}

    # Score drift of every ONNX variant against eager fp32, on every photo.
    everything = torch.stack([eager.preprocess(image) for image in decoded])
    logits = {"eager": np.concatenate([eager.runtime(everything[i:i + 32])["logits"]
                                       for i in range(0, len(everything), 32)])}
    for name, session in [("onnx", onnx.runtime.session), *((n, s) for n, s in sessions.items() if "int8" in n)]:
        logits[name] = np.concatenate([session.run(None, {"images": everything[i:i + 32].numpy()})[0]
                                       for i in range(0, len(everything), 32)])
    results["drift_vs_eager"] = {name: _drift(logits["eager"], value) for name, value in logits.items()
                                 if name != "eager"}
    mean_ap = _map_against_labels(logits, paths, eager.label_names, args.labels_root)
    if mean_ap is not None:
        results["mAP_on_photos"] = mean_ap

    if not args.no_rss:
        rss = {}
        folder = args.images
        if args.rss_images and args.rss_images < len(paths):
            folder = work / f"photos{args.rss_images}"
            folder.mkdir(exist_ok=True)
            for path in paths[:args.rss_images]:
                if not (folder / path.name).exists():
                    (folder / path.name).symlink_to(path.resolve())
        results["predict_process_photos"] = min(len(paths), args.rss_images or len(paths))
        for runtime in ("torch", "onnx", "torch", "onnx"):
            peak, wall = _peak_rss(model_dir, folder, runtime)
            rss.setdefault(runtime, []).append((peak, wall))
        results["predict_process"] = {runtime: {"peak_rss_mib": max(p for p, _ in runs),
                                                "wall_s": [w for _, w in runs]} for runtime, runs in rss.items()}
        results["predict_process"]["wall_ratio_onnx_over_torch"] = (
            median([w for _, w in rss["onnx"]]) / median([w for _, w in rss["torch"]]))

    _print(results)
    write_results(results, "cpu_predict.json", args.json)
    return results


def _print(results: dict) -> None:
    print("\n== model call alone (preprocessed photos); ratio = variant / eager (same run) ==")
    print(f"{'variant':<22} {'1 img median ms':>16} {'p90':>8} {'ratio':>6}   {'batch img/s':>11} {'time ratio':>10}")
    ratios = results["ratio_onnx_over_eager"]
    for name, v in results["model_single"].items():
        b = results["model_batch"][name]
        print(f"{name:<22} {v['median_ms']:16.1f} {v['p90_ms']:8.1f} {ratios['model_single_latency'][name]:6.2f}   "
              f"{b['img_per_s']:11.1f} {ratios['model_batch_time'][name]:10.2f}")
    print("\n== end to end through Predictor (decode + preprocess + model + labels) ==")
    for name in ("eager", "onnx"):
        s, b = results["e2e_single"][name], results["e2e_batch"][name]
        print(f"{name:<6} single median {s['median_ms']:.1f} ms, p90 {s['p90_ms']:.1f} ms; "
              f"batch {b['img_per_s']:.1f} img/s; preprocessing share "
              f"{results['preprocessing_share_of_e2e_single'][name]:.0%}")
    print(f"ONNX/eager latency ratio (e2e single): {ratios['e2e_single_latency']:.2f} (target <= 0.5); "
          f"batch time ratio {ratios['e2e_batch_time']:.2f}")
    pre = results["preprocessing"]
    print(f"decode {pre['decode']['median_ms']:.2f} ms, resize+normalise {pre['resize_normalise']['median_ms']:.2f} ms")
    print("\n== score drift vs eager fp32, all photos ==")
    for name, d in results["drift_vs_eager"].items():
        print(f"{name:<22} " + ", ".join(f"{k} {v:.4f}" for k, v in d.items()))
    if "mAP_on_photos" in results:
        print("mAP on the labelled photos: " + ", ".join(f"{k} {v:.2f}" for k, v in results["mAP_on_photos"].items()))
    if "predict_process" in results:
        p = results["predict_process"]
        print(f"\n`fashionlens predict` peak RSS: torch {p['torch']['peak_rss_mib']:.0f} MiB, "
              f"onnx {p['onnx']['peak_rss_mib']:.0f} MiB; wall ratio onnx/torch {p['wall_ratio_onnx_over_torch']:.2f}")


if __name__ == "__main__":
    main()
