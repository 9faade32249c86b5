"""The HTTP server on a small real model: health, labels, predictions, and every kind of bad upload."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, python-multipart)")
httpx = pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
from fastapi.testclient import TestClient

from fashionlens.modeldir import save_model_dir

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PHOTOS = sorted((DATA / "clothing-attributes" / "images").glob("*.jpg"))[:3] or \
    sorted((REPO / "examples" / "clothing-attributes-mini" / "images").glob("*.jpg"))[:3]
NAMES = ["floral", "striped", "plaid", "solid_color", "spotted"]

pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"real photos not found under {DATA} or examples/")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": "linear", "num_labels": len(NAMES), "image_size": 128, "residual": False, "hidden_dim": 64}
    labels = {"label_names": NAMES, "display_names": [n.replace("_", " ").title() for n in NAMES]}
    preprocessing = {"image_size": 128, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "square"}
    # Calibrated thresholds as training writes them: floral and plaid always marked, the rest never.
    thresholds = {"method": "f1", "global_threshold": 0.5,
                  "thresholds": {name: 0.0 if name in ("floral", "plaid") else 1.0 for name in NAMES}}
    return save_model_dir(tmp_path_factory.mktemp("served") / "model", build_style_model(config), config, labels,
                          preprocessing, thresholds=thresholds)


@pytest.fixture(scope="module")
def client(model_dir) -> TestClient:
    from fashionlens.server.app import create_app

    with TestClient(create_app(model_dir, max_upload_mb=0.5), raise_server_exceptions=False) as test_client:
        yield test_client


def test_health_and_labels(client, model_dir):
    response = client.get("/health")
    health = response.json()
    assert health["status"] == "ok"
    assert health["model"]["task"] == "style" and health["model"]["num_labels"] == len(NAMES)
    # The model's name, never where it lives on the server's disk.
    assert health["model"]["name"] == model_dir.name == "model"
    assert str(model_dir.parent) not in response.text and "model_dir" not in health["model"]
    labels = client.get("/labels").json()
    assert [item["name"] for item in labels["labels"]] == NAMES
    assert labels["labels"][3]["display_name"] == "Solid Color"


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    # The API page works offline: built from openapi.json by the page itself, nothing from a CDN.
    docs = client.get("/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "openapi.json" in docs.text
    assert "http://" not in docs.text.replace("http://HOST", "") and "https://" not in docs.text
    assert "<script src" not in docs.text and "<link" not in docs.text
    assert client.get("/redoc").status_code == 404


def test_predict_a_real_photo(client):
    photo = PHOTOS[0]
    response = client.post("/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == photo.name
    assert body["image"] == dict(zip(("width", "height"), Image.open(photo).size))
    scores = [item["score"] for item in body["labels"]]
    assert len(scores) == len(NAMES) and scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    # Same answer as the Python API.
    from fashionlens.inference import load

    expected = load(client.app.state.serving.predictor.model_dir)(photo)
    assert [item["name"] for item in body["labels"]] == [label.name for label in expected.labels]
    assert scores == pytest.approx([label.score for label in expected.labels], abs=1e-6)

    # The model's calibrated thresholds decide, as in `predict` (the server used to mark nothing).
    assert body["predicted"] == [label.name for label in expected.predicted]
    assert sorted(body["predicted"]) == ["floral", "plaid"]
    assert [item["threshold"] for item in body["labels"] if item["name"] == "floral"] == [0.0]
    # A number asked for replaces them.
    everything = client.post("/predict?threshold=0", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert everything.json()["predicted"] == [item["name"] for item in body["labels"]]

    top2 = client.post("/predict?top_k=2", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")}).json()
    assert [item["name"] for item in top2["labels"]] == [item["name"] for item in body["labels"][:2]]
    bad_k = client.post("/predict?top_k=0", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert bad_k.status_code == 422 and "top_k" in bad_k.json()["detail"]


def test_oversize_upload_is_413(client):
    buffer = io.BytesIO()
    # Noise does not compress: a PNG well over the 0.5 MB limit.
    Image.frombytes("RGB", (700, 700), torch.randint(0, 256, (700 * 700 * 3,), dtype=torch.uint8).numpy().tobytes()) \
        .save(buffer, format="PNG")
    assert buffer.tell() > 600 * 1024
    response = client.post("/predict", files={"file": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413
    assert "too large" in response.json()["detail"] and "0.5 MB" in response.json()["detail"]


def test_oversize_body_without_content_length_is_cut_off(client):
    boundary = "fashionlensboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()

    def body():  # a generator: httpx sends it chunked, with no Content-Length to trust
        yield head
        for _ in range(40):
            yield b"\xff" * 32 * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.post("/predict", content=body(),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413, response.text


def test_text_file_is_rejected_with_a_message(client):
    response = client.post("/predict", files={"file": ("notes.txt", b"hello, not a photo", "text/plain")})
    assert response.status_code == 415
    assert "notes.txt" in response.json()["detail"] and "not an image" in response.json()["detail"]
    # The same bytes claiming to be a JPEG: decoded, found wanting.
    response = client.post("/predict", files={"file": ("notes.jpg", b"hello, not a photo", "image/jpeg")})
    assert response.status_code == 400
    assert "notes.jpg" in response.json()["detail"]


def test_corrupt_jpeg_is_400(client):
    truncated = PHOTOS[0].read_bytes()[:300]
    response = client.post("/predict", files={"file": ("cut.jpg", truncated, "image/jpeg")})
    assert response.status_code == 400
    assert "cut.jpg" in response.json()["detail"]
    empty = client.post("/predict", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]


def test_missing_field_and_malformed_requests(client):
    response = client.post("/predict", files={"photo": ("a.jpg", PHOTOS[0].read_bytes(), "image/jpeg")})
    assert response.status_code == 422
    assert "'file'" in response.json()["detail"]
    response = client.post("/predict", data={"file": "just text"})  # a form without a file part
    assert response.status_code in (415, 422)
    assert "file" in response.json()["detail"]
    response = client.post("/predict", content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["detail"]
    response = client.post("/predict", content=b"garbage without boundaries",
                           headers={"Content-Type": "multipart/form-data"})
    assert response.status_code in (400, 422)
    assert response.json()["detail"]
    assert client.get("/health").json()["status"] == "ok"  # still alive


def test_starlettes_form_limits_bound_the_parts(client):
    """Uploads are parsed by Starlette's request.form with its own limits: one file, a few small fields."""
    photo = PHOTOS[0].read_bytes()
    two = client.post("/predict", files=[("file", ("a.jpg", photo, "image/jpeg")),
                                         ("other", ("b.jpg", photo, "image/jpeg"))])
    assert two.status_code == 400
    assert two.json()["detail"] == "malformed multipart upload (Too many files. Maximum number of files is 1.)"
    many = client.post("/predict", files={"file": ("a.jpg", photo, "image/jpeg")},
                       data={f"f{i}": "x" for i in range(9)})
    assert many.status_code == 400 and "Maximum number of fields is 8" in many.json()["detail"]
    big = client.post("/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, data={"note": "x" * 70_000})
    assert big.status_code == 400 and "Part exceeded maximum size of 64KB" in big.json()["detail"]


def test_path_traversal_filename_is_only_echoed(client, tmp_path):
    photo = PHOTOS[0]
    for name in ("../../etc/passwd", "..\\..\\windows\\system.ini", "/etc/shadow", "a\x00b.jpg"):
        response = client.post("/predict", files={"file": (name, photo.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        source = response.json()["source"]
        assert "/" not in source and "\\" not in source and ".." not in source.strip(".")
        assert "\x00" not in source


# ---------------------------------------------------------------- hostile uploads


def _multipart(boundary: str, data: bytes, filename: str = "photo.jpg", closed: bool = True) -> bytes:
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    return head + data + (f"\r\n--{boundary}--\r\n".encode() if closed else b"")


def test_truncated_multipart_body_is_a_400_saying_it_was_cut_short(client):
    body = _multipart("cutboundary", PHOTOS[0].read_bytes()[:5000], closed=False)
    response = client.post("/predict", content=body,
                           headers={"Content-Type": "multipart/form-data; boundary=cutboundary"})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("the upload was cut short: the multipart body ended before its closing boundary "
                             f"after {len(body)} bytes of the {len(body)} that Content-Length announced")
    # The same body, closed: a prediction.
    whole = _multipart("cutboundary", PHOTOS[0].read_bytes())
    assert client.post("/predict", content=whole,
                       headers={"Content-Type": "multipart/form-data; boundary=cutboundary"}).status_code == 200


def test_eps_upload_never_reaches_ghostscript(client, monkeypatch):
    from PIL import EpsImagePlugin

    buffer = io.BytesIO()
    Image.open(PHOTOS[0]).convert("RGB").save(buffer, format="EPS")
    calls = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append(self))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    response = client.post("/predict", files={"file": ("photo.jpg", buffer.getvalue(), "image/jpeg")})
    assert response.status_code == 400
    assert response.json()["detail"] == ("photo.jpg: not an image: expected JPEG, PNG, WebP, GIF, BMP or TIFF "
                                         "data, found a PostScript/EPS file")
    assert calls == []


def test_a_jpeg_declaring_9000x9000_is_refused_before_decoding(client):
    from test_images import declare_size

    bomb = declare_size(PHOTOS[0].read_bytes(), 9000, 9000)
    response = client.post("/predict", files={"file": ("bomb.jpg", bomb, "image/jpeg")})
    assert response.status_code == 400
    assert "bomb.jpg: image too large to decode safely: the header says 9000x9000" in response.json()["detail"]


def test_decodes_at_once_are_bounded(model_dir, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from fashionlens import images
    from fashionlens.server.app import create_app

    active, peak, lock = [0], [0], threading.Lock()
    decode = images.decode_image

    def slow_decode(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.1)
            return decode(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(images, "decode_image", slow_decode)
    photo = PHOTOS[0].read_bytes()
    with TestClient(create_app(model_dir, max_concurrent_decodes=2)) as bounded, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda i: bounded.post("/predict", files={"file": ("a.jpg", photo, "image/jpeg")})
                              .status_code, range(8)))
    assert codes == [200] * 8
    assert peak[0] == 2


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_reported_at_full_size(model_dir, monkeypatch):
    from fashionlens import images
    from fashionlens.inference import load
    from fashionlens.server.app import create_app

    large = io.BytesIO()
    Image.open(PHOTOS[0]).convert("RGB").resize((2130, 3200)).save(large, format="JPEG", quality=80)
    sizes = []
    decode = images.decode_image

    def recording(*args, **kwargs):
        decoded = decode(*args, **kwargs)
        sizes.append(decoded.image.size)
        return decoded

    monkeypatch.setattr(images, "decode_image", recording)
    expected = load(model_dir)(Image.open(large))  # every pixel
    for draft_side, decoded_size, tolerance in ((1024, (1065, 1600), 0.02), (None, (2130, 3200), 1e-6)):
        with TestClient(create_app(model_dir, draft_side=draft_side)) as served:
            response = served.post("/predict", files={"file": ("large.jpg", large.getvalue(), "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert sizes[-1] == decoded_size
        assert body["image"] == {"width": 2130, "height": 3200}
        scores = {item["name"]: item["score"] for item in body["labels"]}
        assert scores == pytest.approx({label.name: label.score for label in expected.labels}, abs=tolerance)


def test_landmarks_of_a_reduced_decode_are_mapped_to_the_photos_pixels():
    from fashionlens.server.app import _to_full_size

    result = {"image": {"width": 1065, "height": 1600}, "landmarks": [{"x": 10.0, "y": 0.0}, {"x": -0.5, "y": 1599.5}]}
    _to_full_size(result, (2130, 3200), 2)
    # Decoded pixel 10 covers the photo's pixels 20 and 21; the borders stay the borders.
    assert result["image"] == {"width": 2130, "height": 3200}
    assert [(point["x"], point["y"]) for point in result["landmarks"]] == [(20.5, 0.5), (-0.5, 3199.5)]


def test_non_finite_scores_are_a_500_with_a_message_not_invalid_json(model_dir):
    import numpy as np

    from fashionlens.inference import Predictor, load
    from fashionlens.server.app import create_app

    real = load(model_dir)
    broken = Predictor(lambda batch: {"logits": np.full((batch.shape[0], len(NAMES)), np.nan, np.float32)},
                       real.config, real.labels, real.preprocessing, model_dir)
    with TestClient(create_app(broken), raise_server_exceptions=False) as served:
        response = served.post("/predict", files={"file": ("a.jpg", PHOTOS[0].read_bytes(), "image/jpeg")})
    assert response.status_code == 500
    assert response.json()["detail"] == ("a.jpg: the model gave non-finite scores (NaN or infinity) for this "
                                         "photo; its weights are broken")


# The raw ASGI interface, to send what an HTTP client library will not: a body that stops, a client
# that goes away. tests/test_load.py does the same over a real socket.


def _scope(headers: dict[str, str]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
            "headers": [(key.lower().encode(), value.encode()) for key, value in headers.items()],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def _post(app, chunks: list[bytes], declared: int, then: str) -> tuple[int, dict, dict]:
    """POST ``chunks`` announcing ``declared`` bytes; afterwards ``then``: 'stall' (send nothing more) or
    'disconnect' (the client goes away)."""
    import asyncio

    pending = list(chunks)

    async def receive() -> dict:
        if pending:
            return {"type": "http.request", "body": pending.pop(0), "more_body": True}
        if then == "disconnect":
            return {"type": "http.disconnect"}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    headers = {"content-type": "multipart/form-data; boundary=stall", "content-length": str(declared)}
    await app(_scope(headers), receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


@pytest.fixture()
def strict_app(model_dir):
    from fashionlens.server.app import create_app

    return create_app(model_dir, max_upload_mb=0.5, upload_timeout_s=0.5, max_concurrent_uploads=2)


def test_a_body_shorter_than_its_content_length_is_answered_408_and_closed(strict_app):
    import asyncio
    import time

    part = _multipart("stall", PHOTOS[0].read_bytes())
    started = time.monotonic()
    status, headers, body = asyncio.run(_post(strict_app, [part[:3000]], declared=len(part), then="stall"))
    assert status == 408 and headers["connection"] == "close"
    assert body["detail"] == (f"upload timed out: 3000 bytes of the {len(part)} that Content-Length announced "
                              f"arrived in 0.5 s; the whole upload must arrive within 0.5 s")
    assert time.monotonic() - started < 5


def test_uploads_over_the_cap_are_503_at_once(strict_app):
    import asyncio

    part = _multipart("stall", PHOTOS[0].read_bytes())

    async def three_at_once():
        stalled = [asyncio.create_task(_post(strict_app, [part[:100]], len(part), "stall")) for _ in range(2)]
        await asyncio.sleep(0.1)  # both are reading their bodies now
        third = await _post(strict_app, [part], len(part), "stall")
        return third, await asyncio.gather(*stalled)

    (status, headers, body), stalled = asyncio.run(three_at_once())
    assert status == 503 and headers["retry-after"] == "1"
    assert body["detail"] == "server busy: 2 uploads in progress, the limit is 2; retry in a moment"
    assert [result[0] for result in stalled] == [408, 408]


def test_a_client_disconnecting_mid_upload_is_one_log_line(strict_app, caplog, capsys):
    import asyncio
    import logging

    part = _multipart("stall", PHOTOS[0].read_bytes())
    caplog.set_level(logging.DEBUG)
    status, _, _ = asyncio.run(_post(strict_app, [part[:2000]], declared=len(part), then="disconnect"))
    assert status == 400  # sent to nobody; what matters is what the server said about it
    records = [record for record in caplog.records if record.name.startswith(("fashionlens", "uvicorn", "starlette"))]
    assert [record.getMessage() for record in records] == [
        (f"client disconnected during the upload to /predict (2000 bytes of the {len(part)} that Content-Length "
        f"announced received)")]
    assert records[0].exc_info is None
    assert "Traceback" not in capsys.readouterr().err


def test_only_the_bound_address_and_localhost_are_answered(model_dir, monkeypatch):
    """Issue 27 item 14: the server answered any Host header, so a page whose name was re-pointed at
    127.0.0.1 (DNS rebinding) could read predictions and catalogue thumbnails."""
    from fashionlens.server.app import create_app, local_hosts

    hosts = local_hosts("127.0.0.1")
    assert hosts == ["127.0.0.1", "localhost", "::1"]
    assert local_hosts("0.0.0.0") is None and local_hosts("127.0.0.1", ["*"]) is None
    assert local_hosts("127.0.0.1", ["shop.lan"])[-1] == "shop.lan"
    app = create_app(model_dir, allowed_hosts=hosts)
    with TestClient(app, base_url="http://localhost:8000") as client:
        assert client.get("/health").status_code == 200
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        assert client.get("/health").status_code == 200
    with TestClient(app, base_url="http://attacker.example:8000") as client:
        assert client.get("/health").status_code == 400
        assert client.get("/").status_code == 400
    # `serve` (the command) passes them: what it binds to, never every host unless told.
    import uvicorn

    from fashionlens.server import app as server_app

    given = []
    real_create_app = server_app.create_app
    monkeypatch.setattr(server_app, "create_app", lambda *a, **k: given.append(k["allowed_hosts"]) or real_create_app(*a, **k))
    monkeypatch.setattr(uvicorn.Server, "run", lambda *args, **kwargs: None)
    assert server_app.serve(model_dir, host="127.0.0.1", allow_hosts=["shop.lan"]) == 0
    assert given == [["127.0.0.1", "localhost", "::1", "shop.lan"]]


def test_slow_clients_neither_stall_nor_flood_the_server(client, caplog):
    """Issue 27 item 6: sockets trickling a byte at a time held every upload slot (every other upload got
    503 for as long as they went on) and trickling headers were kept open for ever, each refusal one more
    log line. Now: a per-client upload limit, a deadline for headers, a per-client connection limit, and
    one log line per cause."""
    import logging
    import socket
    import threading
    import time

    import uvicorn

    from fashionlens.server.app import _ONCE, create_app, uvicorn_config

    _ONCE.last.clear()  # a cause logged by an earlier test in this process is logged again here
    predictor = client.app.state.serving.predictor  # loaded once for the module
    app = create_app(predictor, upload_timeout_s=30, max_concurrent_uploads=4, max_uploads_per_client=2)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, header_timeout_s=0.5, max_connections_per_client=5,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    caplog.set_level(logging.WARNING)
    sockets: list[socket.socket] = []

    def connect(source: str, data: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        sockets.append(sock)
        sock.sendall(data)
        return sock

    part = _multipart("stall", PHOTOS[0].read_bytes())
    upload_head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(part)}\r\n"
                   f"Content-Type: multipart/form-data; boundary=stall\r\n\r\n").encode() + part[:200]
    stop = threading.Event()
    try:
        started = time.monotonic()
        uploads = [connect("127.0.0.2", upload_head) for _ in range(4)]
        headers = [connect("127.0.0.3", b"GET /health HTTP/1.1\r\nHost: 1") for _ in range(3)]

        def trickle() -> None:  # one byte every 0.2 s on each socket, body or headers
            while not stop.wait(0.2):
                for sock in uploads[:2] + headers:
                    try:
                        sock.send(b"2")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        # Uploads over the client's limit are refused at once; the first two keep trickling.
        for refused in uploads[2:]:
            answer = b""
            while not answer.endswith(b"}"):
                answer += refused.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
            assert b"too many uploads from 127.0.0.2 at once: the limit is 2 per client" in answer
        # Everyone else is answered at once.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            assert client.get("/health").status_code == 200
            response = client.post("/predict", files={"file": ("a.jpg", PHOTOS[0].read_bytes(), "image/jpeg")})
            assert response.status_code == 200, response.text
        assert time.monotonic() - started < 3
        # Headers still trickling after half a second: closed (recv sees the end).
        for sock in headers:
            assert sock.recv(65536) == b""
        assert time.monotonic() - started < 4
        # One address holds at most 5 connections: the sixth and seventh are closed at once.
        extra = [connect("127.0.0.4", b"") for _ in range(7)]
        assert [sock.recv(1) for sock in extra[5:]] == [b"", b""]
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        server.should_exit = True
        thread.join(timeout=10)
    lines = [record.getMessage() for record in caplog.records
             if record.name == "fashionlens.server" and "disconnected" not in record.getMessage()]
    assert lines == [
        "uploads from 127.0.0.2 refused with 503: its limit of 2 uploads at once is reached "
        "(repeats in the next 60 s are not logged)",
        "closed a connection from 127.0.0.3: its request headers did not arrive within 0.5 s "
        "(repeats in the next 60 s are not logged)",
        "closed a connection from 127.0.0.4 at once: it holds 5 connections, the limit per client "
        "(repeats in the next 60 s are not logged)"]


def test_asyncios_accept_failures_are_one_line_a_minute_without_traceback():
    """Out of file descriptors, asyncio logs a traceback for every accept it retries (108,535 in 30 s)."""
    import logging

    from fashionlens.server.app import _OncePerCause

    once = _OncePerCause()
    try:
        raise OSError(24, "Too many open files")
    except OSError:
        import sys

        exc_info = sys.exc_info()
    records = [logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, "socket.accept() out of system "
                                 "resource\nsocket: <socket fd=7>\nOSError: [Errno 24] Too many open files", None,
                                 exc_info) for _ in range(3)]
    kept = [record for record in records if once.filter(record)]
    assert [(record.getMessage(), record.exc_info) for record in kept] == [
        ("socket.accept() out of system resource (repeats in the next 60 s are not logged)", None)]
    other = logging.LogRecord("fashionlens.server", logging.WARNING, "app.py", 1, "client disconnected", None, None)
    assert once.filter(other) and once.filter(other)  # not a flood: every one is logged
