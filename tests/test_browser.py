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
PREDICTED = ("floral", "plaid")
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


def _serve(model_dir: Path, index: Path | None = None):
    """Run the app on a free port in a thread; yield its URL; stop it."""
    uvicorn = pytest.importorskip("uvicorn")
    from fashionlens.server.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(model_dir, max_upload_mb=2, index=index), host="127.0.0.1",
                                           port=port, log_level="warning"))
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
    # Calibrated thresholds as training writes them: Floral and Plaid always predicted, the rest never.
    thresholds = {"method": "f1", "global_threshold": 0.5,
                  "thresholds": {name: 0.0 if name in PREDICTED else 1.0 for name in NAMES}}
    model_dir = save_model_dir(tmp_path_factory.mktemp("browser") / "model", build_style_model(config), config,
                               labels, preprocessing, thresholds=thresholds)
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


def _upload(browser, url: str, photo: Path, height: int = 760):
    """A new page at ``url`` showing a style model, with ``photo`` chosen in the file input."""
    page = browser.new_page(viewport={"width": 1100, "height": height})
    page.goto(url)
    page.wait_for_selector("#model:has-text('style model')")
    page.set_input_files("#file", str(photo))
    return page


def _visible_texts(page, selector: str) -> list[str]:
    return [item.text_content() for item in page.locator(selector).all() if item.is_visible()]


def test_the_page_shows_the_predicted_labels_first_and_folds_the_rest(server_url, browser, tmp_path):
    """Issue 32 item 2: the server ignored the calibrated thresholds, so the page listed every label,
    none marked, under "Styles"; now what a person sees is the predicted labels, the rest folded."""
    page = _upload(browser, server_url, PHOTOS[0])
    page.wait_for_selector("#results .bar", timeout=30_000)
    assert _visible_texts(page, "#results h2") == ["Predicted labels"]
    assert sorted(_visible_texts(page, "#results .bar .name")) == ["Floral", "Plaid"]
    # Each bar marks its label's threshold (0 for these two, 1 for the rest).
    cuts = page.locator("#results .bar .cut").evaluate_all("els => els.map(e => e.style.left)")
    assert sorted(cuts) == ["0%"] * 4 + ["100%"] * 4  # the two shown, then all six folded
    summary = page.locator("#results details.all summary")
    assert summary.inner_text() == "All 6 scores" and not page.locator("#results details.all .bar").first.is_visible()
    summary.click()
    assert len(_visible_texts(page, "#results details.all .bar .name")) == 6
    assert page.locator("#model").inner_text().startswith("model · style model")


def test_a_model_with_label_groups_shows_its_category_then_grouped_attributes(server_url, browser, tmp_path):
    """The page renders a prediction's ``category`` and ``groups`` (inference.py's StylePrediction once it
    knows label groups): here the server's answer is replaced by one of that shape."""
    import json

    answer = {"task": "style", "source": "a.jpg", "image": {"width": 10, "height": 10},
              "labels": [], "predicted": ["long sleeves", "solid"],
              "category": {"name": "shirt", "score": 0.91},
              "groups": {"pattern": [{"name": "solid", "score": 0.8, "predicted": True},
                                     {"name": "floral", "score": 0.1, "predicted": False}],
                         "sleeve": [{"name": "long sleeves", "score": 0.7, "predicted": True}],
                         "color": [{"name": "red", "score": 0.2, "predicted": False}]}}
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.route("**/predict", lambda route: route.fulfill(status=200, content_type="application/json",
                                                         body=json.dumps(answer)))
    page.goto(server_url)
    page.wait_for_selector("#model:has-text('style model')")
    page.set_input_files("#file", str(PHOTOS[0]))
    page.wait_for_selector("#results .bar", timeout=30_000)
    assert _visible_texts(page, "#results h2") == ["Category", "Attributes"]
    assert _visible_texts(page, "#results .bar .name") == ["shirt", "solid", "long sleeves"]
    assert _visible_texts(page, "#results > .type h3") == ["pattern", "sleeve"]  # color: nothing predicted
    page.locator("#results details.all summary").click()
    assert _visible_texts(page, "#results details.all h3") == ["pattern", "sleeve", "color"]
    assert _visible_texts(page, "#results details.all .bar .name") == ["solid", "floral", "long sleeves", "red"]
    # A model without groups (category null, groups empty): the flat list.
    answer.update(category=None, groups={}, predicted=["solid"],
                  labels=[{"name": "solid", "display_name": "solid", "score": 0.8, "logit": 1.4, "threshold": 0.5,
                           "predicted": True},
                          {"name": "red", "display_name": "red", "score": 0.2, "logit": -1.4, "threshold": 0.5,
                           "predicted": False}])
    other = tmp_path / "other.jpg"  # choosing the same file again would not fire a change
    other.write_bytes(PHOTOS[0].read_bytes())
    page.set_input_files("#file", str(other))
    page.wait_for_selector("#results h2:has-text('Predicted labels')", timeout=30_000)
    assert _visible_texts(page, "#results .bar .name") == ["solid"]


