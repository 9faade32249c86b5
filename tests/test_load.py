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


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fashionlens_load_test", REPO / "benchmarks" / "load_test.py")
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

