"""The HTTP server on a small real model: health, labels, predictions, and every kind of bad upload."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (fastapi, python-multipart)")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
from fastapi.testclient import TestClient  # noqa: E402

from fashionlens.modeldir import save_model_dir  # noqa: E402

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
    return save_model_dir(tmp_path_factory.mktemp("served") / "model", build_style_model(config), config, labels,
                          preprocessing)


@pytest.fixture(scope="module")
def client(model_dir) -> TestClient:
    from fashionlens.server.app import create_app

    with TestClient(create_app(model_dir, max_upload_mb=0.5), raise_server_exceptions=False) as test_client:
        yield test_client


def test_health_and_labels(client):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"]["task"] == "style" and health["model"]["num_labels"] == len(NAMES)
    labels = client.get("/labels").json()
    assert [item["name"] for item in labels["labels"]] == NAMES
    assert labels["labels"][3]["display_name"] == "Solid Color"


def test_page_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


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

    expected = load(client.app.state.predictor.model_dir)(photo)
    assert [item["name"] for item in body["labels"]] == [label.name for label in expected.labels]
    assert scores == pytest.approx([label.score for label in expected.labels], abs=1e-6)

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


def test_path_traversal_filename_is_only_echoed(client, tmp_path):
    photo = PHOTOS[0]
    for name in ("../../etc/passwd", "..\\..\\windows\\system.ini", "/etc/shadow", "a\x00b.jpg"):
        response = client.post("/predict", files={"file": (name, photo.read_bytes(), "image/jpeg")})
        assert response.status_code == 200, response.text
        source = response.json()["source"]
        assert "/" not in source and "\\" not in source and ".." not in source.strip(".")
        assert "\x00" not in source
