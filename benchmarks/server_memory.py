"""Peak memory of a running server under hostile and large uploads (issue 13, item 3).

Starts the real app under uvicorn in a *separate process* on 127.0.0.1 (a free port) with a small
untrained style model (load_test.small_model_dir: shipped EfficientNet-Lite0, 64 x 64 input), then
for each scenario sends ``--rounds`` bursts of ``--concurrency`` simultaneous uploads and reads the
server process's memory from /proc: the peak (VmHWM, the kernel's high-water mark of resident
memory, reset before each scenario through /proc/PID/clear_refs) and the resident size after.

    python benchmarks/server_memory.py [--concurrency 16] [--rounds 5] [--json PATH]

Scenarios (each upload is a multipart POST /predict):

- ``declared 9000x9000``: a real 213 x 320 JPEG whose frame header was patched to claim 9000 x 9000
  pixels (81 M, under Pillow's own 89 M limit): refused from the header, never decoded;
- ``photo 6000x4000``: a real photo upscaled to 24 megapixels (under the 40 M limit), decoded at
  reduced scale (draft mode, the server's default);
- ``photo 6000x4000, full decode``: the same on a server started with ``draft_side=None``.

tests/test_load.py runs the same functions (fewer rounds) and bounds the first scenario's peak.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "clothing-attributes" / "images" / "000002.jpg"
FALLBACK_PHOTO = REPO / "examples" / "clothing-attributes-mini" / "images" / "000002.jpg"
_SERVER = """
import sys, uvicorn
from fashionlens.server.app import create_app
model_dir, port, timeout, draft = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
app = create_app(model_dir, upload_timeout_s=timeout, draft_side=None if draft == "none" else int(draft))
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
"""


def photo_bytes() -> bytes:
    return (PHOTO if PHOTO.is_file() else FALLBACK_PHOTO).read_bytes()


def declare_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header (SOF0-2) patched to claim ``width`` x ``height`` pixels."""
    position = 2
    while position + 4 <= len(jpeg):
        marker = jpeg[position + 1]
        length = struct.unpack(">H", jpeg[position + 2:position + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return jpeg[:position + 5] + struct.pack(">HH", height, width) + jpeg[position + 9:]
        position += 2 + length
    raise ValueError("no SOF marker found")


def upscaled_jpeg(jpeg: bytes, size: tuple[int, int], quality: int = 85) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).convert("RGB").resize(size, Image.Resampling.BILINEAR).save(
        buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def server_process(model_dir: Path, upload_timeout_s: float = 30.0, draft_side: int | None = 1024,
                   log: Path | None = None, startup_timeout_s: float = 120.0) -> Iterator[tuple[str, int]]:
    """``fashionlens``'s app under uvicorn in a child process; yields (base URL, pid), stops it on exit.

    The child's stderr (uvicorn's and fashionlens's log lines) goes to ``log`` when given.
    """
    import httpx

    port = _free_port()
    stderr = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _SERVER, str(model_dir), str(port), str(upload_timeout_s),
                              "none" if draft_side is None else str(draft_side)],
                             stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"the server exited with {child.returncode} before answering")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /health within {startup_timeout_s:.0f} s")
            time.sleep(0.2)
        yield url, child.pid
    finally:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if log is not None:
            stderr.close()


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and its peak (VmHWM) of process ``pid``, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024.0
    return values


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current resident size (Linux: writing 5 to clear_refs); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def burst(url: str, data: bytes, concurrency: int, rounds: int, filename: str = "upload.jpg") -> dict[str, int]:
    """``rounds`` times, ``concurrency`` simultaneous uploads of ``data``; counts of each HTTP status."""
    import httpx

    statuses: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=url, limits=limits, timeout=300.0) as client, \
            ThreadPoolExecutor(max_workers=concurrency) as pool:
        for _ in range(rounds):
            def one(_: int) -> str:
                try:
                    return str(client.post("/predict", files={"file": (filename, data, "image/jpeg")}).status_code)
                except httpx.HTTPError as error:
                    return type(error).__name__
            for status in pool.map(one, range(concurrency)):
                statuses[status] = statuses.get(status, 0) + 1
    return statuses


def measure(url: str, pid: int, data: bytes, concurrency: int, rounds: int) -> dict[str, Any]:
    """Memory of server ``pid`` before, at the peak of, and after the bursts of uploads of ``data``."""
    before = memory_mib(pid)
    peak_reset = reset_peak(pid)
    started = time.perf_counter()
    statuses = burst(url, data, concurrency, rounds)
    wall = time.perf_counter() - started
    after = memory_mib(pid)
    return {"upload_bytes": len(data), "requests": concurrency * rounds, "concurrency": concurrency,
            "statuses": statuses, "rss_before_mib": before["VmRSS"], "peak_rss_mib": after["VmHWM"],
            "peak_is_since_start": not peak_reset, "rss_after_mib": after["VmRSS"], "wall_s": wall}


def run(concurrency: int = 16, rounds: int = 5, model_dir: Path | None = None,
        scenarios: tuple[str, ...] = ("declared 9000x9000", "photo 6000x4000", "photo 6000x4000, full decode"),
        ) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from load_test import small_model_dir

    real = photo_bytes()
    uploads = {"declared 9000x9000": lambda: declare_size(real, 9000, 9000),
               "photo 6000x4000": lambda: upscaled_jpeg(real, (6000, 4000))}
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = model_dir or small_model_dir(Path(scratch) / "model")
        for draft_side in (1024, None):
            wanted = [name for name in scenarios if name.endswith("full decode") == (draft_side is None)]
            if not wanted:
                continue
            with server_process(model_dir, draft_side=draft_side) as (url, pid):
                burst(url, real, 2, 2)  # warm-up: first requests load lazily imported code
                for name in wanted:
                    data = uploads[name.split(",")[0]]()
                    results.append({"scenario": name, "draft_side": draft_side,
                                    **measure(url, pid, data, concurrency, rounds)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model-dir", type=Path, help="a model directory (default: a small untrained one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args.concurrency, args.rounds, args.model_dir)
    print(f"date: {datetime.date.today()}  machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.platform()}")
    print(f"{'scenario':<30} {'upload':>9} {'requests':>8} {'statuses':<16} {'RSS before':>10} {'peak RSS':>9} "
          f"{'RSS after':>9}")
    for row in results:
        statuses = ", ".join(f"{code}: {count}" for code, count in sorted(row["statuses"].items()))
        print(f"{row['scenario']:<30} {row['upload_bytes'] / 1024:>7.0f} K {row['requests']:>8} {statuses:<16} "
              f"{row['rss_before_mib']:>7.0f} MiB {row['peak_rss_mib']:>5.0f} MiB {row['rss_after_mib']:>5.0f} MiB"
              + ("  (peak since start)" if row["peak_is_since_start"] else ""))
    destination = args.json or (Path(os.environ["OUT"]) / "server_memory.json" if os.environ.get("OUT") else None)
    if destination is not None:
        destination.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
