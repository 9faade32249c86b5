"""The real server on a real socket (uvicorn, 127.0.0.1): bounded load, then abuse, and it still answers.

tests/test_server.py proves each response through FastAPI's in-process TestClient; this file proves
them over HTTP on a port, with concurrent keep-alive connections, as a deployment sees them. The load
generator is benchmarks/load_test.py's, so the test and the published numbers measure the same thing.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, python-multipart)")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra (uvicorn)")
httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "clothing-attributes-mini" / "images" / "000002.jpg"
MAX_UPLOAD_MB = 0.5

pytestmark = pytest.mark.slow


def _load_benchmark(name: str = "load_test"):
    spec = importlib.util.spec_from_file_location(f"fashionlens_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


load_test = _load_benchmark()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # requests are serialised by the Predictor's lock; see load_test.py --torch-threads
    model_dir = load_test.small_model_dir(tmp_path_factory.mktemp("served") / "model")
    try:
        with load_test.running_server(model_dir, max_upload_mb=MAX_UPLOAD_MB) as url:
            yield url
    finally:
        torch.set_num_threads(threads)


def _health(url: str) -> dict:
    response = httpx.get(f"{url}/health", timeout=30)
    assert response.status_code == 200
    return response.json()


def test_500_concurrent_predictions_without_a_single_error(server: str) -> None:
    assert _health(server)["status"] == "ok"
    result = load_test.run_load(server, PHOTO.read_bytes(), requests=500, concurrency=16)
    assert result["errors"] == []
    assert len(result["latencies_s"]) == 500
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["throughput_rps"] > 0
    print(f"\nload: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
          f"{result['throughput_rps']:.1f} requests/s over 16 connections")
    # Every answer was a full prediction of the same photo: identical, so no request saw another's state.
    with httpx.Client(base_url=server, timeout=30) as client:
        first = client.post("/predict", files={"file": ("a.jpg", PHOTO.read_bytes(), "image/jpeg")}).json()
        again = client.post("/predict", files={"file": ("b.jpg", PHOTO.read_bytes(), "image/jpeg")}).json()
    assert first["labels"] == again["labels"]


def test_oversize_upload_is_413_with_a_message_over_the_wire(server: str) -> None:
    from PIL import Image

    noise = Image.effect_noise((700, 700), 100).convert("RGB")  # noise does not compress: > 0.5 MB as PNG
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert buffer.tell() > MAX_UPLOAD_MB * 1024 * 1024 + 64 * 1024
    response = httpx.post(f"{server}/predict", files={"file": ("big.png", buffer.getvalue(), "image/png")}, timeout=30)
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "too large" in detail and f"{MAX_UPLOAD_MB:g} MB" in detail
    assert _health(server)["status"] == "ok"


def test_malformed_multipart_is_a_4xx_with_a_message(server: str) -> None:
    boundary = "xyz"
    # A part that never ends: no closing boundary, and headers without a Content-Disposition.
    body = f"--{boundary}\r\nContent-Type: image/jpeg\r\n\r\n".encode() + PHOTO.read_bytes()[:1000]
    response = httpx.post(f"{server}/predict", content=body,
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=30)
    assert 400 <= response.status_code < 500
    assert response.json()["detail"]
    response = httpx.post(f"{server}/predict", content=b"garbage", headers={"Content-Type": "multipart/form-data"},
                          timeout=30)
    assert 400 <= response.status_code < 500 and response.json()["detail"]
    assert _health(server)["status"] == "ok"


def test_wrong_content_type_is_415(server: str) -> None:
    response = httpx.post(f"{server}/predict", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"},
                          timeout=30)
    assert response.status_code == 415
    assert "multipart/form-data" in response.json()["detail"] and "image/jpeg" in response.json()["detail"]
    response = httpx.post(f"{server}/predict", files={"file": ("notes.txt", b"hello", "text/plain")}, timeout=30)
    assert response.status_code == 415 and "notes.txt" in response.json()["detail"]


def test_path_traversal_filename_never_touches_that_path(server: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The server runs in this process: from tmp/a/b, ../../etc/passwd.jpg is tmp/etc/passwd.jpg. A
    # decoy sits there; reading it would give "not an image", writing it would change it.
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    decoy = tmp_path / "etc" / "passwd.jpg"
    decoy.parent.mkdir()
    decoy.write_text("root:x:0:0:decoy\n")
    os.utime(decoy, (1_000_000_000, 1_000_000_000))
    monkeypatch.chdir(work)
    response = httpx.post(f"{server}/predict",
                          files={"file": ("../../etc/passwd.jpg", PHOTO.read_bytes(), "image/jpeg")}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["source"] == "passwd.jpg"  # only the last component, echoed back
    assert decoy.read_text() == "root:x:0:0:decoy\n" and decoy.stat().st_mtime == 1_000_000_000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "etc", "passwd.jpg"]
    assert _health(server)["status"] == "ok"


def test_server_binds_localhost_by_default() -> None:
    from fashionlens.cli import build_parser
    from fashionlens.server.app import serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["serve", "some/model"])
    assert args.host == "127.0.0.1"



# ---------------------------------------------------------------- hostile uploads, a server in its own process

server_memory = _load_benchmark("server_memory")
STALL_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def child_server(tmp_path_factory):
    """The server in a child process (its memory measured alone), its log lines kept in a file."""
    folder = tmp_path_factory.mktemp("child")
    model_dir = load_test.small_model_dir(folder / "model")
    log = folder / "server.log"
    with server_memory.server_process(model_dir, upload_timeout_s=STALL_TIMEOUT_S, log=log) as (url, pid):
        yield url, pid, log


PART_HEAD = (b"--stall\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
             b"Content-Type: image/jpeg\r\n\r\n")


def _raw_post(url: str, body: bytes, declared: int, close_after: bool = False) -> bytes:
    """Send the headers announcing ``declared`` bytes and only ``body``; what came back until the close."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    head = (f"POST /predict HTTP/1.1\r\nHost: {where.hostname}\r\nContent-Length: {declared}\r\n"
            f"Content-Type: multipart/form-data; boundary=stall\r\n\r\n").encode()
    with socket.create_connection((where.hostname, where.port), timeout=STALL_TIMEOUT_S + 20) as connection:
        connection.sendall(head + body)
        if close_after:
            return b""
        received = b""
        while chunk := connection.recv(65536):  # b"" once the server closes the connection
            received += chunk
        return received