def test_upload_a_photo_and_see_score_bars(server_url, browser, tmp_path):
    page = _upload(browser, server_url, PHOTOS[0])
    page.wait_for_selector("#results .bar", timeout=30_000)
    page.locator("#results details.all summary").click()
    names = page.locator("#results details.all .bar .name").all_inner_texts()
    assert sorted(names) == sorted(n.replace("_", " ").title() for n in NAMES)
    values = [float(v) for v in page.locator("#results details.all .bar .value").all_inner_texts()]
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
    assert page.locator("#results details.all .type h3").all_text_contents() == ["category", "texture", "fabric",
                                                                                  "shape"]
    assert page.locator("#results > .bars").first.locator(".name").count() == 1  # the predicted category
    categories = page.locator("#results details.all .type").first.locator(".name").all_text_contents()
    assert sorted(categories) == ["Dress", "Jeans", "Skirt", "Tee"]
    # Eight landmarks in the legend, drawn on the canvas over the photo (some pixels painted).
    assert page.locator("#legend span").count() == 8
    painted = page.evaluate("""() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert painted > 100
    assert not page.locator("#error").is_visible()
    page.screenshot(path=str(tmp_path / "clothing.png"), full_page=True)


PAINTED = """() => { const c = document.getElementById('overlay');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""


def test_click_a_label_and_see_where_it_is(server_url, browser, tmp_path):
    page = _upload(browser, server_url, PHOTOS[0])
    page.wait_for_selector("#results .bar.explainable", timeout=30_000)
    assert page.evaluate(PAINTED) == 0  # a style model draws nothing over the photo until asked
    row = page.locator("#results .bar.explainable").nth(1)
    name = row.locator(".name").inner_text()
    row.click()
    page.wait_for_selector(f"#mapinfo:has-text('Where the model sees {name}')", timeout=30_000)
    assert "active" in row.get_attribute("class")
    # The map covers the whole photo on the canvas over it.
    painted = page.evaluate(PAINTED)
    size = page.evaluate("() => { const c = document.getElementById('overlay'); return c.width * c.height; }")
    assert painted > 0.9 * size
    page.screenshot(path=str(tmp_path / "map.png"), full_page=True)
    # Another label replaces it; a second click on the same label hides it.
    other = page.locator("#results .bar.explainable").nth(0)
    other.click()
    page.wait_for_selector(f"#mapinfo:has-text('{other.locator('.name').inner_text()}')", timeout=30_000)
    assert "active" not in row.get_attribute("class")
    other.click()
    page.wait_for_function("() => document.getElementById('mapinfo').textContent === ''", timeout=10_000)
    assert page.evaluate(PAINTED) == 0
    assert not page.locator("#error").is_visible()


CATALOGUE = REPO.parent / "shared" / "data" / "clothing-dataset-small" / "train"


@pytest.fixture(scope="module")
def similar_server_url(tmp_path_factory):
    """The browser test's style model served with an index of 12 real catalogue photos."""
    from tiny_models import style_model_dir

    from fashionlens.inference import load
    from fashionlens.search import SearchIndex, embed_photos, read_vectors

    gallery = [path for name in ("shoes", "hat", "dress") for path in sorted((CATALOGUE / name).glob("*.jpg"))[:4]]
    if len(gallery) < 12:
        pytest.skip(f"clothing-dataset-small not found under {CATALOGUE}")
    folder = tmp_path_factory.mktemp("browser-similar")
    model_dir = style_model_dir(folder / "model")
    embed_photos(load(model_dir), gallery, folder / "vectors.parquet", "model", workers=0, progress=False)
    SearchIndex.build(read_vectors(folder / "vectors.parquet")).save(folder / "index")
    yield from _serve(model_dir, folder / "index")


def test_similar_items_strip(similar_server_url, browser, tmp_path):
    photo = sorted((CATALOGUE / "hat").glob("*.jpg"))[1]  # in the catalogue: it finds itself first
    page = _upload(browser, similar_server_url, photo, height=900)
    page.wait_for_selector("#similar figure", timeout=30_000)
    assert page.locator("#similar").is_visible()
    assert page.locator("#similar").bounding_box()["y"] < 900  # near the top: on the first screen, not below every score
    assert page.locator("#similar figure").count() == 10
    captions = page.locator("#similar figcaption").all_inner_texts()
    assert captions[0].startswith("1.00") and captions[0].endswith(photo.name)
    scores = [float(caption.split(" ")[0]) for caption in captions]
    assert scores == sorted(scores, reverse=True)
    page.wait_for_function("() => [...document.querySelectorAll('#similar img')].every(i => i.complete && i.naturalWidth > 0)",
                           timeout=30_000)
    page.screenshot(path=str(tmp_path / "similar.png"), full_page=True)
    assert not page.locator("#error").is_visible()
