"""The web page in a real browser: upload a real photo, see the score bars (and a screenshot for the README).

Needs Debian's chromium (``apt-get install -y chromium``) and the python package ``playwright``
(``pip install playwright``; no ``playwright install``: the system chromium is used).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PHOTOS = sorted((DATA / "clothing-attributes" / "images").glob("*.jpg"))[:1] or \
    sorted((REPO / "examples" / "clothing-attributes-mini" / "images").glob("*.jpg"))[:1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
NAMES = ["floral", "striped", "plaid", "solid_color", "spotted", "graphics"]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install -y chromium)"),
    pytest.mark.skipif(not PHOTOS, reason=f"real photos not found under {DATA} or examples/"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(model_dir: Path):
    """Run the app on a free port in a thread; yield its URL; stop it."""
    uvicorn = pytest.importorskip("uvicorn")
    from fashionlens.server.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model_dir, max_upload_mb=2), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    from fashionlens.modeldir import save_model_dir
    from fashionlens.models.mlgcn import build_style_model

    torch.manual_seed(0)
    config = {"task": "style", "backbone": "tf_efficientnet_lite0", "pretrained": "shipped", "pool": "max",
              "head": "linear", "num_labels": len(NAMES), "image_size": 128, "residual": False, "hidden_dim": 64}
    labels = {"label_names": NAMES, "display_names": [n.replace("_", " ").title() for n in NAMES]}
    preprocessing = {"image_size": 128, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize": "square"}
    model_dir = save_model_dir(tmp_path_factory.mktemp("browser") / "model", build_style_model(config), config,
                               labels, preprocessing)
    yield from _serve(model_dir)


@pytest.fixture(scope="module")
def clothing_server_url(tmp_path_factory):
    """A clothing network with a GLEM landmark branch (untrained heads): category, typed attributes, landmarks."""
    from tiny_models import clothing_model_dir

    model_dir = clothing_model_dir(tmp_path_factory.mktemp("browser-clothing") / "model")
    yield from _serve(model_dir)


@pytest.fixture()
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="python package playwright missing (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_upload_a_photo_and_see_score_bars(server_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(server_url)
    page.wait_for_selector("#model:has-text('style model')")
    page.set_input_files("#file", str(PHOTOS[0]))
    page.wait_for_selector("#results .bar", timeout=30_000)
    names = page.locator("#results .bar .name").all_inner_texts()
    assert sorted(names) == sorted(n.replace("_", " ").title() for n in NAMES)
    values = [float(v) for v in page.locator("#results .bar .value").all_inner_texts()]
    assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    widths = page.locator("#results .bar .fill").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
    assert widths[0] >= widths[-1] and widths[0] > 0
    assert page.locator("#preview").evaluate("img => img.naturalWidth") > 0
    assert not page.locator("#error").is_visible()
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_phone_width_and_rejected_upload(server_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server_url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page.set_input_files("#file", str(notes))
    page.wait_for_selector("#error", state="visible", timeout=15_000)
    assert "415" in page.inner_text("#error") and "not an image" in page.inner_text("#error")

    page.set_input_files("#file", str(PHOTOS[0]))
    page.wait_for_selector("#results .bar", timeout=30_000)
    assert not page.locator("#error").is_visible()
    # Nothing wider than the phone: no horizontal scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_clothing_model_shows_category_attributes_by_type_and_landmarks(clothing_server_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(clothing_server_url)
    page.set_input_files("#file", str(PHOTOS[0]))
    page.wait_for_selector("#results .bar", timeout=30_000)
    assert page.locator("#results h2").all_text_contents() == ["Category", "Attributes"]
    assert page.locator("#results .type h3").all_text_contents() == ["texture", "fabric", "shape"]
    categories = page.locator("#results > .bars").first.locator(".name").all_text_contents()
    assert sorted(categories) == ["Dress", "Jeans", "Skirt", "Tee"]
    # Eight landmarks in the legend, drawn on the canvas over the photo (some pixels painted).
    assert page.locator("#legend span").count() == 8
    painted = page.evaluate("""() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert painted > 100
    assert not page.locator("#error").is_visible()
    page.screenshot(path=str(tmp_path / "clothing.png"), full_page=True)
