"""Bounded HTTP load on the real server: POST one real photo to /predict N times over C connections.

Starts `fashionlens serve`'s app with uvicorn on 127.0.0.1 (a free port) in this process, unless
``--url`` points at a server already running; prints p50/p99 latency, throughput and the error count.

    python benchmarks/load_test.py [--model-dir DIR] [--photo PHOTO] [--requests 500] [--concurrency 16]

Without ``--model-dir`` it saves a small untrained style model (shipped EfficientNet-Lite0, 64 x 64
input, 3 labels) in a temporary folder: the numbers measure the server (upload, decode, resize, one
forward pass, JSON), not a particular model. tests/test_load.py runs the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = REPO.parent / "shared" / "data" / "clothing-attributes" / "images" / "000002.jpg"
FALLBACK_PHOTO = REPO / "examples" / "clothing-attributes-mini" / "images" / "000002.jpg"


def small_model_dir(path: Path, image_size: int = 64) -> Path:
    """An untrained style model directory: real architecture, shipped backbone weights, 3 labels."""
    import torch

    from fashionlens.config import StyleConfig, override
    from fashionlens.modeldir import save_model_dir
    from fashionlens.models.mlgcn import build_style_model
    from fashionlens.training.tasks.style import network_config

    torch.manual_seed(0)
    style = override(StyleConfig(), {"backbone.name": "tf_efficientnet_lite0", "backbone.pretrained": "shipped",
                                     "head.kind": "linear", "head.pool": "max", "backbone.image_size": image_size})
    config = network_config(style, num_labels=3)
    labels = {"label_names": ["floral", "striped", "plaid"]}
    preprocessing = {"image_size": image_size, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "square"}
    return save_model_dir(path, build_style_model(config), config, labels, preprocessing)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(model_dir: Path, max_upload_mb: float = 10.0, host: str = "127.0.0.1",
                   startup_timeout_s: float = 60.0) -> Iterator[str]:
    """The real app under uvicorn in a background thread; yields its base URL, stops it on exit."""
    import uvicorn

    from fashionlens.server.app import create_app

    app = create_app(model_dir, max_upload_mb=max_upload_mb)
    port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="fashionlens-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on {host}:{port} within {startup_timeout_s:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def run_load(url: str, photo: bytes, requests: int = 500, concurrency: int = 16,
             filename: str = "photo.jpg") -> dict[str, Any]:
    """POST ``photo`` to ``url``/predict ``requests`` times over ``concurrency`` keep-alive connections.

    Returns latencies (seconds, per request, in completion order), error descriptions, the wall
    time, and p50/p99 latency in milliseconds and throughput in requests per second.
    """
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    with httpx.Client(base_url=url, limits=limits, timeout=120.0) as client:
        def one(index: int) -> None:
            started = time.perf_counter()
            try:
                response = client.post("/predict", files={"file": (filename, photo, "image/jpeg")})
                problem = None if response.status_code == 200 and response.json().get("labels") else \
                    f"request {index}: HTTP {response.status_code} {response.text[:200]}"
            except Exception as error:  # a dropped connection is a result to report, not a crash
                problem = f"request {index}: {type(error).__name__}: {error}"
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if problem:
                    errors.append(problem)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started

    milliseconds = np.asarray(latencies) * 1000.0
    return {
        "requests": requests, "concurrency": concurrency, "errors": errors, "latencies_s": latencies,
        "wall_s": wall, "p50_ms": float(np.percentile(milliseconds, 50)),
        "p99_ms": float(np.percentile(milliseconds, 99)), "throughput_rps": requests / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a model directory (default: a small untrained one)")
    parser.add_argument("--photo", type=Path, help="the photo to upload (default: a real Clothing Attribute photo)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--url", help="load a server that is already running instead of starting one")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="intra-op threads for the in-process server (default 1: requests are serialised "
                             "by the Predictor's lock, and on a busy 2-core box OpenMP spinning costs more than "
                             "it gains)")
    args = parser.parse_args()

    photo = args.photo or (DEFAULT_PHOTO if DEFAULT_PHOTO.is_file() else FALLBACK_PHOTO)
    data = photo.read_bytes()
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            import torch

            torch.set_num_threads(args.torch_threads)
            model_dir = args.model_dir
            if model_dir is None:
                model_dir = small_model_dir(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "model")
            url = stack.enter_context(running_server(model_dir))
        run_load(url, data, requests=min(20, args.requests), concurrency=args.concurrency)  # warm-up
        result = run_load(url, data, requests=args.requests, concurrency=args.concurrency, filename=photo.name)
    print(f"photo: {photo} ({len(data)} bytes)")
    print(f"requests: {result['requests']}  concurrency: {result['concurrency']}  errors: {len(result['errors'])}")
    print(f"p50: {result['p50_ms']:.1f} ms  p99: {result['p99_ms']:.1f} ms  "
          f"throughput: {result['throughput_rps']:.1f} requests/s  wall: {result['wall_s']:.1f} s")
    for problem in result["errors"][:10]:
        print(f"  {problem}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