def test_peak_rss_under_16_concurrent_declared_9000x9000_uploads(child_server) -> None:
    url, pid, _ = child_server
    bomb = server_memory.declare_size(PHOTO.read_bytes(), 9000, 9000)
    server_memory.burst(url, PHOTO.read_bytes(), 2, 2)  # warm-up
    result = server_memory.measure(url, pid, bomb, concurrency=16, rounds=3)
    assert result["statuses"] == {"400": 48}
    growth = result["peak_rss_mib"] - result["rss_before_mib"]
    print(f"\nserver RSS {result['rss_before_mib']:.0f} MiB, peak {result['peak_rss_mib']:.0f} MiB "
          f"(+{growth:.0f}), after {result['rss_after_mib']:.0f} MiB under 48 uploads 16 at a time")
    assert growth < 64  # a full decode of one of them alone would take 243 MB


def test_stalled_uploads_are_answered_408_and_closed(child_server) -> None:
    import time
    from concurrent.futures import ThreadPoolExecutor

    url, _, _ = child_server
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _raw_post(url, PART_HEAD + b"x" * 1000, declared=100_000), range(8)))
    elapsed = time.monotonic() - started
    for answer in answers:  # each answered, then closed by the server (recv saw the end)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert f"upload timed out: {len(PART_HEAD) + 1000} bytes of the 100000".encode() in answer
    assert STALL_TIMEOUT_S <= elapsed < STALL_TIMEOUT_S + 15
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200


def test_a_client_disconnecting_mid_upload_is_one_log_line_without_traceback(child_server) -> None:
    import time

    url, _, log = child_server
    before = log.read_text().count("client disconnected during the upload")
    for _ in range(3):
        _raw_post(url, PART_HEAD + b"x" * 5000, declared=100_000, close_after=True)
    deadline = time.monotonic() + 20
    while log.read_text().count("client disconnected during the upload") < before + 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    lines = [line for line in text.splitlines() if "client disconnected" in line]
    assert len(lines) == before + 3, text
    assert lines[-1].endswith(f"({len(PART_HEAD) + 5000} bytes of the 100000 that Content-Length announced received)")
    assert "Traceback" not in text and "Exception in ASGI application" not in text
    assert httpx.get(f"{url}/health", timeout=30).status_code == 200
